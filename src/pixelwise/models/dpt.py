"""DPT (Ranftl et al. 2021, "Vision Transformers for Dense Prediction"): the tokens of several blocks of a
plain ViT are reassembled into image-like maps at strides 4, 8, 16 and 32 and fused coarse to fine.

The encoder is a timm ViT built with ``dynamic_img_size=True``, so any input size works: the model pads
the input to the patch size, and each fusion step upsamples to the size of the next finer map (which is
exactly ×2 when the token grid is even, as in the paper and in segmentation_models_pytorch).
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError, unknown_name
from pixelwise.models.base import EncoderFreezing, SegmentationModel, _classification_head
from pixelwise.models.blocks import ConvBnAct, make_activation
from pixelwise.models.encoders import WeightsSpec, create_timm_model
from pixelwise.models.registry import check_choice, register_model

READOUTS = ("cat", "add", "ignore")
HEAD_DROPOUT = 0.1
"""Dropout before the head's classifier (the DPT paper's and segmentation_models_pytorch's value)."""


# -- encoder ---------------------------------------------------------------------------------------


def uniform_block_indices(depth: int, num_blocks: int) -> list[int]:
    """``depth`` block indices spread evenly over ``num_blocks``, ending at the last block.

    Example:
        >>> uniform_block_indices(4, 12)
        [2, 5, 8, 11]
    """
    return [int(num_blocks / depth * level) - 1 for level in range(1, depth + 1)]


def _check_indices(indices: Sequence[int] | None, depth: int, num_blocks: int) -> list[int]:
    """The block indices to read (``indices`` made non-negative, or spread evenly when None).

    Raises:
        ConfigError: a wrong number of indices, or one outside ``[-num_blocks, num_blocks)``.
    """
    if indices is None:
        return uniform_block_indices(depth, num_blocks)
    if len(indices) != depth:
        raise ConfigError(
            f"encoder_output_indices={list(indices)} has {len(indices)} entries but encoder_depth={depth}; "
            "give one block index per level, or None to spread them evenly."
        )
    for index in indices:
        if not -num_blocks <= index < num_blocks:
            raise ConfigError(
                f"encoder_output_indices={list(indices)}: {index} is out of range; the encoder has "
                f"{num_blocks} blocks, so use indices in [{-num_blocks}, {num_blocks})."
            )
    return [index % num_blocks for index in indices]


