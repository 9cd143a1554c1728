"""Training targets that teach a network to separate touching objects.

- :func:`unet_weight_map`: the U-Net paper's per-pixel loss weights (Ronneberger et al. 2015, eq. 2),
  large in the thin background gaps between neighbouring objects.
- :func:`separate_touching`: cut those gaps into the labels ("the small separation borders that we
  introduce between touching cells"), so a semantic target can express them at all.
- :func:`boundary_target`: the alternative three-class target background / interior / boundary.
- :func:`instances_from_mask`: instance labels from a semantic mask by connected components
  (correct only where objects do not touch; supply an ``instances/`` folder otherwise).

Instance labels are ``int [H, W]`` with 0 = background and one positive id per object.
Distances are in pixels, between pixel centres.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pixelwise.errors import ConfigError
from pixelwise.modes import IGNORE_INDEX

W0 = 10.0
"""U-Net paper: weight of the border term."""
SIGMA = 5.0
"""U-Net paper: width of the border term in pixels."""
WEIGHT_TOLERANCE = 1e-4
"""Border-term values below this (absolute weight) are dropped; it sets how far each object's distances are
computed (about 24 px for ``w0=10, sigma=5``), which is what makes the map fast."""
MAX_CLASS_WEIGHT = 10.0
"""Cap of the class-balancing weight: a random crop holding a sliver of an object would otherwise give
that sliver a weight of thousands."""
BOUNDARY_WIDTH = 2
"""Default boundary width of :func:`boundary_target`, in pixels."""
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
"""Class ids of the boundary target."""


def instances_from_mask(mask: np.ndarray, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Instance labels from a semantic mask: the 8-connected components of each class other than 0.

    Components are found per class, so touching objects of different classes stay apart; touching
    objects of one class become one instance.

    Shape:
        ``mask`` integer ``[H, W]`` class ids → ``int32 [H, W]``, 0 = background (and ignored pixels).
    """
    mask = np.asarray(mask)
    out = np.zeros(mask.shape, np.int32)
    for value in np.unique(mask):
        if value == 0 or value == ignore_index:
            continue
        labels, _ = ndimage.label(mask == value, structure=np.ones((3, 3), bool))
        offset = int(out.max())
        out[labels > 0] = labels[labels > 0] + offset
    return out


def class_balance_weights(
    foreground: np.ndarray, valid: np.ndarray | None = None, max_weight: float = MAX_CLASS_WEIGHT
) -> np.ndarray:
    """``w_c(x)``: inverse class frequency of background and foreground in this image, with mean 1.

    A class of frequency ``f`` (among the valid pixels) gets ``1 / (2 f)``, so that both classes carry
    the same total weight and the mean weight over the valid pixels is 1; weights are capped at
    ``max_weight``. An image holding only one class gets 1 everywhere.

    Shape:
        ``foreground`` bool ``[H, W]``, ``valid`` bool ``[H, W]`` or None (all) → ``float32 [H, W]``.
    """
    foreground = np.asarray(foreground, bool)
    valid = np.ones_like(foreground) if valid is None else np.asarray(valid, bool)
    total = int(valid.sum())
    fg = int((foreground & valid).sum())
    if total == 0 or fg in (0, total):
        return np.ones(foreground.shape, np.float32)
    w_fg = min(total / (2 * fg), max_weight)
    w_bg = min(total / (2 * (total - fg)), max_weight)
    return np.where(foreground, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)


def border_reach(w0: float, sigma: float, tolerance: float = WEIGHT_TOLERANCE) -> float:
    """Largest ``d1 + d2`` (pixels) at which the border term still reaches ``tolerance`` (``inf`` for
    ``tolerance <= 0``: exact everywhere)."""
    if tolerance <= 0:
        return math.inf
    if w0 <= tolerance:
        return 0.0
    return sigma * math.sqrt(2 * math.log(w0 / tolerance))


