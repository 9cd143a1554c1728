"""U-Net with an encoder (Ronneberger et al. 2015, modernised): padded convolutions, any timm
encoder, skip connections by concatenation, and a choice of upsampling.

Deep supervision (``deep_supervision=True``, as nnU-Net; for training, see ``forward_with_aux``)::

    encoder → block (stride 16) → block (8) → block (4) → block (2) → block (1) → head → main logits
                                     │           │           │
                                    1×1         1×1         1×1      → auxiliary logits (finest first)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pixelwise.errors import ConfigError, unknown_name
from pixelwise.models.base import EncoderDecoderModel
from pixelwise.models.blocks import (
    DEFAULT_DECODER_CHANNELS,
    INTERPOLATION_MODES,
    UPSAMPLING_MODES,
    ConvBnAct,
    NormSpec,
    make_attention,
    make_upsample,
    resolve_norm,
)
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decoder_strides, feature_at
from pixelwise.models.registry import register_model


def resolve_upsampling(upsampling: str, interpolation: str | None) -> str:
    """The Unet decoder's upsampling from pixelwise's ``decoder_upsampling`` and SMP 0.6's ``decoder_interpolation``.

    ``interpolation=None`` means "not given". A given ``interpolation`` wins over ``upsampling``'s
    default (``"nearest"``); both given and different is a contradiction.

    Raises:
        ConfigError: an unknown mode, or the contradiction above.
    """
    if interpolation is None:
        upsample_layer(upsampling, 1)  # check the name before building the encoder
        return upsampling
    if interpolation not in INTERPOLATION_MODES:
        raise unknown_name("decoder_interpolation", str(interpolation), INTERPOLATION_MODES)
    if upsampling not in ("nearest", interpolation):
        raise ConfigError(
            f"decoder_upsampling={upsampling!r} contradicts decoder_interpolation={interpolation!r}; give one of them."
        )
    return interpolation


def upsample_layer(mode: str, channels: int) -> nn.Module:
    """×2 upsampling: any ``F.interpolate`` mode of :data:`INTERPOLATION_MODES` (no weights, as SMP's
    ``decoder_interpolation``), or a learnable ``"transposed"`` / ``"pixelshuffle"`` layer."""
    if mode in INTERPOLATION_MODES:
        # align_corners stays None (False for bilinear/bicubic), as F.interpolate's default in SMP.
        return nn.Upsample(scale_factor=2, mode=mode)
    if mode in UPSAMPLING_MODES:
        return make_upsample(mode, channels)
    hint = "max-unpooling needs pooling indices: use the SegNet architecture." if mode == "unpool" else ""
    raise unknown_name("decoder_upsampling", str(mode), (*UPSAMPLING_MODES, *INTERPOLATION_MODES[2:]), hint)


class UnetDecoderBlock(nn.Module):
    """Upsample ×2, concatenate the skip feature (if any) and gate it with ``attention``, then two
    3×3 ConvBnAct and ``attention`` again.

    The first attention is built even for a block without skip, where it is unused: SMP does so,
    and the parameters must match its checkpoints.

    Shape: ``x [N, in, h, w]``, ``skip [N, skip, 2h, 2w]`` → ``[N, out, 2h, 2w]``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        upsampling: str,
        use_batchnorm: NormSpec,
        attention: str | None = None,
    ):
        super().__init__()
        self.upsample = upsample_layer(upsampling, in_channels)
        self.conv1 = ConvBnAct(in_channels + skip_channels, out_channels, use_batchnorm=use_batchnorm)
        self.attention1 = make_attention(attention, in_channels + skip_channels)
        self.conv2 = ConvBnAct(out_channels, out_channels, use_batchnorm=use_batchnorm)
        self.attention2 = make_attention(attention, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    """From the deepest feature (stride ``2**depth``) back to stride 1, one block per ×2.

    The block that arrives at stride ``s`` concatenates the encoder feature of stride ``s`` when
    the encoder has one (e.g. ConvNeXt has none at stride 2, VGG has one at stride 1).

    Shape: features shallow to deep → ``[N, decoder_channels[-1], H, W]`` (stride 1).
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        feature_reductions: Sequence[int],
        depth: int,
        decoder_channels: Sequence[int],
        upsampling: str,
        use_batchnorm: NormSpec,
        attention: str | None = None,
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
            UnetDecoderBlock(i, s, o, upsampling, use_batchnorm, attention)
            for i, s, o in zip(in_channels, skip_channels, decoder_channels, strict=True)
        )

    def forward_stages(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of every block, deepest (stride ``2**(depth-1)``) to the last (stride 1)."""
        x, stages = features[-1], []
        for block, reduction in zip(self.blocks, self.skip_reductions, strict=True):
            x = block(x, None if reduction is None else feature_at(features, self.reductions, reduction))
            stages.append(x)
        return stages

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_stages(features)[-1]


MIN_DEEP_SUPERVISION_DEPTH = 3
"""The least ``encoder_depth`` with an auxiliary output: the decoder stages other than the last and the deepest."""


def deep_supervision_stages(model: str, depth: int) -> list[int]:
    """Indices of the decoder stages (0: the deepest, stride ``2**(depth-1)``; ``depth - 1``: the last, stride 1)
    that deep supervision reads, finest first: every stage but the last (the main output) and the deepest.

    nnU-Net supervises every decoder resolution but gives its coarsest output the loss weight 0 (its loss
    there is too coarse to help); pixelwise does not build that head at all. At ``encoder_depth=5`` the
    auxiliary outputs are at strides 2, 4 and 8.

    Raises:
        ConfigError: ``depth`` is below :data:`MIN_DEEP_SUPERVISION_DEPTH` (no such stage).
    """
    if depth < MIN_DEEP_SUPERVISION_DEPTH:
        raise ConfigError(
            f"{model}: deep_supervision=True needs encoder_depth >= {MIN_DEEP_SUPERVISION_DEPTH} (auxiliary outputs "
            f"between the deepest and the last decoder stage); got encoder_depth={depth}."
        )
    return list(range(depth - 2, 0, -1))


def deep_supervision_heads(channels: Sequence[int], stages: Sequence[int], classes: int) -> nn.ModuleList:
    """One 1×1 convolution to ``classes`` per decoder stage in ``stages`` (nnU-Net's segmentation layers);
    ``channels`` are the stages' output channels, deepest first."""
    return nn.ModuleList(nn.Conv2d(channels[i], classes, 1) for i in stages)


@register_model("unet")
class Unet(EncoderDecoderModel):
    """U-Net: encoder → U-Net decoder (upsample, concatenate skip, two convs) → 3×3 conv head.

    The defaults build segmentation_models_pytorch 0.6's ``Unet`` exactly (same layers, parameters and
    order of operations; VGG encoders excepted: SMP adds a centre block for them, pixelwise uses VGG's
    stride-1 feature as a skip instead).

    Args:
        decoder_channels: output channels of each decoder stage, deepest first, one per stage;
            default ``(256, 128, 64, 32, 16)`` cut to ``encoder_depth`` entries.
        decoder_upsampling: ``"nearest"``, ``"bilinear"``, ``"bicubic"``, ``"area"``, ``"nearest-exact"``
            (interpolation), or the learnable ``"transposed"`` or ``"pixelshuffle"``.
        decoder_use_batchnorm: BatchNorm in the decoder's convolutions (the bool form of ``decoder_use_norm``).
        decoder_full_resolution_channels: channels of a small stem (two 3×3 ConvBnAct) run on the
            input at full resolution and concatenated in the last decoder block; 0 (default, as in
            segmentation_models_pytorch) for none. Encoders such as ResNet or EfficientNet have
            no stride-1 feature, so their last ×2 upsampling has no skip and edges come out
            interpolated; thin structures (EM membranes) gain from this stem.
        decoder_use_norm: SMP 0.6's normalisation option: ``"batchnorm"``, ``"identity"``, ``"layernorm"``,
            ``"instancenorm"``, ``"inplace"``, a bool, or a dict ``{"type": ..., **options}``. None (default):
            ``decoder_use_batchnorm`` decides; given, it wins (``decoder_use_batchnorm=False`` with a
            normalising ``decoder_use_norm`` is a ConfigError).
        decoder_attention_type: None or ``"scse"``: spatial and channel squeeze & excitation on the
            concatenated input of each block and on its output (as SMP).
        decoder_interpolation: SMP 0.6's name for an interpolating ``decoder_upsampling``; None (default):
            ``decoder_upsampling`` decides; given, it wins over ``decoder_upsampling``'s default
            (both given and different is a ConfigError).
        deep_supervision: add a 1×1 convolution to ``classes`` on the decoder stages between the deepest and
            the last (strides 2, 4, 8 at ``encoder_depth=5``; see :func:`deep_supervision_stages`), for the
            training loss (``forward_with_aux``); ``forward`` ignores them. Needs ``encoder_depth >= 3``.
        aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes,
            activation: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    The options SMP also has keep pixelwise's order (``encoder_freeze`` fourth, ``decoder_use_norm``,
    ``decoder_attention_type`` and ``decoder_interpolation`` after ``activation``): pass them by name.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (and ``[N, aux classes]``
    labels with ``aux_params``).

    Example:
        >>> model = Unet("resnet34", classes=2, decoder_full_resolution_channels=16)  # thin structures
        >>> smp_like = Unet("resnet34", classes=2, decoder_attention_type="scse", decoder_use_norm="instancenorm")
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
        decoder_use_norm: NormSpec = None,
        decoder_attention_type: str | None = None,
        decoder_interpolation: str | None = None,
        aux_params: Mapping[str, Any] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        if decoder_channels is None:
            decoder_channels = DEFAULT_DECODER_CHANNELS[:encoder_depth]
        norm = resolve_norm(decoder_use_norm, decoder_use_batchnorm, defaulted="use_batchnorm")
        upsampling = resolve_upsampling(decoder_upsampling, decoder_interpolation)
        make_attention(decoder_attention_type, 1)  # check the name before building the encoder
        aux_stages = deep_supervision_stages(type(self).__name__, encoder_depth) if deep_supervision else []

        def decoder(encoder: TimmEncoder) -> UnetDecoder:
            channels, reductions = list(encoder.out_channels), list(encoder.reductions)
            self.full_resolution_stem: nn.Module | None = None
            if decoder_full_resolution_channels:
                stem_channels = decoder_full_resolution_channels
                self.full_resolution_stem = nn.Sequential(
                    ConvBnAct(in_channels, stem_channels, use_batchnorm=norm),
                    ConvBnAct(stem_channels, stem_channels, use_batchnorm=norm),
                )
                channels, reductions = [stem_channels, *channels], [1, *reductions]
            return UnetDecoder(
                channels, reductions, encoder_depth, decoder_channels, upsampling, norm, decoder_attention_type
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
        self.aux_stages = aux_stages
        if deep_supervision:
            self.aux_heads = deep_supervision_heads(decoder_channels, aux_stages, classes)
            self.aux_strides = tuple(decoder_strides(encoder_depth)[i] for i in aux_stages)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        skips = features if self.full_resolution_stem is None else [self.full_resolution_stem(x), *features]
        masks = self.head(self.decoder(skips))
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(features[-1])

    def forward_padded_with_aux(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        """With ``deep_supervision``: the main output and the auxiliary logits of the decoder stages, finest first."""
        if not self.has_aux_outputs:
            return super().forward_padded_with_aux(x)
        features = self.encoder(x)
        skips = features if self.full_resolution_stem is None else [self.full_resolution_stem(x), *features]
        stages = self.decoder.forward_stages(skips)
        masks = self.head(stages[-1])
        aux = [head(stages[i]) for head, i in zip(self.aux_heads, self.aux_stages, strict=True)]
        if self.classification_head is None:
            return masks, aux
        return (masks, self.classification_head(features[-1])), aux
