"""Unet, FPN, Linknet and PSPNet in segmentation_models_pytorch 0.6's configuration: the same parameters,
and SMP's outputs (to 1e-5) once SMP's weights are copied in; SMP's shared options (aux_params,
decoder_use_norm, decoder_attention_type, decoder_interpolation, upsampling) and their pixelwise aliases."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.fpn import FPN
from pixelwise.models.linknet import Linknet
from pixelwise.models.pspnet import PSPNet
from pixelwise.models.unet import Unet

smp = pytest.importorskip("segmentation_models_pytorch")

ENCODERS = {"resnet18": "resnet18", "tu-efficientnet_b0": "efficientnet_b0"}  # SMP's name → ours
SIZES = [(64, 64), (96, 128)]
AUX = {"classes": 4, "pooling": "max", "dropout": 0.5, "activation": None}
AUX_OPTION = {"aux_params": AUX}


def smp_options(arch: str, smp_config: dict) -> dict:
    """The pixelwise options that build SMP's ``arch`` with ``smp_config`` (what the converter must set)."""
    options = {k: v for k, v in smp_config.items() if k != "encoder_name"}
    options["encoder_name"] = ENCODERS[smp_config["encoder_name"]]
    if arch == "PSPNet":
        options["psp_branch_norm"] = True  # SMP normalises the pooled branches larger than 1×1
    return options


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def strip(key: str) -> str:
    """An encoder key without the wrappers' ``model.`` prefixes (SMP's ``tu-`` and ours differ in them)."""
    while key.startswith("model."):
        key = key.removeprefix("model.")
    return key


