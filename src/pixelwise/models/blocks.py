"""Building blocks shared by several architectures: conv blocks, normalisation and attention layers,
upsampling, segmentation and classification heads, activations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError, unknown_name

UPSAMPLING_MODES = ("bilinear", "nearest", "transposed", "pixelshuffle")
INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")
"""segmentation_models_pytorch 0.6's ``decoder_interpolation`` modes (``F.interpolate`` modes, no weights)."""
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
"""The decoder channels of the U-Net family, deep to shallow, cut to ``encoder_depth`` entries."""
ACTIVATIONS = ("identity", "sigmoid", "softmax", "logsoftmax", "tanh")
NORMS = ("batchnorm", "identity", "layernorm", "instancenorm", "inplace")
"""Normalisations a decoder convolution takes (segmentation_models_pytorch 0.6's ``decoder_use_norm``)."""
ATTENTIONS = ("scse",)
"""Decoder attention types (``decoder_attention_type``); None for none."""
POOLINGS = ("avg", "max")

NormSpec = bool | str | Mapping[str, Any] | None
"""A normalisation: True / ``"batchnorm"``, False / None / ``"identity"``, ``"layernorm"``,
``"instancenorm"``, ``"inplace"``, or a dict ``{"type": name, **options of the layer}``."""


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an ``[N, C, H, W]`` map (as in ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def norm_layer(norm: NormSpec, channels: int, option: str = "decoder_use_norm") -> nn.Module:
    """The normalisation layer ``norm`` names, for ``channels`` channels (see :data:`NormSpec`).

    ``"inplace"`` is InPlace-ABN's BatchNorm followed by the activation: it is computed here as
    ``BatchNorm2d`` (the activation is the block's ReLU, InPlace-ABN's default leaky ReLU of slope 0),
    with the same parameters and results, without that package's memory saving. ``"layernorm"``
    normalises over the channels of each pixel.

    Raises:
        ConfigError: an unknown name, or a dict without ``"type"`` (names ``option``).
    """
    options: dict[str, Any] = {}
    if norm is True:
        kind = "batchnorm"
    elif norm is False or norm is None:
        kind = "identity"
    elif isinstance(norm, str):
        kind = norm.lower()
    elif isinstance(norm, Mapping) and isinstance(norm.get("type"), str):
        options = {key: value for key, value in norm.items() if key != "type"}
        kind = norm["type"].lower()
    else:
        raise ConfigError(
            f"{option}={norm!r} is not a normalisation; give a bool, one of {', '.join(NORMS)}, "
            'or a dict such as {"type": "batchnorm", "momentum": 0.01}.'
        )
    if kind not in NORMS:
        raise unknown_name(option, kind, NORMS)
    if kind == "identity":
        return nn.Identity()
    layer = {"batchnorm": nn.BatchNorm2d, "inplace": nn.BatchNorm2d, "layernorm": LayerNorm2d}
    return layer.get(kind, nn.InstanceNorm2d)(channels, **options)


NORM_DEFAULTS: dict[str, NormSpec] = {"use_norm": "batchnorm", "use_batchnorm": True}


def resolve_norm(
    use_norm: NormSpec,
    use_batchnorm: bool | None,
    *,
    defaulted: Literal["use_norm", "use_batchnorm"],
    alias: str = "decoder_use_batchnorm",
) -> NormSpec:
    """The decoder normalisation from SMP 0.6's ``decoder_use_norm`` and its older bool alias ``alias``.

    Two signatures carry the pair. SMP's (U-Net++, MAnet): ``decoder_use_norm="batchnorm"`` and the alias
    ``None``; pixelwise's older one (Unet, Linknet, PSPNet): the alias ``True`` and ``decoder_use_norm=None``.
    ``defaulted`` names the option with a real default (``"use_norm"`` or ``"use_batchnorm"``); the other
    one is None when not given, and when given it wins. Both given and meaning different normalisations
    (True: BatchNorm, False: none) is a contradiction, unless the defaulted one is left at its default.

    Args:
        use_norm: ``decoder_use_norm``, any :data:`NormSpec`.
        use_batchnorm: the bool alias, or None.
        defaulted: which of the two has a real default.
        alias: the alias's name in the model's signature, for error messages.

    Raises:
        ConfigError: an unknown normalisation, a non-bool alias, or the contradiction above.

    Example:
        >>> resolve_norm("batchnorm", False, defaulted="use_norm")
        False
    """
    norm_layer(use_norm, 1)  # validate the name before the encoder is built
    if use_batchnorm is not None and not isinstance(use_batchnorm, bool):
        raise ConfigError(
            f"{alias}={use_batchnorm!r} must be True or False; for other normalisations use decoder_use_norm."
        )
    values = {"use_norm": use_norm, "use_batchnorm": use_batchnorm}
    given = "use_batchnorm" if defaulted == "use_norm" else "use_norm"
    if values[given] is None:
        return values[defaulted]
    changed = values[defaulted] != NORM_DEFAULTS[defaulted]
    if changed and _norm_kind(use_norm) != _norm_kind(use_batchnorm):
        raise ConfigError(
            f"{alias}={use_batchnorm} contradicts decoder_use_norm={use_norm!r}; give only decoder_use_norm "
            f"({alias} is its older bool alias; decoder_use_norm='identity' for no normalisation)."
        )
    return values[given]


def _norm_kind(norm: NormSpec) -> str:
    """The normalisation's name: ``"batchnorm"`` for True, ``"identity"`` for False/None, else its name."""
    if norm is True:
        return "batchnorm"
    if norm is False or norm is None:
        return "identity"
    return (norm if isinstance(norm, str) else str(norm["type"])).lower()


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d for branches after global pooling, which see one value per channel and sample.

    With a single value per channel in train mode (batch size 1 on a 1×1 map), where ``nn.BatchNorm2d``
    raises, it normalises with its running statistics and leaves them unchanged, as in eval mode: one value
    has no batch statistics. Otherwise it is ``nn.BatchNorm2d``, with the same parameters and buffers, so
    segmentation_models_pytorch's weights load into it and give its outputs.

    Shape: ``[N, C, H, W] → [N, C, H, W]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class PooledInstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm2d that also takes 1×1 maps (where ``nn.InstanceNorm2d`` raises): a single value per channel
    normalises to 0, so the output is the affine bias (0 without ``affine``).

    Shape: ``[N, C, H, W] → [N, C, H, W]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] != 1:
            return super().forward(x)
        centred = x - x  # (x - mean) of one value, keeping the graph
        if self.affine:
            return centred * self.weight[:, None, None] + self.bias[:, None, None]
        return centred


