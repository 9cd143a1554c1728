"""FPN for semantic segmentation (Lin et al. 2017 pyramid, Kirillov et al. 2019 panoptic FPN head):
a top-down feature pyramid whose levels are each brought to stride 4 and merged."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import INTERPOLATION_MODES, check_head_upsampling
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, feature_at
from pixelwise.models.registry import check_choice, register_model

MERGE_POLICIES = ("add", "cat")


class Conv3x3GNReLU(nn.Sequential):
    """3×3 conv → GroupNorm → ReLU, optionally followed by bilinear upsampling ×2.

    GroupNorm uses 32 groups when the channels allow it (else the largest common divisor). The upsampling
    aligns corners, as SMP's does (the same interpolation, so SMP checkpoints give SMP's outputs).

    Shape: ``[N, in, h, w] → [N, out, h, w]``, or ``[N, out, 2h, 2w]`` with ``upsample``.
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(math.gcd(32, out_channels), out_channels),
            nn.ReLU(inplace=True),
        ]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        super().__init__(*layers)


class SegmentationBlock(nn.Sequential):
    """Bring a pyramid level ``n_upsamples`` ×2 steps up (to stride 4): one Conv3x3GNReLU per step
    (one without upsampling when ``n_upsamples`` is 0)."""

    def __init__(self, in_channels: int, out_channels: int, n_upsamples: int) -> None:
        layers = [Conv3x3GNReLU(in_channels, out_channels, upsample=n_upsamples > 0)]
        layers += [Conv3x3GNReLU(out_channels, out_channels, upsample=True) for _ in range(1, n_upsamples)]
        super().__init__(*layers)


class FPNDecoder(nn.Module):
    """Lateral 1×1 convs on every encoder stride ≥ 4, a top-down pathway (nearest upsampling +
    addition), per-level segmentation blocks to stride 4, merged by sum or concatenation.

    Strides the encoder lacks are simply not pyramid levels; the output is at stride 4 whatever
    the encoder.

    Shape: features shallow to deep → ``[N, out_channels, H/4, W/4]``.
    """

    output_stride = 4

    def __init__(
        self,
        encoder: TimmEncoder,
        pyramid_channels: int,
        segmentation_channels: int,
        merge_policy: str,
        dropout: float,
        interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        check_choice("decoder_merge_policy", merge_policy, MERGE_POLICIES)
        check_choice("decoder_interpolation", interpolation, INTERPOLATION_MODES)
        self.interpolation = interpolation
        self.reductions = encoder.reductions
        self.strides = sorted({r for r in encoder.reductions if r >= self.output_stride}, reverse=True)
        if not self.strides:
            raise ConfigError(
                f"FPN needs encoder features of stride >= 4, but encoder {encoder.name!r} with "
                f"encoder_depth={encoder.depth} has strides {encoder.reductions}; use encoder_depth >= 2."
            )
        self.laterals = nn.ModuleList(
            nn.Conv2d(channels_at(encoder.out_channels, encoder.reductions, s), pyramid_channels, 1)
            for s in self.strides
        )
        self.seg_blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, (s // self.output_stride).bit_length() - 1)
            for s in self.strides
        )
        self.merge_policy = merge_policy
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = segmentation_channels * (len(self.strides) if merge_policy == "cat" else 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pyramid: list[torch.Tensor] = []
        for stride, lateral in zip(self.strides, self.laterals, strict=True):
            x = lateral(feature_at(features, self.reductions, stride))
            if pyramid:
                x = x + F.interpolate(pyramid[-1], size=x.shape[-2:], mode=self.interpolation)
            pyramid.append(x)
        outputs = [block(p) for block, p in zip(self.seg_blocks, pyramid, strict=True)]
        merged = torch.cat(outputs, dim=1) if self.merge_policy == "cat" else torch.stack(outputs).sum(dim=0)
        return self.dropout(merged)


@register_model("fpn")
class FPN(EncoderDecoderModel):
    """FPN: encoder → feature pyramid → per-level segmentation blocks merged at stride 4 → 1×1 head → ×4.

    Args:
        decoder_pyramid_channels: channels of the pyramid (lateral convs and top-down pathway).
        decoder_segmentation_channels: channels of each level's segmentation block.
        decoder_merge_policy: ``"add"`` (sum the levels) or ``"cat"`` (concatenate them).
        decoder_dropout: Dropout2d probability before the head.
        decoder_interpolation: upsampling of the top-down pathway: ``"nearest"`` (default), ``"bilinear"``,
            ``"bicubic"``, ``"area"`` or ``"nearest-exact"`` (SMP 0.6's option).
        upsampling: the head's bilinear upsampling factor; it must be the decoder's stride, 4 (SMP's
            default), so that the output has the input's size. None (default): 4.
        aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    The defaults build segmentation_models_pytorch 0.6's ``FPN`` exactly (with ``encoder_depth=5``). The options
    SMP also has keep pixelwise's order (``encoder_freeze`` fourth; ``decoder_interpolation`` and
    ``upsampling`` after ``activation``): pass them by name.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (and ``[N, aux classes]``
    labels with ``aux_params``).

    Example:
        >>> model = FPN("resnet34", classes=3, decoder_merge_policy="cat")
    """

    head_kernel_size = 1
    head_align_corners = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        decoder_pyramid_channels: int = 256,
        decoder_segmentation_channels: int = 128,
        decoder_merge_policy: str = "add",
        decoder_dropout: float = 0.2,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        decoder_interpolation: str = "nearest",
        upsampling: int | None = None,
        aux_params: Mapping[str, Any] | None = None,
    ) -> None:
        decoder = partial(
            FPNDecoder,
            pyramid_channels=decoder_pyramid_channels,
            segmentation_channels=decoder_segmentation_channels,
            merge_policy=decoder_merge_policy,
            dropout=decoder_dropout,
            interpolation=decoder_interpolation,
        )
        check_head_upsampling("FPN", upsampling, FPNDecoder.output_stride)
        super().__init__(
            decoder,
            encoder_name,
            encoder_depth,
            encoder_weights,
            encoder_freeze,
            in_channels,
            classes,
            activation,
            aux_params=aux_params,
        )
