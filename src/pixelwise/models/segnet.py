"""SegNet (Badrinarayanan, Kendall, Cipolla 2017): an encoder-decoder that upsamples by
max-unpooling with the encoder's pooling indices instead of concatenating skip features.

timm encoders do not hand out pooling indices, so they are recomputed from the encoder's
features: the indices of 2×2 max-pooling over the feature map at stride ``s`` place the decoder's
values when it goes from stride ``2s`` to ``s``. With VGG (timm's features are the last ReLU
output before each max-pool) these are exactly the indices of the encoder's own 2×2 pools, which
is the published SegNet. With other encoders they are the argmax positions of 2×2 max-pooling over
the encoder feature at that stride: the same mechanism, though that encoder downsamples in its
own way (strided convolutions, 3×3 pools).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import UPSAMPLING_MODES, ConvBnAct, make_upsample
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decode_with_skips, decoder_strides
from pixelwise.models.geometry import is_tracing
from pixelwise.models.registry import check_choice, register_model


def pooling_indices(feature: torch.Tensor) -> torch.Tensor:
    """Indices (flat over each ``H×W`` plane, as ``F.max_unpool2d`` takes them) of 2×2 max-pooling of ``feature``.

    Shape: ``[N, C, H, W] → [N, C, H // 2, W // 2]`` (int64).
    """
    with torch.no_grad():
        return F.max_pool2d(feature.detach(), 2, 2, return_indices=True)[1]


def unpool_with_indices(x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Max-unpool ``x`` with the 2×2 max-pooling indices of ``feature``.

    Every value of ``x`` goes to the position where its 2×2 window of ``feature`` has its maximum;
    all other positions are zero. An odd last row/column of ``feature`` (dropped by the pooling)
    stays zero.

    Shape: ``x [N, C, H // 2, W // 2]``, ``feature [N, C, H, W]`` → ``[N, C, H, W]``.
    """
    indices = pooling_indices(feature)
    if x.shape != indices.shape:
        raise ValueError(
            f"cannot unpool a map of shape {list(x.shape)} with the 2×2 pooling indices of a feature of shape "
            f"{list(feature.shape)}; expected {list(indices.shape)}."
        )
    return F.max_unpool2d(x, indices, 2, 2, output_size=feature.shape[-2:])


def unpool_first_maximum(x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """SegNet's unpooling without indices: ``x`` goes to the first maximum of each 2×2 window of ``feature``.

    ``max_pool2d`` scans a window row by row and keeps the first maximum, so this places every
    value exactly where ``max_unpool2d`` with those indices would (ties included).

    Shape: ``x [N, C, H/2, W/2]``, ``feature [N, C, H, W]`` (H, W even) → ``[N, C, H, W]``.
    """
    n, c, h, w = x.shape
    windows = F.pixel_unshuffle(feature, 2).reshape(n, c, 4, h, w)  # the 4 window positions, row-major
    is_max = windows == windows.amax(dim=2, keepdim=True)
    first = is_max & (torch.cumsum(is_max.to(torch.int32), dim=2) == 1)
    placed = torch.where(first, x[:, :, None], torch.zeros_like(x)[:, :, None])
    return F.pixel_shuffle(placed.reshape(n, c * 4, h, w), 2)


class SegNetDecoderStage(nn.Module):
    """One decoder stage, from stride ``2s`` to ``s``.

    With an encoder feature at stride ``s`` (``unpool_channels`` > 0): a 1×1 ConvBnAct projection
    to that feature's channels if they differ, max-unpooling with its pooling indices, then
    ``convs`` 3×3 ConvBnAct (the last one to ``out_channels``). Without one: ``fallback`` upsampling
    (see :func:`~pixelwise.models.blocks.make_upsample`), then the convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        unpool_channels: int,
        out_channels: int,
        convs: int,
        fallback: str,
        use_batchnorm: bool,
    ) -> None:
        super().__init__()
        self.unpools = unpool_channels > 0
        if self.unpools:
            self.project = (
                ConvBnAct(in_channels, unpool_channels, 1, use_batchnorm=use_batchnorm)
                if in_channels != unpool_channels
                else nn.Identity()
            )
            channels = unpool_channels
        else:
            self.upsample = make_upsample(fallback, in_channels)
            channels = in_channels
        self.convs = nn.Sequential(
            *(
                ConvBnAct(channels, out_channels if i == convs - 1 else channels, use_batchnorm=use_batchnorm)
                for i in range(convs)
            )
        )

    def forward(self, x: torch.Tensor, feature: torch.Tensor | None) -> torch.Tensor:
        unpool = unpool_first_maximum if is_tracing() else unpool_with_indices  # same values, traceable
        x = unpool(self.project(x), feature) if self.unpools else self.upsample(x)
        return self.convs(x)


class SegNetDecoder(nn.Module):
    """From the deepest feature (stride ``2**depth``) back to stride 1, one stage per ×2.

    The stage arriving at stride ``s`` unpools with the indices of the encoder feature at stride
    ``s`` when there is one (VGG has features at every stride 1 to 32; ResNets have none at
    stride 1, ConvNeXt none at 1 and 2). It ends with the channels of the encoder feature at
    stride ``s / 2`` (mirroring the encoder), or ``decoder_channels`` where there is none.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        decoder_channels: int,
        convs_per_stage: Sequence[int],
        fallback: str,
        use_batchnorm: bool,
    ):
        super().__init__()
        depth = encoder.depth
        self.reductions = encoder.reductions
        self.stage_reductions = decoder_strides(depth)
        in_channels = encoder.out_channels[-1]
        stages = []
        for reduction, convs in zip(self.stage_reductions, convs_per_stage, strict=True):
            unpool_channels = channels_at(encoder.out_channels, encoder.reductions, reduction)
            out_channels = channels_at(encoder.out_channels, encoder.reductions, reduction // 2) or decoder_channels
            stages.append(
                SegNetDecoderStage(in_channels, unpool_channels, out_channels, convs, fallback, use_batchnorm)
            )
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = in_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return decode_with_skips(self.stages, self.stage_reductions, features, self.reductions)


@register_model("segnet")
class SegNet(EncoderDecoderModel):
    """SegNet: encoder → decoder that max-unpools with the encoder's pooling indices → 3×3 conv head.

    Unlike U-Net, no encoder features are concatenated: only the positions of the maxima travel
    from encoder to decoder. The pooling indices are recomputed as the 2×2 max-pooling argmax of
    the encoder feature at each stride; with VGG (the default ``"vgg16_bn"``, the paper's encoder)
    these are exactly the indices of the encoder's own max-pool layers. With other encoders they
    are the argmax positions of 2×2 max-pooling over the encoder feature at that stride, and where
    an encoder has no feature at a stride (e.g. stride 1 for ResNets) the decoder upsamples with
    ``fallback_upsampling`` instead.

    Args:
        encoder_name: default ``"vgg16_bn"`` as in the paper.
        encoder_depth: 1 to 5.
        decoder_channels: channels of the last decoder stage (and of any stage with no encoder
            feature to mirror); the other stages end with the channels of the encoder feature one
            stride finer, as in the paper (512, 256, 128, 64, 64 with VGG).
        decoder_convs_per_stage: 3×3 conv-BN-ReLU layers after each unpooling, one number for all
            stages or one per stage, deepest first. The paper's decoder is ``(3, 3, 3, 2, 1)``.
        decoder_use_batchnorm: BatchNorm in the decoder's convolutions.
        fallback_upsampling: how to upsample where the encoder has no feature (so no indices):
            ``"bilinear"``, ``"nearest"``, ``"transposed"`` or ``"pixelshuffle"``.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = SegNet("vgg16_bn", classes=12, encoder_weights="imagenet")
    """

    def __init__(
        self,
        encoder_name: str = "vgg16_bn",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        decoder_channels: int = 64,
        decoder_convs_per_stage: int | Sequence[int] = 2,
        decoder_use_batchnorm: bool = True,
        fallback_upsampling: str = "bilinear",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
    ) -> None:
        check_choice("fallback_upsampling", fallback_upsampling, UPSAMPLING_MODES)
        if not isinstance(decoder_channels, int) or decoder_channels < 1:
            raise ConfigError(f"decoder_channels={decoder_channels!r} must be a positive integer (e.g. 64).")
        decoder = partial(
            SegNetDecoder,
            decoder_channels=decoder_channels,
            convs_per_stage=self._convs_per_stage(decoder_convs_per_stage, encoder_depth),
            fallback=fallback_upsampling,
            use_batchnorm=decoder_use_batchnorm,
        )
        super().__init__(
            decoder, encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation
        )

    @staticmethod
    def _convs_per_stage(value: int | Sequence[int], depth: int) -> list[int]:
        convs = [value] * depth if isinstance(value, int) else list(value)
        if len(convs) != depth or not all(isinstance(c, int) and c >= 1 for c in convs):
            raise ConfigError(
                f"decoder_convs_per_stage={value!r} must be a positive integer or {depth} of them "
                f"(one per decoder stage, deepest first; encoder_depth={depth}), e.g. 2 or "
                f"{[3, 3, 3, 2, 1][-depth:]}."
            )
        return convs