def pooled(block: nn.Module) -> nn.Module:
    """``block`` with each of its direct ``nn.BatchNorm2d`` / ``nn.InstanceNorm2d`` layers replaced by a
    :class:`PooledBatchNorm2d` / :class:`PooledInstanceNorm2d` of the same configuration, for a block that
    runs on globally pooled (1×1) maps."""
    for name, layer in block.named_children():
        if type(layer) is nn.BatchNorm2d:
            setattr(block, name, PooledBatchNorm2d(layer.num_features, layer.eps, layer.momentum, layer.affine))
        elif type(layer) is nn.InstanceNorm2d:
            safe = PooledInstanceNorm2d(
                layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
            )
            setattr(block, name, safe)
    return block


def decoder_channels_for(decoder_channels: Sequence[int], depth: int) -> list[int]:
    """``decoder_channels`` checked against ``depth``; :data:`DEFAULT_DECODER_CHANNELS` is cut to ``depth``.

    Raises:
        ConfigError: a list of another length than ``depth``.
    """
    if tuple(decoder_channels) == DEFAULT_DECODER_CHANNELS:
        decoder_channels = DEFAULT_DECODER_CHANNELS[:depth]
    if len(decoder_channels) != depth:
        raise ConfigError(
            f"decoder_channels={list(decoder_channels)} has {len(decoder_channels)} entries but "
            f"encoder_depth={depth}; give one per decoder stage, e.g. {list(DEFAULT_DECODER_CHANNELS[:depth])}."
        )
    return list(decoder_channels)