def copy_positionally(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s state into ``target`` in registration order, checking every shape."""
    values, keys = list(source.state_dict().values()), list(target.state_dict())
    assert len(values) == len(keys)
    state = {}
    for key, value, own in zip(keys, values, target.state_dict().values(), strict=True):
        assert value.shape == own.shape, key
        state[key] = value
    target.load_state_dict(state)


def copy_smp_weights(reference: nn.Module, model: nn.Module) -> None:
    """SMP's weights into ours: the encoder by name (SMP's encoder keeps stages deeper than encoder_depth,
    ours does not), decoder and heads in registration order (our base registers the classification head
    before the segmentation head, SMP after: they are copied separately)."""
    encoder = {strip(k): v for k, v in reference.encoder.state_dict().items()}
    model.encoder.load_state_dict({k: encoder[strip(k)] for k in model.encoder.state_dict()})
    copy_positionally(reference.decoder, model.decoder)
    copy_positionally(reference.segmentation_head, model.head)
    if reference.classification_head is not None:
        copy_positionally(reference.classification_head, model.classification_head)


def build_pair(arch: str, smp_config: dict) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(smp, arch)(encoder_weights=None, **smp_config).eval()
    model = {"Unet": Unet, "FPN": FPN, "Linknet": Linknet, "PSPNet": PSPNet}[arch](**smp_options(arch, smp_config))
    return reference, model.eval()


def assert_same_outputs(reference: nn.Module, model: nn.Module, sizes: list[tuple[int, int]] = SIZES) -> None:
    for height, width in sizes:
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            expected, got = reference(x), model(x)
        if isinstance(expected, tuple):
            torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
            expected, got = expected[0], got[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def assert_same_as_smp(arch: str, smp_config: dict) -> None:
    """Build both with ``aux_params``, compare counts and outputs; then without the auxiliary head."""
    reference, model = build_pair(arch, {**smp_config, "aux_params": AUX})
    for part in ("decoder", "classification_head"):
        assert count(getattr(model, part)) == count(getattr(reference, part)), part
    assert count(model.head) == count(reference.segmentation_head)
    if model.encoder.depth == 5:  # SMP's shallower encoders keep unused deeper stages
        assert count(model) == count(reference)
    copy_smp_weights(reference, model)
    assert_same_outputs(reference, model)
    reference.classification_head = model.classification_head = None  # both models return masks alone then
    assert_same_outputs(reference, model, SIZES[:1])


# SMP 0.6 cannot build "instancenorm" as a string (its decoder initialisation fills the missing affine
# weight): the dict form with affine=True is what SMP models with instance norm hold.
INSTANCENORM = {"type": "instancenorm", "affine": True}
NORMS = ["batchnorm", "identity", INSTANCENORM]
SMALL = {"decoder_channels": (64, 32, 32, 16, 16)}  # keeps the test fast; the structure is what is compared
SLOW = pytest.mark.slow  # more of the same matrix: run with the rest, deselect with -m "not slow"
CASES = [
    ("Unet", {}),
    ("Unet", {"decoder_use_norm": "batchnorm", "decoder_attention_type": "scse", **SMALL}),
    pytest.param("Unet", {"decoder_use_norm": "identity", "decoder_attention_type": "scse", **SMALL}, marks=SLOW),
    ("Unet", {"decoder_use_norm": INSTANCENORM, **SMALL}),
    pytest.param("Unet", {"decoder_interpolation": "bilinear", **SMALL}, marks=SLOW),
    ("Linknet", {}),
    *[pytest.param("Linknet", {"decoder_use_norm": n}, marks=SLOW) for n in NORMS[1:]],
    *[("PSPNet", {"decoder_use_norm": n, "psp_out_channels": 64}) for n in NORMS],
    pytest.param("PSPNet", {"encoder_depth": 4, "upsampling": 16, "psp_out_channels": 64}, marks=SLOW),
    ("FPN", {}),
    pytest.param("FPN", {"decoder_merge_policy": "cat", "decoder_interpolation": "bilinear"}, marks=SLOW),
]


@pytest.mark.parametrize(("arch", "config"), CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_resnet18_matches_smp(arch, config):
    assert_same_as_smp(arch, {"encoder_name": "resnet18", **config})


EFFICIENTNET_CASES = [
    ("Unet", {"decoder_attention_type": "scse", **SMALL}),
    ("Linknet", {"decoder_use_norm": INSTANCENORM}),
    ("PSPNet", {}),
    ("FPN", {}),
]


@pytest.mark.slow  # the second encoder family (timm's EfficientNet through SMP's "tu-" wrapper)
@pytest.mark.parametrize(("arch", "config"), EFFICIENTNET_CASES, ids=[a for a, _ in EFFICIENTNET_CASES])
def test_efficientnet_b0_matches_smp(arch, config):
    assert_same_as_smp(arch, {"encoder_name": "tu-efficientnet_b0", **config})


def test_defaults_are_smp_structure_except_pspnet_branches():
    """Unet, Linknet and FPN need no option to be SMP's; PSPNet's pooled branches differ by default."""
    for arch in ("Unet", "Linknet", "FPN"):
        reference, model = build_pair(arch, {"encoder_name": "resnet18"})
        assert count(model) == count(reference), arch
    reference, model = build_pair("PSPNet", {"encoder_name": "resnet18"})
    assert count(PSPNet("resnet18")) != count(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.decoder[0].branches[0].modules())  # bin 1


def train_step(model: nn.Module, height: int = 97, width: int = 131) -> None:
    """Batch size 1, train mode, odd size: finite masks and labels, gradients everywhere SMP uses them."""
    model.train()
    masks, labels = model(torch.randn(1, 3, height, width))
    assert masks.shape == (1, model.classes, height, width) and labels.shape == (1, AUX["classes"])
    (masks.square().mean() + labels.square().mean()).backward()
    for name, parameter in model.named_parameters():
        unused = name.startswith("encoder.") or ".attention1." in name  # SMP's unused last-block attention
        assert unused or parameter.grad is not None, name


@pytest.mark.parametrize(
    "model",
    [
        lambda: Unet("resnet18", classes=2, decoder_attention_type="scse", decoder_use_norm="layernorm", **AUX_OPTION),
        lambda: Unet("resnet18", classes=2, decoder_interpolation="bicubic", **AUX_OPTION),
        lambda: PSPNet("resnet18", classes=2, psp_branch_norm=True, **AUX_OPTION),
        lambda: Linknet("resnet18", classes=2, decoder_use_norm={"type": "batchnorm", "momentum": 0.01}, **AUX_OPTION),
        lambda: FPN("resnet18", classes=2, decoder_interpolation="bilinear", upsampling=4, **AUX_OPTION),
    ],
    ids=["unet-scse-layernorm", "unet-bicubic", "pspnet-branch-norm", "linknet-norm-dict", "fpn-bilinear"],
)
def test_options_train_at_any_size_batch_one(model):
    train_step(model())


def test_unet_scse_sits_where_smp_puts_it():
    block = Unet("resnet18", decoder_attention_type="scse").decoder.blocks[0]
    assert [name for name, _ in block.named_children()] == ["upsample", "conv1", "attention1", "conv2", "attention2"]
    assert block.attention1.channel_gate[1].in_channels == 512 + 256  # the concatenation of input and skip


def test_norm_alias_and_conflicts():
    model = Linknet("resnet18", encoder_depth=3, decoder_use_batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())
    model = Unet("resnet18", encoder_depth=3, decoder_use_norm="instancenorm")
    assert any(isinstance(m, nn.InstanceNorm2d) for m in model.decoder.modules())
    assert model.config["decoder_use_norm"] == "instancenorm"
    Unet("resnet18", encoder_depth=3, decoder_use_batchnorm=False, decoder_use_norm="identity")  # agree
    with pytest.raises(ConfigError, match="decoder_use_batchnorm=False contradicts"):
        Unet("resnet18", encoder_depth=3, decoder_use_batchnorm=False, decoder_use_norm="batchnorm")
    with pytest.raises(ConfigError, match="psp_use_batchnorm=False contradicts"):
        PSPNet("resnet18", psp_use_batchnorm=False, decoder_use_norm=True)
    with pytest.raises(ConfigError, match="did you mean 'batchnorm'"):
        Linknet("resnet18", decoder_use_norm="batchnrom")


def test_interpolation_alias_and_conflicts():
    assert Unet("resnet18", encoder_depth=3, decoder_interpolation="bilinear").decoder.blocks[0].upsample.mode == (
        "bilinear"
    )
    with pytest.raises(ConfigError, match="contradicts decoder_interpolation"):
        Unet("resnet18", decoder_upsampling="transposed", decoder_interpolation="bilinear")
    with pytest.raises(ConfigError, match="decoder_interpolation"):
        Unet("resnet18", decoder_interpolation="transposed")  # learnable upsampling is decoder_upsampling's
    with pytest.raises(ConfigError, match="decoder_interpolation"):
        FPN("resnet18", decoder_interpolation="linear")
    with pytest.raises(ConfigError, match="decoder_attention_type"):
        Unet("resnet18", decoder_attention_type="cbam")


def test_head_upsampling_must_restore_the_input_size():
    assert PSPNet("resnet18", upsampling=8).head[-1].scale_factor == 8
    with pytest.raises(ConfigError, match="upsampling=8"):
        PSPNet("resnet18", encoder_depth=4, upsampling=8)
    with pytest.raises(ConfigError, match="upsampling=2"):
        FPN("resnet18", upsampling=2)


def test_positional_calls_keep_working():
    model = Unet("resnet18", 3, None, False, (64, 32, 16), "bilinear", False, 0, 1, 2)
    assert model.classes == 2 and model.config["decoder_upsampling"] == "bilinear"
    assert PSPNet("resnet18", 3, None, False, (1, 2), 64).config["psp_out_channels"] == 64