class ViTEncoder(nn.Module):
    """A plain timm ViT returning the token maps (and prefix tokens) of ``depth`` of its blocks.

    The classifier, the final norm and the blocks after the deepest index read are removed
    (``prune_intermediate_layers``): they would never get a gradient (DDP fails on such parameters).

    Args:
        name: a timm ViT-style model with ``forward_intermediates`` and prefix tokens (``vit_*``,
            ``deit_*``, ``eva*``, ...); an smp-style ``"tu-"`` prefix is accepted.
        in_channels: input image channels.
        depth: how many blocks to read (1 to the number of blocks).
        weights: ``None``, ``"imagenet"`` or a local timm state dict (as
            :class:`~pixelwise.models.encoders.TimmEncoder`).
        output_indices: the blocks to read; None spreads ``depth`` of them evenly, ending at the last.
        options: passed to ``timm.create_model`` (``dynamic_img_size``, ``img_size``, ``drop_path_rate``, ...;
            a dict, as timm's ``depth`` would clash with ours).

    Shape:
        input ``[N, in_channels, H, W]`` with H, W multiples of ``patch_size``; output ``(features,
        prefix_tokens)``: ``depth`` maps ``[N, out_channels[i], H / p, W / p]`` and as many
        ``[N, num_prefix_tokens, out_channels[i]]`` tensors (None when the model has no prefix tokens).
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 4,
        weights: WeightsSpec = None,
        output_indices: Sequence[int] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = name.removeprefix("tu-")
        if not timm.is_model(name):
            raise unknown_name("encoder", name, timm.list_models("*vit*"), "(DPT needs a timm ViT)")
        options = dict(options or {})
        if options.pop("output_stride", None) is not None:
            raise ConfigError("DPT: a ViT encoder cannot be dilated; leave output_stride unset.")
        with torch.device("meta"):  # check the kind of model before allocating (or downloading) weights
            _check_plain_vit(name, timm.create_model(name, pretrained=False))
        try:
            model = create_timm_model(name, weights, in_chans=in_channels, **options)
        except TypeError as error:  # an option this timm model does not take
            raise ConfigError(f"DPT: timm cannot build encoder {name!r} with {options}: {error}") from error
        num_blocks = len(model.feature_info)
        if not 1 <= depth <= num_blocks:
            raise ConfigError(f"encoder_depth={depth} is out of range; {name!r} has {num_blocks} blocks (use 1 to it).")
        self.indices = _check_indices(output_indices, depth, num_blocks)
        model.prune_intermediate_layers(max(self.indices) + 1, prune_norm=True, prune_head=True)
        self.model = model
        self.name = name
        self.out_channels: list[int] = [model.feature_info[i]["num_chs"] for i in self.indices]
        self.reductions: list[int] = [model.feature_info[i]["reduction"] for i in self.indices]
        self.num_prefix_tokens: int = model.num_prefix_tokens
        self.patch_size: int = math.lcm(*model.patch_embed.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        if self.num_prefix_tokens == 0:
            features = self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True)
            return features, [None] * len(features)
        pairs = self.model.forward_intermediates(
            x, indices=self.indices, intermediates_only=True, return_prefix_tokens=True
        )
        return [features for features, _ in pairs], [tokens for _, tokens in pairs]


def _check_plain_vit(name: str, model: nn.Module) -> None:
    """Raise unless ``model`` is a plain (single-stride) ViT whose intermediates DPT can read."""
    forward = getattr(model, "forward_intermediates", None)
    if (
        forward is None
        or not hasattr(model, "num_prefix_tokens")
        or "return_prefix_tokens" not in inspect.signature(forward).parameters
        or len({info["reduction"] for info in model.feature_info}) != 1
    ):
        raise ConfigError(
            f"DPT needs a plain timm ViT (one stride, prefix tokens), but encoder {name!r} is not one; "
            "use e.g. 'vit_base_patch16_224', 'vit_small_patch16_224' or 'deit_small_patch16_224'."
        )


# -- decoder ---------------------------------------------------------------------------------------


class ReadoutCat(nn.Module):
    """Concatenate the first prefix (CLS) token to every patch token and project back: Linear → GELU.

    Without prefix tokens the projection sees the patch tokens alone.

    Shape: ``[N, C, h, w]`` (+ tokens ``[N, T, C]``) ``→ [N, C, h, w]``.
    """

    def __init__(self, channels: int, has_prefix_tokens: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(channels * (2 if has_prefix_tokens else 1), channels)

    def forward(self, x: torch.Tensor, prefix_tokens: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [N, h*w, C]
        if prefix_tokens is not None:
            tokens = torch.cat([tokens, prefix_tokens[:, :1].expand(-1, h * w, -1)], dim=2)
        return F.gelu(self.linear(tokens)).transpose(1, 2).reshape(n, c, h, w)


class ReadoutAdd(nn.Module):
    """Add the mean of the prefix tokens to every patch token. Shape: ``[N, C, h, w] → [N, C, h, w]``."""

    def forward(self, x: torch.Tensor, prefix_tokens: torch.Tensor | None) -> torch.Tensor:
        if prefix_tokens is None:
            return x
        return x + prefix_tokens.mean(dim=1)[:, :, None, None]


class ReadoutIgnore(nn.Module):
    """Drop the prefix tokens. Shape: ``[N, C, h, w] → [N, C, h, w]``."""

    def forward(self, x: torch.Tensor, prefix_tokens: torch.Tensor | None) -> torch.Tensor:
        return x


def make_readout(readout: str, channels: int, has_prefix_tokens: bool) -> nn.Module:
    """The readout module for ``"cat"``, ``"add"`` or ``"ignore"``."""
    if readout == "cat":
        return ReadoutCat(channels, has_prefix_tokens)
    return ReadoutAdd() if readout == "add" else ReadoutIgnore()


class Reassemble(nn.Module):
    """Token map → image-like map at the level's stride: 1×1 projection, resampling, 3×3 convolution.

    ``scale > 1`` upsamples with a transposed convolution (kernel = stride = ``int(scale)``), ``scale < 1``
    downsamples with a 3×3 convolution of stride ``int(1 / scale)``, ``scale == 1`` keeps the size.

    Shape: ``[N, in_channels, h, w] → [N, out_channels, ≈scale·h, ≈scale·w]``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, mid_channels, 1)
        self.resample: nn.Module
        if scale > 1:
            self.resample = nn.ConvTranspose2d(mid_channels, mid_channels, int(scale), stride=int(scale))
        elif scale == 1:
            self.resample = nn.Identity()
        else:
            self.resample = nn.Conv2d(mid_channels, mid_channels, 3, stride=int(1 / scale), padding=1)
        self.out_conv = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.resample(self.project(x)))