class ConvBnAct(nn.Sequential):
    """``Conv2d → norm → ReLU`` with "same" padding (``padding=0`` gives a valid convolution).

    ``use_batchnorm`` is a bool (BatchNorm or none) or any :data:`NormSpec`. Without normalisation
    the convolution gets a bias, which is what branches that see a 1×1 map need: BatchNorm cannot
    train on one value per channel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        use_batchnorm: NormSpec = True,
        activation: bool = True,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        norm = norm_layer(use_batchnorm, out_channels)
        bias = isinstance(norm, nn.Identity)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        ]
        if not bias:
            layers.append(norm)
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """Weights ``[in, out, k, k]`` of a transposed convolution that performs bilinear upsampling.

    Channel ``c`` maps only to channel ``c`` (a diagonal), as in the FCN paper's initialisation.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (grid - center).abs() / factor
    kernel = profile[:, None] * profile[None, :]
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = kernel
    return weight


class BilinearTransposedUpsample(nn.ConvTranspose2d):
    """Transposed convolution upsampling by an integer ``factor``, initialised to bilinear interpolation.

    Kernel ``2·factor``, stride ``factor``: the output is exactly ``factor`` times the input size.
    With ``learnable=False`` the weights stay fixed (the FCN paper's final upsampling layer).

    Shape: ``[N, C, H, W] → [N, C_out, factor·H, factor·W]``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, factor: int = 2, learnable: bool = True):
        out_channels = out_channels or in_channels
        kernel = 2 * factor - factor % 2
        super().__init__(
            in_channels, out_channels, kernel, stride=factor, padding=(kernel - factor + 1) // 2, bias=False
        )
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(in_channels, out_channels, kernel))
        self.weight.requires_grad_(learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(x)
        size = (x.shape[-2] * self.stride[0], x.shape[-1] * self.stride[1])
        return out[..., : size[0], : size[1]]


class PixelShuffleUpsample(nn.Sequential):
    """Sub-pixel convolution: a 3×3 conv to ``C·factor²`` channels, then ``PixelShuffle(factor)``.

    The conv is ICNR-initialised (each group of ``factor²`` output channels starts equal), so the
    block starts as nearest-neighbour upsampling of a learned map and avoids checkerboard artefacts.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, factor: int = 2) -> None:
        out_channels = out_channels or in_channels
        conv = nn.Conv2d(in_channels, out_channels * factor**2, 3, padding=1)
        with torch.no_grad():
            base = torch.empty(out_channels, in_channels, 3, 3)
            nn.init.kaiming_normal_(base, nonlinearity="relu")
            conv.weight.copy_(base.repeat_interleave(factor**2, dim=0))
            conv.bias.zero_()
        super().__init__(conv, nn.PixelShuffle(factor))


