"""MA-Net (Fan et al. 2020, "MA-Net: A Multi-Scale Attention Network for Liver and Tumor Segmentation"):
a position-wise attention block on the deepest features, then decoder stages whose skips are fused by
multi-scale (squeeze & excitation) attention.

Structure and parameter shapes equal segmentation_models_pytorch 0.6's ``MAnet`` for the same options,
registered in the same order, and the computation is the same, so its checkpoints convert exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import (
    DEFAULT_DECODER_CHANNELS,
    INTERPOLATION_MODES,
    ConvBnAct,
    NormSpec,
    decoder_channels_for,
    resolve_norm,
)
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decoder_strides, feature_at
from pixelwise.models.registry import check_choice, register_model

SE_REDUCTION = 16
"""Channel reduction of the squeeze & excitation gates in the fusion blocks."""


class PositionAttention(nn.Module):
    """Position-wise attention block (PAB): every position attends to every other one.

    ``scores = query(x)ᵀ · key(x)`` over all pairs of positions, a softmax, the 3×3 ``value(x)``
    weighted by it, added to ``x``, then a 3×3 output convolution.

    Two details follow segmentation_models_pytorch 0.6 (so that its checkpoints give the same outputs):
    the softmax runs over all ``(H·W)²`` scores of an image jointly, not per query position, and the
    attended values ``[N, H·W, C]`` are reshaped to ``[N, C, H, W]`` without transposing (a fixed
    permutation of the values, which the output convolution learns around).

    Shape: ``[N, C, H, W] → [N, C, H, W]``; memory grows with ``(H·W)²`` of the deepest map.
    """

    def __init__(self, channels: int, key_channels: int = 64) -> None:
        super().__init__()
        self.key = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.query = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.out = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        key = self.key(x).flatten(2)  # [N, K, HW]
        query = self.query(x).flatten(2).transpose(1, 2)  # [N, HW, K]
        value = self.value(x).flatten(2).transpose(1, 2)  # [N, HW, C]
        scores = torch.bmm(query, key)  # [N, HW, HW]
        weights = scores.flatten(1).softmax(dim=1).view_as(scores)
        attended = torch.bmm(weights, value).reshape(n, c, h, w)
        return self.out(x + attended)


def _channel_gate(channels: int) -> nn.Sequential:
    """Squeeze & excitation: global average → bottleneck 1×1 convs → sigmoid. ``[N, C, H, W] → [N, C, 1, 1]``.

    No normalisation, so it trains with batch size 1 (its 1×1 maps hold one value per channel).
    """
    hidden = max(1, channels // SE_REDUCTION)
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
        nn.Sigmoid(),
    )


class FusionAttentionBlock(nn.Module):
    """Multi-scale fusion attention block (MFAB): the deeper map is projected to the skip's channels
    (3×3 then 1×1 ConvBnAct), interpolated ×2 and gated by the sum of both maps' channel gates, then
    concatenated with the skip and passed through two 3×3 ConvBnAct.

    Shape: ``x [N, in_channels, h, w]``, ``skip [N, skip_channels, 2h, 2w]`` → ``[N, out_channels, 2h, 2w]``.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, use_norm: NormSpec, interpolation: str
    ) -> None:
        super().__init__()
        self.interpolation = interpolation
        self.project = nn.Sequential(
            ConvBnAct(in_channels, in_channels, 3, use_batchnorm=use_norm),
            ConvBnAct(in_channels, skip_channels, 1, use_batchnorm=use_norm),
        )
        self.skip_gate = _channel_gate(skip_channels)
        self.deep_gate = _channel_gate(skip_channels)
        self.conv1 = ConvBnAct(2 * skip_channels, out_channels, use_batchnorm=use_norm)
        self.conv2 = ConvBnAct(out_channels, out_channels, use_batchnorm=use_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.project(x), scale_factor=2.0, mode=self.interpolation)
        x = x * (self.deep_gate(x) + self.skip_gate(skip))
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class UpBlock(nn.Module):
    """Interpolate ×2, concatenate the skip (if any), two 3×3 ConvBnAct: the stages without a skip.

    Shape: ``[N, in_channels, h, w]`` (+ skip ``[N, skip_channels, 2h, 2w]``) → ``[N, out_channels, 2h, 2w]``.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, use_norm: NormSpec, interpolation: str
    ) -> None:
        super().__init__()
        self.interpolation = interpolation
        self.conv1 = ConvBnAct(in_channels + skip_channels, out_channels, use_batchnorm=use_norm)
        self.conv2 = ConvBnAct(out_channels, out_channels, use_batchnorm=use_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode=self.interpolation)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class MAnetDecoder(nn.Module):
    """Position attention on the deepest feature, then one block per ×2 back to stride 1.

    The block arriving at stride ``s`` (``2**(depth-1)`` … 2) fuses the encoder feature of stride ``s``
    with a :class:`FusionAttentionBlock`; where the encoder has none (ConvNeXt at stride 2), and for the
    last step to stride 1 (a stride-1 feature, as VGG has, is not used, as in segmentation_models_pytorch),
    an :class:`UpBlock` without skip.

    Shape: features ``[N, c_i, H / r_i, W / r_i]`` (shallow to deep) → ``[N, decoder_channels[-1], H, W]``.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        decoder_channels: Sequence[int],
        use_norm: NormSpec,
        pab_channels: int,
        interpolation: str,
    ) -> None:
        super().__init__()
        self.reductions = list(encoder.reductions)
        self.skip_strides: list[int | None] = [*decoder_strides(encoder.depth)[:-1], None]
        self.out_channels = decoder_channels[-1]
        deepest = encoder.out_channels[-1]
        self.center = PositionAttention(deepest, pab_channels)
        in_channels = [deepest, *decoder_channels[:-1]]
        skips = [
            0 if s is None else channels_at(encoder.out_channels, encoder.reductions, s) for s in self.skip_strides
        ]
        self.blocks = nn.ModuleList(
            (FusionAttentionBlock if skip else UpBlock)(i, skip, o, use_norm, interpolation)
            for i, skip, o in zip(in_channels, skips, decoder_channels, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[-1])
        for block, stride in zip(self.blocks, self.skip_strides, strict=True):
            x = block(x, None if stride is None else feature_at(features, self.reductions, stride))
        return x


@register_model("manet")
class MAnet(EncoderDecoderModel):
    """MA-Net: encoder → position attention + multi-scale fusion attention decoder → 3×3 conv head.

    Args:
        decoder_use_norm: normalisation in the decoder's convolutions: True / ``"batchnorm"``, False /
            ``"identity"``, ``"layernorm"``, ``"instancenorm"``, ``"inplace"``, or a dict such as
            ``{"type": "batchnorm", "momentum": 0.01}`` (see :data:`~pixelwise.models.blocks.NormSpec`).
        decoder_channels: output channels of each decoder stage, deepest first, one per stage; the default
            is cut to ``encoder_depth`` entries.
        decoder_pab_channels: channels of the position attention's query and key.
        decoder_interpolation: the ×2 interpolation: ``"nearest"``, ``"bilinear"``, ``"bicubic"``,
            ``"area"`` or ``"nearest-exact"``.
        decoder_use_batchnorm: older bool alias of ``decoder_use_norm`` (segmentation_models_pytorch < 0.5).
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation,
            aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (``(masks, labels [N, aux classes])``
    with ``aux_params``).

    Raises:
        ConfigError: an unknown normalisation or interpolation, ``decoder_channels`` of another length than
            ``encoder_depth``, or contradicting ``decoder_use_norm`` / ``decoder_use_batchnorm``.

    Example:
        >>> model = MAnet("resnet34", classes=3, decoder_pab_channels=32)
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        decoder_use_norm: NormSpec = "batchnorm",
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        decoder_pab_channels: int = 64,
        decoder_interpolation: str = "nearest",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        aux_params: Mapping[str, Any] | None = None,
        *,
        encoder_freeze: bool = False,
        decoder_use_batchnorm: bool | None = None,
    ) -> None:
        norm = resolve_norm(decoder_use_norm, decoder_use_batchnorm, defaulted="use_norm")
        channels = decoder_channels_for(decoder_channels, encoder_depth)
        check_choice("decoder_interpolation", decoder_interpolation, INTERPOLATION_MODES)

        def decoder(encoder: TimmEncoder) -> MAnetDecoder:
            return MAnetDecoder(encoder, channels, norm, decoder_pab_channels, decoder_interpolation)

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