class ResidualConvUnit(nn.Module):
    """``x + BN(conv(ReLU(BN(conv(ReLU(x))))))`` with 3×3 convolutions. Shape: ``[N, C, h, w] → [N, C, h, w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return x + out


class FusionBlock(nn.Module):
    """Refine a level, add the coarser fused map, refine again, upsample (bilinear) and project (1×1).

    Shape: ``[N, C, h, w]`` (+ coarser fused ``[N, C, h, w]``) ``→ [N, C, *size]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.residual1 = ResidualConvUnit(channels)
        self.residual2 = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        x = self.residual1(x)
        if coarser is not None:
            x = x + coarser
        x = self.residual2(x)
        return self.project(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True))


class DPTDecoder(nn.Module):
    """Readout, reassemble to strides 4, 8, 16, 32, ... and fuse coarse to fine, ending at stride 2.

    Level ``i`` (shallowest first) is resampled by ``reduction_i / 2**(i + 2)``.

    Shape: ``(features, prefix_tokens)`` of :class:`ViTEncoder` → ``[N, fusion_channels, H / 2, W / 2]``
    (for a token grid of ``H / p × W / p``).

    Raises:
        ConfigError: an unknown readout, or ``intermediate_channels`` of another length than the levels.
    """

    output_stride = 2

    def __init__(
        self,
        encoder: ViTEncoder,
        readout: str,
        intermediate_channels: Sequence[int],
        fusion_channels: int,
    ) -> None:
        super().__init__()
        check_choice("decoder_readout", readout, READOUTS)
        levels = len(encoder.out_channels)
        if len(intermediate_channels) != levels:
            raise ConfigError(
                f"decoder_intermediate_channels={list(intermediate_channels)} has {len(intermediate_channels)} "
                f"entries but the encoder gives {levels} levels (encoder_depth); give one per level."
            )
        has_prefix = encoder.num_prefix_tokens > 0
        self.readouts = nn.ModuleList(make_readout(readout, c, has_prefix) for c in encoder.out_channels)
        self.reassemble = nn.ModuleList(
            Reassemble(c, mid, fusion_channels, reduction / 2 ** (i + 2))
            for i, (c, mid, reduction) in enumerate(
                zip(encoder.out_channels, intermediate_channels, encoder.reductions, strict=True)
            )
        )
        self.fusion = nn.ModuleList(FusionBlock(fusion_channels) for _ in range(levels))
        self.out_channels = fusion_channels

    def forward(self, features: list[torch.Tensor], prefix_tokens: list[torch.Tensor | None]) -> torch.Tensor:
        maps = [
            reassemble(readout(x, tokens))
            for readout, reassemble, x, tokens in zip(
                self.readouts, self.reassemble, features, prefix_tokens, strict=True
            )
        ]
        maps = maps[::-1]  # coarse to fine
        fused = None
        for i, (fusion, x) in enumerate(zip(self.fusion, maps, strict=True)):
            # upsample to the next finer map (×2 for even token grids); the finest level is doubled
            size = maps[i + 1].shape[-2:] if i + 1 < len(maps) else (2 * x.shape[-2], 2 * x.shape[-1])
            fused = fusion(x, fused, size)
        return fused


