"""The original U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), as published: unpadded convolutions.

Every 3×3 convolution is *valid* (no padding), so each one trims a pixel from every side and the
output is smaller than the input: 572×572 → 388×388 for the paper's network. The network never
pads; instead, only some input sizes fit exactly (every map before a 2×2 pooling must have an even
size), and :meth:`UNet2015.valid_input_size`, :meth:`UNet2015.output_size` and
:meth:`UNet2015.border` give the tile geometry an overlap-tile predictor needs.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pixelwise.errors import ConfigError, InputSizeError
from pixelwise.models.base import SegmentationModel
from pixelwise.models.blocks import ConvBnAct, make_activation
from pixelwise.models.geometry import center_crop
from pixelwise.models.registry import register_model
from pixelwise.models.unet import deep_supervision_heads, deep_supervision_stages

PAPER_DEPTH = 4
"""Number of 2×2 max-poolings in the paper's network (five resolution levels)."""

_CONV_TRIM = 4
"""Pixels two unpadded 3×3 convolutions remove from a side length (2 per convolution)."""


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(
            f"depth={depth!r} is not valid; give the number of 2×2 poolings, an int ≥ 1 (the paper uses 4)."
        )
    return depth


def _trace(n: int, depth: int) -> tuple[int, int] | None:
    """Follow a side length ``n`` through the network: ``(bottleneck size, output size)``, or None
    if some map would have an odd size before a pooling or shrink below one pixel."""
    size = n
    if size < 1:
        return None
    for _ in range(depth):  # contracting path: two valid 3×3 convs, then a 2×2 pool
        size -= _CONV_TRIM
        if size < 2 or size % 2:  # an odd map would lose its last row/column to the pool
            return None
        size //= 2
    size -= _CONV_TRIM  # bottleneck convs
    if size < 1:
        return None
    bottleneck = size
    for _ in range(depth):  # expanding path: 2×2 up-conv doubles, two valid 3×3 convs trim
        size = 2 * size - _CONV_TRIM
        if size < 1:
            return None
    return bottleneck, size


class _default_depth_from_instance:
    """Make a function of ``depth`` callable both ways, with the right default depth.

    On the class (``UNet2015.output_size(572)``) it is a plain static function whose ``depth``
    defaults to the paper's 4; on a model (``model.output_size(572)``) ``depth`` defaults to that
    model's own depth, so a shallower model never silently answers for the paper's geometry.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    def __get__(self, instance: UNet2015 | None, owner: type | None = None) -> Callable[..., Any]:
        if instance is None:
            return self.fn
        fn, signature = self.fn, self.signature

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            if "depth" not in signature.bind(*args, **kwargs).arguments:
                kwargs["depth"] = instance.depth
            return fn(*args, **kwargs)

        return bound


class _DoubleConv(nn.Sequential):
    """Two unpadded 3×3 convolutions, each followed by ReLU (and BatchNorm before it if asked)."""

    def __init__(self, in_channels: int, out_channels: int, batchnorm: bool) -> None:
        super().__init__(
            ConvBnAct(in_channels, out_channels, 3, padding=0, use_batchnorm=batchnorm),
            ConvBnAct(out_channels, out_channels, 3, padding=0, use_batchnorm=batchnorm),
        )


class _UpBlock(nn.Module):
    """One expanding step: 2×2 up-convolution halving the channels, concatenation with the
    center-cropped contracting feature, two unpadded 3×3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, batchnorm: bool) -> None:
        super().__init__()
        # The paper's up-convolution has no ReLU of its own; the ReLUs follow the 3×3 convs.
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = _DoubleConv(2 * out_channels, out_channels, batchnorm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))


