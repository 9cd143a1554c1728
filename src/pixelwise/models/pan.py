"""PAN, the pyramid attention network (Li et al. 2018): a feature pyramid attention (FPA) module on the deepest
encoder feature, then global attention upsample (GAU) blocks that bring it to stride 4, each gating a
shallower encoder feature with the channel attention of the deeper map."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import INTERPOLATION_MODES, PooledBatchNorm2d, check_head_upsampling
from pixelwise.models.encoders import TimmEncoder, WeightsSpec
from pixelwise.models.registry import check_choice, register_model

OUTPUT_STRIDES = (16, 32)
FPA_HALVINGS = 3
"""The FPA module max-pools the deepest map three times: it needs at least 2**3 pixels a side."""


class ConvBiasBnAct(nn.Sequential):
    """Conv2d with a bias → BatchNorm → ReLU (optional), "same" padding: PAN's convolution block, whose biased
    convolution before BatchNorm keeps segmentation_models_pytorch's parameters.

    The BatchNorm is a :class:`~pixelwise.models.blocks.PooledBatchNorm2d`: PAN's global branches and the
    deepest FPA level (the deepest map halved three times) are 1×1 maps, which must train with batch size 1.

    Shape: ``[N, in_channels, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, activation: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            PooledBatchNorm2d(out_channels),
        ]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int], mode: str) -> torch.Tensor:
    """Interpolate ``x`` to ``size``; bilinear aligns corners, as PAN's reference implementation does."""
    return F.interpolate(x, size=size, mode=mode, align_corners=True if mode == "bilinear" else None)


class FeaturePyramidAttention(nn.Module):
    """FPA: a U-shaped pyramid of 7×7, 5×5 and 3×3 convolutions on max-pooled maps (one channel) gives a
    pixel attention that multiplies a 1×1 projection of the input; a global-pooling branch is added.

    The deepest map is halved three times, so its sides must be at least 8 (:class:`PAN` pads to that).

    Shape: ``[N, in_channels, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # registered in segmentation_models_pytorch's order (global, middle, down 1-3, refine 2, refine 1)
        self.global_branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBiasBnAct(in_channels, out_channels, 1))
        self.middle = ConvBiasBnAct(in_channels, out_channels, 1)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), ConvBiasBnAct(in_channels, 1, 7))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), ConvBiasBnAct(1, 1, 5))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), ConvBiasBnAct(1, 1, 3), ConvBiasBnAct(1, 1, 3))
        self.refine2 = ConvBiasBnAct(1, 1, 5)
        self.refine1 = ConvBiasBnAct(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x1 = self.down1(x)  # stride ×2, one channel
        x2 = self.down2(x1)  # ×4
        x3 = self.down3(x2)  # ×8
        attention = self.refine2(x2) + _resize(x3, x2.shape[-2:], "bilinear")
        attention = self.refine1(x1) + _resize(attention, x1.shape[-2:], "bilinear")
        attention = _resize(attention, size, "bilinear")
        return attention * self.middle(x) + self.global_branch(x).expand(-1, -1, *size)


class GlobalAttentionUpsample(nn.Module):
    """GAU: the deeper map's global channel attention (pool → 1×1 conv → BatchNorm → sigmoid) gates a 3×3
    ConvBnAct of the shallower feature; the deeper map, upsampled to it, is added.

    Shape: ``low [N, in_channels, H, W]``, ``high [N, out_channels, h, w] → [N, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, interpolation: str) -> None:
        super().__init__()
        self.channel_attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvBiasBnAct(out_channels, out_channels, 1, activation=False),
            nn.Sigmoid(),
        )
        self.low_conv = ConvBiasBnAct(in_channels, out_channels, 3)
        self.interpolation = interpolation

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        upsampled = _resize(high, low.shape[-2:], self.interpolation)
        return upsampled + self.low_conv(low) * self.channel_attention(high)


