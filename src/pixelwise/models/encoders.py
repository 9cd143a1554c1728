"""Encoders: any timm model that can return a feature pyramid (``features_only=True``).

An encoder maps ``[N, in_channels, H, W]`` to a list of feature maps, shallow to deep.
Decoders only read :attr:`TimmEncoder.out_channels` and :attr:`TimmEncoder.reductions`
(the stride of each feature map relative to the input), never the encoder's name.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from pixelwise.errors import ConfigError, WeightsError, unknown_name
from pixelwise.io import load_weights
from pixelwise.models.encoder_names import encoder_aliases, resolve_encoder_name

WeightsSpec = str | os.PathLike | None


SIZE_OPTIONS: tuple[dict[str, bool], ...] = (
    {"dynamic_img_size": True, "dynamic_img_pad": True},  # ViT, DeiT, EVA: position embeddings resampled
    {"dynamic_img_size": True},  # Swin, Swin V2: attention masks built per input size, windows padded
    {"strict_img_size": False},
    {},  # CNNs, and transformers without a dynamic mode (MaxViT, CoAtNet, Hiera)
)
"""timm options that let a model take inputs of any size, most flexible first; the first that the model's
constructor accepts is used (a user's own ``encoder_kwargs`` take precedence)."""

PYRAMID_STRIDES = (4, 8, 16, 32)
"""Strides of the feature pyramid built on a single-stride encoder (plain ViTs), as in ViTDet."""
PROBE_SIZE = 224
"""Smallest height and width tried when looking for an encoder's input multiple (see :func:`_input_rule`)."""
MAX_WINDOW = 16
"""Largest attention window (in feature pixels at the deepest stride) searched for an input multiple."""
DILATE_FIRST_BLOCK = "dilate_first_block"
"""The pixelwise encoder option (in ``encoder_kwargs``, not passed to timm) that dilates every convolution of a
dilated stage at the stage's rate, as segmentation_models_pytorch's own encoders are dilated; timm keeps the
first block's first convolution at the previous stage's rate. See :func:`dilate_whole_stages`."""
_PROBE_ERRORS = (RuntimeError, AssertionError, TypeError, ValueError, NotImplementedError, AttributeError)


def _create(name: str, meta: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model(name, features_only=True, pretrained=False, **kwargs)``, on the meta device
    (shapes only: no memory, no compute) when ``meta``."""
    if meta:
        with torch.device("meta"):
            return timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    return timm.create_model(name, features_only=True, pretrained=False, **kwargs)


def _probe(name: str, output_stride: int | None, options: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """Pick timm's feature class and size options for ``name`` and describe its levels, without weights.

    timm's "getter" feature class (built on ``forward_intermediates``) prunes the stages after the
    last requested level; some native feature classes (EfficientNet, MobileNetV3) keep running
    every block, which wastes compute and leaves parameters without gradients (DDP then fails).
    Models without ``forward_intermediates`` fall back to timm's default feature class. Of
    :data:`SIZE_OPTIONS`, the first the model accepts is kept.

    Returns:
        The keyword arguments to build the model with (the user's ``options`` included), and timm's
        description of its default feature levels.
    """
    stride = {"output_stride": output_stride} if output_stride else {}
    error: Exception | None = None
    # out_indices=1 (the last level only) for ViTs shallower than timm's default of three levels
    attempts = itertools.product(("getter", None), SIZE_OPTIONS, ({}, {"out_indices": 1}))
    for feature_cls, size_options, indices in attempts:
        kwargs = {**size_options, **({"feature_cls": feature_cls} if feature_cls else {}), **options, **stride}
        try:
            return kwargs, _create(name, meta=True, **kwargs, **indices).feature_info.get_dicts()
        except _PROBE_ERRORS as err:
            error = err
    what = f" with output_stride={output_stride}" if output_stride else ""
    given = f" and encoder options {dict(options)}" if options else ""
    raise ConfigError(
        f"timm encoder {name!r} cannot return a feature pyramid{what}{given} ({error}). "
        "Choose an encoder with feature_info, e.g. 'resnet34', 'efficientnet_b0', 'convnext_tiny'."
    ) from error


def _runs(model: nn.Module, in_channels: int, sizes: Iterable[tuple[int, int]]) -> bool:
    """Whether ``model`` (on the meta device) accepts inputs of every ``(height, width)`` in ``sizes``."""
    try:
        for height, width in sizes:
            model(torch.empty(1, in_channels, height, width, device="meta"))
    except _PROBE_ERRORS:
        return False
    return True


def _input_rule(name: str, in_channels: int, base: int, kwargs: Mapping[str, Any]) -> tuple[int, int | None]:
    """``(input_multiple, tile_size)``: what the input must be padded to, found by running the model on
    the meta device (shapes only) rather than by reading each family's window sizes.

    Most models accept any multiple of ``base`` (the deepest stride); windowed attention without
    internal padding (MaxViT) needs a multiple of ``base`` × the window: the smallest multiple that works
    at three consecutive multiples of itself is kept. Models whose attention spans a fixed grid (CoAtNet,
    Hiera) accept only their ``img_size``: ``tile_size`` is then that size, and inputs are padded to a multiple of it
    and cut into tiles (attention stays within a tile).

    Raises:
        ConfigError: no input size works.
    """
    model = _create(name, meta=True, **kwargs).eval()  # eval: BatchNorm on pooled 1×1 maps takes batch 1
    for window in range(1, MAX_WINDOW + 1):
        multiple = base * window
        # three consecutive multiples from a size every encoder takes (Inception's valid convolutions need
        # ~75 pixels): a multiple of the true requirement passes, any smaller one fails on one of them
        start = multiple * math.ceil(PROBE_SIZE / multiple)
        if _runs(model, in_channels, [(start, start + multiple), (start + 2 * multiple, start + multiple)]):
            return multiple, None
    size = kwargs.get("img_size") or getattr(model, "pretrained_cfg", {}).get("input_size", (0, 0, 0))[-2:]
    tile = size if isinstance(size, int) else max(size)
    if tile % base == 0 and _runs(model, in_channels, [(tile, tile)]):
        return tile, tile
    raise ConfigError(
        f"encoder {name!r} rejects every input size pixelwise tried (multiples of {base} up to "
        f"{base * MAX_WINDOW}, and {tile}×{tile}); pass img_size=<a multiple of {base}> or choose another encoder."
    )


class SimplePyramid(nn.Module):
    """A feature pyramid at strides 4, 8, 16, 32 from the single-stride output of a plain ViT (ViTDet's
    "simple feature pyramid", Li et al. 2022): two ×2 transposed convolutions, one, none, and a 2×2
    max-pool. The token map is first resampled to stride 16 when the patch size is not 16 (EVA-02's 14).

    Shape: ``[N, C, ⌈H / patch⌉, ⌈W / patch⌉]`` → list of ``[N, channels[i], H / strides[i], W / strides[i]]``
    (channels ``C / 4, C / 2, C, C``) for an ``H × W`` input, H and W multiples of ``strides[-1]``.
    """

    def __init__(self, channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        half, quarter = channels // 2, channels // 4
        levels = {
            4: nn.Sequential(
                nn.ConvTranspose2d(channels, half, 2, stride=2),
                LayerNorm2d(half),
                nn.GELU(),
                nn.ConvTranspose2d(half, quarter, 2, stride=2),
            ),
            8: nn.ConvTranspose2d(channels, half, 2, stride=2),
            16: nn.Identity(),
            32: nn.MaxPool2d(2),
        }
        self.strides = list(strides)
        self.out_channels = [{4: quarter, 8: half}.get(s, channels) for s in self.strides]
        self.levels = nn.ModuleList(levels[s] for s in self.strides)

    def forward(self, tokens: torch.Tensor, input_size: tuple[int, int]) -> list[torch.Tensor]:
        grid = (input_size[0] // 16, input_size[1] // 16)
        if tuple(tokens.shape[-2:]) != grid:
            tokens = F.interpolate(tokens, size=grid, mode="bilinear", align_corners=False)
        return [level(tokens) for level in self.levels]


class TimmEncoder(nn.Module):
    """A timm backbone returning the feature maps at strides 2, 4, ..., ``2**depth`` (those it has).

    Transformers get what they need to take any input size: timm's dynamic-size options where the
    model has them (ViT, EVA, Swin), an :attr:`input_multiple` covering their attention windows
    (MaxViT), tiles of their fixed size (CoAtNet, Hiera; see :attr:`tile_size`), and, for plain ViTs
    whose features all have one stride, a :class:`SimplePyramid` at strides 4 … 32.

    Args:
        name: a timm model name (``timm.list_models()``); an ``smp``-style ``"tu-"`` prefix, SMP's encoder
            names (``"efficientnet-b0"``) and Keras segmentation_models' (``"efficientnetb0"``) are accepted
            (see :mod:`pixelwise.models.encoder_names`).
        in_channels: channels of the input image. With pretrained weights and ``in_channels != 3``
            timm adapts the first convolution (summing for 1 channel, repeating and rescaling for more).
        depth: number of stride-2 stages used, 1 to 5; the deepest feature has stride ``2**depth``.
        weights: ``None`` (random init), ``"imagenet"`` (timm's default pretrained weights,
            downloaded by timm), or a path to a local ``.safetensors``/``.pth`` timm state dict.
        output_stride: dilate the last stages so the deepest stride is this (8 or 16), for
            encoders that support it (ResNets, EfficientNets, ...).
        timm_kwargs: passed on to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ``depth`` of a ViT,
            ...); they take precedence over the size options pixelwise picks (:data:`SIZE_OPTIONS`). One key is
            pixelwise's own: ``dilate_first_block=True`` (:data:`DILATE_FIRST_BLOCK`) dilates the first block
            of each dilated stage at the stage's rate too, as segmentation_models_pytorch's own ResNets are
            (see :func:`dilate_whole_stages`); models converted from them record it.

    Shape:
        input ``[N, in_channels, H, W]`` with H and W multiples of :attr:`input_multiple`;
        output: list of ``[N, out_channels[i], H / reductions[i], W / reductions[i]]``.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        weights: WeightsSpec = None,
        output_stride: int | None = None,
        timm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        timm_kwargs = dict(timm_kwargs or {})
        dilate_first_block = bool(timm_kwargs.pop(DILATE_FIRST_BLOCK, False))
        name = resolve_encoder_name(name)
        if not timm.is_model(name):
            choices = [*timm.list_models(), *encoder_aliases()]
            raise unknown_name("encoder", name, choices, "(any timm model name works)")
        if not 1 <= depth <= 5:
            raise ConfigError(f"encoder_depth={depth} is out of range; use 1 to 5 (the usual is 5).")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels={in_channels!r} must be a positive integer.")
        if output_stride is not None and output_stride >= 2**depth:
            output_stride = None  # no dilation needed: the encoder never goes deeper than that

        self.name, self.in_channels, self.depth = name, in_channels, depth
        kwargs, levels = _probe(name, output_stride, timm_kwargs)
        if len({level["reduction"] for level in levels}) == 1:  # a plain ViT: one stride, build a pyramid
            kwargs["out_indices"] = 1  # timm: the last block only
            self.pyramid: SimplePyramid | None = _pyramid(name, levels[-1], depth)
            self.out_channels, self.reductions = self.pyramid.out_channels, self.pyramid.strides
        else:
            self.pyramid = None
            undilated = _probe(name, None, timm_kwargs)[1] if output_stride else levels
            kwargs["out_indices"] = self._levels(levels, undilated)
        kwargs["in_chans"] = in_channels
        base = max(2**depth, 16) if self.pyramid else 2**depth  # the pyramid is built from a stride-16 grid
        self.input_multiple, self.tile_size = _input_rule(name, in_channels, base, kwargs)
        self.model = create_timm_model(name, weights, features_only=True, **kwargs)
        if dilate_first_block and output_stride is not None and self.pyramid is None:
            dilate_whole_stages(self.model, [undilated[i]["reduction"] for i in kwargs["out_indices"]], output_stride)
        # timm's feature wrappers return NCHW; some models' native wrappers report NHWC (output_fmt)
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

    def _levels(self, levels: list[dict], undilated: list[dict]) -> tuple[int, ...]:
        """Set :attr:`out_channels` and :attr:`reductions` from timm's levels up to stride ``2**depth``;
        return their indices.

        Raises:
            ConfigError: the encoder is not as deep as ``depth``, or a stride is not a power of two.
        """
        max_reduction = max(level["reduction"] for level in undilated)
        if max_reduction < 2**self.depth:
            raise ConfigError(
                f"encoder {self.name!r} reduces the input by at most {max_reduction}, but encoder_depth={self.depth} "
                f"needs {2**self.depth}; use encoder_depth <= {max_reduction.bit_length() - 1}."
            )
        indices = tuple(i for i, lv in enumerate(undilated) if lv["reduction"] <= 2**self.depth)
        reductions = [levels[i]["reduction"] for i in indices]
        if any(r & (r - 1) for r in reductions):
            raise ConfigError(
                f"encoder {self.name!r} has feature strides {reductions}; pixelwise's decoders need powers of two "
                "(2, 4, 8, ...). Choose another encoder."
            )
        self.out_channels = [levels[i]["num_chs"] for i in indices]
        self.reductions = reductions
        return indices

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map (smaller than ``2**depth`` when dilated)."""
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self._tiled(x) if self.tile_size else self.model(x)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        if self.pyramid is not None:
            return self.pyramid(features[-1], (x.shape[-2], x.shape[-1]))
        return features

    def _tiled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the model on the ``tile_size`` tiles of ``x`` as one batch and put each feature map back together.

        Shape: ``[N, C, rows·T, cols·T]`` → the model's features, each ``[N, c, rows·t, cols·t]``."""
        n, c, height, width = x.shape
        t = self.tile_size
        rows, cols = height // t, width // t
        tiles = x.reshape(n, c, rows, t, cols, t).permute(0, 2, 4, 1, 3, 5).reshape(n * rows * cols, c, t, t)
        features = []
        for f in self.model(tiles):
            fc, fh, fw = f.shape[1:]
            f = f.reshape(n, rows, cols, fc, fh, fw).permute(0, 3, 1, 4, 2, 5)
            features.append(f.reshape(n, fc, rows * fh, cols * fw))
        return features


def _stage_units(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """The modules that make up ``model``'s feature levels, in order, each with the index of the level it
    belongs to: the feature modules (timm's ``feature_info``) and their siblings, a sibling counting to the
    first feature level at or after it (``conv1``, ``bn1`` → level 0; EfficientNet's ``blocks.3`` → the
    level of ``blocks.4``).

    Raises:
        ConfigError: the feature modules are not found (a feature class that renames them).
    """
    modules = dict(model.named_modules())
    found = []
    for feature in model.feature_info.module_name():
        names = [p + f for p in ("", "model.") for f in (feature, feature.replace(".", "_"))]
        name = next((n for n in names if n in modules), None)
        if name is None:
            raise ConfigError(f"{DILATE_FIRST_BLOCK}: cannot find the encoder's feature module {feature!r}.")
        found.append(name)
    units, level = [], 0
    for parent in dict.fromkeys(n.rpartition(".")[0] for n in found):  # in order, once each
        for child, module in modules[parent].named_children():
            full = f"{parent}.{child}" if parent else child
            if level < len(found):
                units.append((module, level))
            if full in found:
                level = found.index(full) + 1
    return units


def dilate_whole_stages(model: nn.Module, reductions: Sequence[int], output_stride: int) -> None:
    """Give every convolution (larger than 1×1) of the levels past ``output_stride`` that level's rate, stride 1.

    timm dilates a stage past the output stride but keeps its first block's first convolution at the
    previous stage's rate; segmentation_models_pytorch's own encoders dilate all of them. This makes a timm
    model the latter.

    Args:
        model: a timm features model (its ``feature_info`` names the modules of each level).
        reductions: the undilated stride of each of its feature levels.
        output_stride: the stride the model is dilated to.
    """
    for unit, level in _stage_units(model):
        rate = reductions[level] // output_stride
        if rate <= 1:
            continue
        for conv in (m for m in unit.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1):
            conv.stride, conv.dilation = (1, 1), (rate, rate)
            conv.padding = tuple((k // 2) * rate for k in conv.kernel_size)


def _pyramid(name: str, level: dict, depth: int) -> SimplePyramid:
    """The :class:`SimplePyramid` for a single-stride encoder with timm feature ``level``, up to ``2**depth``.

    Raises:
        ConfigError: ``depth`` < 2 (the pyramid starts at stride 4).
    """
    strides = [s for s in PYRAMID_STRIDES if s <= 2**depth]
    if not strides:
        raise ConfigError(
            f"encoder {name!r} is a plain vision transformer (one stride, {level['reduction']}): pixelwise builds "
            f"a feature pyramid at strides {list(PYRAMID_STRIDES)} for it, so use encoder_depth >= 2."
        )
    return SimplePyramid(level["num_chs"], strides)


def create_timm_model(name: str, weights: WeightsSpec, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with the weights ``weights`` describes: None (random), ``"imagenet"``
    (timm's download) or a local ``.safetensors``/``.pth`` timm state dict.

    Raises:
        WeightsError: ImageNet weights cannot be downloaded, or a weights file does not fit the model.
        ConfigError: ``weights`` is neither None, ``"imagenet"`` nor an existing file.
    """
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if isinstance(weights, str) and weights.lower() == "imagenet":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except OSError as error:
            raise WeightsError(
                f"could not get ImageNet weights for encoder {name!r}: timm's download failed "
                f"({str(error).splitlines()[0]}). Offline, pass a local file instead: "
                f"encoder_weights='/path/to/{name}.safetensors' (a timm state dict of this model), "
                "or encoder_weights=None to train from scratch."
            ) from error
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"encoder_weights={str(weights)!r} is neither None, 'imagenet' nor an existing file; "
            "pass a path to a .safetensors or .pth state dict of the timm model."
        )
    state_dict = load_weights(path)
    try:
        overlay = {"state_dict": state_dict}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as error:  # load_state_dict: missing/unexpected keys or shape mismatch
        raise WeightsError(
            f"weights file {str(path)!r} does not fit encoder {name!r}: {str(error).splitlines()[0]} "
            f"Save the state dict of timm.create_model({name!r}) instead."
        ) from error


def feature_at(features: list[torch.Tensor], reductions: list[int], reduction: int) -> torch.Tensor | None:
    """The deepest feature map with exactly ``reduction`` stride, or None if there is none."""
    for feature, r in zip(reversed(features), reversed(reductions), strict=True):
        if r == reduction:
            return feature
    return None


def channels_at(channels: Sequence[int], reductions: Sequence[int], reduction: int) -> int:
    """The channels of the feature :func:`feature_at` picks for ``reduction``, or 0 if there is none."""
    matches = [c for c, r in zip(channels, reductions, strict=True) if r == reduction]
    return matches[-1] if matches else 0


def decoder_strides(depth: int) -> list[int]:
    """The stride after each ×2 step of a decoder from stride ``2**depth`` back to 1, deepest first."""
    return [2 ** (depth - 1 - i) for i in range(depth)]


def decode_with_skips(
    blocks: Iterable[nn.Module],
    skip_reductions: Sequence[int | None],
    features: list[torch.Tensor],
    reductions: list[int],
) -> torch.Tensor:
    """Run ``blocks`` in turn from the deepest feature; block ``i`` gets ``(x, skip)``, where ``skip`` is
    the feature at stride ``skip_reductions[i]`` (None where there is none, or where that is None)."""
    x = features[-1]
    for block, reduction in zip(blocks, skip_reductions, strict=True):
        x = block(x, None if reduction is None else feature_at(features, reductions, reduction))
    return x


EncoderFactory = Callable[..., nn.Module]
"""Builds a non-timm encoder: ``factory(name, in_channels, depth, weights, output_stride, **encoder_kwargs)``
→ a module with ``name``, ``in_channels``, ``depth``, ``out_channels``, ``reductions``, ``output_stride``
(optionally ``input_multiple``) and a ``forward`` returning the feature list, shallow to deep (what
:class:`TimmEncoder` offers decoders). ``encoder_kwargs`` are passed only when the user gave some."""
_ENCODERS: dict[str, EncoderFactory] = {}


def register_encoder(*names: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: build the encoders ``names`` with the decorated factory instead of timm (e.g. the Mix
    Transformers ``mit_b0`` … ``mit_b5``, which timm lacks)."""

    def register(factory: EncoderFactory) -> EncoderFactory:
        for name in names:
            _ENCODERS[name] = factory
        return factory

    return register


def build_encoder(
    name: str,
    in_channels: int,
    depth: int,
    weights: WeightsSpec,
    output_stride: int | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
) -> TimmEncoder:
    """A :class:`TimmEncoder` (or a registered encoder, see :func:`register_encoder`), dilated to
    ``output_stride`` when that is given; ``encoder_kwargs`` go to ``timm.create_model``.

    If the encoder cannot be dilated (VGG, ViT, ...), warn and build it undilated instead.

    Raises:
        ConfigError: the encoder cannot be built at all (unknown name, no feature pyramid, ...).
    """
    name = resolve_encoder_name(name, known=set(_ENCODERS))
    encoder_kwargs = dict(encoder_kwargs or {})
    if name in _ENCODERS:
        return _ENCODERS[name](name, in_channels, depth, weights, output_stride, **encoder_kwargs)
    if not timm.is_model(name):
        choices = [*_ENCODERS, *encoder_aliases(), *timm.list_models()]
        raise unknown_name("encoder", name, choices, "(any timm model name works)")
    try:
        return TimmEncoder(name, in_channels, depth, weights, output_stride, encoder_kwargs)
    except ConfigError:
        if output_stride is None:
            raise
        # raises again if the problem is not dilation
        encoder = TimmEncoder(name, in_channels, depth, weights, None, encoder_kwargs)
    warnings.warn(
        f"encoder {encoder.name!r} does not support dilation (encoder_output_stride={output_stride}); "
        f"using it undilated, so its deepest feature has stride {encoder.output_stride}.",
        UserWarning,
        # the caller of the architecture (e.g. DeepLabV3Plus(...)), past EncoderDecoderModel.__init__,
        # the architecture's __init__ and the config-recording wrapper around each of them
        stacklevel=6,
    )
    return encoder
