"""Tile geometry for overlap-tile inference: where the tiles go and how much each tile pixel counts.

Two geometries, one :class:`AxisPlan` per image axis:

- **Same-size models** (output tile = input tile: every pixelwise model but UNet2015, any callable):
  :func:`scan_axis` places tiles exactly where MONAI's ``sliding_window_inference`` does: a step of
  ``int(tile·(1 - overlap))``, the last tile shifted back to end at the image border, so no tile
  ever needs padding. An axis shorter than the tile is one tile of the axis' length (the model pads
  internally to its stride), or, with ``padding_mode="constant"``, MONAI's zero-padded full tile.
  :func:`fit_tile` may shrink the tile first (never below half of it) where a smaller one covers
  the axis with the same overlap fraction and less computation: with a fixed tile, the padded
  length computed per image pixel jumps with the size (1024 px in 512 tiles at overlap 0.25 takes
  3 tiles, 1536 px of work; 3 tiles of 416 take 1248).
- **Valid-convolution models** (:class:`pixelwise.UNet2015`: those whose class sets ``valid_convolution``,
  see :mod:`pixelwise.models.geometry`): :func:`valid_axis` gives seamless output tiles whose
  input windows reach ``border`` pixels beyond them (mirror-padded outside the image) and start on
  the ``2**depth`` grid, where the network is shift-equivariant: tiled output equals one pass over
  the mirror-padded image.

Coordinates in a plan may leave the image; :func:`read_window` fills such pixels by mirroring
(reflection without repeating the edge, repeated as often as needed, like ``numpy.pad(mode="reflect")``)
or with a constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pixelwise.data.readers import scale_image
from pixelwise.data.transforms import mirror_index
from pixelwise.errors import ConfigError
from pixelwise.models.geometry import forward_mirrored as forward_mirrored  # re-exported: its old home

BLEND_MODES = ("gaussian", "linear", "none")
PADDING_MODES = ("reflect", "constant")
GAUSSIAN_SIGMA_SCALE = 0.125
"""Gaussian window sigma as a fraction of the tile side (MONAI's ``sigma_scale`` default)."""
FIT_MIN_SAVING = 0.03
"""Least fraction of the computed length a smaller tile must save to be chosen by :func:`fit_tile`."""
MIN_GAUSSIAN_WEIGHT = 1e-3
"""Smallest weight of the Gaussian window (MONAI clamps its importance map the same way)."""


class RowSource(Protocol):
    """An image that can be read one band of rows at a time (an array in memory, a TIFF on disk)."""

    shape: tuple[int, int, int]
    """``(C, H, W)``."""

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0 ≤ y < y1`` (inside the image) as ``[C, y1 - y0, W]`` in the stored dtype."""
        ...


class ArraySource:
    """A ``[C, H, W]`` array (any dtype :func:`~pixelwise.data.folder.scale_image` accepts) as a :class:`RowSource`."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)

    def read(self, y0: int, y1: int) -> np.ndarray:
        return self.array[:, y0:y1]


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one image axis of length ``size``.

    Output tile ``i`` covers ``[starts[i], starts[i] + tile_out)`` (clipped to the image) and is
    computed from the input window ``[starts[i] - context, starts[i] - context + tile_in)``.
    """

    size: int
    tile_in: int
    tile_out: int
    context: int
    starts: tuple[int, ...]

    @property
    def input_span(self) -> tuple[int, int]:
        """The input coordinates all tiles together read: ``(first, last + 1)``."""
        return self.starts[0] - self.context, self.starts[-1] - self.context + self.tile_in


def scan_axis(size: int, tile: int | None, overlap: float, pad_to_tile: bool = False) -> AxisPlan:
    """MONAI-compatible tile starts along an axis of length ``size`` (see the module docstring).

    ``pad_to_tile``: an axis shorter than ``tile`` gets one full tile centred on it (MONAI pads
    ``(tile - size) // 2`` before); otherwise that axis is one tile of its own length.
    """
    if tile is None or tile >= size:
        if tile is not None and tile > size and pad_to_tile:
            return AxisPlan(size, tile, tile, 0, (-((tile - size) // 2),))
        return AxisPlan(size, size, size, 0, (0,))
    step = max(int(tile * (1 - overlap)), 1)
    count = math.ceil((size - tile) / step) + 1
    return AxisPlan(size, tile, tile, 0, tuple(min(i * step, size - tile) for i in range(count)))


def fit_tile(size: int, tile: int, overlap: float, multiple: int, margin: int = 0) -> int:
    """The tile side, at most ``tile`` and at least half of it, that scans an axis of ``size`` cheapest.

    The cost of a side ``t`` is its tile count (:func:`scan_axis`) times ``t`` rounded up to
    ``multiple`` (the length a model that pads to its stride computes). Candidates are ``tile`` and the
    multiples of ``multiple`` below it whose tiles still overlap by ``2·margin``; a smaller side must
    save more than :data:`FIT_MIN_SAVING` of the cost (more, smaller tiles cost a little per tile and
    give each pixel less context). Axes no longer than ``tile`` keep it.
    """
    if tile >= size or multiple < 1:
        return tile
    lowest = max(tile // 2, multiple, 1)
    candidates = [tile, *range((tile - 1) // multiple * multiple, lowest - 1, -multiple)]
    best, best_cost = tile, math.inf
    for side in candidates:
        if side - max(int(side * (1 - overlap)), 1) < 2 * margin:
            continue
        cost = len(scan_axis(size, side, overlap).starts) * (-(-side // multiple) * multiple)
        if cost < (1 - FIT_MIN_SAVING) * best_cost:
            best, best_cost = side, cost
    return best


def valid_axis(size: int, tile: int | None, model: Any) -> AxisPlan:
    """Seamless tiles for a valid-convolution model (UNet2015) along an axis of length ``size``.

    ``model`` is the model or its :class:`~pixelwise.models.geometry.ValidGeometry`.

    The input tile is ``model.valid_input_size(tile)`` (at most what covers the whole axis, at least
    what gives an output of one ``2**depth`` step); output tiles start on multiples of the largest
    ``2**depth`` multiple that fits in the output tile, so every input window starts on the grid.
    """
    border, unit = model.border(), 2**model.depth
    whole = model.valid_input_size(size + 2 * border)
    smallest = model.valid_input_size(unit + 2 * border)
    tile_in = whole if tile is None else min(max(model.valid_input_size(tile), smallest), whole)
    tile_out = model.output_size(tile_in)
    step = tile_out // unit * unit
    count = 1 if size <= tile_out else math.ceil((size - tile_out) / step) + 1
    return AxisPlan(size, tile_in, tile_out, border, tuple(i * step for i in range(count)))


def check_margin(plan: AxisPlan, margin: int) -> None:
    """Raise :class:`ConfigError` unless neighbouring tiles overlap by at least ``2·margin`` pixels."""
    if margin < 0 or (margin * 2 >= plan.tile_out and len(plan.starts) > 1):
        raise ConfigError(f"margin={margin} must be ≥ 0 and less than half the tile ({plan.tile_out}).")
    for a, b in zip(plan.starts, plan.starts[1:], strict=False):
        if a + plan.tile_out - b < 2 * margin:
            raise ConfigError(
                f"tiles of {plan.tile_out} px overlap by {a + plan.tile_out - b} px, less than twice margin={margin}: "
                "pixels between them would get no weight; raise overlap or lower margin."
            )


def blend_window(shape: tuple[int, int], mode: str) -> torch.Tensor:
    """Weight of each pixel of an output tile, ``float32 [h, w]``, all positive.

    ``"gaussian"``: MONAI's importance map, ``exp(-d²/(2σ²))`` per axis with ``σ = 0.125·side``
    and ``d`` the distance from the tile centre, multiplied, clamped below at 1e-3 (or the
    smallest value, if larger). ``"linear"``: a tent per axis, ``min(i + 1, side - i)`` scaled to a
    peak of 1, multiplied. ``"none"``: ones (plain averaging).
    """
    if mode == "none":
        return torch.ones(shape, dtype=torch.float32)
    profiles = []
    for side in shape:
        if mode == "gaussian":
            sigma = GAUSSIAN_SIGMA_SCALE * side
            distance = torch.arange(side, dtype=torch.float32) - (side - 1) / 2.0
            profiles.append(torch.exp(distance**2 / (-2 * sigma**2)))
        elif mode == "linear":
            index = torch.arange(side, dtype=torch.float32)
            profiles.append(torch.minimum(index + 1, side - index) / ((side + 1) // 2))
        else:
            raise ConfigError(f"blend={mode!r}; choose one of {', '.join(BLEND_MODES)}.")
    window = profiles[0][:, None] * profiles[1][None, :]
    if mode == "gaussian":
        # The clamp is applied to the 2-D map (as MONAI does), so it is not separable.
        window = window.clamp(min=max(float(window.min()), MIN_GAUSSIAN_WEIGHT))
    return window


def margin_mask(plan: AxisPlan, index: int, margin: int) -> torch.Tensor | None:
    """``[tile_out]`` 0/1 weights that drop ``margin`` pixels at each tile end facing another tile
    (ends at the image border are kept: no other tile covers them). None when ``margin`` is 0."""
    if margin == 0:
        return None
    mask = torch.ones(plan.tile_out, dtype=torch.float32)
    start = plan.starts[index]
    if start > 0:
        mask[:margin] = 0
    if start + plan.tile_out < plan.size:
        mask[-margin:] = 0
    return mask


def read_window(
    source: RowSource, y0: int, y1: int, x0: int, x1: int, padding_mode: str = "reflect", fill: np.ndarray | None = None
) -> np.ndarray:
    """The ``[C, y1 - y0, x1 - x0]`` window of ``source`` as float32 in [0, 1] (``scale_image``).

    Positions outside the image are mirrored (``"reflect"``) or set to ``fill`` (``"constant"``;
    per-channel ``[C]`` values, default 0).
    """
    channels, height, width = source.shape
    if padding_mode == "constant":
        out = np.empty((channels, y1 - y0, x1 - x0), dtype=np.float32)
        out[:] = (np.zeros(channels, np.float32) if fill is None else np.asarray(fill, np.float32))[:, None, None]
        top, bottom, left, right = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
        if top < bottom and left < right:
            inside = scale_image(source.read(top, bottom)[:, :, left:right])
            out[:, top - y0 : bottom - y0, left - x0 : right - x0] = inside
        return out
    rows = mirror_index(y0, y1, height)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    band = source.read(lo, hi)
    if not (y0 == lo and y1 == hi):  # the window leaves the image: gather mirrored rows
        band = band[:, rows - lo]
    band = band[:, :, x0:x1] if x0 >= 0 and x1 <= width else band[:, :, mirror_index(x0, x1, width)]
    return scale_image(band)
