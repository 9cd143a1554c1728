"""Fully convolutional networks (Long, Shelhamer, Darrell 2015): FCN-32s, FCN-16s and FCN-8s.

Class scores are predicted by 1×1 convolutions on the deepest encoder feature (stride 32) and,
for FCN-16s and FCN-8s, also on the stride-16 and stride-8 features ("pool4", "pool3" in the
paper). Each coarser score map is upsampled ×2 by a learnable transposed convolution initialised
to bilinear interpolation and added to the next finer one ("sum fusion"); the fused map is then
upsampled to the input size by fixed bilinear interpolation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import BilinearTransposedUpsample
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, feature_at
from pixelwise.models.registry import register_model

FCN_STRIDES = (32, 16, 8)


class FCNClassifier(nn.Sequential):
    """The paper's fc6/fc7 as convolutions: ``7×7 conv → ReLU → dropout → 1×1 conv → ReLU → dropout``."""

    def __init__(self, in_channels: int, channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 7, padding=3),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )


class FCNDecoder(nn.Module):
    """Score the features at ``strides`` (deepest first) and fuse them coarse to fine.

    ``score[0]`` scores the deepest feature (after the optional fc6/fc7 block); ``score[i]`` for
    ``i ≥ 1`` scores a skip feature and starts at zero. ``upsample[i]`` is the learnable ×2
    transposed convolution applied before adding ``score[i + 1]``.

    Shape: encoder features → ``[N, classes, H / strides[-1], W / strides[-1]]``.
    """

    def __init__(
        self,
        out_channels: list[int],
        reductions: list[int],
        classes: int,
        strides: tuple[int, ...],
        fc_channels: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        for stride in strides:
            if stride not in reductions:
                raise ConfigError(
                    f"FCN scores the encoder features at strides {list(strides)}, but this encoder has features "
                    f"only at strides {reductions}; use an encoder with a feature map at stride {stride} "
                    "(e.g. 'vgg16', 'resnet34', 'convnext_tiny') or a shallower FCN variant (FCN32s)."
                )
        self.reductions = list(reductions)
        self.strides = tuple(strides)
        channels = [channels_at(out_channels, reductions, s) for s in strides]
        self.fc = FCNClassifier(channels[0], fc_channels, dropout) if fc_channels else nn.Identity()
        if fc_channels:
            channels[0] = fc_channels
        self.score = nn.ModuleList(nn.Conv2d(c, classes, 1) for c in channels)
        for layer in list(self.score)[1:]:  # skip scores start at zero: FCN-16s starts as FCN-32s
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.upsample = nn.ModuleList(BilinearTransposedUpsample(classes, classes, 2) for _ in strides[1:])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deepest = feature_at(features, self.reductions, self.strides[0])
        scores = self.score[0](self.fc(deepest))
        for stride, score, upsample in zip(self.strides[1:], list(self.score)[1:], self.upsample, strict=True):
            scores = upsample(scores) + score(feature_at(features, self.reductions, stride))
        return scores


class _FCN(EncoderDecoderModel):
    """Shared implementation of FCN-32s/16s/8s; subclasses set ``strides``.

    The decoder outputs the class scores, so there is no head: :meth:`forward_padded` interpolates them.
    """

    head_kernel_size = None

    strides: tuple[int, ...] = FCN_STRIDES

    def __init__(
        self,
        encoder_name: str = "vgg16",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        encoder_freeze: bool = False,
        fc_channels: int | None = None,
        dropout: float = 0.5,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
    ) -> None:
        if encoder_depth != 5:
            raise ConfigError(
                f"{type(self).__name__} scores the stride-32 features, so encoder_depth must be 5 "
                f"(got encoder_depth={encoder_depth})."
            )
        if fc_channels is not None and (not isinstance(fc_channels, int) or fc_channels < 1):
            raise ConfigError(f"fc_channels={fc_channels!r} must be None or a positive integer (the paper uses 4096).")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout={dropout!r} must be in [0, 1).")

        def decoder(encoder: TimmEncoder) -> FCNDecoder:
            return FCNDecoder(encoder.out_channels, encoder.reductions, classes, self.strides, fc_channels, dropout)

        super().__init__(
            decoder, encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation
        )
        self.output_stride = self.strides[-1]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.decoder(self.encoder(x))
        # the paper's last deconvolution is fixed to bilinear interpolation: interpolate directly
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


_FCN_DOC = """{summary}

    Args:
        encoder_name: any timm model with feature_info; default ``"vgg16"`` as in the paper.
            Scores are read from the encoder features at strides {strides}. With timm's VGG these
            are pool5, conv5_3 and conv4_3 (the last feature map at each stride), where the paper
            scores pool5, pool4 and pool3: same strides, one block deeper for the skips.
        encoder_depth: must be 5 (the coarsest scores have stride 32); input is padded to 32.
        fc_channels: ``None`` (default) scores the deepest feature directly. An integer (the
            paper's 4096) adds the fc6/fc7-as-convolution block before scoring: a 7×7 conv +
            ReLU + dropout and a 1×1 conv + ReLU + dropout (about 120M parameters with VGG16
            and 4096 channels, which the default saves).
        dropout: dropout probability in the fc6/fc7 block (only used with ``fc_channels``).
        encoder_weights, encoder_freeze, in_channels, classes, activation: see
            :class:`~pixelwise.models.base.EncoderDecoderModel`.

    The score layers are 1×1 convolutions; the skip score layers start at zero (so at
    initialisation a finer FCN predicts what the coarser one does). Each ×2 upsampling of scores
    is a learnable transposed convolution initialised to bilinear; the final ×{final} upsampling
    is fixed bilinear interpolation.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = {name}("vgg16", classes=21, encoder_weights="imagenet")
    """


def _fcn_variant(cls: type[_FCN]) -> type[_FCN]:
    """Complete an FCN variant's docstring (its own summary) with the arguments all variants share."""
    strides = [str(s) for s in cls.strides]
    listed = strides[0] if len(strides) == 1 else f"{', '.join(strides[:-1])} and {strides[-1]}"
    cls.__doc__ = _FCN_DOC.format(
        summary=(cls.__doc__ or "").rstrip(), strides=listed, final=cls.strides[-1], name=cls.__name__
    )
    return cls


@register_model("fcn32s")
@_fcn_variant
class FCN32s(_FCN):
    """FCN-32s: class scores at stride 32, upsampled ×32 to the input size.

    The coarsest FCN: a single 1×1 score layer on the deepest feature, no skips.
    """

    strides = FCN_STRIDES[:1]


@register_model("fcn16s")
@_fcn_variant
class FCN16s(_FCN):
    """FCN-16s: stride-32 scores upsampled ×2 and summed with stride-16 scores, then ×16.

    One skip: the ×2-upsampled stride-32 scores plus 1×1 scores of the stride-16 feature.
    """

    strides = FCN_STRIDES[:2]


@register_model("fcn8s")
@_fcn_variant
class FCN8s(_FCN):
    """FCN-8s: fuses scores at strides 32, 16 and 8, then upsamples ×8 (the paper's best FCN).

    Two skips: stride-32 scores ×2 + stride-16 scores, ×2 again + stride-8 scores.
    """

    strides = FCN_STRIDES
