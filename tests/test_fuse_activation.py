"""Convolution + activation fusion for CPU inference: the pairs it may fuse, the ones it must not, exact outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pixelwise
from pixelwise.inference import Predictor, fold_batchnorm
from pixelwise.inference.fuse_activation import (
    ConvActivation,
    FusedBasicBlock,
    fuse_conv_activations,
    fusion_available,
)
from pixelwise.inference.predictor import NormalizationOptions, RuntimeOptions

pytestmark = pytest.mark.skipif(not fusion_available(), reason="this PyTorch build has no oneDNN")


class Residual(nn.Module):
    """timm's BasicBlock pattern: the shortcut is added in place between conv2 and act2 (same tensor object)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)
        self.conv2, self.act2 = nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv2(self.act1(self.conv1(x)))
        x += shortcut
        return self.act2(x)


class Branching(nn.Module):
    """A convolution whose output also feeds a second branch: fusing its activation would change that branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.act, self.side = nn.Conv2d(channels, channels, 1), nn.SiLU(), nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y) + self.side(y)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),  # fusable: 1
        Residual(8),  # conv1/act1 fusable: 2; conv2/act2 not (in-place add in between)
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        nn.ReLU6(),  # fusable: 3
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.SiLU(),  # fusable: 4
        Branching(8),  # not: the conv's output has a second reader
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),  # not: oneDNN's kernel pads with zeros only
    ).eval()


def test_only_safe_pairs_are_fused_and_the_output_is_unchanged():
    model = network()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
    fused = copy.deepcopy(model)
    assert fuse_conv_activations(fused, torch.randn(1, 3, 16, 16)) == 4
    kinds = sorted(type(m.activation).__name__ for m in fused.modules() if isinstance(m, ConvActivation))
    assert kinds == ["ReLU", "ReLU", "ReLU6", "SiLU"]
    assert isinstance(fused[2].act2, nn.ReLU) and isinstance(fused[7].act, nn.SiLU)
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.inference_mode():
            output = fused.to(memory_format=layout)(x.contiguous(memory_format=layout))
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_outside_fp32_inference_the_two_modules_run_as_before():
    model = network()
    fused = copy.deepcopy(model)
    fuse_conv_activations(fused, torch.randn(1, 3, 16, 16))
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    model(x).sum().backward()  # autograd: the fused module falls back to conv then activation
    expected = x.grad.clone()
    x.grad = None
    fused(x).sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused(x.detach()).dtype == torch.bfloat16


def test_the_default_predictor_fuses_and_gives_the_unfused_probabilities():
    torch.manual_seed(0)
    model = pixelwise.create_model("unet", encoder_name="resnet18", classes=3, decoder_channels=[32, 16, 16, 8, 8])
    image = torch.rand(3, 96, 80)
    normalization = NormalizationOptions(mean=[0.5] * 3, std=[0.25] * 3)
    fast = Predictor(model, normalization=normalization)
    plain = Predictor(model, normalization=normalization, runtime=RuntimeOptions(fuse_activations=False))
    fused = list(fast._forward.module.modules())  # the eager module behind the default ("auto") backend
    assert sum(isinstance(m, ConvActivation) for m in fused) > 0
    assert sum(isinstance(m, FusedBasicBlock) for m in fused) == 8  # ResNet-18: 2 + 2 + 2 + 2 basic blocks
    assert not any(isinstance(m, ConvActivation) for m in model.modules())  # the caller's model is untouched
    torch.testing.assert_close(fast.predict(image), plain.predict(image), rtol=1e-5, atol=1e-6)


def test_residual_blocks_fuse_the_addition_in_both_layouts():
    import timm

    torch.manual_seed(0)
    encoder = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="").eval()  # [N, 512, h, w]
    x = torch.randn(1, 3, 64, 48)
    with torch.inference_mode():
        expected = encoder(x)
    fused = fold_batchnorm(encoder, torch.randn(1, 3, 32, 32))  # a block's conv2 fuses once its BatchNorm is folded
    fuse_conv_activations(fused, torch.randn(1, 3, 32, 32))
    assert sum(isinstance(m, FusedBasicBlock) for m in fused.modules()) == 8
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.inference_mode():
            output = fused.to(memory_format=layout)(x.contiguous(memory_format=layout))
        torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
