"""U-Net++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation"):
the encoder's skip levels are joined by nested, densely connected decoder paths instead of plain skips.

Structure and parameter shapes equal segmentation_models_pytorch 0.6's ``UnetPlusPlus`` for the same
options, and the decoder's blocks are registered in the same order, so its checkpoints convert exactly.

Deep supervision (``deep_supervision=True``) reads the full-depth path (path 0) at its intermediate strides,
as the U-Net's does (nnU-Net style), not the paper's full-resolution nested outputs::

    path 0: deepest → node (stride 16) → node (8) → node (4) → node (2) → node (1) → head → main logits
                                          │           │           │
                                         1×1         1×1         1×1   → auxiliary logits (finest first)
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
    make_attention,
    resolve_norm,
)
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, channels_at, decoder_strides, feature_at
from pixelwise.models.registry import check_choice, register_model
from pixelwise.models.unet import deep_supervision_heads, deep_supervision_stages


class NestedBlock(nn.Module):
    """One node of the nested decoder: interpolate ×2, concatenate the skips, attention, two 3×3 ConvBnAct,
    attention.

    ``skips=None`` (the last node, at stride 1) means no concatenation and no first attention; a list
    (whose entries may all be None where the encoder lacks that stride) concatenates what is there. ``x``
    is None when the node's input level is missing from the encoder; the skips then carry the input.

    Shape: ``x [N, in_channels, h, w]``, skips ``[N, c_i, 2h, 2w]`` with ``Σ c_i = skip_channels``
    → ``[N, out_channels, 2h, 2w]``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        use_norm: NormSpec,
        attention_type: str | None,
        interpolation: str,
    ) -> None:
        super().__init__()
        self.interpolation = interpolation
        self.conv1 = ConvBnAct(in_channels + skip_channels, out_channels, use_batchnorm=use_norm)
        self.attention1 = make_attention(attention_type, in_channels + skip_channels)
        self.conv2 = ConvBnAct(out_channels, out_channels, use_batchnorm=use_norm)
        self.attention2 = make_attention(attention_type, out_channels)

    def forward(self, x: torch.Tensor | None, skips: list[torch.Tensor | None] | None) -> torch.Tensor:
        if x is not None:
            x = F.interpolate(x, scale_factor=2.0, mode=self.interpolation)
        if skips is not None:
            x = self.attention1(torch.cat([t for t in (x, *skips) if t is not None], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetPlusPlusDecoder(nn.Module):
    """The nested decoder, from the deepest feature (stride ``2**depth``) back to stride 1.

    The skip levels are the strides ``2**(depth-1)``, …, 2 (a stride-1 feature, as VGG has, is not used,
    as in segmentation_models_pytorch). Path ``p`` starts from the encoder feature ``p`` levels above the
    deepest (path 0 from the deepest one) and climbs one level per node towards stride 2. The node of path
    ``p`` at a skip level concatenates the outputs there of all paths that started later (``p+1``, …) and
    the encoder feature there: the dense skip connections of U-Net++. Path 0 is the full-depth U-Net path
    with ``decoder_channels``; the other paths keep the encoder's channels of each level. A final node takes
    path 0 from stride 2 to 1 without skip.

    Where the encoder lacks a skip level (ConvNeXt, Swin: no stride-2 feature), the paths other than 0
    have no node there and path 0's node there concatenates nothing.

    Module names: ``nodes["s{start}_to_s{stride}"]`` is path ``start`` (the encoder stride it starts from)
    at ``stride``; nodes are registered in segmentation_models_pytorch's order (level by level, path 0
    first), so a checkpoint's tensors map one to one in order.

    Shape: features ``[N, c_i, H / r_i, W / r_i]`` (shallow to deep) → ``[N, decoder_channels[-1], H, W]``.
    """

    def __init__(
        self,
        encoder: TimmEncoder,
        decoder_channels: Sequence[int],
        use_norm: NormSpec,
        attention_type: str | None,
        interpolation: str,
    ) -> None:
        super().__init__()
        depth = encoder.depth
        self.reductions = list(encoder.reductions)
        self.skip_strides = decoder_strides(depth)[:-1]
        self.out_channels = decoder_channels[-1]
        skip = [channels_at(encoder.out_channels, encoder.reductions, s) for s in self.skip_strides]
        options = dict(use_norm=use_norm, attention_type=attention_type, interpolation=interpolation)
        self.nodes = nn.ModuleDict()
        for level, stride in enumerate(self.skip_strides):
            for path in range(level + 1):
                if path == 0:
                    in_channels = encoder.out_channels[-1] if level == 0 else decoder_channels[level - 1]
                    out_channels = decoder_channels[level]
                else:
                    in_channels, out_channels = skip[level - 1], skip[level]
                if out_channels:  # paths > 0 have no node where the encoder lacks the level
                    skip_channels = skip[level] * (level + 1 - path)
                    node = NestedBlock(in_channels, skip_channels, out_channels, **options)
                    self.nodes[self._name(path, stride)] = node
        last_in = decoder_channels[-2] if depth > 1 else encoder.out_channels[-1]
        self.nodes[self._name(0, 1)] = NestedBlock(last_in, 0, decoder_channels[-1], **options)

    def _name(self, path: int, stride: int) -> str:
        """``s{start}_to_s{stride}``: the node of the path starting at encoder stride ``start`` at ``stride``."""
        deepest = 2 * self.skip_strides[0] if self.skip_strides else 2
        return f"s{deepest >> path}_to_s{stride}"

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_stages(features)[-1]

    def forward_stages(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Path 0's node outputs, deepest (stride ``2**(depth-1)``) to the last (stride 1)."""
        # starts[p]: where path p starts; starts[level + 1]: the encoder's skip at that level (None if absent)
        starts = [features[-1], *(feature_at(features, self.reductions, s) for s in self.skip_strides)]
        outputs: dict[tuple[int, int], torch.Tensor | None] = {}
        for level, stride in enumerate(self.skip_strides):
            for path in range(level, -1, -1):  # later paths first: each node takes their outputs at its level
                name = self._name(path, stride)
                if name not in self.nodes:
                    outputs[path, level] = None
                    continue
                x = starts[path] if path == level else outputs[path, level - 1]
                later = [outputs[p, level] for p in range(path + 1, level + 1)]
                outputs[path, level] = self.nodes[name](x, [*later, starts[level + 1]])
        path0 = [outputs[0, level] for level in range(len(self.skip_strides))]
        x = path0[-1] if path0 else starts[0]
        return [*path0, self.nodes[self._name(0, 1)](x, None)]


@register_model("unetplusplus")
class UnetPlusPlus(EncoderDecoderModel):
    """U-Net++: encoder → nested dense decoder (:class:`UnetPlusPlusDecoder`) → 3×3 conv head.

    Args:
        decoder_use_norm: normalisation in the decoder's convolutions: True / ``"batchnorm"``, False /
            ``"identity"``, ``"layernorm"``, ``"instancenorm"``, ``"inplace"``, or a dict such as
            ``{"type": "batchnorm", "momentum": 0.01}`` (see :data:`~pixelwise.models.blocks.NormSpec`).
        decoder_channels: output channels of path 0's nodes, deepest first, one per decoder stage; the
            default is cut to ``encoder_depth`` entries.
        decoder_attention_type: ``None`` or ``"scse"`` (squeeze & excitation on each node's input and output).
        decoder_interpolation: the ×2 interpolation: ``"nearest"``, ``"bilinear"``, ``"bicubic"``,
            ``"area"`` or ``"nearest-exact"``.
        decoder_use_batchnorm: older bool alias of ``decoder_use_norm`` (segmentation_models_pytorch < 0.5).
        deep_supervision: add a 1×1 convolution to ``classes`` on path 0's nodes between the deepest and the
            last (strides 2, 4, 8 at ``encoder_depth=5``), for the training loss (``forward_with_aux``);
            ``forward`` ignores them. Needs ``encoder_depth >= 3``.
        encoder_name, encoder_depth, encoder_weights, encoder_freeze, in_channels, classes, activation,
            aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W (``(masks, labels [N, aux classes])``
    with ``aux_params``).

    Raises:
        ConfigError: an unknown normalisation, attention or interpolation, ``decoder_channels`` of another
            length than ``encoder_depth``, or contradicting ``decoder_use_norm`` / ``decoder_use_batchnorm``.

    Example:
        >>> model = UnetPlusPlus("resnet34", classes=2, decoder_attention_type="scse")
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_depth: int = 5,
        encoder_weights: WeightsSpec = None,
        decoder_use_norm: NormSpec = "batchnorm",
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        decoder_attention_type: str | None = None,
        decoder_interpolation: str = "nearest",
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        aux_params: Mapping[str, Any] | None = None,
        *,
        encoder_freeze: bool = False,
        decoder_use_batchnorm: bool | None = None,
        deep_supervision: bool = False,
    ) -> None:
        norm = resolve_norm(decoder_use_norm, decoder_use_batchnorm, defaulted="use_norm")
        aux_stages = deep_supervision_stages(type(self).__name__, encoder_depth) if deep_supervision else []
        channels = decoder_channels_for(decoder_channels, encoder_depth)
        check_choice("decoder_interpolation", decoder_interpolation, INTERPOLATION_MODES)
        make_attention(decoder_attention_type, 1)  # validate before building the encoder

        def decoder(encoder: TimmEncoder) -> UnetPlusPlusDecoder:
            return UnetPlusPlusDecoder(encoder, channels, norm, decoder_attention_type, decoder_interpolation)

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
            self.aux_heads = deep_supervision_heads(channels, aux_stages, classes)
            self.aux_strides = tuple(decoder_strides(encoder_depth)[i] for i in aux_stages)

    def forward_padded_with_aux(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        """With ``deep_supervision``: the main output and the auxiliary logits of path 0's nodes, finest first."""
        if not self.has_aux_outputs:
            return super().forward_padded_with_aux(x)
        features = self.encoder(x)
        stages = self.decoder.forward_stages(features)
        masks = self.head(stages[-1])
        aux = [head(stages[i]) for head, i in zip(self.aux_heads, self.aux_stages, strict=True)]
        if self.classification_head is None:
            return masks, aux
        return (masks, self.classification_head(features[-1])), aux
