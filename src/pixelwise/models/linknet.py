"""LinkNet (Chaurasia & Culurciello 2017): a light encoder-decoder whose skip connections are
*added* to the decoder (not concatenated), so the decoder stays as narrow as the encoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct, NormSpec, bilinear_kernel, make_upsample, norm_layer, resolve_norm
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decode_with_skips, decoder_strides
from pixelwise.models.registry import register_model

_LEARNABLE_UPSAMPLING = ("transposed", "pixelshuffle")


class TransposedUpsample(nn.ConvTranspose2d):
    """×2 transposed convolution (kernel 4, stride 2, padding 1) with a bias, initialised to bilinear
    interpolation: the paper's "full convolution", shaped as SMP's so its checkpoints load.

    Shape: ``[N, C, h, w] → [N, C, 2h, 2w]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, kernel_size=4, stride=2, padding=1)
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, channels, 4))
            self.bias.zero_()


class LinknetDecoderBlock(nn.Module):
    """1×1 ConvBnAct ``C → C/4``, upsample ×2, 1×1 ConvBnAct ``C/4 → C_out``, then add the skip (if any).

    After a learnable upsampling (transposed convolution, pixel shuffle) the normalisation and a ReLU
    follow, as in the paper's "full convolution"; interpolation needs none.

    Shape: ``x [N, in, h, w]``, ``skip [N, out, 2h, 2w]`` → ``[N, out, 2h, 2w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, upsampling: str, use_batchnorm: NormSpec) -> None:
        super().__init__()
        mid_channels = max(in_channels // 4, 1)
        self.reduce = ConvBnAct(in_channels, mid_channels, 1, use_batchnorm=use_batchnorm)
        if upsampling == "transposed":
            upsample = TransposedUpsample(mid_channels)
        else:
            upsample = make_upsample(upsampling, mid_channels)
        if upsampling in _LEARNABLE_UPSAMPLING:
            norm = norm_layer(use_batchnorm, mid_channels)
            upsample = nn.Sequential(upsample, norm, nn.ReLU(inplace=True))
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

    Shape: features shallow to deep → ``[N, prefinal_channels, H, W]``.
    """

    def __init__(self, encoder: TimmEncoder, prefinal_channels: int, upsampling: str, use_batchnorm: NormSpec) -> None:
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
    """LinkNet: encoder → decoder blocks (1×1 reduce, upsample ×2, 1×1 expand, add skip) → 1×1 conv head.

    The defaults build segmentation_models_pytorch 0.6's ``Linknet`` exactly (same layers, parameters and
    order of operations) for encoders with features at every stride (ResNet, EfficientNet, ...).

    Args:
        decoder_upsampling: ``"transposed"`` (the paper's learnable full convolution), ``"bilinear"``,
            ``"nearest"`` or ``"pixelshuffle"``.
        decoder_use_batchnorm: BatchNorm in the decoder's convolutions (the bool form of ``decoder_use_norm``).
        decoder_prefinal_channels: channels of the last decoder block (stride 1), fed to the head (SMP: 32).
        decoder_use_norm: SMP 0.6's normalisation option: ``"batchnorm"``, ``"identity"``, ``"layernorm"``,
            ``"instancenorm"``, ``"inplace"``, a bool, or a dict ``{"type": ..., **options}``. None (default):
            ``decoder_use_batchnorm`` decides; given, it wins (``decoder_use_batchnorm=False`` with a
            normalising ``decoder_use_norm`` is a ConfigError).
        aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    The options SMP also has keep pixelwise's order (``encoder_freeze`` fourth, ``decoder_use_norm`` after
    ``activation``): pass them by name.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (and ``[N, aux classes]``
    labels with ``aux_params``).

    Example:
        >>> model = Linknet("resnet34", classes=3, decoder_upsampling="bilinear")
    """

    head_kernel_size = 1  # as SMP's Linknet: its checkpoints hold a 1×1 head

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
        decoder_use_norm: NormSpec = None,
        aux_params: Mapping[str, Any] | None = None,
    ) -> None:
        decoder = partial(
            LinknetDecoder,
            prefinal_channels=decoder_prefinal_channels,
            upsampling=decoder_upsampling,
            use_batchnorm=resolve_norm(decoder_use_norm, decoder_use_batchnorm, defaulted="use_batchnorm"),
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
            aux_params=aux_params,
        )
