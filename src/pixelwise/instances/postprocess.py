"""From a network's class probabilities to an instance label image.

``to_instances(probs, method)``:

- ``"components"``: the 8-connected components of each foreground class (boundary target: of the
  interior class, each then grown over the foreground pixels it reaches). Objects separated by a
  gap of at least one background pixel come apart; touching ones stay merged.
- ``"watershed"``: marker-controlled watershed (scikit-image) inside the foreground. Markers come
  from the interior probability (``markers="interior"``, the boundary target's natural choice) or
  from the regional maxima of the foreground's distance transform (``markers="distance"``: one marker
  per bulge deeper than ``h`` pixels, which splits convex objects that touch along a neck).

Both then fill holes inside each object and drop objects smaller than ``min_size`` pixels, and number
the objects 1..M in raster order of their first pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from pixelwise.data.targets import TARGETS
from pixelwise.data.weights import BACKGROUND, INTERIOR
from pixelwise.errors import ConfigError, ShapeError, unknown_name

METHODS = ("components", "watershed")
MARKERS = ("auto", "interior", "distance")
MIN_SIZE = 10
"""Default smallest object kept, in pixels."""
MARKER_H = 2.0
"""Default depth (pixels of distance) a distance-transform maximum needs to seed its own object."""
EIGHT_CONNECTED = np.ones((3, 3), bool)


def _as_numpy(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 3:
        raise ShapeError(f"probs must be [K, H, W] class probabilities; got shape {list(probs.shape)}.")
    return probs


def semantic_probs(probs: np.ndarray | torch.Tensor, target: str = "semantic") -> np.ndarray:
    """Class probabilities of the data's classes: a boundary-target model's ``[3, H, W]`` become
    ``[background, object = interior + boundary]``; a binary model's ``[1, H, W]`` foreground
    probability becomes ``[1 - p, p]``; anything else is returned as float32.

    Shape:
        ``[K, H, W]`` → ``[K', H, W]`` float32.
    """
    probs = _as_numpy(probs)
    if target not in TARGETS:
        raise unknown_name("target", target, TARGETS)
    if probs.shape[0] == 1:
        return np.concatenate([1 - probs, probs])
    if target == "boundary":
        return np.stack([probs[BACKGROUND], 1 - probs[BACKGROUND]])
    return probs


def class_map(probs: np.ndarray | torch.Tensor, threshold: float | None = None) -> np.ndarray:
    """Class id per pixel: ``argmax`` over ``[K, H, W]``; with ``threshold``, a pixel is foreground when
    ``1 - p(background) > threshold`` and then takes the likeliest foreground class.

    Shape:
        ``[K, H, W]`` (K >= 2) → ``int64 [H, W]``.
    """
    probs = _as_numpy(probs)
    if threshold is None:
        return probs.argmax(0).astype(np.int64)
    classes = probs[1:].argmax(0).astype(np.int64) + 1
    return np.where(1 - probs[0] > threshold, classes, 0)


def _distance_markers(region: np.ndarray, h: float) -> np.ndarray:
    from skimage.morphology import h_maxima

    distance = ndimage.distance_transform_edt(region)
    peaks = h_maxima(distance, h).astype(bool) & region
    markers, _ = ndimage.label(peaks, structure=EIGHT_CONNECTED)
    return markers, distance


def _watershed_region(region: np.ndarray, h: float) -> np.ndarray:
    """Split one class's foreground by watershed on its distance transform; components without a
    marker (all thinner than ``h``) keep one label each."""
    from skimage.segmentation import watershed

    markers, distance = _distance_markers(region, h)
    labels = watershed(-distance, markers, mask=region, connectivity=2)
    rest, _ = ndimage.label(region & (labels == 0), structure=EIGHT_CONNECTED)
    return np.where(rest > 0, rest + labels.max(), labels)


def to_instances(
    probs: np.ndarray | torch.Tensor,
    method: str = "components",
    *,
    target: str = "semantic",
    markers: str = "auto",
    threshold: float | None = None,
    marker_threshold: float = 0.5,
    h: float = MARKER_H,
    min_size: int = MIN_SIZE,
    fill_holes: bool = True,
    close_gap: int = 0,
) -> np.ndarray:
    """Instance labels from class probabilities.

    Args:
        probs: softmax probabilities ``[K, H, W]`` (class 0 = background), or a binary model's sigmoid
            ``[1, H, W]``; a tensor or an array.
        method: ``"components"`` or ``"watershed"`` (see the module docstring).
        target: what the model was trained on: ``"semantic"`` or ``"boundary"`` (then ``probs`` is
            ``[3, H, W]`` background / interior / boundary).
        markers: watershed markers: ``"interior"`` (boundary target only), ``"distance"``, or ``"auto"``
            (interior for the boundary target, else distance).
        threshold: foreground where ``1 - p(background) > threshold``; None: where the argmax is not 0.
        marker_threshold: interior probability above which a pixel seeds a marker (``markers="interior"``).
        h: depth in pixels a distance maximum needs to seed a marker (``markers="distance"``).
        min_size: objects smaller than this many pixels are removed.
        fill_holes: fill the holes inside each object (pixels of other objects are never taken).
        close_gap: for a model trained with separation gaps of this many pixels: give the background
            pixels lying between two objects back to the nearer one (:func:`close_gaps`).

    Shape:
        ``probs`` ``[K, H, W]`` → ``int32 [H, W]``, 0 = background, objects 1..M.

    Raises:
        ConfigError: unknown method, target or markers, or interior markers for a semantic target.
        ShapeError: ``probs`` is not ``[K, H, W]``, or not ``[3, H, W]`` for the boundary target.

    Example:
        >>> probs = np.zeros((2, 8, 8), np.float32); probs[0] = 1; probs[:, 1:3, 1:3] = [[[0]], [[1]]]
        >>> to_instances(probs, min_size=1).max()
        np.int32(1)
    """
    if method not in METHODS:
        raise unknown_name("instance method", str(method), METHODS)
    if markers not in MARKERS:
        raise unknown_name("watershed markers", str(markers), MARKERS)
    if target not in TARGETS:
        raise unknown_name("target", str(target), TARGETS)
    probs = _as_numpy(probs)
    if target == "boundary":
        if probs.shape[0] != 3:
            raise ShapeError(f"the boundary target needs probs [3, H, W]; got {list(probs.shape)}.")
        labels = _boundary_instances(probs, method, markers, threshold, marker_threshold, h)
    else:
        if markers == "interior":
            raise ConfigError("markers='interior' needs a model trained with target='boundary'; use 'distance'.")
        classes = class_map(semantic_probs(probs), threshold)
        labels = np.zeros(classes.shape, np.int32)
        for value in np.unique(classes[classes > 0]):  # per class: objects never straddle two classes
            region = classes == value
            if method == "components":
                found, _ = ndimage.label(region, structure=EIGHT_CONNECTED)
            else:
                found = _watershed_region(region, h)
            labels = np.where(found > 0, found + labels.max(), labels).astype(np.int32)
    return clean_instances(close_gaps(labels, close_gap), min_size=min_size, fill_holes=fill_holes)


def close_gaps(labels: np.ndarray, gap: int) -> np.ndarray:
    """Undo :func:`~pixelwise.instances.separate_touching` approximately: a background pixel that has one
    object on one side and another object on the opposite side (along a row, a column or a diagonal),
    each within ``2 · gap`` pixels, joins the nearer one. Background along an object's free outline, and
    at the ends of a contact line, stays background.

    Shape:
        int ``[H, W]`` → ``int32 [H, W]``.
    """
    labels = np.asarray(labels).astype(np.int32)
    if gap <= 0 or labels.max() == 0:
        return labels
    reach = 2 * gap
    height, width = labels.shape
    padded = np.pad(labels, reach)
    best = np.zeros_like(labels)
    best_distance = np.full(labels.shape, reach + 1)

    def nearest(dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
        """The first object met walking from each pixel in direction (dy, dx), and its distance in steps."""
        found, distance = np.zeros_like(labels), np.zeros(labels.shape, int)
        for step in range(reach, 0, -1):  # far to near, so that the nearest object is written last
            y, x = reach + step * dy, reach + step * dx
            seen = padded[y : y + height, x : x + width]
            found = np.where(seen > 0, seen, found)
            distance = np.where(seen > 0, step, distance)
        return found, distance

    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ahead, ahead_distance = nearest(dy, dx)
        behind, behind_distance = nearest(-dy, -dx)
        between = (labels == 0) & (ahead > 0) & (behind > 0) & (ahead != behind)
        choice = np.where(ahead_distance <= behind_distance, ahead, behind)
        distance = np.minimum(ahead_distance, behind_distance)
        better = between & (distance < best_distance)
        best[better], best_distance[better] = choice[better], distance[better]
    return np.where(best > 0, best, labels).astype(np.int32)


def _boundary_instances(
    probs: np.ndarray, method: str, markers: str, threshold: float | None, marker_threshold: float, h: float
) -> np.ndarray:
    from skimage.segmentation import watershed

    classes = class_map(semantic_probs(probs, "boundary"), threshold)
    foreground = classes > 0
    if method == "components" or markers == "auto" or markers == "interior":
        seeds = probs.argmax(0) == INTERIOR if method == "components" else probs[INTERIOR] > marker_threshold
        seeds, _ = ndimage.label(seeds & foreground, structure=EIGHT_CONNECTED)
        # components: flat relief, so each foreground pixel joins the interior it is connected to, nearest first
        relief = np.zeros(probs.shape[1:], np.float32) if method == "components" else 1 - probs[INTERIOR]
        return watershed(relief, seeds, mask=foreground, connectivity=2)
    return _watershed_region(foreground, h)


def clean_instances(labels: np.ndarray, min_size: int = MIN_SIZE, fill_holes: bool = True) -> np.ndarray:
    """Fill holes inside each object, remove objects smaller than ``min_size`` pixels, renumber 1..M.

    Shape:
        int ``[H, W]`` → ``int32 [H, W]``.
    """
    labels = np.asarray(labels).astype(np.int32)
    if fill_holes:
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            window = labels[box]  # a view: filled in place
            filled = ndimage.binary_fill_holes(window == label) & (window == 0)
            window[filled] = label
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = True  # background stays 0
    return relabel(np.where(small[labels], 0, labels))


def relabel(labels: np.ndarray) -> np.ndarray:
    """Number the objects 1..M in raster order of their first pixel (0 stays background).

    Shape:
        int ``[H, W]`` → ``int32 [H, W]``.
    """
    flat = np.asarray(labels).ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[(ids != 0)][np.argsort(first[ids != 0], kind="stable")]
    lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.int32)
    lookup[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lookup[flat].reshape(np.shape(labels))
