"""UnetPlusPlus and MAnet against segmentation_models_pytorch 0.6: same parameters, and the same outputs once
SMP's weights are copied in; any size, batch 1, in_channels, aux_params, attention, normalisations, errors."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models import create_model
from pixelwise.models.blocks import ConvBnAct
from pixelwise.models.manet import MAnet
from pixelwise.models.unetplusplus import UnetPlusPlus

ARCHS = {"unetplusplus": (UnetPlusPlus, smp.UnetPlusPlus), "manet": (MAnet, smp.MAnet)}
ENCODERS = {"resnet18": "resnet18", "efficientnet_b0": "tu-efficientnet_b0", "convnext_atto": "tu-convnext_atto"}
"""Our encoder name → SMP's name for the same network (convnext_atto: no stride-2 feature)."""
OUR_TO_SMP_MODULE = {"encoder": "encoder", "decoder": "decoder", "head": "segmentation_head"}
OUR_TO_SMP_MODULE["classification_head"] = "classification_head"
SMALL = {"encoder_depth": 3, "decoder_channels": (64, 32, 16)}
"""A three-level decoder: fast to build, still with every kind of node."""


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def copy_smp_weights(theirs: nn.Module, ours: nn.Module) -> None:
    """Load SMP's state dict into ours: tensors in registration order within each top-level module (our base
    class registers the classification head before the segmentation head; SMP after it), shapes checked."""
    source, target = theirs.state_dict(), ours.state_dict()
    assert len(source) == len(target)
    converted = {}
    for our_module, smp_module in OUR_TO_SMP_MODULE.items():
        our_keys = [k for k in target if k.split(".")[0] == our_module]
        smp_keys = [k for k in source if k.split(".")[0] == smp_module]
        assert len(our_keys) == len(smp_keys), our_module
        for our_key, smp_key in zip(our_keys, smp_keys, strict=True):
            assert source[smp_key].shape == target[our_key].shape, (smp_key, our_key)
            converted[our_key] = source[smp_key]
    ours.load_state_dict(converted, strict=True)


def build_pair(arch: str, encoder: str, **options) -> tuple[nn.Module, nn.Module]:
    """Our model and SMP's with the same options, in eval mode. SMP's own ResNet encoder keeps its unused
    deeper stages when ``encoder_depth < 5``; those cases use SMP's timm wrapper of the same network."""
    ours_cls, smp_cls = ARCHS[arch]
    smp_encoder = ENCODERS[encoder] if options.get("encoder_depth", 5) == 5 else f"tu-{encoder}"
    theirs = smp_cls(smp_encoder, encoder_weights=None, **options).eval()
    ours = ours_cls(encoder, **options).eval()
    return ours, theirs


SMP_CASES = [
    ("unetplusplus", "resnet18", {"classes": 3}),
    ("unetplusplus", "efficientnet_b0", {"classes": 2, "in_channels": 1}),
    ("unetplusplus", "resnet18", {"decoder_attention_type": "scse", "decoder_interpolation": "bilinear", **SMALL}),
    ("unetplusplus", "convnext_atto", {"decoder_attention_type": "scse", **SMALL}),
    ("manet", "resnet18", {"classes": 3, "aux_params": {"classes": 4, "dropout": 0.5}}),
    ("manet", "efficientnet_b0", {"classes": 2, "in_channels": 4}),
    ("manet", "resnet18", {"decoder_pab_channels": 16, "decoder_interpolation": "bilinear", **SMALL}),
    ("manet", "convnext_atto", SMALL),
]


@pytest.mark.parametrize(
    ("arch", "encoder", "options"), SMP_CASES, ids=[f"{a}-{e}-{i}" for i, (a, e, _) in enumerate(SMP_CASES)]
)
def test_outputs_equal_smp_after_copying_weights(arch, encoder, options):
    ours, theirs = build_pair(arch, encoder, **options)
    assert n_params(ours) == n_params(theirs)
    copy_smp_weights(theirs, ours)
    for height, width in [(64, 64), (64, 96)]:
        x = torch.randn(1, options.get("in_channels", 3), height, width)
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        if "aux_params" in options:
            (expected, expected_labels), (got, got_labels) = expected, got
            torch.testing.assert_close(got_labels, expected_labels, atol=1e-5, rtol=0)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_plain_positional_copy_covers_encoder_and_decoder():
    """Without aux_params every tensor, the encoder's included, lines up with SMP's in order."""
    ours, theirs = build_pair("manet", "resnet18", **SMALL)
    converted = {}
    for value, (key, own) in zip(theirs.state_dict().values(), ours.state_dict().items(), strict=True):
        assert value.shape == own.shape, key
        converted[key] = value
    ours.load_state_dict(converted)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def train_step(model: nn.Module, height: int = 97, width: int = 131) -> torch.Tensor:
    """Forward + backward in train mode, batch 1, at a size that is no multiple of anything."""
    model.train()
    x = torch.randn(1, model.in_channels, height, width)
    y = model(x)
    masks = y[0] if isinstance(y, tuple) else y
    assert masks.shape == (1, model.classes, height, width)
    (masks.square().mean() + (y[1].sum() if isinstance(y, tuple) else 0)).backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("encoder."):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    return y


TRAIN_CASES = [
    (arch, encoder, channels, depth)
    for arch in ARCHS
    for encoder, channels, depth in [("resnet18", 1, 5), ("efficientnet_b0", 4, 3), ("convnext_atto", 3, 3)]
]


