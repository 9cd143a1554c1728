"""LinkNet (Chaurasia & Culurciello 2017): a light encoder-decoder whose skip connections are
*added* to the decoder (not concatenated), so the decoder stays as narrow as the encoder."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct, make_upsample
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decode_with_skips, decoder_strides
from pixelwise.models.registry import register_model

_LEARNABLE_UPSAMPLING = ("transposed", "pixelshuffle")


class LinknetDecoderBlock(nn.Module):
    """1×1 ConvBnAct ``C → C/4``, upsample ×2, 1×1 ConvBnAct ``C/4 → C_out``, then add the skip (if any).

    After a learnable upsampling (transposed convolution, pixel shuffle) a BatchNorm and ReLU
    follow, as in the paper's "full convolution"; interpolation needs none.
    """

    def __init__(self, in_channels: int, out_channels: int, upsampling: str, use_batchnorm: bool) -> None:
        super().__init__()
        mid_channels = max(in_channels // 4, 1)
        self.reduce = ConvBnAct(in_channels, mid_channels, 1, use_batchnorm=use_batchnorm)
        upsample = make_upsample(upsampling, mid_channels)
        if upsampling in _LEARNABLE_UPSAMPLING:
            norm = [nn.BatchNorm2d(mid_channels)] if use_batchnorm else []
            upsample = nn.Sequential(upsample, *norm, nn.ReLU(inplace=True))
        self.upsample = upsample
        self.expand = ConvBnAct(mid_channels, out_channels, 1, use_batchnorm=use_batchnorm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.expand(self.upsample(self.reduce(x)))
        return x if skip is None else x + skip


class LinknetDecoder(nn.Module):
    """From the deepest feature (stride ``2**depth``) back to stride 1, one block per ×2.

    The block arriving at stride ``s`` outputs as many channels as the encoder feature of stride
    ``s`` and adds it. Where the encoder has no feature at ``s`` (ConvNeXt has none at stride 2)
    the block halves the channels (at least ``prefinal_channels``) and adds nothing. The last
    block, to stride 1, always outputs ``prefinal_channels``; an encoder feature at stride 1
    (VGG) is not used.
    """

    def __init__(self, encoder: TimmEncoder, prefinal_channels: int, upsampling: str, use_batchnorm: bool) -> None:
        super().__init__()
        if not isinstance(prefinal_channels, int) or prefinal_channels < 1:
            raise ConfigError(f"decoder_prefinal_channels={prefinal_channels!r} must be a positive integer.")
        depth = encoder.depth
        self.reductions = encoder.reductions
        self.skip_reductions: list[int | None] = []
        blocks = []
        in_channels = encoder.out_channels[-1]
        for reduction in decoder_strides(depth):
            skip_channels = channels_at(encoder.out_channels, encoder.reductions, reduction)
            if reduction > 1 and skip_channels:
                out_channels, skip = skip_channels, reduction
            elif reduction > 1:
                out_channels, skip = max(in_channels // 2, prefinal_channels), None
            else:
                out_channels, skip = prefinal_channels, None
            blocks.append(LinknetDecoderBlock(in_channels, out_channels, upsampling, use_batchnorm))
            self.skip_reductions.append(skip)
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return decode_with_skips(self.blocks, self.skip_reductions, features, self.reductions)


@register_model("linknet")
class Linknet(EncoderDecoderModel):
    """LinkNet: encoder → decoder blocks (1×1 reduce, upsample ×2, 1×1 expand, add skip) → 3×3 conv head.

    Args:
        decoder_upsampling: ``"transposed"`` (the paper's learnable full convolution), ``"bilinear"``,
            ``"nearest"`` or ``"pixelshuffle"``.
        decoder_use_batchnorm: BatchNorm in the decoder's convolutions.
        decoder_prefinal_channels: channels of the last decoder block (stride 1), fed to the head.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = Linknet("resnet34", classes=3, decoder_upsampling="bilinear")
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        decoder_upsampling: str = "transposed",
        decoder_use_batchnorm: bool = True,
        decoder_prefinal_channels: int = 32,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
    ) -> None:
        decoder = partial(
            LinknetDecoder,
            prefinal_channels=decoder_prefinal_channels,
            upsampling=decoder_upsampling,
            use_batchnorm=decoder_use_batchnorm,
        )
        super().__init__(
            decoder, encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation
        )