@register_model("unet2015")
class UNet2015(SegmentationModel):
    """The U-Net of Ronneberger et al. (2015) exactly as published: valid convolutions, no padding.

    Contracting path: per level, two unpadded 3×3 convolutions + ReLU, then 2×2 max-pooling
    (stride 2); the channels double each level (64, 128, 256, 512, 1024 for the paper). Expanding
    path: 2×2 up-convolution halving the channels, concatenation with the center-cropped feature
    of the same level, two unpadded 3×3 convolutions + ReLU. A 1×1 convolution maps to ``classes``.
    Weights are He-normal initialised (std ``sqrt(2/N)``, N = inputs of one unit), biases zero.

    Unlike the other pixelwise models the input is *not* padded and the output is smaller than the
    input by :meth:`border` pixels on every side (92 for depth 4: 572 → 388). Only some input sizes
    fit (``2**depth · k + c``); :meth:`valid_input_size` gives the next one. To segment a whole
    image, mirror-pad it by the border and predict in overlapping tiles, as the paper does.

    Args:
        in_channels: input image channels (1 in the paper).
        classes: output channels (class scores; 2 in the paper).
        base_channels: channels of the first level (64 in the paper); level ``i`` has ``base·2**i``.
        depth: number of 2×2 poolings (4 in the paper, i.e. five resolution levels).
        batchnorm: BatchNorm after every 3×3 convolution (not in the paper; the conv then has no bias).
        activation: ``None`` (logits), ``"sigmoid"``, ``"softmax"``, ... or a callable.
        deep_supervision: add a 1×1 convolution to ``classes`` on the expanding path's steps between the
            deepest and the last (strides 2 and 4 for the paper's depth 4), for the training loss
            (:meth:`forward_with_aux`; each output covers a larger centred region than the main output, as
            valid convolutions trim less at coarser strides); ``forward`` ignores them. Needs ``depth >= 3``.

    Shape: ``[N, in_channels, H, W] → [N, classes, H - 2·border, W - 2·border]``, where H and W
    must be valid input sizes (:meth:`valid_input_size`); otherwise :class:`InputSizeError`.

    Example:
        >>> model = UNet2015(in_channels=1, classes=2)
        >>> model(torch.zeros(1, 1, 572, 572)).shape
        torch.Size([1, 2, 388, 388])
        >>> UNet2015.output_size(572), UNet2015.valid_input_size(570), UNet2015.border()
        (388, 572, 92)
    """

    valid_convolution = True  # the geometry below, see pixelwise.models.geometry
    input_multiple = 1  # never used: forward() does not pad, it validates the size instead

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 2,
        base_channels: int = 64,
        depth: int = PAPER_DEPTH,
        batchnorm: bool = False,
        activation: str | Callable | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        _check_depth(depth)
        aux_stages = deep_supervision_stages(type(self).__name__, depth) if deep_supervision else []
        for name, value in (("in_channels", in_channels), ("classes", classes), ("base_channels", base_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is not valid; give an int ≥ 1.")
        self.in_channels, self.classes, self.depth = in_channels, classes, depth
        channels = [base_channels * 2**level for level in range(depth + 1)]
        # The contracting path including the bottleneck (the last block, which is not pooled after).
        inputs = [in_channels, *channels[:-1]]
        self.encoder = nn.ModuleList(_DoubleConv(i, o, batchnorm) for i, o in zip(inputs, channels, strict=True))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.decoder = nn.ModuleList(
            _UpBlock(channels[level + 1], channels[level], batchnorm) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], classes, kernel_size=1)
        self.aux_stages = aux_stages
        if deep_supervision:  # decoder step k ends at level depth - 1 - k (stride 2**(depth - 1 - k))
            self.aux_heads = deep_supervision_heads(channels[depth - 1 :: -1], aux_stages, classes)
            self.aux_strides = tuple(2 ** (depth - 1 - k) for k in aux_stages)
        self.activation = make_activation(activation)
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation as in the paper: normal with std ``sqrt(2/N)``, N = inputs of one unit."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                # With kernel 2 and stride 2 the kernels do not overlap: each output pixel sees
                # one input pixel in every input channel, so N = in_channels (PyTorch's fan_in
                # for transposed weights would count out_channels·k² instead).
                fan_in = module.in_channels
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * math.prod(module.kernel_size)
            else:
                continue
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- size arithmetic ---------------------------------------------------------------------
    @_default_depth_from_instance
    def is_valid_input_size(n: int, depth: int = PAPER_DEPTH) -> bool:
        """Whether an input side length ``n`` fits the network without padding or lost pixels."""
        return _trace(operator.index(n), _check_depth(depth)) is not None

    @_default_depth_from_instance
    def valid_input_size(n: int, depth: int = PAPER_DEPTH) -> int:
        """The smallest valid input side length ≥ ``n`` (``UNet2015.valid_input_size(570) == 572``).

        On the class ``depth`` defaults to 4; on a model, to the model's depth.
        """
        n, depth = operator.index(n), _check_depth(depth)
        # Valid sizes are 2**depth apart above the smallest one, so this loop is short.
        size = max(n, 1)
        while _trace(size, depth) is None:
            size += 1
        return size

    @_default_depth_from_instance
    def output_size(n: int, depth: int = PAPER_DEPTH) -> int:
        """The output side length for an input side length ``n`` (``UNet2015.output_size(572) == 388``).

        On the class ``depth`` defaults to 4; on a model, to the model's depth.

        Raises:
            InputSizeError: ``n`` is not a valid input size (the message names the nearest ones).
        """
        n, depth = operator.index(n), _check_depth(depth)
        traced = _trace(n, depth)
        if traced is None:
            raise _size_error("input size", n, depth)
        return traced[1]

    @_default_depth_from_instance
    def border(depth: int = PAPER_DEPTH) -> int:
        """Pixels lost on each side, ``(input - output) / 2``: 92 for depth 4 (572 → 388).

        The same for every valid input size. An output tile of side ``m`` needs the input tile
        of side ``m + 2·border`` centred on it. On the class ``depth`` defaults to 4; on a model,
        to the model's depth.
        """
        depth = _check_depth(depth)
        n = UNet2015.valid_input_size(1, depth)
        return (n - UNet2015.output_size(n, depth)) // 2

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``[N, in_channels, H, W] → [N, classes, H - 2·border, W - 2·border]`` (no padding).

        Raises:
            InputSizeError: wrong layout, or H or W is not a valid input size.
        """
        self._check_valid(x)
        return self.activation(self.forward_valid(x))

    def _check_valid(self, x: torch.Tensor) -> None:
        self.check_input(x)
        for name, n in zip(("height", "width"), x.shape[-2:], strict=True):
            if _trace(int(n), self.depth) is None:
                raise _size_error(f"input {name}", int(n), self.depth)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward` and, with ``deep_supervision``, the auxiliary logits (finest first, each at its
        stride, centred on the main output and covering more than it; see ``aux_strides``).

        Raises:
            InputSizeError: as :meth:`forward`.
        """
        if not self.has_aux_outputs:
            return self(x), []
        self._check_valid(x)
        stages = self._stages(x)
        aux = [head(stages[i]) for head, i in zip(self.aux_heads, self.aux_stages, strict=True)]
        return self.activation(self.head(stages[-1])), [self.activation(a) for a in aux]

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every expanding step, deepest first."""
        skips, stages = [], []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x, skip)
            stages.append(x)
        return stages

    def forward_valid(self, x: torch.Tensor) -> torch.Tensor:
        """The network itself on an input of valid size: logits, ``border`` pixels smaller per side."""
        return self.head(self._stages(x)[-1])

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "UNet2015 does not pad its input (its output is smaller than its input); call model(x) "
            "with a valid input size, see UNet2015.valid_input_size."
        )


def _size_error(what: str, n: int, depth: int) -> InputSizeError:
    """The error for an input side length ``n`` that does not fit: nearest valid sizes and the fix."""
    above = UNet2015.valid_input_size(n, depth)
    below = next((m for m in range(n - 1, 0, -1) if _trace(m, depth) is not None), None)
    smallest = UNet2015.valid_input_size(1, depth)
    step = 2**depth
    bottleneck, _ = _trace(smallest, depth) or (0, 0)
    offset = smallest - step * bottleneck
    form = f"{step}k + {offset} for k ≥ {bottleneck}: {smallest}, {smallest + step}, {smallest + 2 * step}, ..."
    nearest = (
        f"the nearest valid sizes are {below} and {above}"
        if below is not None
        else f"the smallest valid size is {above}"
    )
    return InputSizeError(
        f"{what} {n} is not valid for UNet2015(depth={depth}): {nearest} (valid sizes are {form}). "
        f"Crop or mirror-pad the input to a valid size, e.g. UNet2015.valid_input_size({n}, depth={depth}) "
        f"== {above}, or predict in overlapping tiles."
    )
