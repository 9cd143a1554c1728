"""segmentation_models_pytorch models converted with ``pixelwise.from_smp`` give SMP's outputs; ``pixelwise
convert`` writes a model folder ``predict`` reads; ``train --init`` starts from a folder's weights."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import pixelwise
from pixelwise.cli import main
from pixelwise.convert import SMP_ARCHITECTURES, from_smp
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError, WeightsError
from pixelwise.models import create_model, from_pretrained, list_models
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train
from settings import TINY_TRAIN

smp = pytest.importorskip("segmentation_models_pytorch")

SIZES = [(64, 96), (96, 64)]
ENCODERS = ["resnet18", "tu-efficientnet_b0"]
EXTRA_ENCODERS = {"Segformer": ["mit_b0"], "DPT": ["tu-vit_tiny_patch16_224"]}
"""Encoders an architecture is tested with besides (DPT: instead of) ENCODERS."""
UNUSED_BY_SMP = {
    "PSPNet": re.compile(r"encoder\.(model\.)*(layer[34]|blocks[._][3-6])[._]"),  # stages past encoder_depth=3
    "DPT": re.compile(r"encoder\.model\.(norm|head)\."),  # the ViT's final norm and classifier
}
"""SMP parameters its forward never uses, which the converted model leaves out."""


def _cases() -> list:
    cases = []
    for arch in SMP_ARCHITECTURES:
        encoders = EXTRA_ENCODERS.get(arch, []) + (ENCODERS if arch != "DPT" else [])
        cases += [(arch, encoder) for encoder in encoders]
    quick = {("Unet", "resnet18"), ("Segformer", "mit_b0")}
    return [case if case in quick else pytest.param(*case, marks=pytest.mark.slow) for case in cases]


def _smp_model(arch: str, encoder: str, **options) -> torch.nn.Module:
    if SMP_ARCHITECTURES[arch].arch not in list_models():
        pytest.skip(f"pixelwise has no {SMP_ARCHITECTURES[arch].arch!r} architecture yet")
    torch.manual_seed(0)
    return getattr(smp, arch)(encoder, encoder_weights=None, classes=3, **options).eval()


def _sizes(arch: str) -> list[tuple[int, int]]:
    if arch == "DPT":
        return [(224, 224)]  # SMP's ViT takes its own image size only
    return [(256, 192), (192, 256)] if arch == "PAN" else SIZES  # SMP's PAN pools its stride-16 map by 8


def _parameters(model: torch.nn.Module, leave_out: re.Pattern | None = None) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not (leave_out and leave_out.match(name)))


def _assert_same_outputs(reference: torch.nn.Module, model: torch.nn.Module, sizes, channels: int = 3) -> None:
    for height, width in sizes:
        x = torch.randn(1, channels, height, width)
        with torch.no_grad():
            expected, found = reference(x), model(x)
        for e, f in zip(*((expected, found) if isinstance(expected, tuple) else ((expected,), (found,))), strict=True):
            torch.testing.assert_close(f, e, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("arch", "encoder"), _cases())
def test_converted_model_gives_smps_outputs(arch, encoder):
    reference = _smp_model(arch, encoder)
    model = from_smp(reference)
    assert _parameters(model) == _parameters(reference, UNUSED_BY_SMP.get(arch)) > 0
    if arch in UNUSED_BY_SMP:
        assert _parameters(reference) > _parameters(model)
        assert any("never uses were dropped" in note for note in model.conversion_notes)
    _assert_same_outputs(reference, model, _sizes(arch))


def test_dilated_smp_resnet_reloads_from_its_folder_with_smps_dilation(tmp_path):
    # SMP dilates every 3×3 convolution of a dilated ResNet stage; timm keeps the first one at the previous
    # rate: the converted model records SMP's way as an encoder option, so its folder reloads the same
    reference = _smp_model("DeepLabV3", "resnet18")
    model = from_smp(reference)
    assert model.config["encoder_kwargs"] == {"dilate_first_block": True}
    assert model.encoder.model.model.layer4[0].conv1.dilation == (4, 4)
    model.save_pretrained(tmp_path / "pw")
    reloaded = from_pretrained(tmp_path / "pw").eval()
    _assert_same_outputs(reference, reloaded, SIZES)
    timm_dilated = create_model("deeplabv3", encoder_name="resnet18", classes=3)
    assert timm_dilated.encoder.model.model.layer4[0].conv1.dilation == (2, 2)
    timm_dilated.load_state_dict(reloaded.state_dict())
    x = torch.randn(1, 3, *SIZES[0])
    with torch.no_grad():
        assert not torch.allclose(timm_dilated.eval()(x), reference(x), atol=1e-5)


def test_smp_structure_options_are_set_and_noted():
    model = from_smp(_smp_model("DeepLabV3Plus", "tu-efficientnet_b0"))
    assert "encoder_kwargs" not in model.config  # timm encoders: SMP dilates them through timm
    expected = {"decoder_aspp_separable": True, "decoder_separable": True, "decoder_fusion_convs": 1}
    expected |= {"decoder_aspp_pooling_batchnorm": True, "decoder_align_corners": True}
    assert expected.items() <= model.config.items()
    assert all(any(note.startswith(name) for note in model.conversion_notes) for name in expected)
    state = _smp_model("DeepLabV3Plus", "resnet18").state_dict()
    model = from_smp(state, arch="DeepLabV3Plus", encoder_name="resnet18", classes=3)  # SMP's defaults assumed
    assert model.config["decoder_aspp_separable"] is True
    assert model.config["encoder_kwargs"] == {"dilate_first_block": True}
    with pytest.raises(ConfigError, match="decoder_fusion_convs=0"):
        create_model("deeplabv3plus", encoder_name="resnet18", decoder_fusion_convs=0)


def test_aux_head_and_one_channel_convert():
    reference = _smp_model("Unet", "resnet18", in_channels=1, aux_params={"classes": 4, "pooling": "max"})
    _assert_same_outputs(reference, from_smp(reference), SIZES[:1], channels=1)


def test_save_pretrained_folder_and_state_dict_convert(tmp_path):
    reference = _smp_model("FPN", "resnet18")
    reference.save_pretrained(tmp_path / "smp")
    _assert_same_outputs(reference, from_smp(tmp_path / "smp"), SIZES[:1])  # safetensors sorts its keys
    model = from_smp(reference.state_dict(), arch="FPN", encoder_name="resnet18", classes=3)
    _assert_same_outputs(reference, model, SIZES[:1])
    assert model.config["classes"] == 3 and any("classes=3" in note for note in model.conversion_notes)


def test_bad_sources_are_refused_with_the_fix(tmp_path):
    reference = _smp_model("Unet", "resnet18")
    with pytest.raises(ConfigError, match="arch="):
        from_smp(reference.state_dict())
    with pytest.raises(ConfigError, match="unknown SMP architecture 'Unett'"):
        from_smp(reference.state_dict(), arch="Unett")
    with pytest.raises(ConfigError, match="does not exist"):
        from_smp(tmp_path / "missing")
    with pytest.raises(ConfigError, match="tu-efficientnet_b0"):
        from_smp(reference.state_dict(), arch="Unet", encoder_name="efficientnet-b0")
    wrong = {k: v for k, v in reference.state_dict().items() if not k.startswith("segmentation_head")}
    with pytest.raises(ConfigError, match="first unmatched"):
        from_smp(wrong, arch="Unet", encoder_name="resnet18", classes=3)
    with pytest.raises(ConfigError, match=r"segmentation_head.0.weight.*\[3, 16, 3, 3\].*\[5, 16, 3, 3\]"):
        from_smp(reference.state_dict(), arch="Unet", encoder_name="resnet18", classes=5)
    reference.save_pretrained(tmp_path / "damaged")
    (tmp_path / "damaged" / "model.safetensors").write_bytes(b"garbage")  # a truncated download, say
    with pytest.raises(WeightsError, match=r"model\.safetensors' is not a readable safetensors file"):
        from_smp(tmp_path / "damaged")


def test_convert_command_writes_a_folder_predict_reads(tmp_path, capsys):
    reference = _smp_model("Unet", "resnet18")
    reference.save_pretrained(tmp_path / "smp")
    assert main(["convert", "--from", "smp", str(tmp_path / "smp"), "--out", str(tmp_path / "pw")]) == 0
    assert "ImageNet" in capsys.readouterr().out
    bundle = pixelwise.bundle.ModelBundle.load(tmp_path / "pw")
    assert bundle.preprocessing.mean == pytest.approx([0.485, 0.456, 0.406])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), reference(x), atol=1e-5, rtol=1e-4)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(tmp_path / "pw"), str(images), "--out", str(out), "--no-progress"]) == 0
    assert Image.open(next(out.rglob("a*.png"))).size == (50, 40)
    assert main(["convert", "--from", "smp", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert main(["convert", "--from", "smp", str(tmp_path / "pw"), "--out", str(tmp_path / "x")]) == 2
    assert "pixelwise model folder already" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=4, n_val=2, size=64, seed=0)


def test_train_init_loads_the_folder_and_refits_only_the_head(cells, tmp_path):
    options = TINY_TRAIN["model_options"]
    reference = _smp_model("Unet", "resnet18", in_channels=1, encoder_depth=3, decoder_channels=(32, 16, 8))
    init = tmp_path / "init"
    pixelwise.bundle.ModelBundle(from_smp(reference)).save(init)  # 3 classes; the cells data have 2
    # one step of SGD at a negligible learning rate: the weights stay what they were at the start
    tiny = TINY_TRAIN | {"epochs": 1, "samples_per_epoch": 1, "batch_size": 1, "optimizer": "sgd", "momentum": 0.0}
    tiny |= {"lr": 1e-9}
    config = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="ft", init=str(init), **tiny)
    assert config.model_options == options
    with pytest.warns(UserWarning, match="head"):
        train(config)
    before, after = load_file(init / "model.safetensors"), load_file(tmp_path / "ft" / "model" / "model.safetensors")
    convs = [k for k in after if k.endswith(".weight") and after[k].ndim == 4 and not k.startswith("head")]
    assert convs and all(torch.allclose(after[k], before[k], atol=1e-6) for k in convs)  # loaded, barely trained
    assert after["head.0.weight"].shape[0] == 2 != before["head.0.weight"].shape[0]
    with pytest.raises(ConfigError, match="exclude each other"):
        train(TrainConfig(**(config.to_dict() | {"init": str(tmp_path)})), resume=True)
    with pytest.raises(ConfigError, match=r"holds a unet with encoder resnet18 but the run builds a fpn"):
        fpn = tiny | {"model": "fpn", "model_options": {"encoder_depth": 3}}
        train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="x", init=str(init), **fpn))
