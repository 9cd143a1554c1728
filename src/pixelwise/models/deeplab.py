"""DeepLabV3+ (Chen et al. 2018): a dilated encoder, atrous spatial pyramid pooling (ASPP) on its
deepest feature, and a light decoder that refines the result with a stride-4 encoder feature."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import SegmentationModel
from pixelwise.models.blocks import ConvBnAct, SegmentationHead, make_activation
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


def build_dilated_encoder(
    name: str, in_channels: int, depth: int, weights: WeightsSpec, output_stride: int | None
) -> TimmEncoder:
    """A :class:`TimmEncoder` dilated to ``output_stride``; if the encoder cannot be dilated (VGG, ...),
    warn and build it undilated instead."""
    try:
        return TimmEncoder(name, in_channels, depth, weights, output_stride=output_stride)
    except ConfigError:
        if output_stride is None:
            raise
        encoder = TimmEncoder(name, in_channels, depth, weights)  # raises again if the problem is not dilation
    warnings.warn(
        f"encoder {encoder.name!r} does not support dilation (encoder_output_stride={output_stride}); "
        f"using it undilated, so its deepest feature has stride {encoder.output_stride}.",
        UserWarning,
        stacklevel=4,  # the caller of DeepLabV3Plus(...), past the config-recording wrapper
    )
    return encoder


@register_model("deeplabv3plus", "deeplabv3+")
class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+: dilated encoder → ASPP → fusion with a stride-4 feature → 1×1 head → bilinear upsampling.

    Args:
        encoder_name: any timm model with feature_info (e.g. ``"resnet34"``, ``"efficientnet_b0"``).
        encoder_depth: number of stride-2 stages used (3 to 5); input is padded to ``2**depth``.
        encoder_weights: ``None``, ``"imagenet"``, or a local ``.safetensors``/``.pth`` path.
        encoder_freeze: keep the encoder's weights and BatchNorm statistics fixed.
        encoder_output_stride: stride of the deepest feature, 16 or 8 (the last stages are dilated
            instead of strided), or ``None`` for no dilation. Encoders that cannot be dilated (VGG)
            are used undilated with a warning.
        decoder_channels: channels of ASPP and the decoder.
        decoder_atrous_rates: dilation rates of ASPP's 3×3 branches. The default (12, 24, 36) is
            segmentation_models_pytorch's; the paper uses (6, 12, 18) at output stride 16.
        decoder_aspp_dropout: dropout probability after ASPP's projection.
        in_channels: input image channels.
        classes: output channels (class scores).
        activation: ``None`` (logits), ``"sigmoid"``, ``"softmax"``, ... or a callable.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = DeepLabV3Plus("resnet34", classes=3, activation="softmax")
    """

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
        super().__init__()
        check_choice("encoder_output_stride", encoder_output_stride, OUTPUT_STRIDES)
        self.in_channels, self.classes = in_channels, classes
        self.encoder = build_dilated_encoder(
            encoder_name, in_channels, encoder_depth, encoder_weights, encoder_output_stride
        )
        self.input_multiple = 2**encoder_depth
        self.decoder = DeepLabV3PlusDecoder(self.encoder, decoder_channels, decoder_atrous_rates, decoder_aspp_dropout)
        self.head = SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=self.decoder.output_stride)
        self.activation = make_activation(activation)
        if encoder_freeze:
            self.freeze_encoder()

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))