@pytest.mark.parametrize(("arch", "encoder", "in_channels", "depth"), TRAIN_CASES)
def test_train_step_any_size_batch_one(arch, encoder, in_channels, depth):
    options = SMALL if depth == 3 else {}
    model = create_model(arch, encoder_name=encoder, in_channels=in_channels, classes=2, **options)
    assert model.input_multiple == 2**depth
    train_step(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_aux_params_returns_masks_and_labels(arch):
    model = ARCHS[arch][0]("resnet18", classes=2, aux_params={"classes": 5, "pooling": "max"}, **SMALL)
    masks, labels = train_step(model, 45, 70)
    assert masks.shape == (1, 2, 45, 70) and labels.shape == (1, 5)


def test_convnext_has_no_nodes_at_the_missing_stride():
    """ConvNeXt has no stride-2 feature: only path 0 reaches stride 2, and concatenates nothing there."""
    model = UnetPlusPlus("convnext_atto", **SMALL)
    assert [name for name in model.decoder.nodes if name.endswith("_to_s2")] == ["s8_to_s2"]
    assert model.decoder.nodes["s8_to_s2"].conv1[0].in_channels == 64  # decoder_channels[0], no skip


NORMS = [
    True,
    False,
    "batchnorm",
    "identity",
    {"type": "instancenorm", "affine": True},
    {"type": "batchnorm", "momentum": 0.01},
]
"""What SMP 0.6 can build: its initialisation fails on an InstanceNorm without weights (plain "instancenorm")."""


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_decoder_use_norm_equals_smp(arch, norm):
    ours, theirs = build_pair(arch, "resnet18", decoder_use_norm=norm, **SMALL)
    assert n_params(ours) == n_params(theirs)
    copy_smp_weights(theirs, ours)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_norms_smp_cannot_run(arch):
    """A plain "instancenorm" has no parameters (SMP 0.6 fails to initialise it). SMP's "layernorm" normalises
    the last (width) axis, so its decoder cannot run; ours normalises the channels of each pixel with the same
    parameters. "inplace" (InPlace-ABN) is computed as BatchNorm."""
    cls, smp_cls = ARCHS[arch]
    instancenorm = cls("resnet18", decoder_use_norm="instancenorm", **SMALL)
    identity = cls("resnet18", decoder_use_norm="identity", **SMALL)
    biases = sum(m[0].out_channels for m in identity.decoder.modules() if isinstance(m, ConvBnAct))
    assert n_params(instancenorm) == n_params(identity) - biases  # no conv bias, no norm weights
    train_step(instancenorm, 19, 27)
    layernorm = cls("resnet18", decoder_use_norm="layernorm", **SMALL)
    smp_layernorm = smp_cls("tu-resnet18", encoder_weights=None, decoder_use_norm="layernorm", **SMALL)
    assert n_params(layernorm) == n_params(smp_layernorm)
    train_step(layernorm, 19, 27)
    inplace = cls("resnet18", decoder_use_norm="inplace", **SMALL)
    assert n_params(inplace) == n_params(cls("resnet18", decoder_use_norm="batchnorm", **SMALL))
    train_step(inplace, 19, 27)


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_use_batchnorm_alias(arch):
    cls = ARCHS[arch][0]
    without = cls("resnet18", decoder_use_batchnorm=False, **SMALL)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.decoder.modules())
    assert n_params(without) == n_params(cls("resnet18", decoder_use_norm="identity", **SMALL))
    assert without.config["decoder_use_batchnorm"] is False
    cls("resnet18", decoder_use_batchnorm=True, decoder_use_norm=True, **SMALL)  # the same meaning: fine
    with pytest.raises(ConfigError, match="decoder_use_batchnorm=True contradicts decoder_use_norm='instancenorm'"):
        cls("resnet18", decoder_use_batchnorm=True, decoder_use_norm="instancenorm", **SMALL)
    with pytest.raises(ConfigError, match="decoder_use_batchnorm='yes' must be True or False"):
        cls("resnet18", decoder_use_batchnorm="yes", **SMALL)


BAD_OPTIONS = [
    ({"decoder_interpolation": "bilinaer"}, "did you mean 'bilinear'"),
    ({"decoder_use_norm": "batchnrom"}, "decoder_use_norm.*did you mean 'batchnorm'"),
    ({"decoder_use_norm": {"momentum": 0.1}}, "decoder_use_norm=.*is not a normalisation"),
    ({"decoder_channels": (64, 32)}, "decoder_channels=\\[64, 32\\] has 2 entries but encoder_depth=5"),
    ({"encoder_depth": 3, "decoder_channels": (32, 16, 8, 4)}, "has 4 entries but encoder_depth=3"),
    ({"aux_params": {"classes": 2, "pool": "avg"}}, "aux_params has no option 'pool'"),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=lambda v: str(v)[:30])
def test_bad_option_raises_config_error(arch, options, message):
    with pytest.raises(ConfigError, match=message):
        ARCHS[arch][0]("resnet18", **options)


def test_architecture_specific_bad_options():
    with pytest.raises(ConfigError, match=r"decoder_attention_type.*'scse'"):
        UnetPlusPlus("resnet18", decoder_attention_type="sce")
    with pytest.raises(ConfigError, match="decoder_pab_channels=0"):
        MAnet("resnet18", decoder_pab_channels=0)
    with pytest.raises(ConfigError, match="no option 'decoder_pab_channels'"):
        UnetPlusPlus("resnet18", decoder_pab_channels=32)


def test_default_decoder_channels_follow_encoder_depth():
    for cls in (UnetPlusPlus, MAnet):
        model = cls("resnet18", encoder_depth=3).eval()
        assert model.decoder.out_channels == 64 and model.input_multiple == 8
        with torch.no_grad():
            assert model(torch.randn(1, 3, 21, 13)).shape == (1, 1, 21, 13)
