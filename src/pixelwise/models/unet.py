"""U-Net with an encoder (Ronneberger et al. 2015, modernised): padded convolutions, any timm
encoder, skip connections by concatenation, and a choice of upsampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import ConvBnAct, make_upsample
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decode_with_skips, decoder_strides
from pixelwise.models.registry import register_model


class UnetDecoderBlock(nn.Module):
    """Upsample ×2, concatenate the skip feature (if any), then two 3×3 ConvBnAct."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsampling: str, use_batchnorm: bool):
        super().__init__()
        self.upsample = make_upsample(upsampling, in_channels)
        self.conv1 = ConvBnAct(in_channels + skip_channels, out_channels, use_batchnorm=use_batchnorm)
        self.conv2 = ConvBnAct(out_channels, out_channels, use_batchnorm=use_batchnorm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """From the deepest feature (stride ``2**depth``) back to stride 1, one block per ×2.

    The block that arrives at stride ``s`` concatenates the encoder feature of stride ``s`` when
    the encoder has one (e.g. ConvNeXt has none at stride 2, VGG has one at stride 1).
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        feature_reductions: Sequence[int],
        depth: int,
        decoder_channels: Sequence[int],
        upsampling: str,
        use_batchnorm: bool,
    ):
        super().__init__()
        if len(decoder_channels) != depth:
            raise ConfigError(
                f"decoder_channels has {len(decoder_channels)} entries but encoder_depth={depth}; "
                f"give one per decoder stage, e.g. {[2 ** (8 - i) for i in range(depth)]}."
            )
        self.reductions = list(feature_reductions)
        self.out_channels = decoder_channels[-1]
        self.skip_reductions = decoder_strides(depth)
        in_channels = [feature_channels[-1], *decoder_channels[:-1]]
        skip_channels = [channels_at(feature_channels, feature_reductions, r) for r in self.skip_reductions]
        self.blocks = nn.ModuleList(
            UnetDecoderBlock(i, s, o, upsampling, use_batchnorm)
            for i, s, o in zip(in_channels, skip_channels, decoder_channels, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return decode_with_skips(self.blocks, self.skip_reductions, features, self.reductions)


@register_model("unet")
class Unet(EncoderDecoderModel):
    """U-Net: encoder → U-Net decoder (upsample, concatenate skip, two convs) → 3×3 conv head.

    Args:
        decoder_channels: output channels of each decoder stage, deepest first, one per stage;
            default ``(256, 128, 64, 32, 16)`` cut to ``encoder_depth`` entries.
        decoder_upsampling: ``"bilinear"``, ``"nearest"``, ``"transposed"`` or ``"pixelshuffle"``.
        decoder_use_batchnorm: BatchNorm in the decoder's convolutions.
        decoder_full_resolution_channels: channels of a small stem (two 3×3 ConvBnAct) run on the
            input at full resolution and concatenated in the last decoder block; 0 (default, as in
            segmentation_models_pytorch) for none. Encoders such as ResNet or EfficientNet have
            no stride-1 feature, so their last ×2 upsampling has no skip and edges come out
            interpolated; thin structures (EM membranes) gain from this stem.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = Unet("resnet34", classes=2, decoder_full_resolution_channels=16)  # thin structures
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        decoder_channels: Sequence[int] | None = None,
        decoder_upsampling: str = "nearest",
        decoder_use_batchnorm: bool = True,
        decoder_full_resolution_channels: int = 0,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
    ) -> None:
        if decoder_channels is None:
            decoder_channels = (256, 128, 64, 32, 16)[:encoder_depth]

        def decoder(encoder: TimmEncoder) -> UnetDecoder:
            channels, reductions = list(encoder.out_channels), list(encoder.reductions)
            self.full_resolution_stem: nn.Module | None = None
            if decoder_full_resolution_channels:
                stem_channels = decoder_full_resolution_channels
                self.full_resolution_stem = nn.Sequential(
                    ConvBnAct(in_channels, stem_channels, use_batchnorm=decoder_use_batchnorm),
                    ConvBnAct(stem_channels, stem_channels, use_batchnorm=decoder_use_batchnorm),
                )
                channels, reductions = [stem_channels, *channels], [1, *reductions]
            return UnetDecoder(
                channels, reductions, encoder_depth, decoder_channels, decoder_upsampling, decoder_use_batchnorm
            )

        super().__init__(
            decoder, encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        if self.full_resolution_stem is not None:
            features = [self.full_resolution_stem(x), *features]
        return self.head(self.decoder(features))
