"""Mix Transformer encoders ``mit_b0`` … ``mit_b5`` (Xie et al. 2021, SegFormer), which timm lacks.

A Mix Transformer is four stages; each one embeds its input with an *overlapping* strided convolution
(7×7 stride 4 in the first stage, 3×3 stride 2 after), runs transformer blocks on the tokens and
normalises them. Three things make it a segmentation backbone rather than a ViT:

* overlapping patch embeddings with padding, so any height and width work (no position embedding);
* *efficient* self-attention: keys and values come from a copy of the map shrunk by ``sr_ratio``
  (a strided convolution), so attention at stride 4 costs ``(HW)² / 64`` instead of ``(HW)²``;
* Mix-FFN: a depth-wise 3×3 convolution between the MLP's two linear layers gives the tokens their
  position.

The encoders have the structure and parameter counts of segmentation_models_pytorch 0.6's
``mit_b0`` … ``mit_b5`` (and of the SegFormer authors' ImageNet checkpoints); module names are
our own: :func:`mit_state_dict_from_smp` renames such a state dict for these modules.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import adapt_input_conv
from torch import nn

from pixelwise.errors import ConfigError, WeightsError
from pixelwise.io import load_weights
from pixelwise.models.encoders import WeightsSpec, register_encoder

SMP_EPS = 1e-6
"""LayerNorm epsilon of the blocks and of each stage's output (the embeddings' and the attention's
key/value norms keep PyTorch's default 1e-5, as in the reference implementation)."""


@dataclass(frozen=True)
class MiTConfig:
    """The sizes of one Mix Transformer variant, per stage (shallow to deep)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


WIDE = (64, 128, 320, 512)
MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTConfig(WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTConfig(WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTConfig(WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTConfig(WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTConfig(WIDE, (3, 6, 40, 3)),
}
STAGE_STRIDES = (4, 2, 2, 2)
"""Stride of each stage's patch embedding: the stages output strides 4, 8, 16 and 32."""


class OverlapPatchEmbed(nn.Module):
    """A strided convolution whose kernel overlaps its neighbours (``padding = kernel // 2``), then
    LayerNorm over the channels of each token.

    Shape: ``[N, C_in, H, W] → ([N, h·w, C], h, w)`` with ``h = ⌊(H - 1) / stride⌋ + 1`` (likewise w).
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map shrunk ``sr_ratio`` times per
    side (a ``sr_ratio``×``sr_ratio`` convolution of that stride, then LayerNorm); queries keep every token.

    Shape: tokens ``[N, h·w, dim]`` of an ``h × w`` map → ``[N, h·w, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention width {dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduce: nn.Conv2d | None = None
        self.reduce_norm: nn.LayerNorm | None = None
        if sr_ratio > 1:
            self.reduce = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.reduce_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).view(batch, length, self.num_heads, head_dim).transpose(1, 2)
        context = x
        if self.reduce is not None and self.reduce_norm is not None:
            grid = x.transpose(1, 2).reshape(batch, dim, height, width)
            context = self.reduce_norm(self.reduce(grid).flatten(2).transpose(1, 2))
        # [N, L', 2·dim] → k, v: [N, heads, L', head_dim]
        k, v = self.kv(context).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ / √head_dim) · v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class MixFFN(nn.Module):
    """Linear → depth-wise 3×3 convolution on the token map → GELU → linear.

    Shape: tokens ``[N, h·w, dim]`` of an ``h × w`` map → ``[N, h·w, dim]``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        batch, _, hidden = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, hidden, height, width))
        return self.fc2(self.act(x.flatten(2).transpose(1, 2)))


