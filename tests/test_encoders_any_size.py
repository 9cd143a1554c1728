"""Transformer and hybrid timm encoders at any input size, SMP / Keras encoder names, create_model's
positional encoder, Keras option spellings and keyword arguments passed through to timm."""

from __future__ import annotations

import json
import warnings

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models import FPN, DeepLabV3Plus, Linknet, PSPNet, Unet
from pixelwise.models.encoder_names import KERAS_BACKBONE_NAMES, SMP_ENCODER_NAMES, resolve_encoder_name
from pixelwise.models.encoders import SimplePyramid, build_encoder
from pixelwise.models.registry import create_model, from_pretrained, list_models, takes_encoder

# Each family shrunk through timm keywords (passed through the architecture) so a train step takes ~1 s;
# the structure per block, the windows and the size handling are the real ones.
FAMILIES = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
    "swinv2_cr_tiny_ns_224": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
    "maxvit_rmlp_pico_rw_256": dict(img_size=64, embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1)),
    "coatnet_nano_rw_224": dict(img_size=64, embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1)),
    "hiera_tiny_224": dict(img_size=64, embed_dim=16, num_heads=1, stages=(1, 1, 1, 1)),
    "eva02_tiny_patch14_224": dict(depth=1),
    "convnextv2_atto": dict(depths=(1, 1, 1, 1)),
    "mobilevit_xxs": dict(),
    "vit_tiny_patch16_224": dict(depth=1),
}
SIZES = [(97, 131), (256, 256)]


