"""Deep supervision (U-Net, U-Net++) and the auxiliary FCN head (PSPNet, DeepLabV3(+), UPerNet): the auxiliary
outputs' shapes, nothing changed with the options off, ``forward`` unchanged with them on, the training loss
(checked against cross-entropies computed here with torch alone) and a short training run that saves, reloads
and predicts. The auxiliary head is compared with torchvision's FCNHead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.segmentation.fcn import FCNHead

import pixelwise
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError
from pixelwise.models.base import AUX_HEADS, AuxiliaryFCNHead
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train
from pixelwise.training.task import SegmentationTask, build_model
from settings import TINY_TRAIN

CLASSES = 3
SIZE = 64
IGNORE = 255
AUX_WEIGHT = 0.4

# (class, options, strides of the auxiliary outputs, finest first)
ARCHITECTURES = [
    (pixelwise.Unet, {"deep_supervision": True, "decoder_channels": [64, 32, 16, 16, 8]}, [2, 4, 8]),  # not 1, 16
    (
        pixelwise.UnetPlusPlus,
        {"deep_supervision": True, "encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]},
        [2, 4],
    ),
    (pixelwise.PSPNet, {"aux_head": True}, [4]),  # encoder_depth 3: strides 2, 4, 8; the second-deepest is 4
    (pixelwise.DeepLabV3, {"aux_head": True, "decoder_channels": 32}, [8]),  # output stride 8: layer3 dilated
    (pixelwise.DeepLabV3Plus, {"aux_head": True, "decoder_channels": 32}, [16]),
    (pixelwise.UPerNet, {"aux_head": True, "decoder_channels": 32}, [16]),
]
IDS = ["unet", "unetplusplus", "pspnet", "deeplabv3", "deeplabv3plus", "upernet"]


def _pair(cls, options, seed=0):
    """The model with its auxiliary option on and the same model with it off, sharing all common weights."""
    torch.manual_seed(seed)
    on = cls("resnet18", classes=CLASSES, **options).eval()
    off_options = {k: v for k, v in options.items() if k not in ("deep_supervision", "aux_head")}
    off = cls("resnet18", classes=CLASSES, **off_options).eval()
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith(AUX_HEADS)})
    return on, off


@pytest.mark.parametrize(("cls", "options", "strides"), ARCHITECTURES, ids=IDS)
def test_aux_shapes_and_forward_unchanged(cls, options, strides):
    on, off = _pair(cls, options)
    size = SIZE // 2
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        main, aux = on.forward_with_aux(x)
        assert [tuple(a.shape) for a in aux] == [(2, CLASSES, size // s, size // s) for s in strides]
        # the option adds weights under aux_heads only, and forward ignores them
        on_keys, off_keys = set(on.state_dict()), set(off.state_dict())
        assert not any(k.startswith(AUX_HEADS) for k in off_keys)
        assert on_keys - off_keys == {k for k in on_keys if k.startswith(f"{AUX_HEADS}.")} != set()
        assert off_keys <= on_keys
        torch.testing.assert_close(on(x), off(x), rtol=0, atol=0)
        torch.testing.assert_close(main, on(x), rtol=0, atol=0)
        main_off, aux_off = off.forward_with_aux(x)
        assert aux_off == [] and torch.equal(main_off, off(x))


def test_aux_outputs_cropped_like_the_main_output():
    model = pixelwise.Unet("resnet18", classes=2, deep_supervision=True).eval()
    with torch.no_grad():
        main, aux = model.forward_with_aux(torch.rand(1, 3, 70, 66))  # padded to 96 × 96
    assert main.shape[-2:] == (70, 66)
    assert [tuple(a.shape[-2:]) for a in aux] == [(35, 33), (18, 17), (9, 9)]  # ceil(70 / s), ceil(66 / s)


def test_aux_head_equals_torchvision_fcn_head():
    torch.manual_seed(0)
    ours = AuxiliaryFCNHead(64, CLASSES).eval()
    reference = FCNHead(64, CLASSES).eval()
    reference.load_state_dict(ours.state_dict())  # same layers, same order: 3×3 conv, BN, ReLU, dropout, 1×1 conv
    x = torch.randn(2, 64, 9, 9)
    torch.testing.assert_close(ours(x), reference(x))
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert ours[3].p == reference[3].p == 0.1


def test_traced_model_has_one_output():
    model = pixelwise.PSPNet("resnet18", classes=2, aux_head=True).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        output = traced(x)
    assert isinstance(output, torch.Tensor)
    torch.testing.assert_close(output, model(x))


def _task(model: str, options: dict, seed: int = 0) -> SegmentationTask:
    torch.manual_seed(seed)
    config = TrainConfig(
        data="unused",
        model=model,
        encoder="resnet18" if model != "unet2015" else None,
        model_options=options,
        loss="ce",
        ignore_index=IGNORE,
        aux_loss_weight=AUX_WEIGHT,
    )
    return SegmentationTask(config, in_channels=3, classes=CLASSES, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])


def _batch(size: int = SIZE) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.randint(0, CLASSES, (2, size, size), generator=generator)
    mask[:, :, size // 2 : size // 2 + 5] = IGNORE  # a band of ignored pixels across the middle
    return {"image": torch.rand(2, 3, size, size, generator=generator), "mask": mask}


def _centre(x: torch.Tensor, size: int) -> torch.Tensor:
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")  # the task runs outside a Trainer here
@pytest.mark.parametrize(
    ("model", "options", "weights", "strides"),
    [
        ("unet", {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]}, [2 / 3, 1 / 3], [2, 4]),  # nnU-Net's 1, 1/2
        ("pspnet", {"psp_out_channels": 32}, [1.0], [4]),
        ("unet2015", {"base_channels": 4, "depth": 3}, [1.0], [2]),  # valid convolutions: centred outputs
    ],
)
def test_training_loss_is_main_plus_weighted_aux(model, options, weights, strides):
    task = _task(model, options)
    assert task.model.has_aux_outputs  # aux_loss_weight > 0 turned the option on
    task.train()
    batch = _batch(pixelwise.UNet2015.valid_input_size(SIZE, depth=3) if model == "unet2015" else SIZE)
    torch.manual_seed(5)  # the same dropout masks in both passes
    loss = task.training_step(batch, 0)
    torch.manual_seed(5)
    x = (batch["image"] - task.mean) / task.std
    main, aux = task.model.forward_with_aux(x)
    size = main.shape[-1]
    mask = _centre(batch["mask"], size)  # the whole mask for padded models, the output tile for UNet2015
    assert len(aux) == len(weights)
    ce = [F.cross_entropy(main, mask, ignore_index=IGNORE)]
    for logits, stride in zip(aux, strides, strict=True):
        up = F.interpolate(logits, size=(logits.shape[-2] * stride,) * 2, mode="bilinear", align_corners=False)
        ce.append(F.cross_entropy(_centre(up, size), mask, ignore_index=IGNORE))
    expected = ce[0] + AUX_WEIGHT * sum(w * c for w, c in zip(weights, ce[1:], strict=True))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, ce[0])  # the auxiliary term counts
    if model == "unet2015":
        return  # its validation runs whole mirrored images (forward_mirrored), not this batch
    task.eval()  # validation: the main output only
    with torch.no_grad():
        val_loss = task._shared_step(batch, "val")
        torch.testing.assert_close(val_loss, F.cross_entropy(task(batch["image"]), mask, ignore_index=IGNORE))


def test_unet2015_aux_output_geometry():
    model = pixelwise.UNet2015(in_channels=1, classes=2, base_channels=4, depth=3, deep_supervision=True).eval()
    n = pixelwise.UNet2015.valid_input_size(60, depth=3)
    x = torch.rand(1, 1, n, n)
    with torch.no_grad():
        main, aux = model.forward_with_aux(x)
        assert torch.equal(main, model(x)) and model.aux_strides == (2,)
    m = pixelwise.UNet2015.output_size(n, depth=3)
    assert main.shape[-1] == m and aux[0].shape[-1] == (m + 4) // 2  # one step before: two 3×3 valid convs


@pytest.mark.parametrize("model", ["fpn", "segformer", "linknet"])
def test_unsupported_architecture_is_a_config_error(model):
    with pytest.raises(ConfigError, match=rf"model='{model}' has none; use one of .*pspnet.*unet"):
        TrainConfig(data="d", model=model, aux_loss_weight=0.4).validate()
    with pytest.raises(ConfigError, match="aux_loss_weight"):
        build_model({"model": model, "aux_loss_weight": 0.4}, 3, 2)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"aux_loss_weight=-0\.1 is out of range"):
        TrainConfig(data="d", aux_loss_weight=-0.1).validate()
    with pytest.raises(ConfigError, match=r"deep_supervision=True needs encoder_depth >= 3"):
        pixelwise.Unet("resnet18", encoder_depth=2, decoder_channels=[16, 8], deep_supervision=True)


def _arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = (x[..., 0] > 128).astype(np.int64)
    return x, y


@pytest.mark.parametrize(
    ("cls", "options", "option"),
    [
        (pixelwise.Unet, {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}, "deep_supervision"),
        (pixelwise.PSPNet, {"psp_out_channels": 32}, "aux_head"),
    ],
)
def test_fit_with_aux_saves_reloads_and_predicts(tmp_path, cls, options, option):
    x, y = _arrays()
    model = cls("resnet18", classes=2, **options)  # built without the auxiliary heads
    result = pixelwise.fit(
        model, x, y, epochs=1, batch_size=4, aux_loss_weight=AUX_WEIGHT, runs_dir=str(tmp_path), progress=False
    )
    assert np.isfinite(result.history["loss"]).all()
    loaded = pixelwise.from_pretrained(result.model_dir).eval()
    assert loaded.config[option] is True and loaded.has_aux_outputs  # the saved model records the option
    preprocessing = json.loads((result.model_dir / "preprocessing.json").read_text())
    mean = torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, -1, 1, 1)
    image = torch.from_numpy(x[:1]).permute(0, 3, 1, 2).float() / 255
    model.eval()
    with torch.no_grad():
        expected = model((image - mean) / std)
        torch.testing.assert_close(loaded((image - mean) / std), expected)
    probabilities = pixelwise.Predictor(result.model_dir).predict(x[0])
    np.testing.assert_allclose(probabilities, expected.softmax(1)[0].numpy(), atol=1e-4)


def test_train_tiny_run_with_aux_loss(tmp_path):
    data = write_synthetic(tmp_path / "cells", "cells", n_train=4, n_val=2, size=64, seed=0)
    config = TrainConfig(
        **{**TINY_TRAIN, "epochs": 1}, data=str(data), runs_dir=str(tmp_path / "runs"), name="aux", aux_loss_weight=0.4
    )
    result = train(config)
    saved = json.loads((result.run_dir / "model" / "config.json").read_text())
    assert saved["options"]["deep_supervision"] is True
    loaded = pixelwise.from_pretrained(result.run_dir / "model").eval()
    x = torch.rand(1, loaded.in_channels, 48, 40)
    with torch.no_grad():
        main, aux = loaded.forward_with_aux(x)
        assert torch.equal(main, loaded(x)) and [tuple(a.shape[-2:]) for a in aux] == [(24, 20)]