class MixBlock(nn.Module):
    """Pre-norm transformer block: ``x + attention(norm1(x))``, then ``x + MixFFN(norm2(x))``, each
    residual branch dropped per sample with probability ``drop_path`` while training (stochastic depth).

    Shape: tokens ``[N, h·w, dim]`` → ``[N, h·w, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=SMP_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=SMP_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixStage(nn.Module):
    """Overlapping patch embedding → transformer blocks → LayerNorm, back to a feature map.

    Shape: ``[N, C_in, H, W] → [N, dim, h, w]`` (``h, w`` the embedding's output size).
    """

    def __init__(
        self, in_channels: int, dim: int, stride: int, config: MiTConfig, index: int, drop_paths: Sequence[float]
    ) -> None:
        super().__init__()
        kernel_size = 2 * stride - 1  # 7×7 for the stride-4 stem, 3×3 for the stride-2 stages
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, kernel_size, stride)
        heads, sr_ratio = config.num_heads[index], config.sr_ratios[index]
        self.blocks = nn.ModuleList(MixBlock(dim, heads, config.mlp_ratio, sr_ratio, p) for p in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=SMP_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.patch_embed(x)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class MixTransformerEncoder(nn.Module):
    """A Mix Transformer (``mit_b0`` … ``mit_b5``) returning its feature maps at strides 4, 8, 16, 32.

    Args:
        name: ``"mit_b0"`` … ``"mit_b5"``.
        in_channels: channels of the input image.
        depth: as for timm encoders, the deepest stride is ``2**depth``: depth 2 keeps the first stage
            (stride 4) only, depth 5 (default) all four. Stages beyond it are not built.
        drop_path_rate: stochastic depth; the drop probability grows linearly from 0 at the first block
            to this at the last (over all four stages, whatever ``depth``).

    Shape:
        input ``[N, in_channels, H, W]``, any H and W (a multiple of ``2**depth`` gives exact strides);
        output: list of ``[N, out_channels[i], ⌈H / reductions[i]⌉, ⌈W / reductions[i]⌉]``.

    Example:
        >>> encoder = MixTransformerEncoder("mit_b0")
        >>> [f.shape[1] for f in encoder(torch.zeros(1, 3, 64, 64))]
        [32, 64, 160, 256]
    """

    def __init__(self, name: str, in_channels: int = 3, depth: int = 5, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if name not in MIT_CONFIGS:
            raise ConfigError(f"unknown Mix Transformer {name!r}; choose one of {', '.join(MIT_CONFIGS)}.")
        if not 2 <= depth <= 5:
            raise ConfigError(
                f"encoder_depth={depth} does not fit encoder {name!r}: its shallowest feature has stride 4 "
                "and its deepest stride 32; use encoder_depth 2 to 5."
            )
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels={in_channels!r} must be a positive integer.")
        config = MIT_CONFIGS[name]
        self.name, self.in_channels, self.depth = name, in_channels, depth
        self.out_channels: list[int] = list(config.embed_dims[: depth - 1])
        self.reductions: list[int] = [4 * 2**i for i in range(depth - 1)]
        blocks = sum(config.depths)
        rates = [drop_path_rate * i / (blocks - 1) for i in range(blocks)]  # linear from 0 (no .item(): meta-safe)
        starts = [sum(config.depths[:i]) for i in range(4)]
        stage_inputs = [in_channels, *config.embed_dims[:-1]]
        self.stages = nn.ModuleList(
            MixStage(stage_inputs[i], config.embed_dims[i], STAGE_STRIDES[i], config, i,
                     rates[starts[i] : starts[i] + config.depths[i]])
            for i in range(depth - 1)
        )  # fmt: skip
        self.apply(_init_weights)

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map."""
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    """The SegFormer initialisation: truncated normal (std 0.02) linear layers, He-normal convolutions
    (fan-out, per group), unit LayerNorms, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# -- segmentation_models_pytorch (and SegFormer checkpoint) names ------------------------------------
_SMP_STAGE_KEY = re.compile(r"(patch_embed|block|norm)([1-4])\.(.*)")
_SMP_RENAMES = (
    ("attn.sr.", "attn.reduce."),
    ("attn.norm.", "attn.reduce_norm."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv."),
)


def _rename_smp_key(key: str) -> str:
    """``block2.1.attn.sr.weight`` → ``stages.1.blocks.1.attn.reduce.weight`` (a key of one MiT encoder)."""
    match = _SMP_STAGE_KEY.fullmatch(key)
    if match is None:
        return key
    part, stage, rest = match.groups()
    module = {"patch_embed": "patch_embed", "block": "blocks", "norm": "norm"}[part]
    if part == "block":
        for old, new in _SMP_RENAMES:
            rest = rest.replace(old, new)
    return f"stages.{int(stage) - 1}.{module}.{rest}"


def mit_state_dict_from_smp(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename the MiT encoder keys of a segmentation_models_pytorch (or SegFormer checkpoint) state dict
    to :class:`MixTransformerEncoder`'s; tensors are unchanged (the shapes are the same).

    Args:
        state_dict: an SMP MiT encoder's state dict, or a whole SMP model's with ``prefix="encoder."``.
        prefix: only keys starting with it are renamed (the prefix itself is kept); others pass unchanged.
            The ImageNet classifier (``head.*``) of the SegFormer checkpoints is dropped.

    Example:
        >>> mit_state_dict_from_smp({"encoder.block1.0.mlp.dwconv.dwconv.bias": b}, prefix="encoder.")
        {'encoder.stages.0.blocks.0.mlp.dwconv.bias': b}
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            renamed[key] = value
        elif not key.startswith(prefix + "head."):
            renamed[prefix + _rename_smp_key(key[len(prefix) :])] = value
    return renamed


# -- the encoder factory ------------------------------------------------------------------------------
def _load_local_weights(encoder: MixTransformerEncoder, path: str) -> None:
    """Load a MiT state dict (ours, SMP's, or a SegFormer ImageNet checkpoint) into ``encoder``.

    A first convolution for another number of input channels is adapted as timm does (summed for one
    channel, repeated and rescaled for more); stages deeper than ``encoder.depth`` are ignored.

    Raises:
        WeightsError: the file cannot be read or does not fit the encoder.
    """
    state_dict = load_weights(path)
    if any(key.startswith("patch_embed1.") for key in state_dict):
        state_dict = mit_state_dict_from_smp(state_dict)
    unbuilt = tuple(f"stages.{i}." for i in range(len(encoder.stages), len(STAGE_STRIDES)))
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith(unbuilt)}
    first = "stages.0.patch_embed.proj.weight"
    if first in state_dict and state_dict[first].shape[1] != encoder.in_channels:
        state_dict[first] = adapt_input_conv(encoder.in_channels, state_dict[first])
    try:
        encoder.load_state_dict(state_dict)
    except RuntimeError as error:  # missing/unexpected keys or a shape mismatch
        detail = " ".join(str(error).split())[:300]
        raise WeightsError(
            f"weights file {path!r} does not fit encoder {encoder.name!r}: {detail}. Give a state dict of "
            f"pixelwise's or segmentation_models_pytorch's {encoder.name} encoder, or the SegFormer ImageNet "
            f"checkpoint {encoder.name}.pth."
        ) from error


@register_encoder(*MIT_CONFIGS)
def build_mix_transformer(
    name: str,
    in_channels: int = 3,
    depth: int = 5,
    weights: WeightsSpec = None,
    output_stride: int | None = None,
    drop_path_rate: float = 0.1,
) -> MixTransformerEncoder:
    """The :data:`~pixelwise.models.encoders.EncoderFactory` of ``mit_b0`` … ``mit_b5``.

    Args:
        weights: ``None`` (random initialisation) or a local ``.safetensors``/``.pth`` file (see
            :func:`_load_local_weights`); nothing is ever downloaded for these encoders.
        output_stride: Mix Transformers cannot be dilated: a value below ``2**depth`` warns and
            the encoder is used undilated (stride 32 at depth 5).
        drop_path_rate: stochastic depth of the last block (0.1, as segmentation_models_pytorch).

    Raises:
        ConfigError: ``weights="imagenet"`` (or another non-file), a bad depth or in_channels.
        WeightsError: the weights file does not fit.
    """
    encoder = MixTransformerEncoder(name, in_channels, depth, drop_path_rate)
    if output_stride is not None and output_stride < 2**depth:
        warnings.warn(
            f"encoder {name!r} does not support dilation (encoder_output_stride={output_stride}); "
            f"using it undilated, so its deepest feature has stride {encoder.output_stride}.",
            UserWarning,
            # the caller of the architecture, past build_encoder, EncoderDecoderModel.__init__,
            # the architecture's __init__ and the config-recording wrapper around each of them
            stacklevel=7,
        )
    if weights is None:
        return encoder
    if isinstance(weights, str) and weights.lower() == "imagenet":
        raise ConfigError(
            f"encoder_weights='imagenet' is not available for {name!r}: pixelwise downloads nothing for Mix "
            f"Transformers. Pass a local file instead, encoder_weights='/path/to/{name}.pth' (the SegFormer "
            f"ImageNet checkpoint, or a state dict of an SMP or pixelwise {name} encoder), or None."
        )
    if not isinstance(weights, (str, bytes)) and not hasattr(weights, "__fspath__"):
        raise ConfigError(f"encoder_weights={weights!r} must be None or a path to a local weights file.")
    _load_local_weights(encoder, str(weights))
    return encoder
