"""DPT on a timm ViT: structure, parameters and outputs equal to segmentation_models_pytorch's DPT once its
weights are copied; any input size; readouts; prefix (CLS and register) tokens; aux_params; errors."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from pixelwise.errors import ConfigError
from pixelwise.models.dpt import DPT, dpt_state_dict_from_smp, uniform_block_indices
from pixelwise.models.registry import create_model, from_pretrained

VIT = "vit_tiny_patch16_224"
REG_VIT = "vit_little_patch16_reg4_gap_256"  # four register tokens, no CLS token
SMALL = dict(
    embed_dim=32, num_heads=2, decoder_intermediate_channels=(8, 16, 24, 32), decoder_fusion_channels=16
)  # timm options shrink the ViT (SMP passes them to timm too), the decoder options shrink the decoder


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _smp_unused(smp_model: torch.nn.Module, ours: DPT) -> int:
    """Parameters of SMP's ViT that DPT never uses (classifier, final norm), which ours does not build."""
    own = dict(ours.encoder.model.named_parameters())
    return sum(p.numel() for k, p in smp_model.encoder.model.named_parameters() if k not in own)


def _pair(name: str, **options) -> tuple[torch.nn.Module, DPT]:
    torch.manual_seed(0)
    reference = smp.DPT(f"tu-{name}", encoder_weights=None, dynamic_img_size=True, **options).eval()
    ours = DPT(name, **options).eval()
    ours.load_state_dict(dpt_state_dict_from_smp(reference.state_dict(), ours))
    return reference, ours


@pytest.mark.parametrize(
    ("name", "options"),
    [
        (VIT, dict(SMALL)),
        (VIT, dict(SMALL, decoder_readout="add", classes=3, aux_params=dict(classes=4))),
        (VIT, dict(SMALL, decoder_readout="ignore", encoder_output_indices=[1, 3, 5, 7])),
        (REG_VIT, dict(SMALL, decoder_readout="cat", encoder_depth=3, decoder_intermediate_channels=(8, 16, 24))),
        (REG_VIT, dict(SMALL, decoder_readout="add", in_channels=4)),
    ],
)
def test_outputs_equal_smp_after_copy(name: str, options: dict) -> None:
    reference, ours = _pair(name, **options)
    assert _count(ours) == _count(reference) - _smp_unused(reference, ours)
    channels = options.get("in_channels", 3)
    for size in ((224, 224), (96, 160)) if name == VIT and "aux_params" not in options else ((64, 96),):
        x = torch.randn(2, channels, *size)
        with torch.no_grad():
            expected, got = reference(x), ours(x)
        if "aux_params" in options:
            torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=0)
            expected, got = expected[0], got[0]
        assert got.shape == (2, options.get("classes", 1), *size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_default_decoder_parameter_count_equals_smp() -> None:
    reference = smp.DPT(f"tu-{VIT}", encoder_weights=None)
    ours = DPT(f"tu-{VIT}")
    unused = _smp_unused(reference, ours)
    assert unused == 192 * 2 + 192 * 1000 + 1000  # the final norm and the ImageNet classifier
    assert _count(ours) == _count(reference) - unused
    decoder = sum(p.numel() for p in reference.decoder.parameters())
    assert sum(p.numel() for p in ours.decoder.parameters()) == decoder


def test_converted_keys_fit_exactly() -> None:
    reference = smp.DPT(f"tu-{VIT}", encoder_weights=None, aux_params=dict(classes=2), **SMALL)
    ours = DPT(VIT, aux_params=dict(classes=2), **SMALL)
    converted = dpt_state_dict_from_smp(reference.state_dict())
    assert set(converted) == set(ours.state_dict())


@pytest.mark.parametrize("size", [(97, 131), (64, 80), (20, 37)])
def test_any_size(size: tuple[int, int]) -> None:
    model = DPT(VIT, classes=2, **SMALL).eval()
    assert model.input_multiple == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 2, *size)


def test_patch14_register_tokens_any_size() -> None:
    model = DPT("vit_small_patch14_reg4_dinov2", **SMALL).eval()
    assert model.input_multiple == 14 and model.encoder.num_prefix_tokens == 5
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 1, 97, 131)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_train_batch_one_backward(in_channels: int) -> None:
    model = DPT(VIT, in_channels=in_channels, classes=3, aux_params=dict(classes=2), **SMALL).train()
    masks, labels = model(torch.randn(1, in_channels, 97, 131))
    assert masks.shape == (1, 3, 97, 131) and labels.shape == (1, 2)
    (masks.mean() + labels.mean()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing  # every parameter gets a gradient (DDP needs that)


@pytest.mark.parametrize("readout", ["cat", "add", "ignore"])
def test_readouts_use_prefix_tokens(readout: str) -> None:
    torch.manual_seed(0)
    model = DPT(REG_VIT, decoder_readout=readout, **SMALL).eval()
    assert model.encoder.num_prefix_tokens == 4
    block = model.decoder.readouts[0]
    x, tokens = torch.randn(2, 32, 3, 5), torch.randn(2, 4, 32)
    later = tokens.clone()
    later[:, 1:] += 1.0  # every prefix token but the first
    first = tokens.clone()
    first[:, 0] += 1.0
    with torch.no_grad():
        out = block(x, tokens)
        assert out.shape == x.shape
        # cat reads the first prefix token only, add the mean of all, ignore none
        assert torch.equal(out, block(x, later)) == (readout != "add")
        assert torch.equal(out, block(x, first)) == (readout == "ignore")
    if readout == "add":
        torch.testing.assert_close(block(x, tokens), x + tokens.mean(1)[:, :, None, None])


def test_create_model_and_save_roundtrip(tmp_path) -> None:
    model = create_model("dpt", encoder_name=f"tu-{VIT}", classes=2, drop_path_rate=0.1, **SMALL).eval()
    assert model.config["encoder_kwargs"]["drop_path_rate"] == 0.1 and model.config["dynamic_img_size"] is True
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_encoder_freeze() -> None:
    model = DPT(VIT, encoder_freeze=True, **SMALL).train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training and model.decoder.training


def test_uniform_indices() -> None:
    assert uniform_block_indices(4, 12) == [2, 5, 8, 11]
    assert uniform_block_indices(3, 12) == [3, 7, 11]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(decoder_readout="concat"), "decoder_readout"),
        (dict(encoder_depth=13), "encoder_depth"),
        (dict(encoder_output_indices=[1, 2, 3]), "encoder_output_indices"),
        (dict(encoder_output_indices=[1, 2, 3, 12]), "out of range"),
        (dict(decoder_intermediate_channels=(8, 16, 24)), "decoder_intermediate_channels"),
        (dict(encoder_name="resnet18"), "plain timm ViT"),
        (dict(encoder_name="vit_tiny_patch16_2244"), "vit_tiny_patch16_224"),
        (dict(output_stride=8), "output_stride"),
        (dict(no_such_timm_option=1), "no_such_timm_option"),
        (dict(aux_params=dict(classes=2, pool="avg")), "aux_params"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    options = {"encoder_name": VIT, **SMALL, **options}
    with pytest.raises(ConfigError, match=message):
        DPT(**options)


def test_readout_without_prefix_tokens_warns() -> None:
    with pytest.warns(UserWarning, match="no prefix tokens"):
        model = DPT(VIT, class_token=False, global_pool="avg", **SMALL)
    assert model.encoder.num_prefix_tokens == 0
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 50)).shape == (1, 1, 33, 50)
