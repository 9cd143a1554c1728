"""Linknet, PSPNet, FPN and DeepLabV3Plus: shapes, gradients, missing feature levels, batch size 1."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.deeplab import DeepLabV3Plus, DeepLabV3PlusDecoder
from pixelwise.models.fpn import FPN, FPNDecoder
from pixelwise.models.linknet import Linknet, LinknetDecoder
from pixelwise.models.pspnet import PSPNet
from pixelwise.models.registry import create_model, from_pretrained, get_model_class


def train_step(model: nn.Module, height: int = 97, width: int = 131) -> torch.Tensor:
    """Forward + backward in train mode with batch size 1; check the output and every gradient."""
    torch.manual_seed(0)
    model.train()
    x = torch.randn(1, model.in_channels, height, width)
    y = model(x)
    assert y.shape == (1, model.classes, height, width)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("encoder."):  # shallow timm encoders may keep unused (grad-less) deeper blocks
            assert parameter.grad is not None, name
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name
    if not model.encoder_frozen:
        assert next(model.encoder.parameters()).grad is not None
    return y


def fake_encoder(reductions: list[int], channels: list[int]) -> SimpleNamespace:
    """What a decoder reads from a TimmEncoder, without building one."""
    return SimpleNamespace(
        name="fake", depth=reductions[-1].bit_length() - 1, reductions=reductions, out_channels=channels
    )


def fake_features(encoder: SimpleNamespace, size: int = 64) -> list[torch.Tensor]:
    return [
        torch.randn(1, c, size // r, size // r) for r, c in zip(encoder.reductions, encoder.out_channels, strict=True)
    ]


RESNET = fake_encoder([2, 4, 8, 16, 32], [64, 64, 128, 256, 512])
CONVNEXT = fake_encoder([4, 8, 16, 32], [96, 192, 384, 768])  # no stride-2 feature
VGG = fake_encoder([1, 2, 4, 8, 16, 32], [64, 128, 256, 512, 512, 512])  # a stride-1 feature

# Every architecture with the two usual encoder families at the default depth, plus ConvNeXt (no stride-2
# feature) where the decoder uses the shallow levels, on an input that is no multiple of anything.
CASES = [
    (Linknet, "resnet18"),
    (Linknet, "efficientnet_b0"),
    (Linknet, "convnext_tiny"),
    (PSPNet, "resnet18"),
    (PSPNet, "efficientnet_b0"),
    (FPN, "resnet18"),
    (FPN, "efficientnet_b0"),
    (FPN, "convnext_tiny"),
    (DeepLabV3Plus, "resnet18"),
    (DeepLabV3Plus, "efficientnet_b0"),
]
ARCHITECTURES = [Linknet, PSPNet, FPN, DeepLabV3Plus]


@pytest.mark.parametrize(("cls", "encoder"), CASES, ids=[f"{c.__name__}-{e}" for c, e in CASES])
def test_train_step_any_size(cls, encoder):
    model = cls(encoder, classes=3)
    assert model.input_multiple == 2**model.encoder.depth
    train_step(model)


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize("cls", ARCHITECTURES, ids=lambda c: c.__name__)
def test_train_step_shallow_encoder(cls, depth):
    model = cls("resnet18", encoder_depth=depth, classes=2)
    assert model.input_multiple == 2**depth
    train_step(model, 45, 67)


def test_registered_names_and_keras_style_construction():
    assert get_model_class("linknet") is Linknet
    assert get_model_class("PSPNet") is PSPNet
    assert get_model_class("fpn") is FPN
    assert get_model_class("deeplabv3plus") is DeepLabV3Plus
    assert get_model_class("deeplabv3+") is DeepLabV3Plus
    model = create_model("deeplabv3+", encoder_name="resnet18", encoder_depth=3, classes=2)
    assert isinstance(model, DeepLabV3Plus) and model.config["classes"] == 2
    assert Linknet("resnet18", classes=3, encoder_depth=3).config["encoder_name"] == "resnet18"


# -- Linknet --------------------------------------------------------------------------------


def test_linknet_skips_follow_encoder_strides():
    decoder = LinknetDecoder(RESNET, 32, "transposed", True)
    assert decoder.skip_reductions == [16, 8, 4, 2, None]
    assert [b.expand[0].out_channels for b in decoder.blocks] == [256, 128, 64, 64, 32]
    decoder = LinknetDecoder(CONVNEXT, 32, "transposed", True)  # no stride-2 feature: that block adds nothing
    assert decoder.skip_reductions == [16, 8, 4, None, None]
    assert [b.expand[0].out_channels for b in decoder.blocks] == [384, 192, 96, 48, 32]
    decoder = LinknetDecoder(VGG, 16, "nearest", False)  # the stride-1 feature is not added
    assert decoder.skip_reductions == [16, 8, 4, 2, None]
    assert decoder(fake_features(VGG)).shape == (1, 16, 64, 64)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "pixelshuffle"])
def test_linknet_upsampling_modes(mode):
    train_step(Linknet("resnet18", encoder_depth=3, decoder_upsampling=mode, classes=2), 33, 40)


def test_linknet_rejects_unknown_upsampling():
    with pytest.raises(ConfigError, match="decoder_upsampling"):
        Linknet("resnet18", encoder_depth=3, decoder_upsampling="bicubic")


# -- PSPNet ---------------------------------------------------------------------------------


def test_pspnet_tiny_input_batch_one_trains():
    """With a 32×32 input the bin-1 branch pools to 1×1: no BatchNorm may see it."""
    model = PSPNet("resnet18", classes=2)
    assert model.encoder.reductions[-1] == 8
    for branch in model.decoder[0].branches:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in branch.modules())
    train_step(model, 32, 32)
    train_step(PSPNet("resnet18", encoder_depth=4, classes=2), 32, 32)  # deepest map 2×2, all bins


def test_pspnet_options():
    model = PSPNet("resnet18", psp_bins=(1, 2), psp_out_channels=64, psp_dropout=0.0, classes=2)
    assert len(model.decoder[0].branches) == 2 and model.head[0].in_channels == 64
    train_step(model, 40, 24)
    with pytest.raises(ConfigError, match="psp_bins"):
        PSPNet("resnet18", psp_bins=())
    with pytest.raises(ConfigError, match="psp_bins"):
        PSPNet("resnet18", psp_bins=(0, 2))


# -- FPN ------------------------------------------------------------------------------------


def test_fpn_pyramid_levels():
    assert FPNDecoder(RESNET, 256, 128, "add", 0.2).strides == [32, 16, 8, 4]  # stride 2 is no pyramid level
    decoder = FPNDecoder(CONVNEXT, 64, 32, "add", 0.2)
    assert decoder.strides == [32, 16, 8, 4]
    assert decoder(fake_features(CONVNEXT)).shape == (1, 32, 16, 16)
    sparse = fake_encoder([2, 8, 32], [16, 32, 64])  # gaps in the pyramid
    decoder = FPNDecoder(sparse, 64, 32, "cat", 0.0)
    assert decoder.strides == [32, 8]
    assert decoder(fake_features(sparse)).shape == (1, 64, 16, 16)
    with pytest.raises(ConfigError, match="stride >= 4"):
        FPNDecoder(fake_encoder([2], [16]), 64, 32, "add", 0.2)


def test_fpn_cat_merge_and_bad_policy():
    model = FPN("resnet18", encoder_depth=4, decoder_merge_policy="cat", decoder_segmentation_channels=48, classes=2)
    assert model.head[0].in_channels == 3 * 48  # three levels concatenated; GroupNorm copes with 48 channels
    train_step(model, 50, 70)
    with pytest.raises(ConfigError, match="decoder_merge_policy"):
        FPN("resnet18", encoder_depth=3, decoder_merge_policy="concat")


# -- DeepLabV3Plus --------------------------------------------------------------------------


def test_deeplab_dilates_encoder():
    assert DeepLabV3Plus("resnet18").encoder.reductions == [2, 4, 8, 16, 16]
    model = DeepLabV3Plus("resnet18", encoder_output_stride=8, classes=2)
    assert model.encoder.reductions[-1] == 8
    assert model.decoder.output_stride == 4
    train_step(model, 45, 37)
    assert DeepLabV3Plus("resnet18", encoder_output_stride=None).encoder.reductions[-1] == 32
    with pytest.raises(ConfigError, match="encoder_output_stride"):
        DeepLabV3Plus("resnet18", encoder_output_stride=4)


def test_deeplab_tiny_input_batch_one_trains():
    """A 32×32 input gives a 2×2 deepest map; the image-pooling branch is 1×1 and has no BatchNorm."""
    model = DeepLabV3Plus("resnet18", classes=2)
    pooling = model.decoder.aspp[0].branches[-1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pooling.modules())
    train_step(model, 32, 32)


def test_deeplab_low_level_feature():
    assert DeepLabV3PlusDecoder(RESNET, 64, (1, 2, 3), 0.5).low_index == 1  # the stride-4 feature
    assert DeepLabV3PlusDecoder(VGG, 64, (1, 2, 3), 0.5).low_index == 2
    no_stride_four = fake_encoder([2, 8, 16, 32], [16, 32, 64, 128])
    decoder = DeepLabV3PlusDecoder(no_stride_four, 64, (1, 2, 3), 0.5).eval()
    assert decoder.low_index == 1 and decoder.output_stride == 8
    assert decoder(fake_features(no_stride_four)).shape == (1, 64, 8, 8)
    with pytest.raises(ConfigError, match="decoder_atrous_rates"):
        DeepLabV3PlusDecoder(RESNET, 64, (0, 6), 0.5)


def test_deeplab_undilatable_encoder_warns_and_falls_back():
    with pytest.warns(UserWarning, match="vgg16"):
        model = DeepLabV3Plus("vgg16", encoder_depth=4, encoder_output_stride=8, classes=2)
    assert model.encoder.reductions[-1] == 16
    assert model.decoder.output_stride == 4  # vgg16's stride-1 and stride-2 features are skipped
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 20, 36)).shape == (1, 2, 20, 36)


def test_deeplab_other_config_errors_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="unknown encoder"):
            DeepLabV3Plus("resnet_does_not_exist")


# -- shared behaviour ------------------------------------------------------------------------


def test_save_and_reload(tmp_path):
    for model in (
        PSPNet("resnet18", psp_bins=(1, 3), classes=2),
        DeepLabV3Plus("resnet18", encoder_depth=3, decoder_atrous_rates=(2, 4, 6), classes=2),
    ):
        model.eval()
        x = torch.randn(1, 3, 24, 24)
        directory = model.save_pretrained(tmp_path / model.arch_name)
        loaded = from_pretrained(directory).eval()
        assert type(loaded) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


def test_encoder_freeze():
    model = FPN("resnet18", encoder_depth=3, encoder_freeze=True)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.decoder.training
