"""Encoders: any timm model that can return a feature pyramid (``features_only=True``).

An encoder maps ``[N, in_channels, H, W]`` to a list of feature maps, shallow to deep.
Decoders only read :attr:`TimmEncoder.out_channels` and :attr:`TimmEncoder.reductions`
(the stride of each feature map relative to the input), never the encoder's name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from pixelwise.errors import ConfigError, WeightsError, unknown_name
from pixelwise.io import load_weights

WeightsSpec = str | os.PathLike | None


def _probe(name: str, output_stride: int | None) -> tuple[str | None, list[dict]]:
    """Pick timm's feature class for ``name`` and describe its levels, without allocating weights.

    timm's "getter" feature class (built on ``forward_intermediates``) prunes the stages after the
    last requested level; some native feature classes (EfficientNet, MobileNetV3) keep running
    every block, which wastes compute and leaves parameters without gradients (DDP then fails).
    Models without ``forward_intermediates`` fall back to timm's default feature class.
    """
    kwargs = {"output_stride": output_stride} if output_stride else {}
    error: Exception | None = None
    for feature_cls in ("getter", None):
        extra = {"feature_cls": feature_cls} if feature_cls else {}
        try:
            with torch.device("meta"):
                model = timm.create_model(name, features_only=True, pretrained=False, **kwargs, **extra)
            return feature_cls, model.feature_info.get_dicts()
        except (RuntimeError, AssertionError, TypeError, ValueError, NotImplementedError, AttributeError) as err:
            error = err
    what = f" with output_stride={output_stride}" if output_stride else ""
    raise ConfigError(
        f"timm encoder {name!r} cannot return a feature pyramid{what} ({error}). "
        "Choose an encoder with feature_info, e.g. 'resnet34', 'efficientnet_b0', 'convnext_tiny'."
    ) from error


class TimmEncoder(nn.Module):
    """A timm backbone returning the feature maps at strides 2, 4, ..., ``2**depth``.

    Args:
        name: a timm model name (``timm.list_models()``); an ``smp``-style ``"tu-"`` prefix is accepted.
        in_channels: channels of the input image. With pretrained weights and ``in_channels != 3``
            timm adapts the first convolution (summing for 1 channel, repeating and rescaling for more).
        depth: number of stride-2 stages used, 1 to 5; the deepest feature has stride ``2**depth``.
        weights: ``None`` (random init), ``"imagenet"`` (timm's default pretrained weights,
            downloaded by timm), or a path to a local ``.safetensors``/``.pth`` timm state dict.
        output_stride: dilate the last stages so the deepest stride is this (8 or 16), for
            encoders that support it (ResNets, EfficientNets, ...).

    Shape:
        input ``[N, in_channels, H, W]`` with H and W multiples of ``2**depth``;
        output: list of ``[N, out_channels[i], H / reductions[i], W / reductions[i]]``.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        weights: WeightsSpec = None,
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        name = name.removeprefix("tu-")
        if not timm.is_model(name):
            raise unknown_name("encoder", name, timm.list_models(), "(any timm model name works)")
        if not 1 <= depth <= 5:
            raise ConfigError(f"encoder_depth={depth} is out of range; use 1 to 5 (the usual is 5).")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels={in_channels!r} must be a positive integer.")
        if output_stride is not None and output_stride >= 2**depth:
            output_stride = None  # no dilation needed: the encoder never goes deeper than that

        feature_cls, levels = _probe(name, output_stride)
        undilated = levels if output_stride is None else _probe(name, None)[1]
        max_reduction = max(level["reduction"] for level in undilated)
        if max_reduction < 2**depth:
            raise ConfigError(
                f"encoder {name!r} reduces the input by at most {max_reduction}, but encoder_depth={depth} "
                f"needs {2**depth}; use encoder_depth <= {max_reduction.bit_length() - 1}."
            )
        indices = [i for i, lv in enumerate(undilated) if lv["reduction"] <= 2**depth]
        reductions = [levels[i]["reduction"] for i in indices]
        if any(r & (r - 1) for r in reductions):
            raise ConfigError(f"encoder {name!r} has feature strides {reductions}; pixelwise needs powers of two.")

        self.name = name
        self.in_channels = in_channels
        self.depth = depth
        self.out_channels: list[int] = [levels[i]["num_chs"] for i in indices]
        self.reductions: list[int] = reductions
        self.model = self._build(name, in_channels, indices, weights, output_stride, feature_cls)

    @staticmethod
    def _build(name, in_channels, indices, weights, output_stride, feature_cls) -> nn.Module:
        kwargs = dict(features_only=True, out_indices=tuple(indices), in_chans=in_channels)
        if feature_cls:
            kwargs["feature_cls"] = feature_cls
        if output_stride:
            kwargs["output_stride"] = output_stride
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
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict}, **kwargs)
        except RuntimeError as error:  # load_state_dict: missing/unexpected keys or shape mismatch
            raise WeightsError(
                f"weights file {str(path)!r} does not fit encoder {name!r}: {str(error).splitlines()[0]} "
                f"Save the state dict of timm.create_model({name!r}) instead."
            ) from error

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map (smaller than ``2**depth`` when dilated)."""
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x)


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
"""Builds a non-timm encoder: ``factory(name, in_channels, depth, weights, output_stride)`` → a module with
``name``, ``in_channels``, ``depth``, ``out_channels``, ``reductions``, ``output_stride`` and a ``forward``
returning the feature list, shallow to deep (what :class:`TimmEncoder` offers decoders)."""
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
    name: str, in_channels: int, depth: int, weights: WeightsSpec, output_stride: int | None = None
) -> TimmEncoder:
    """A :class:`TimmEncoder` (or a registered encoder, see :func:`register_encoder`), dilated to
    ``output_stride`` when that is given.

    If the encoder cannot be dilated (VGG, ...), warn and build it undilated instead.

    Raises:
        ConfigError: the encoder cannot be built at all (unknown name, no feature pyramid, ...).
    """
    if name in _ENCODERS:
        return _ENCODERS[name](name, in_channels, depth, weights, output_stride)
    try:
        return TimmEncoder(name, in_channels, depth, weights, output_stride=output_stride)
    except ConfigError:
        if output_stride is None:
            raise
        encoder = TimmEncoder(name, in_channels, depth, weights)  # raises again if the problem is not dilation
    warnings.warn(
        f"encoder {encoder.name!r} does not support dilation (encoder_output_stride={output_stride}); "
        f"using it undilated, so its deepest feature has stride {encoder.output_stride}.",
        UserWarning,
        # the caller of the architecture (e.g. DeepLabV3Plus(...)), past EncoderDecoderModel.__init__,
        # the architecture's __init__ and the config-recording wrapper around each of them
        stacklevel=6,
    )
    return encoder
