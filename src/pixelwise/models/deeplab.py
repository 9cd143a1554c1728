"""DeepLabV3+ (Chen et al. 2018): a dilated encoder, atrous spatial pyramid pooling (ASPP) on its
deepest feature, and a light decoder that refines the result with a stride-4 encoder feature."""

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
from pixelwise.models.registry import check_choice, register_model

OUTPUT_STRIDES = (8, 16, None)
LOW_LEVEL_CHANNELS = 48


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool → 1×1 conv → ReLU, broadcast back to the input size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        # No BatchNorm here: after global pooling BatchNorm sees one value per channel and sample,
        # which raises in train mode with batch size 1 (and is a poor estimate for small batches).
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvBnAct(in_channels, out_channels, 1, use_batchnorm=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, one 3×3 branch per atrous rate and an
    image-pooling branch, concatenated and projected by a 1×1 ConvBnAct, then dropout.

    Shape: ``[N, in_channels, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                ConvBnAct(in_channels, out_channels, 1),
                *(ConvBnAct(in_channels, out_channels, 3, dilation=rate) for rate in atrous_rates),
                ASPPPooling(in_channels, out_channels),
            ]
        )
        self.project = nn.Sequential(ConvBnAct(out_channels * len(self.branches), out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP + 3×3 ConvBnAct on the deepest feature, bilinearly upsampled to the low-level feature
    (the stride-4 one, or the shallowest with stride ≥ 4), concatenated with its 1×1 projection
    to 48 channels, then two 3×3 ConvBnAct.

    The output is at stride :attr:`output_stride` (the low-level feature's stride).
    """

    def __init__(
        self, encoder: TimmEncoder, out_channels: int, atrous_rates: Sequence[int], aspp_dropout: float
    ) -> None:
        super().__init__()
        rates = tuple(atrous_rates)
        if not all(isinstance(r, int) and r >= 1 for r in rates):
            raise ConfigError(f"decoder_atrous_rates={rates!r} must be positive integers, e.g. (12, 24, 36).")
        low = [i for i, r in enumerate(encoder.reductions) if r >= 4]
        if not low:
            raise ConfigError(
                f"DeepLabV3Plus needs an encoder feature of stride >= 4, but encoder {encoder.name!r} with "
                f"encoder_depth={encoder.depth} has strides {encoder.reductions}; use encoder_depth >= 3."
            )
        self.low_index = low[0]
        self.output_stride = encoder.reductions[self.low_index]
        self.aspp = nn.Sequential(
            ASPP(encoder.out_channels[-1], out_channels, rates, aspp_dropout),
            ConvBnAct(out_channels, out_channels, 3),
        )
        self.low_level = ConvBnAct(encoder.out_channels[self.low_index], LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(
            ConvBnAct(out_channels + LOW_LEVEL_CHANNELS, out_channels, 3),
            ConvBnAct(out_channels, out_channels, 3),
        )
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(features[self.low_index])
        x = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, low], dim=1))


@register_model("deeplabv3plus", "deeplabv3+")
class DeepLabV3Plus(EncoderDecoderModel):
    """DeepLabV3+: dilated encoder → ASPP → fusion with a stride-4 feature → 1×1 head → bilinear upsampling.

    Args:
        encoder_output_stride: stride of the deepest feature, 16 or 8 (the last stages are dilated
            instead of strided), or ``None`` for no dilation. Encoders that cannot be dilated (VGG)
            are used undilated with a warning.
        decoder_channels: channels of ASPP and the decoder.
        decoder_atrous_rates: dilation rates of ASPP's 3×3 branches. The default (12, 24, 36) is
            segmentation_models_pytorch's; the paper uses (6, 12, 18) at output stride 16.
        decoder_aspp_dropout: dropout probability after ASPP's projection.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = DeepLabV3Plus("resnet34", classes=3, encoder_output_stride=8)  # finer, slower
    """

    head_kernel_size = 1

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        encoder_output_stride: int | None = 16,
        decoder_channels: int = 256,
        decoder_atrous_rates: Sequence[int] = (12, 24, 36),
        decoder_aspp_dropout: float = 0.5,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
    ) -> None:
        check_choice("encoder_output_stride", encoder_output_stride, OUTPUT_STRIDES)
        decoder = partial(
            DeepLabV3PlusDecoder,
            out_channels=decoder_channels,
            atrous_rates=decoder_atrous_rates,
            aspp_dropout=decoder_aspp_dropout,
        )
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
        )