class PANDecoder(nn.Module):
    """FPA on the deepest feature, then one GAU per shallower encoder feature of stride ≥ 4, deep to shallow.

    The output is at the stride of the shallowest feature used (:attr:`output_stride`, 4 for usual encoders).

    Shape: ``features`` (shallow to deep) ``→ [N, out_channels, H / output_stride, W / output_stride]``.
    """

    def __init__(self, encoder: TimmEncoder, out_channels: int, interpolation: str) -> None:
        super().__init__()
        check_choice("decoder_interpolation", interpolation, INTERPOLATION_MODES)
        self.levels = [i for i, r in enumerate(encoder.reductions) if r >= 4]
        if len(self.levels) < 2:
            raise ConfigError(
                f"PAN needs at least two encoder features of stride >= 4, but encoder {encoder.name!r} with "
                f"encoder_depth={encoder.depth} has strides {encoder.reductions}; use encoder_depth >= 3."
            )
        channels = encoder.out_channels
        self.fpa = FeaturePyramidAttention(channels[self.levels[-1]], out_channels)
        self.gaus = nn.ModuleList(
            GlobalAttentionUpsample(channels[i], out_channels, interpolation) for i in reversed(self.levels[:-1])
        )
        self.out_channels = out_channels
        self.output_stride = encoder.reductions[self.levels[0]]
        self.deepest_stride = encoder.reductions[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.fpa(features[self.levels[-1]])
        for gau, index in zip(self.gaus, reversed(self.levels[:-1]), strict=True):
            x = gau(features[index], x)
        return x


def pad_to_at_least(x: torch.Tensor, minimum: int) -> torch.Tensor:
    """Pad ``[N, C, H, W]`` at the bottom and right so that H and W are at least ``minimum`` (edge values)."""
    pad_h, pad_w = max(minimum - x.shape[-2], 0), max(minimum - x.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


@register_model("pan")
class PAN(EncoderDecoderModel):
    """PAN: (dilated) encoder → feature pyramid attention → global attention upsample blocks to stride 4 →
    3×3 head → bilinear upsampling ×4.

    Structure and parameters equal segmentation_models_pytorch's ``PAN`` for the same options, and its weights
    give its outputs. Its FPA module needs a deepest map of at least 8×8: smaller inputs are padded to
    8 × the deepest stride (128 pixels at ``encoder_output_stride=16``) and the output cropped back.

    Args:
        encoder_output_stride: stride of the deepest feature: 16 (default; the last stage is dilated) or 32.
        decoder_channels: channels of the decoder (FPA and GAU blocks).
        decoder_interpolation: how GAU blocks upsample the deeper map: ``"bilinear"`` (corners aligned),
            ``"nearest"``, ``"nearest-exact"``, ``"bicubic"`` or ``"area"``.
        upsampling: the head's upsampling factor: the decoder's stride (4), the only value that returns the
            input size, or ``None`` for that stride whatever the encoder.
        aux_params: a classification head on the deepest features (see
            :class:`~pixelwise.models.base.EncoderDecoderModel`).
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = PAN("resnet34", classes=3, decoder_channels=64)
    """

    head_align_corners = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        encoder_output_stride: int = 16,
        decoder_channels: int = 32,
        decoder_interpolation: str = "bilinear",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        upsampling: int | None = 4,
        aux_params: Mapping[str, Any] | None = None,
    ) -> None:
        check_choice("encoder_output_stride", encoder_output_stride, OUTPUT_STRIDES)
        decoder = partial(PANDecoder, out_channels=decoder_channels, interpolation=decoder_interpolation)
        super().__init__(
            decoder,
            encoder_name,
            encoder_depth,
            encoder_weights,
            encoder_freeze,
            in_channels,
            classes,
            activation,
            encoder_output_stride,
            aux_params,
        )
        check_head_upsampling("PAN", upsampling, self.decoder.output_stride)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`EncoderDecoderModel.forward_padded`, after padding small inputs to the size FPA needs
        (the caller crops the output back to the input size)."""
        return super().forward_padded(pad_to_at_least(x, 2**FPA_HALVINGS * self.decoder.deepest_stride))