def train_step(model: nn.Module, height: int, width: int) -> None:
    """Batch 1, train mode: the output has the input's size, and every decoder/head weight gets a gradient."""
    model.train()
    y = model(torch.randn(1, model.in_channels, height, width))
    assert y.shape == (1, model.classes, height, width)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("encoder."):
            assert parameter.grad is not None, name
    assert any(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("arch", [Unet, FPN])
def test_transformer_families_any_size_batch_one(arch: type, name: str) -> None:
    small = dict(decoder_channels=(16, 16, 8, 8, 8)) if arch is Unet else dict(decoder_pyramid_channels=16)
    if arch is FPN:
        small["decoder_segmentation_channels"] = 8
    model = arch(name, classes=2, **small, **FAMILIES[name])
    assert model.input_multiple % 32 == 0
    for height, width in SIZES:
        model.zero_grad()
        train_step(model, height, width)


@pytest.mark.parametrize("arch", [Linknet, PSPNet, DeepLabV3Plus])
@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "vit_tiny_patch16_224", "coatnet_nano_rw_224"])
def test_other_architectures_take_transformers(arch: type, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeepLabV3Plus: "does not support dilation"
        model = arch(name, classes=2, **FAMILIES[name]).eval()
    with torch.no_grad():
        for height, width in SIZES:
            assert model(torch.randn(1, 3, height, width)).shape == (1, 2, height, width)


@pytest.mark.slow
def test_swin_at_full_size_and_odd_sizes() -> None:
    """The issue's example, with the real Swin-T configuration (28 M parameters)."""
    model = Unet("swin_tiny_patch4_window7_224", classes=2).eval()
    assert model.input_multiple == 32
    with torch.no_grad():
        for height, width in [(256, 256), (97, 97), (97, 131)]:
            assert model(torch.randn(1, 3, height, width)).shape == (1, 2, height, width)


def test_window_multiple_and_tiles() -> None:
    """MaxViT pads to stride × window (no internal padding); CoAtNet (attention over its whole fixed grid) is
    cut into tiles of its img_size; Swin pads its windows itself, so 32 suffices."""
    maxvit = build_encoder("maxvit_rmlp_pico_rw_256", 3, 5, None, encoder_kwargs=FAMILIES["maxvit_rmlp_pico_rw_256"])
    assert (maxvit.input_multiple, maxvit.tile_size) == (64, None)  # window 2 at stride 32
    coatnet = build_encoder("coatnet_nano_rw_224", 3, 5, None, encoder_kwargs=FAMILIES["coatnet_nano_rw_224"])
    assert (coatnet.input_multiple, coatnet.tile_size) == (64, 64)
    features = coatnet.eval()(torch.randn(2, 3, 128, 192))
    assert [tuple(f.shape[-2:]) for f in features] == [(128 // r, 192 // r) for r in coatnet.reductions]
    # a tile's features are the model's features of that tile alone
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        whole, left = coatnet(x)[-1], coatnet(x[..., :64])[-1]
    torch.testing.assert_close(whole[..., : left.shape[-1]], left)
    swin = build_encoder(
        "swin_tiny_patch4_window7_224", 3, 4, None, encoder_kwargs=FAMILIES["swin_tiny_patch4_window7_224"]
    )
    assert (swin.input_multiple, swin.reductions) == (16, [4, 8, 16])


def test_plain_vit_gets_a_pyramid() -> None:
    encoder = build_encoder("vit_tiny_patch16_224", 3, 5, None, encoder_kwargs={"depth": 1})
    assert encoder.reductions == [4, 8, 16, 32]
    assert encoder.out_channels == [48, 96, 192, 192]
    features = encoder(torch.randn(1, 3, 96, 160))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 96 // r, 160 // r) for c, r in zip([48, 96, 192, 192], [4, 8, 16, 32], strict=True)
    ]
    shallow = build_encoder("vit_tiny_patch16_224", 3, 3, None, encoder_kwargs={"depth": 1})
    assert (shallow.reductions, shallow.input_multiple) == ([4, 8], 16)  # the pyramid starts at stride 16
    with pytest.raises(ConfigError, match="encoder_depth >= 2"):
        build_encoder("vit_tiny_patch16_224", 3, 1, None, encoder_kwargs={"depth": 1})


def test_pyramid_resamples_patch14_tokens_to_stride_16() -> None:
    pyramid = SimplePyramid(8, [4, 8, 16, 32])
    features = pyramid(torch.randn(1, 8, 5, 7), (64, 96))  # EVA-02: ⌈64 / 14⌉ × ⌈96 / 14⌉ tokens
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]


# -- names -----------------------------------------------------------------------------------------


def test_every_table_entry_is_a_timm_model() -> None:
    for table in (SMP_ENCODER_NAMES, KERAS_BACKBONE_NAMES):
        missing = [f"{k} -> {v}" for k, v in table.items() if not timm.is_model(v)]
        assert not missing


def test_smp_encoder_names_resolve() -> None:
    """Every SMP 0.6 encoder name is a pixelwise encoder (a timm model through the table, or MiT), but
    resnext101_32x48d (Instagram weights), which timm does not have."""
    unresolved = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in smp.encoders.get_encoder_names():
            if not (name.startswith("mit_b") or timm.is_model(resolve_encoder_name(name))):
                unresolved.append(name)
    assert unresolved == ["resnext101_32x48d"]


@pytest.mark.parametrize(
    ("smp_name", "timm_name"),
    [
        ("se_resnext50_32x4d", "legacy_seresnext50_32x4d"),
        ("timm-regnetx_002", "regnetx_002"),
        ("xception", "legacy_xception"),
    ],
)
def test_smp_names_build_smp_sized_encoders(smp_name: str, timm_name: str) -> None:
    """Same parameter count and feature channels as SMP's encoder of that name (so checkpoints map by key)."""
    theirs = smp.encoders.get_encoder(smp_name, weights=None)
    ours = build_encoder(smp_name, 3, 5, None)
    assert ours.name == timm_name
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert ours.out_channels == list(theirs.out_channels[1:])


def test_efficientnet_names_and_one_warning() -> None:
    import pixelwise.models.encoder_names as names

    names._warned.discard("efficientnet-b0")
    with pytest.warns(UserWarning, match="lukemelas") as record:
        assert resolve_encoder_name("efficientnet-b0") == "tf_efficientnet_b0"
        assert resolve_encoder_name("efficientnet-b0") == "tf_efficientnet_b0"
    assert len([w for w in record if "efficientnet-b0" in str(w.message)]) == 1
    # structure: SMP's lukemelas encoder has the same weights apart from its unused conv_head (320 → 1280)
    theirs = smp.encoders.get_encoder("efficientnet-b0", weights=None)
    head = sum(p.numel() for p in theirs._conv_head.parameters()) + sum(p.numel() for p in theirs._bn1.parameters())
    ours = build_encoder("efficientnet-b0", 3, 5, None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) - head


def test_keras_backbone_names() -> None:
    assert resolve_encoder_name("inceptionv3") == "inception_v3"
    assert resolve_encoder_name("resnet50") == "resnet50"
    with pytest.warns(UserWarning, match="keras.applications"):
        model = Unet("efficientnetb0", encoder_depth=3, decoder_channels=(16, 8, 8))
    assert model.encoder.name == "tf_efficientnet_b0"


def test_unknown_encoder_suggests_names() -> None:
    with pytest.raises(ConfigError, match=r"did you mean.*efficientnet"):
        Unet("efficientnet-b9x")
    with pytest.raises(ConfigError, match="did you mean"):
        Unet("swin_tiny_patch4_window7_22")


# -- create_model, Keras spellings, timm keywords -----------------------------------------------------


def test_create_model_takes_the_encoder_second() -> None:
    model = create_model("unet", "resnet18", classes=3, encoder_depth=3, decoder_channels=(16, 8, 8))
    assert model.config["encoder_name"] == "resnet18"
    assert model.classes == 3
    assert create_model("fcn8s", encoder_weights=None).config["encoder_name"] == "vgg16"  # its own default
    with pytest.raises(ConfigError, match="takes no encoder"):
        create_model("unet2015", "resnet18")


def test_keras_spellings() -> None:
    model = Unet(
        backbone_name="resnet18", input_shape=(None, None, 1), classes=2, encoder_depth=3, decoder_filters=(16, 8, 8)
    )
    assert (model.config["encoder_name"], model.in_channels, model.config["decoder_channels"]) == (
        "resnet18",
        1,
        (16, 8, 8),
    )
    assert model(torch.randn(1, 1, 33, 45)).shape == (1, 2, 33, 45)
    with pytest.warns(UserWarning, match="any height and width"):
        FPN(backbone_name="resnet18", input_shape=(256, 256, 3), pyramid_aggregation="concat", encoder_depth=3)
    with pytest.raises(ConfigError, match="contradicts"):
        Unet("resnet18", in_channels=3, input_shape=(None, None, 4))
    with pytest.raises(ConfigError, match="input_shape"):
        Unet("resnet18", input_shape=3)


def test_timm_keywords_pass_through_and_round_trip(tmp_path) -> None:
    small = FAMILIES["swin_tiny_patch4_window7_224"]
    model = Unet("swin_tiny_patch4_window7_224", decoder_channels=(16, 16, 8, 8, 8), drop_path_rate=0.1, **small)
    assert model.config["encoder_kwargs"] == {"drop_path_rate": 0.1, **small}
    layers = model.encoder.model.model.layers  # timm: drop-path rates rise linearly from 0 to drop_path_rate
    assert isinstance(layers[0].blocks[0].drop_path1, nn.Identity)
    assert layers[3].blocks[0].drop_path1.drop_prob == pytest.approx(0.1)
    model.eval()
    x = torch.randn(1, 3, 97, 131)
    loaded = from_pretrained(model.save_pretrained(tmp_path / "swin")).eval()
    assert loaded.config == json.loads(json.dumps(model.config))  # tuples come back as lists
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # create_model passes them on too; so does an explicit encoder_kwargs
    assert create_model("fpn", "resnet18", drop_rate=0.2).config["encoder_kwargs"] == {"drop_rate": 0.2}
    assert FPN("resnet18", encoder_kwargs={"drop_rate": 0.2}).config["encoder_kwargs"] == {"drop_rate": 0.2}


def test_unknown_keywords_still_fail() -> None:
    with pytest.raises(ConfigError, match="did you mean 'decoder_channels'"):
        Unet("resnet18", decoder_chanels=(16, 8, 8, 8, 8))
    with pytest.raises(ConfigError, match="no option 'window_size'"):
        Unet("resnet18", window_size=7)  # a timm keyword, but not of ResNet
    with pytest.raises(ConfigError, match="encoder_kwargs"):
        Unet("resnet18", encoder_kwargs=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "vit_tiny_patch16_224", "coatnet_nano_rw_224"])
@pytest.mark.parametrize("arch", [a for a in list_models() if takes_encoder(a) and a != "dpt"])  # DPT: ViTs only
def test_every_architecture_takes_transformers(arch: str, name: str) -> None:
    """Batch 1, train mode, an odd size: every encoder-based architecture (one pyramid, windows, tiles)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # encoders that cannot be dilated
        model = create_model(arch, name, classes=2, **FAMILIES[name]).train()
    output = model(torch.randn(1, 3, 97, 131))
    masks = output[0] if isinstance(output, tuple) else output
    assert masks.shape == (1, 2, 97, 131)
    masks.square().mean().backward()
