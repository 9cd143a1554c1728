"""PSPNet (Zhao et al. 2017): a pyramid pooling module on the deepest encoder feature adds
global context at several scales; the prediction is upsampled from that single stride."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct
from pixelwise.models.encoders import TimmEncoder, WeightsSpec
from pixelwise.models.registry import register_model


class PyramidPoolingModule(nn.Module):
    """Concatenate the input with, per bin size ``b``, ``AdaptiveAvgPool(b) → 1×1 conv → ReLU``
    upsampled back to the input size (bilinear).

    Each branch has ``in_channels // len(bins)`` channels, so the output has about ``2·in_channels``.

    Shape: ``[N, C, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        branch_channels = max(in_channels // len(bins), 1)
        # No BatchNorm in the pooled branches: the bin-1 branch is a 1×1 map, and with batch size 1
        # BatchNorm sees a single value per channel and raises in train mode (and its statistics are
        # meaningless for the coarse bins anyway). A biased conv + ReLU trains fine.
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBnAct(in_channels, branch_channels, 1, use_batchnorm=False))
            for b in bins
        )
        self.out_channels = in_channels + len(bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPDecoder(nn.Sequential):
    """Pyramid pooling on the deepest feature → 1×1 ConvBnAct to ``out_channels`` → Dropout2d.

    The output keeps the deepest feature's stride (:attr:`output_stride`).
    """

    def __init__(
        self, encoder: TimmEncoder, bins: Sequence[int], out_channels: int, use_batchnorm: bool, dropout: float
    ) -> None:
        bins = tuple(bins)
        if not bins or not all(isinstance(b, int) and b >= 1 for b in bins):
            raise ConfigError(f"psp_bins={bins!r} must be one or more positive integers, e.g. (1, 2, 3, 6).")
        ppm = PyramidPoolingModule(encoder.out_channels[-1], bins)
        super().__init__(
            ppm, ConvBnAct(ppm.out_channels, out_channels, 1, use_batchnorm=use_batchnorm), nn.Dropout2d(dropout)
        )
        self.out_channels = out_channels
        self.output_stride = encoder.reductions[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


@register_model("pspnet")
class PSPNet(EncoderDecoderModel):
    """PSPNet: encoder → pyramid pooling module → 1×1 conv → 3×3 conv head → bilinear upsampling.

    Args:
        encoder_depth: the default 3 pools features of stride 8, as segmentation_models_pytorch does.
        psp_bins: output sizes of the pyramid's adaptive average poolings.
        psp_out_channels: channels after the pyramid pooling module's 1×1 projection.
        psp_use_batchnorm: BatchNorm in that projection (the pooled branches never use it).
        psp_dropout: Dropout2d probability before the head.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = PSPNet("resnet34", encoder_depth=4, classes=3, psp_bins=(1, 2, 4))
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 3,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        psp_bins: Sequence[int] = (1, 2, 3, 6),
        psp_out_channels: int = 512,
        psp_use_batchnorm: bool = True,
        psp_dropout: float = 0.2,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
    ) -> None:
        decoder = partial(
            PSPDecoder,
            bins=psp_bins,
            out_channels=psp_out_channels,
            use_batchnorm=psp_use_batchnorm,
            dropout=psp_dropout,
        )
        super().__init__(
            decoder, encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation
        )
