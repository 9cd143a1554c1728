"""SegFormer (Xie et al. 2021): the all-MLP decoder, on a Mix Transformer (``mit_b0`` … ``mit_b5``)
or any other encoder."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct
from pixelwise.models.encoders import TimmEncoder, WeightsSpec
from pixelwise.models.registry import register_model

DECODER_STRIDE = 4
"""The all-MLP decoder fuses every level at stride 4."""


class SegformerDecoder(nn.Module):
    """All-MLP decoder: each encoder level is projected per pixel (a linear layer) to
    ``segmentation_channels``, resized bilinearly to stride 4, and the levels, concatenated deepest
    first, are fused by a 1×1 convolution → BatchNorm → ReLU.

    Every level the encoder returns is used (a stride-2 level is resized down to stride 4), as in
    segmentation_models_pytorch; Mix Transformers return strides 4 to 32.

    Shape: encoder features ``[N, C_i, H / r_i, W / r_i]`` (H, W multiples of the deepest stride)
    → ``[N, segmentation_channels, H / 4, W / 4]``.
    """

    output_stride = DECODER_STRIDE

    def __init__(self, encoder: TimmEncoder, segmentation_channels: int) -> None:
        super().__init__()
        if encoder.depth < 3:
            raise ConfigError(
                f"Segformer needs encoder_depth >= 3 (features down to stride 8), got encoder_depth={encoder.depth}."
            )
        self.first_reduction = encoder.reductions[0]
        # deepest level first: the order of the concatenation the fusing convolution sees
        self.projections = nn.ModuleList(nn.Linear(c, segmentation_channels) for c in reversed(encoder.out_channels))
        self.fuse = ConvBnAct(len(encoder.out_channels) * segmentation_channels, segmentation_channels, kernel_size=1)
        self.out_channels = segmentation_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        height, width = features[0].shape[-2:]
        size = (height * self.first_reduction // DECODER_STRIDE, width * self.first_reduction // DECODER_STRIDE)
        resized = []
        for projection, feature in zip(self.projections, reversed(features), strict=True):
            # a linear layer on each pixel's channels: [N, C, h, w] → [N, h, w, C] → [N, S, h, w]
            projected = projection(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            resized.append(F.interpolate(projected, size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(resized, dim=1))


@register_model("segformer")
class Segformer(EncoderDecoderModel):
    """Segformer: encoder → all-MLP decoder (project, resize to stride 4, concatenate, fuse) → 1×1 head
    → bilinear ×``upsampling``.

    Args:
        decoder_segmentation_channels: channels of each projected level and of the fused map.
        upsampling: factor of the head's bilinear upsampling; 4 (default) gives the input size.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation, aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.
            ``encoder_depth`` must be 3 to 5. The default encoder is ``"resnet34"``, as in
            segmentation_models_pytorch; the paper's encoders are ``"mit_b0"`` … ``"mit_b5"``.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (with ``upsampling=4``).

    Example:
        >>> model = Segformer("mit_b0", classes=3)
        >>> model(torch.zeros(1, 3, 97, 131)).shape
        torch.Size([1, 3, 97, 131])
    """

    head_kernel_size = 1
    head_align_corners = True

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        decoder_segmentation_channels: int = 256,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        upsampling: int = 4,
        aux_params: dict[str, Any] | None = None,
    ) -> None:
        decoder = partial(SegformerDecoder, segmentation_channels=decoder_segmentation_channels)
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
            head_upsampling=upsampling,
        )