def two_nearest_distances(labels: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to its nearest and second-nearest object, exact up to ``reach`` pixels.

    One Euclidean distance transform per object, each on the object's bounding box grown by ``reach``
    (pixels outside that window are farther than ``reach`` from the object); the two smallest values
    per pixel are kept with ``np.minimum``. Cost: objects × window area, not objects × image area.

    Shape:
        ``labels`` int ``[H, W]`` → ``(d1, d2)`` float32 ``[H, W]``; ``inf`` where no object (or no
        second object) lies within ``reach``. Inside an object its own distance is 0.
    """
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    height, width = labels.shape
    margin = math.ceil(min(reach, height + width))
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        y0, y1 = max(box[0].start - margin, 0), min(box[0].stop + margin, height)
        x0, x1 = max(box[1].start - margin, 0), min(box[1].stop + margin, width)
        distance = ndimage.distance_transform_edt(labels[y0:y1, x0:x1] != label).astype(np.float32)
        near, second = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]  # views: updated in place
        np.minimum(second, np.maximum(near, distance), out=second)
        np.minimum(near, distance, out=near)
    return d1, d2


def unet_weight_map(
    instance_labels: np.ndarray,
    w0: float = W0,
    sigma: float = SIGMA,
    class_balance: bool = True,
    valid: np.ndarray | None = None,
    tolerance: float = WEIGHT_TOLERANCE,
) -> np.ndarray:
    """The U-Net border weight map ``w(x) = w_c(x) + w0 · exp(-(d1(x) + d2(x))² / (2σ²))``.

    ``d1``/``d2`` are the distances (pixels, centre to centre) from a pixel to the nearest pixel of the
    nearest and of the second-nearest object. As in the paper's figure 3d, the border term is applied
    to background pixels only (inside an object it is 0): it marks the gaps the network must learn to
    leave between objects. Fewer than two objects: no border term. ``w_c`` is
    :func:`class_balance_weights` of ``instance_labels > 0`` (or 1 with ``class_balance=False``).
    Border values below ``tolerance`` are dropped (see :data:`WEIGHT_TOLERANCE`); a 512×512 image with
    200 objects takes a few tens of milliseconds on one core.

    Args:
        instance_labels: 0 = background, one positive id per object.
        w0, sigma: border weight and width (pixels); the paper's 10 and 5 by default.
        class_balance: add the class-balancing ``w_c``; else ``w_c = 1``.
        valid: pixels that count for the class frequencies (e.g. ``mask != ignore_index``); None: all.
        tolerance: see :data:`WEIGHT_TOLERANCE`; 0 computes every distance (slower, exact).

    Shape:
        ``instance_labels`` int ``[H, W]`` → ``float32 [H, W]``.

    Raises:
        ConfigError: ``sigma <= 0`` or ``w0 < 0``.

    Example:
        >>> labels = np.zeros((32, 32), np.int32); labels[8:24, 4:15] = 1; labels[8:24, 17:28] = 2
        >>> weights = unet_weight_map(labels)
        >>> round(float(weights[16, 16]), 2)  # in the 2-pixel gap: d1 + d2 = 1 + 2, w_c = 1024 / (2 · 672)
        9.11
    """
    if sigma <= 0 or w0 < 0:
        raise ConfigError(f"unet_weight_map needs sigma > 0 and w0 >= 0; got sigma={sigma}, w0={w0}.")
    labels = np.asarray(instance_labels)
    foreground = labels > 0
    weights = class_balance_weights(foreground, valid) if class_balance else np.ones(labels.shape, np.float32)
    reach = border_reach(w0, sigma, tolerance)
    if reach == 0 or not foreground.any():
        return weights
    d1, d2 = two_nearest_distances(labels, reach)
    gap = ~foreground & np.isfinite(d2)
    total = d1[gap] + d2[gap]
    weights[gap] += np.float32(w0) * np.exp(-(total * total) / np.float32(2 * sigma * sigma))
    return weights


def _touching(labels: np.ndarray, radius: int, footprint: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Object pixels with another label within the footprint: ``(near another object, near background)``.

    The image edge counts as neither (``mode="nearest"`` repeats the edge pixels).
    """
    size = None if footprint is not None else 2 * radius + 1
    highest = ndimage.maximum_filter(labels, size=size, footprint=footprint, mode="nearest")
    without_background = np.where(labels > 0, labels, np.iinfo(labels.dtype).max)
    lowest = ndimage.minimum_filter(without_background, size=size, footprint=footprint, mode="nearest")
    inside = labels > 0
    near_object = inside & ((highest > labels) | (lowest < labels))
    lowest_any = ndimage.minimum_filter(labels, size=size, footprint=footprint, mode="nearest")
    near_background = inside & (lowest_any == 0)
    return near_object, near_background


def separate_touching(instance_labels: np.ndarray, gap: int = 1) -> np.ndarray:
    """Set to background every object pixel that has a pixel of another object within ``gap`` pixels
    (chessboard distance), leaving a background gap of at least ``2 · gap`` pixels between objects that
    touched, so that their 8-connected components come apart.

    Shape:
        ``instance_labels`` int ``[H, W]`` → ``int32 [H, W]`` (same ids; objects shrink only where they touch).

    Raises:
        ConfigError: ``gap < 0``.
    """
    if gap < 0:
        raise ConfigError(f"separation gap must be >= 0 pixels; got {gap}.")
    labels = np.asarray(instance_labels).astype(np.int32)
    if gap == 0:
        return labels
    near_object, _ = _touching(labels, gap)
    return np.where(near_object, 0, labels).astype(np.int32)


def disk(radius: int) -> np.ndarray:
    """Boolean ``[2r+1, 2r+1]`` footprint of the pixels within Euclidean distance ``radius`` of the centre."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy * yy + xx * xx <= radius * radius


def boundary_target(instance_labels: np.ndarray, width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """Three-class target: 0 background, 1 interior, 2 boundary.

    A pixel of an object is boundary when a pixel of a different label (background or another object)
    lies within Euclidean distance ``width``; the image edge is no boundary (objects cut by a crop keep
    their interior there). Every object class becomes "object": class identity is not kept.

    Shape:
        ``instance_labels`` int ``[H, W]`` → ``int64 [H, W]`` in {0, 1, 2}.

    Raises:
        ConfigError: ``width < 1``.
    """
    if width < 1:
        raise ConfigError(f"boundary width must be at least 1 pixel; got {width}.")
    labels = np.asarray(instance_labels).astype(np.int32)
    near_object, near_background = _touching(labels, width, disk(width))
    target = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.int64)
    target[near_object | near_background] = BOUNDARY
    return target