def make_upsample(mode: str, channels: int, factor: int = 2) -> nn.Module:
    """An upsampling layer by ``factor`` that keeps the channel count.

    Args:
        mode: one of :data:`UPSAMPLING_MODES`: ``"bilinear"``/``"nearest"`` interpolation (no
            weights), ``"transposed"`` (learnable, bilinear-initialised transposed convolution),
            ``"pixelshuffle"`` (sub-pixel convolution). Max-unpooling needs the encoder's pooling
            indices, so it lives in :class:`pixelwise.SegNet`.
    """
    if mode in ("bilinear", "nearest"):
        return nn.Upsample(scale_factor=factor, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    if mode == "transposed":
        return BilinearTransposedUpsample(channels, channels, factor)
    if mode == "pixelshuffle":
        return PixelShuffleUpsample(channels, channels, factor)
    hint = "max-unpooling needs pooling indices: use the SegNet architecture." if mode == "unpool" else ""
    raise unknown_name("decoder_upsampling", mode, UPSAMPLING_MODES, hint)


class SegmentationHead(nn.Sequential):
    """A convolution from decoder channels to class scores (logits), optionally upsampled (bilinear).

    ``align_corners=True`` is segmentation_models_pytorch's head interpolation: the architectures whose
    SMP checkpoints convert to ours use it, so that those weights give SMP's outputs.

    Shape: ``[N, in_channels, h, w] → [N, classes, upsampling·h, upsampling·w]``.
    """

    def __init__(
        self, in_channels: int, classes: int, kernel_size: int = 3, upsampling: int = 1, align_corners: bool = False
    ) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, classes, kernel_size, padding=kernel_size // 2)]
        if upsampling > 1:
            layers.append(nn.Upsample(scale_factor=upsampling, mode="bilinear", align_corners=align_corners))
        super().__init__(*layers)


def check_head_upsampling(model: str, upsampling: int | None, output_stride: int) -> None:
    """Accept ``upsampling`` (segmentation_models_pytorch's head upsampling factor) only where it brings the
    decoder's output back to the input size, which pixelwise models always return.

    Raises:
        ConfigError: ``upsampling`` is not None and differs from the decoder's ``output_stride``.
    """
    if upsampling is not None and upsampling != output_stride:
        raise ConfigError(
            f"{model}: upsampling={upsampling} would not bring the decoder's stride-{output_stride} output back "
            f"to the input size; pixelwise models always return the input size: use upsampling={output_stride} "
            "or leave it out (None)."
        )


class SCSEAttention(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (Roy et al. 2018): the map gated per channel
    (global pooling → bottleneck → sigmoid) plus the map gated per pixel (1×1 conv → sigmoid).

    Shape: ``[N, C, H, W] → [N, C, H, W]``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


def make_attention(name: str | None, channels: int) -> nn.Module:
    """The decoder attention ``name`` (``None``: identity; ``"scse"``: :class:`SCSEAttention`).

    Raises:
        ConfigError: an unknown name (with the closest valid one).
    """
    if name is None:
        return nn.Identity()
    if name != "scse":
        raise unknown_name("decoder_attention_type", str(name), ATTENTIONS)
    return SCSEAttention(channels)


class ClassificationHead(nn.Sequential):
    """Image labels from the deepest encoder features: global pooling → dropout → linear → activation.

    The auxiliary head of ``aux_params`` (as in segmentation_models_pytorch).

    Shape: ``[N, in_channels, h, w] → [N, classes]``.

    Raises:
        ConfigError: an unknown pooling or activation, a dropout outside [0, 1).
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        pooling: str = "avg",
        dropout: float | None = 0.2,
        activation: str | Callable | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise unknown_name("aux_params pooling", str(pooling), POOLINGS)
        if dropout is not None and not 0 <= dropout < 1:
            raise ConfigError(f"aux_params dropout={dropout!r} is out of range; give a probability in [0, 1).")
        pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        drop = nn.Dropout(dropout) if dropout else nn.Identity()
        super().__init__(pool, nn.Flatten(), drop, nn.Linear(in_channels, classes), make_activation(activation))


def make_activation(activation: str | Callable[[torch.Tensor], torch.Tensor] | None) -> nn.Module:
    """The output activation: ``None``/``"identity"`` (logits), ``"sigmoid"``, ``"softmax"`` and
    ``"logsoftmax"`` (over the class dimension), ``"tanh"``, or any callable / ``nn.Module``."""
    if activation is None or activation == "identity":
        return nn.Identity()
    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        return _Lambda(activation)
    if not isinstance(activation, str):
        raise ConfigError(f"activation={activation!r} must be None, a name in {ACTIVATIONS} or a callable.")
    name = activation.lower().replace("2d", "")
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=1)
    if name == "logsoftmax":
        return nn.LogSoftmax(dim=1)
    if name == "tanh":
        return nn.Tanh()
    raise unknown_name("activation", activation, ACTIVATIONS)


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
