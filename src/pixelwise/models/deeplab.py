"""The DeepLab family (Chen et al.): a dilated encoder and atrous spatial pyramid pooling (ASPP) on its deepest
feature. DeepLabV3 (2017) classifies the ASPP output directly; DeepLabV3+ (2018) adds a light decoder that
refines it with a stride-4 encoder feature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct, check_head_upsampling, pooled
from pixelwise.models.encoders import TimmEncoder, WeightsSpec
from pixelwise.models.registry import check_choice, register_model

OUTPUT_STRIDES = (8, 16, None)
LOW_LEVEL_CHANNELS = 48


# -- ASPP ---------------------------------------------------------------------------------------


class SeparableConvBnAct(nn.Sequential):
    """Depthwise 3×3 (dilated) conv → pointwise 1×1 conv → BatchNorm → ReLU (an atrous separable convolution).

    Shape: ``[N, in_channels, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool → 1×1 conv → (BatchNorm) → ReLU, broadcast to the input size.

    With ``batchnorm`` the norm is a :class:`~pixelwise.models.blocks.PooledBatchNorm2d`
    (segmentation_models_pytorch's structure, and batch size 1 still trains); without, the convolution has a
    bias (DeepLabV3Plus).
    """

    def __init__(self, in_channels: int, out_channels: int, batchnorm: bool = False) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1), pooled(ConvBnAct(in_channels, out_channels, 1, use_batchnorm=batchnorm))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, one 3×3 branch per atrous rate (separable convolutions
    with ``separable``) and an image-pooling branch, concatenated and projected by a 1×1 ConvBnAct, then dropout.

    Shape: ``[N, in_channels, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        atrous_rates: Sequence[int],
        dropout: float,
        separable: bool = False,
        pooling_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        atrous = partial(SeparableConvBnAct) if separable else partial(ConvBnAct, kernel_size=3)
        self.branches = nn.ModuleList(
            [
                ConvBnAct(in_channels, out_channels, 1),
                *(atrous(in_channels, out_channels, dilation=rate) for rate in atrous_rates),
                ASPPPooling(in_channels, out_channels, pooling_batchnorm),
            ]
        )
        self.project = nn.Sequential(ConvBnAct(out_channels * len(self.branches), out_channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def _checked_rates(atrous_rates: Sequence[int]) -> tuple[int, ...]:
    rates = tuple(atrous_rates)
    if not rates or not all(isinstance(r, int) and r >= 1 for r in rates):
        raise ConfigError(f"decoder_atrous_rates={rates!r} must be positive integers, e.g. (12, 24, 36).")
    return rates


# -- DeepLabV3 ----------------------------------------------------------------------------------


class DeepLabV3Decoder(nn.Sequential):
    """ASPP on the deepest feature → 3×3 ConvBnAct, at the deepest feature's stride (:attr:`output_stride`).

    The layers and their order are segmentation_models_pytorch's (BatchNorm in the pooling branch too).

    Shape: ``features[-1]`` ``[N, C, h, w] → [N, out_channels, h, w]``.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        out_channels: int,
        atrous_rates: Sequence[int],
        aspp_dropout: float,
        aspp_separable: bool = False,
    ) -> None:
        rates = _checked_rates(atrous_rates)
        super().__init__(
            ASPP(encoder.out_channels[-1], out_channels, rates, aspp_dropout, aspp_separable, pooling_batchnorm=True),
            ConvBnAct(out_channels, out_channels, 3),
        )
        self.out_channels = out_channels
        self.output_stride = encoder.reductions[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


@register_model("deeplabv3")
class DeepLabV3(EncoderDecoderModel):
    """DeepLabV3: dilated encoder → ASPP → 3×3 ConvBnAct → 1×1 head → bilinear upsampling from the deepest stride.

    Structure and parameters equal segmentation_models_pytorch's ``DeepLabV3`` for the same options, and its
    weights give its outputs (the head upsamples with ``align_corners=True``, as there).

    Args:
        encoder_output_stride: stride of the deepest feature, 8 (default, as segmentation_models_pytorch) or 16
            (the last stages are dilated instead of strided), or ``None`` for no dilation.
        decoder_channels: channels of ASPP and the decoder.
        decoder_atrous_rates: dilation rates of ASPP's 3×3 branches.
        decoder_aspp_separable: depthwise-separable convolutions in ASPP's 3×3 branches.
        decoder_aspp_dropout: dropout probability after ASPP's projection.
        upsampling: the head's upsampling factor; ``None`` (default) upsamples from the deepest stride, the only
            value that returns the input size (accepted for segmentation_models_pytorch compatibility).
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
        >>> model = DeepLabV3("resnet34", classes=3, decoder_aspp_separable=True)
    """

    head_kernel_size = 1
    head_align_corners = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        encoder_output_stride: int | None = 8,
        decoder_channels: int = 256,
        decoder_atrous_rates: Sequence[int] = (12, 24, 36),
        decoder_aspp_separable: bool = False,
        decoder_aspp_dropout: float = 0.5,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        upsampling: int | None = None,
        aux_params: Mapping[str, Any] | None = None,
        aux_head: bool = False,
    ) -> None:
        check_choice("encoder_output_stride", encoder_output_stride, OUTPUT_STRIDES)
        decoder = partial(
            DeepLabV3Decoder,
            out_channels=decoder_channels,
            atrous_rates=decoder_atrous_rates,
            aspp_dropout=decoder_aspp_dropout,
            aspp_separable=decoder_aspp_separable,
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
            aux_params,
            aux_head=aux_head,
        )
        check_head_upsampling("DeepLabV3", upsampling, self.decoder.output_stride)


# -- DeepLabV3+ ---------------------------------------------------------------------------------


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP + 3×3 ConvBnAct on the deepest feature, bilinearly upsampled to the low-level feature
    (the stride-4 one, or the shallowest with stride ≥ 4), concatenated with its 1×1 projection
    to 48 channels, then ``fusion_convs`` 3×3 ConvBnAct.

    With ``separable`` the 3×3 convolutions after ASPP and in the fusion are depthwise-separable;
    ``pooling_batchnorm`` normalises ASPP's image-pooling branch; ``align_corners`` is the upsampling's.
    The output is at stride :attr:`output_stride` (the low-level feature's stride).

    Shape: ``features`` → ``[N, out_channels, H / output_stride, W / output_stride]``.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        out_channels: int,
        atrous_rates: Sequence[int],
        aspp_dropout: float,
        aspp_separable: bool = False,
        separable: bool = False,
        fusion_convs: int = 2,
        pooling_batchnorm: bool = False,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        rates = _checked_rates(atrous_rates)
        if not isinstance(fusion_convs, int) or fusion_convs < 1:
            raise ConfigError(f"decoder_fusion_convs={fusion_convs!r} must be a positive integer, e.g. 2 or 1.")
        low = [i for i, r in enumerate(encoder.reductions) if r >= 4]
        if not low:
            raise ConfigError(
                f"DeepLabV3Plus needs an encoder feature of stride >= 4, but encoder {encoder.name!r} with "
                f"encoder_depth={encoder.depth} has strides {encoder.reductions}; use encoder_depth >= 3."
            )
        self.low_index = low[0]
        self.output_stride = encoder.reductions[self.low_index]
        conv3x3 = SeparableConvBnAct if separable else partial(ConvBnAct, kernel_size=3)
        self.aspp = nn.Sequential(
            ASPP(encoder.out_channels[-1], out_channels, rates, aspp_dropout, aspp_separable, pooling_batchnorm),
            conv3x3(out_channels, out_channels),
        )
        self.low_level = ConvBnAct(encoder.out_channels[self.low_index], LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(
            conv3x3(out_channels + LOW_LEVEL_CHANNELS, out_channels),
            *(conv3x3(out_channels, out_channels) for _ in range(fusion_convs - 1)),
        )
        self.out_channels = out_channels
        self.align_corners = align_corners

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(features[self.low_index])
        x = self.aspp(features[-1])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.fuse(torch.cat([x, low], dim=1))


@register_model("deeplabv3plus", "deeplabv3+")
class DeepLabV3Plus(EncoderDecoderModel):
    """DeepLabV3+: dilated encoder → ASPP → fusion with a stride-4 feature → 1×1 head → bilinear upsampling.

    By default its decoder follows the paper (plain 3×3 convolutions after ASPP, two fusion convolutions),
    with no BatchNorm in ASPP's pooling branch, so that batch size 1 trains on any image size.
    segmentation_models_pytorch's ``DeepLabV3Plus`` is ``decoder_aspp_separable=True, decoder_separable=True,
    decoder_fusion_convs=1, decoder_aspp_pooling_batchnorm=True, decoder_align_corners=True``: then structure,
    parameters and outputs equal SMP's (``pixelwise.from_smp`` sets these).

    Args:
        encoder_output_stride: stride of the deepest feature, 16 or 8 (the last stages are dilated
            instead of strided), or ``None`` for no dilation. Encoders that cannot be dilated (VGG)
            are used undilated with a warning.
        decoder_channels: channels of ASPP and the decoder.
        decoder_atrous_rates: dilation rates of ASPP's 3×3 branches. The default (12, 24, 36) is
            segmentation_models_pytorch's; the paper uses (6, 12, 18) at output stride 16.
        decoder_aspp_dropout: dropout probability after ASPP's projection.
        decoder_aspp_separable: depthwise-separable convolutions in ASPP's 3×3 branches.
        decoder_separable: depthwise-separable 3×3 convolutions after ASPP and in the fusion (SMP: True).
        decoder_fusion_convs: 3×3 convolutions after concatenating the low-level feature (the paper: 2, SMP: 1).
        decoder_aspp_pooling_batchnorm: BatchNorm in ASPP's image-pooling branch (SMP: True); without it the
            branch's convolution has a bias.
        decoder_align_corners: the decoder's and the head's bilinear upsampling align corners (SMP: True).
        upsampling: the head's upsampling factor: the low-level feature's stride (4), the only value that
            returns the input size, or ``None`` for that stride whatever the encoder.
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
        decoder_aspp_separable: bool = False,
        decoder_separable: bool = False,
        decoder_fusion_convs: int = 2,
        decoder_aspp_pooling_batchnorm: bool = False,
        decoder_align_corners: bool = False,
        upsampling: int | None = 4,
        aux_params: Mapping[str, Any] | None = None,
        aux_head: bool = False,
    ) -> None:
        check_choice("encoder_output_stride", encoder_output_stride, OUTPUT_STRIDES)
        decoder = partial(
            DeepLabV3PlusDecoder,
            out_channels=decoder_channels,
            atrous_rates=decoder_atrous_rates,
            aspp_dropout=decoder_aspp_dropout,
            aspp_separable=decoder_aspp_separable,
            separable=decoder_separable,
            fusion_convs=decoder_fusion_convs,
            pooling_batchnorm=decoder_aspp_pooling_batchnorm,
            align_corners=decoder_align_corners,
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
            aux_params,
            head_align_corners=decoder_align_corners,
            aux_head=aux_head,
        )
        check_head_upsampling("DeepLabV3Plus", upsampling, self.decoder.output_stride)