class DPTHead(nn.Module):
    """3×3 conv → BN → ReLU → dropout → 1×1 classifier, then bilinear upsampling to the input size.

    Shape: ``[N, C, h, w] → [N, classes, *size]``.
    """

    def __init__(self, in_channels: int, classes: int, dropout: float = HEAD_DROPOUT) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_channels, in_channels, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(in_channels, classes, 1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.classifier(self.dropout(self.conv(x)))
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


# -- model -----------------------------------------------------------------------------------------


@register_model("dpt")
class DPT(EncoderFreezing, SegmentationModel):
    """DPT: ViT → readout + reassemble (strides 4 … 32) → fusion blocks → head → activation.

    It derives from :class:`~pixelwise.models.base.SegmentationModel` rather than ``EncoderDecoderModel``
    because its encoder is a ViT returning token maps and prefix tokens (not a ``TimmEncoder`` pyramid),
    and its decoder reads both. Inputs are padded to the patch size (``input_multiple``).

    Args:
        encoder_name: a timm ViT (``"vit_base_patch16_224"``, ``"deit_small_patch16_224"``,
            ``"vit_small_patch14_reg4_dinov2"``, ...); the smp-style ``"tu-"`` prefix is accepted.
        encoder_depth: how many transformer blocks are read (one decoder level each).
        encoder_weights: ``None`` (random), ``"imagenet"`` (timm's pretrained weights for the name's tag)
            or a local ``.safetensors``/``.pth`` timm state dict.
        encoder_output_indices: the blocks read, e.g. ``[2, 5, 8, 11]``; None spreads ``encoder_depth``
            blocks evenly, ending at the last.
        decoder_readout: what to do with the prefix (CLS, register) tokens: ``"cat"`` (concatenate the
            first to every patch token and project), ``"add"`` (add their mean) or ``"ignore"``.
        decoder_intermediate_channels: channels of each level's reassemble projection (one per level).
        decoder_fusion_channels: channels of the fusion blocks and the head.
        in_channels, classes, activation, aux_params: see :class:`~pixelwise.models.base.EncoderDecoderModel`.
        encoder_freeze: keep the encoder's weights fixed (see :meth:`freeze_encoder`).
        dynamic_img_size: build the ViT so it takes any (patch-multiple) size; with False the input must
            have the ViT's ``img_size``.
        **kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...); recorded as
            ``config["encoder_kwargs"]``.

    Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Example:
        >>> model = DPT("vit_small_patch16_224", classes=3, decoder_readout="add")
    """

    def __init__(
        self,
        encoder_name: str = "tu-vit_base_patch16_224.augreg_in21k",
        encoder_depth: int = 4,
        encoder_weights: WeightsSpec = None,
        encoder_output_indices: Sequence[int] | None = None,
        decoder_readout: str = "cat",
        decoder_intermediate_channels: Sequence[int] = (256, 512, 1024, 1024),
        decoder_fusion_channels: int = 256,
        in_channels: int = 3,
        classes: int = 1,
        activation: str | Callable | None = None,
        aux_params: Mapping[str, Any] | None = None,
        *,
        encoder_freeze: bool = False,
        dynamic_img_size: bool = True,
        **kwargs: Any,
    ) -> None:
        # timm keywords the config-recording wrapper set aside (recorded as config["encoder_kwargs"])
        kwargs = {**self.__dict__.pop("_encoder_kwargs", {}), **kwargs}
        super().__init__()
        check_choice("decoder_readout", decoder_readout, READOUTS)
        self.in_channels, self.classes = in_channels, classes
        self.encoder = ViTEncoder(
            encoder_name,
            in_channels,
            encoder_depth,
            encoder_weights,
            encoder_output_indices,
            {"dynamic_img_size": dynamic_img_size, **kwargs},
        )
        if self.encoder.num_prefix_tokens == 0 and decoder_readout != "ignore":
            warnings.warn(
                f"encoder {self.encoder.name!r} has no prefix tokens (CLS or registers), so "
                f"decoder_readout={decoder_readout!r} has nothing to read; decoder_readout='ignore' is the usual "
                "choice.",
                UserWarning,
                stacklevel=3,
            )
        self.input_multiple = self.encoder.patch_size
        self.decoder = DPTDecoder(self.encoder, decoder_readout, decoder_intermediate_channels, decoder_fusion_channels)
        self.head = DPTHead(decoder_fusion_channels, classes)  # before the classification head, as SMP registers them
        self.classification_head = _classification_head(aux_params, self.encoder.out_channels[-1])
        self.activation = make_activation(activation)
        if encoder_freeze:
            self.freeze_encoder()

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features, prefix_tokens = self.encoder(x)
        masks = self.head(self.decoder(features, prefix_tokens), x.shape[-2:])
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(features[-1])


# -- segmentation_models_pytorch checkpoints -------------------------------------------------------

SMP_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^decoder\.projection_blocks\.(\d+)\.project\.0\.", r"decoder.readouts.\1.linear."),
    (r"^decoder\.reassemble_blocks\.(\d+)\.project_to_out_channel\.", r"decoder.reassemble.\1.project."),
    (r"^decoder\.reassemble_blocks\.(\d+)\.upsample\.", r"decoder.reassemble.\1.resample."),
    (r"^decoder\.reassemble_blocks\.(\d+)\.project_to_feature_dim\.", r"decoder.reassemble.\1.out_conv."),
    (r"^decoder\.fusion_blocks\.(\d+)\.residual_conv_block(\d)\.conv_(\d)\.", r"decoder.fusion.\1.residual\2.conv\3."),
    (
        r"^decoder\.fusion_blocks\.(\d+)\.residual_conv_block(\d)\.batch_norm_(\d)\.",
        r"decoder.fusion.\1.residual\2.bn\3.",
    ),
    (r"^decoder\.fusion_blocks\.(\d+)\.project\.", r"decoder.fusion.\1.project."),
    (r"^segmentation_head\.head\.0\.", "head.conv.0."),
    (r"^segmentation_head\.head\.1\.", "head.conv.1."),
    (r"^segmentation_head\.head\.4\.", "head.classifier."),
)
"""segmentation_models_pytorch 0.6 DPT state-dict names → pixelwise names (regex, replacement)."""

SMP_UNUSED = re.compile(r"^encoder\.model\.(norm|fc_norm|head|head_drop|attn_pool)\.")
"""Encoder weights SMP keeps but never uses in DPT (the ViT's final norm and classifier)."""


def dpt_state_dict_from_smp(
    state_dict: Mapping[str, torch.Tensor], model: DPT | None = None
) -> dict[str, torch.Tensor]:
    """Rename a segmentation_models_pytorch ``DPT`` state dict to this module's names.

    SMP keeps the ViT's classifier and final norm, which DPT never uses; they are dropped. With ``model``,
    encoder blocks the model pruned (after its deepest ``encoder_output_indices``) are dropped too.

    Example:
        >>> model.load_state_dict(dpt_state_dict_from_smp(smp_model.state_dict(), model))
    """
    keep = None if model is None else set(model.state_dict())
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if SMP_UNUSED.match(key):
            continue
        for pattern, replacement in SMP_RENAMES:
            key = re.sub(pattern, replacement, key)
        if keep is not None and key.startswith("encoder.") and key not in keep:
            continue
        converted[key] = value
    return converted
