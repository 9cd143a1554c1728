"""UPerNet (Xiao et al. 2018): a pyramid pooling module on the deepest encoder feature and a feature pyramid
(FPN) over the shallower ones; every pyramid level is brought to stride 4 and fused by one convolution."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct, LayerNorm2d, NormSpec, check_head_upsampling, pooled
from pixelwise.models.encoders import TimmEncoder, WeightsSpec
from pixelwise.models.registry import register_model

PPM_BINS = (1, 2, 3, 6)
FEATURE_NORM_EPS = 1e-6


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PoolingPyramid(nn.Module):
    """Per bin size ``b``: ``AdaptiveAvgPool(b) → 1×1 ConvBnAct``, upsampled back (bilinear); concatenated with
    the input and fused by a 3×3 ConvBnAct (always BatchNorm, as in segmentation_models_pytorch).

    BatchNorm layers of the pooled branches are :class:`~pixelwise.models.blocks.PooledBatchNorm2d`, so that
    the bin-1 branch trains with batch size 1.

    Shape: ``[N, in_channels, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormSpec, bins: Sequence[int] = PPM_BINS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), pooled(ConvBnAct(in_channels, out_channels, 1, use_batchnorm=norm)))
            for b in bins
        )
        self.fuse = ConvBnAct(in_channels + len(bins) * out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return self.fuse(torch.cat([x, *(_resize(branch(x), size) for branch in self.branches)], dim=1))


class UPerNetDecoder(nn.Module):
    """LayerNorm on each encoder feature of stride ≥ 4; pooling pyramid on the deepest; top-down FPN (1×1
    lateral ConvBnAct + bilinear upsampling + sum, then a 3×3 ConvBnAct) over the others; all levels resized to
    the shallowest one's stride and fused by a 3×3 ConvBnAct.

    The output is at the shallowest level's stride (:attr:`output_stride`, 4 for usual encoders).

    Shape: ``features`` (shallow to deep) ``→ [N, out_channels, H / output_stride, W / output_stride]``.
    """

    def __init__(self, encoder: TimmEncoder, out_channels: int, norm: NormSpec) -> None:
        super().__init__()
        self.levels = [i for i, r in enumerate(encoder.reductions) if r >= 4]
        if len(self.levels) < 2:
            raise ConfigError(
                f"UPerNet needs at least two encoder features of stride >= 4, but encoder {encoder.name!r} with "
                f"encoder_depth={encoder.depth} has strides {encoder.reductions}; use encoder_depth >= 3."
            )
        channels = [encoder.out_channels[i] for i in self.levels]  # shallow to deep
        # registered in segmentation_models_pytorch's order: norms, pyramid, laterals, FPN convs, fusion
        self.feature_norms = nn.ModuleList(LayerNorm2d(c, eps=FEATURE_NORM_EPS) for c in channels)
        self.ppm = PoolingPyramid(channels[-1], out_channels, norm)
        self.laterals = nn.ModuleList(
            ConvBnAct(c, out_channels, 1, use_batchnorm=norm) for c in reversed(channels[:-1])
        )
        self.fpn_convs = nn.ModuleList(
            ConvBnAct(out_channels, out_channels, 3, use_batchnorm=norm) for _ in channels[:-1]
        )
        self.fuse = ConvBnAct(len(channels) * out_channels, out_channels, 3, use_batchnorm=norm)
        self.out_channels = out_channels
        self.output_stride = encoder.reductions[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [norm(features[i]) for norm, i in zip(self.feature_norms, self.levels, strict=True)]
        x = self.ppm(levels[-1])
        pyramid = [x]  # deep to shallow
        for lateral, conv, feature in zip(self.laterals, self.fpn_convs, reversed(levels[:-1]), strict=True):
            x = _resize(x, feature.shape[-2:]) + lateral(feature)
            pyramid.append(conv(x))
        size = pyramid[-1].shape[-2:]
        return self.fuse(torch.cat([_resize(level, size) for level in reversed(pyramid)], dim=1))


@register_model("upernet")
class UPerNet(EncoderDecoderModel):
    """UPerNet: encoder → pooling pyramid + FPN → fusion at stride 4 → 1×1 head → bilinear upsampling ×4.

    Structure and parameters equal segmentation_models_pytorch's ``UPerNet`` for the same options, and its
    weights give its outputs.

    Args:
        decoder_channels: channels of the pyramid levels and the fused output.
        decoder_use_norm: normalisation of the decoder's convolutions: ``"batchnorm"`` (default), ``"identity"``,
            ``"layernorm"``, ``"instancenorm"``, ``"inplace"``, a bool, or a dict with ``"type"`` (see
            :func:`~pixelwise.models.blocks.norm_layer`). The pooling pyramid's fusion always uses BatchNorm.
        upsampling: the head's upsampling factor: the decoder's stride (4), the only value that returns the
            input size, or ``None`` for that stride whatever the encoder.
        aux_head: add an auxiliary FCN head (3×3 conv-BN-ReLU, dropout 0.1, 1×1 conv) on the second-deepest
            encoder feature for the training loss (``forward_with_aux``), as torchvision's ``aux_loss=True`` and
            MMSegmentation's ``auxiliary_head``; ``forward`` ignores it (see
            :class:`~pixelwise.models.base.AuxiliaryFCNHead`).
        aux_params: a classification head on the deepest features (see
            :class:`~pixelwise.models.base.EncoderDecoderModel`).
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = UPerNet("convnext_tiny", classes=3, decoder_use_norm="layernorm")
    """

    head_kernel_size = 1
    head_align_corners = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        decoder_channels: int = 256,
        decoder_use_norm: NormSpec = "batchnorm",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        upsampling: int | None = 4,
        aux_params: Mapping[str, Any] | None = None,
        aux_head: bool = False,
    ) -> None:
        decoder = partial(UPerNetDecoder, out_channels=decoder_channels, norm=decoder_use_norm)
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
            aux_head=aux_head,
        )
        check_head_upsampling("UPerNet", upsampling, self.decoder.output_stride)
