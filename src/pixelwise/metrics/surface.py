"""Surface distances per class: Hausdorff, HD95, average symmetric surface distance (ASSD), normalised surface Dice.

How one (image, class) pair is scored, the same way as MONAI 1.6's ``HausdorffDistanceMetric``,
``SurfaceDistanceMetric(symmetric=True)`` and ``SurfaceDiceMetric`` (``use_subvoxels=False``, Euclidean)::

    preds [N, H, W] labels / [N, K, H, W] scores ──argmax──► labels ──► per image and class c: masks P, T
    P, T ──edge = mask minus its erosion by the 4-neighbour cross (outside the image counts as background)──► ∂P, ∂T
    d_pt = distance of each ∂P pixel to the nearest ∂T pixel    (scipy Euclidean distance transform, ``spacing``)
    d_tp = distance of each ∂T pixel to the nearest ∂P pixel
    hausdorff = max(max d_pt, max d_tp)            hd95 = max(p95(d_pt), p95(d_tp))   (linear interpolation)
    assd      = mean of d_pt and d_tp pooled       nsd  = share of pooled distances <= tolerance

Edges are pixels of the mask itself (a one-pixel object is all edge), and a mask touching the image border has an
edge there. Distances are in pixels, or in the units of ``spacing`` (the physical size of a pixel, rows then
columns); the NSD ``tolerance`` is in the same units.

Empty masks and the NaN policy (MONAI's conventions, kept so numbers compare):

==============================  ========================  ======
class present in                hausdorff, hd95, assd     nsd
==============================  ========================  ======
both prediction and target      finite                    [0, 1]
only one of them                ``inf``                   0
neither                         NaN (undefined)           NaN
==============================  ========================  ======

One deliberate difference: where a class is on one side only, MONAI's HD95 is NaN (``torch.quantile`` of all-``inf``
distances interpolates ``inf - inf``), so its mean silently drops that image; here HD95 is ``inf`` like the
Hausdorff distance. Everywhere else the four scores equal MONAI's (float32 there, float64 here).

Means over images (:class:`SurfaceDistances`, and :func:`surface_distances` without ``per_image``) skip NaN and
keep ``inf``: one image that misses a class entirely makes that class's mean distance ``inf``, as in MONAI's
``aggregate()``; NSD stays finite and is the score to read when that happens. Background (class 0) is left out by
default (``include_background=False``) and reported as NaN, so index ``c`` is always class ``c``.

``ignore_index``: as in MONAI, pixels whose target is ``ignore_index`` are set to background in both masks before
edges are found, so the border of a void region can be surface on both sides.

Cost: one binary erosion per batch and two distance transforms per (image, class), each cropped to the box around
both edges (exact: every edge pixel lies inside it). A 512 × 512 image with a few classes takes milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from pixelwise.errors import ConfigError
from pixelwise.metrics._common import (
    DEFAULT_THRESHOLD,
    Prepared,
    StreamingMetric,
    check_num_classes,
    distributed_sum,
)
from pixelwise.metrics.boundary import _class_masks
from pixelwise.modes import IGNORE_INDEX, Mode, check_mode

SURFACE_KEYS: tuple[str, ...] = ("hausdorff", "hd95", "assd", "nsd")
"""The per-class scores :func:`surface_distances` and :class:`SurfaceDistances` report, in this order."""

DEFAULT_TOLERANCE = 2.0
"""Default NSD tolerance: a surface pixel within 2 pixels (or 2 units of ``spacing``) of the other surface counts."""

HD_PERCENTILE = 95.0
"""The percentile of the ``hd95`` entry (the robust Hausdorff distance of the medical challenges)."""

SPATIAL_DIMS = 2
"""Masks are 2-D: ``spacing`` has one entry per image axis (rows, columns)."""

_EDGE_STRUCTURE = ndimage.generate_binary_structure(SPATIAL_DIMS, 1)[None, None]
"""The 4-neighbour cross of scipy's default erosion, lifted to ``[N, K, H, W]`` (no erosion across N or K)."""

Spacing = float | Sequence[float] | None


def _check_spacing(spacing: Spacing) -> tuple[float, float] | None:
    """Return ``spacing`` as (row, column) sizes, or None for unit pixels."""
    if spacing is None:
        return None
    values = (spacing,) * SPATIAL_DIMS if isinstance(spacing, int | float) else tuple(spacing)
    positive = all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)
    if len(values) != SPATIAL_DIMS or not positive:
        raise ConfigError(
            f"spacing is one positive pixel size or (row, column) sizes; got {spacing!r}. Example: spacing=(0.5, 0.8)."
        )
    return (float(values[0]), float(values[1]))


def _check_tolerance(tolerance: float | Sequence[float], entries: int) -> np.ndarray:
    """Return the NSD tolerance per class ``[K]``; one number applies to every class."""
    values = [tolerance] * entries if isinstance(tolerance, int | float) else list(tolerance)
    if len(values) != entries or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(
            f"tolerance is one finite distance >= 0 or one per class ({entries}); got {tolerance!r}. "
            f"Example: tolerance={DEFAULT_TOLERANCE}."
        )
    return np.asarray(values, dtype=np.float64)


def mask_edges(masks: np.ndarray) -> np.ndarray:
    """Surface pixels of bool masks ``[N, K, H, W]``: the mask minus its erosion by the 4-neighbour cross.

    Outside the image counts as background, so a mask touching the border has an edge there (MONAI's convention).
    """
    return masks & ~ndimage.binary_erosion(masks, structure=_EDGE_STRUCTURE, border_value=0)


def _directed_distances(
    edges_from: np.ndarray, edges_to: np.ndarray, spacing: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ∂from → nearest ∂to and back, each over its own edge pixels (both edge sets non-empty)."""
    rows, cols = np.nonzero(edges_from | edges_to)
    # the box around both edge sets holds every feature pixel, so the cropped transform is exact
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    a, b = edges_from[box], edges_to[box]
    forward = ndimage.distance_transform_edt(~b, sampling=spacing)[a]
    backward = ndimage.distance_transform_edt(~a, sampling=spacing)[b]
    return forward, backward


def _pair_scores(
    pred_edges: np.ndarray, true_edges: np.ndarray, spacing: tuple[float, float] | None, tolerance: float
) -> tuple[float, float, float, float]:
    """(hausdorff, hd95, assd, nsd) of one image and class, with the empty-mask conventions of the module table."""
    has_pred, has_true = bool(pred_edges.any()), bool(true_edges.any())
    if not (has_pred or has_true):
        return (math.nan,) * len(SURFACE_KEYS)  # type: ignore[return-value]
    if not (has_pred and has_true):
        return math.inf, math.inf, math.inf, 0.0
    d_pt, d_tp = _directed_distances(pred_edges, true_edges, spacing)
    pooled = np.concatenate([d_pt, d_tp])
    hausdorff = max(d_pt.max(), d_tp.max())
    hd95 = max(np.percentile(d_pt, HD_PERCENTILE), np.percentile(d_tp, HD_PERCENTILE))
    return float(hausdorff), float(hd95), float(pooled.mean()), float(np.mean(pooled <= tolerance))


def surface_table(
    prepared: Prepared,
    *,
    spacing: Spacing = None,
    tolerance: float | Sequence[float] = DEFAULT_TOLERANCE,
    include_background: bool = False,
) -> torch.Tensor:
    """Per-image, per-class surface scores of prepared labels (see :func:`~pixelwise.metrics._common.prepare`).

    Returns:
        float64 ``[4, N, K]``, rows in :data:`SURFACE_KEYS` order; NaN where undefined or for a left-out
        background class.
    """
    sizes = _check_spacing(spacing)
    tolerances = _check_tolerance(tolerance, prepared.num_classes)
    pred, true, valid = _class_masks(prepared)
    if valid is not None:  # MONAI's ignore: void pixels are background in both masks
        pred, true = pred & valid, true & valid
    pred_edges, true_edges = mask_edges(pred.cpu().numpy()), mask_edges(true.cpu().numpy())
    n, k = pred_edges.shape[:2]
    table = np.full((len(SURFACE_KEYS), n, k), np.nan)
    skip_background = not include_background and not prepared.multilabel
    for image, cls in np.ndindex(n, k):
        if skip_background and cls == 0:
            continue
        table[:, image, cls] = _pair_scores(pred_edges[image, cls], true_edges[image, cls], sizes, tolerances[cls])
    return torch.from_numpy(table)


class SurfaceDistances(StreamingMetric):
    """Streaming surface scores: per-class means over images of Hausdorff, HD95, ASSD and NSD.

    Each :meth:`update` scores every (image, class) pair of a batch (definitions and the empty-mask conventions in
    the module docstring) and adds the defined (non-NaN) values to per-class sums; :meth:`compute` divides. Means
    skip NaN (a class in neither prediction nor target) and keep ``inf`` (a class on one side only), as MONAI's
    ``aggregate(reduction="mean_batch")`` does.

    Args:
        num_classes: K (binary: 1 or 2, reported as background, foreground).
        mode: "multiclass" (default), "binary" or "multilabel"; inputs as in
            :class:`~pixelwise.metrics.ConfusionMatrix` (scores are argmaxed or thresholded first).
        spacing: pixel size, one number or (row, column); None: 1 (distances in pixels).
        tolerance: NSD tolerance in the units of ``spacing``, one number or one per class (default 2).
        include_background: also score class 0 (multiclass, binary); default False reports it as NaN.
            Multilabel channels are all classes and are always scored.
        ignore_index: target value of void pixels (default 255), background in both masks; None: no void.
        threshold: binary/multilabel cut on probabilities (default 0.5).
        from_logits: binary/multilabel float ``preds`` are logits (default); False: probabilities.
        sync_dist: sum over an initialised ``torch.distributed`` group in :meth:`compute` (default True).

    Raises:
        ConfigError: a bad mode, num_classes, spacing or tolerance.

    Example:
        >>> metric = SurfaceDistances(num_classes=2, tolerance=1.0)
        >>> target = torch.zeros(1, 16, 16, dtype=torch.long)
        >>> target[:, 4:12, 4:12] = 1
        >>> metric.update(target.roll(2, dims=2), target)
        >>> metric.compute()["hausdorff"]
        tensor([nan, 2.], dtype=torch.float64)
    """

    def __init__(
        self,
        num_classes: int,
        mode: Mode = "multiclass",
        *,
        spacing: Spacing = None,
        tolerance: float | Sequence[float] = DEFAULT_TOLERANCE,
        include_background: bool = False,
        ignore_index: int | None = IGNORE_INDEX,
        threshold: float = DEFAULT_THRESHOLD,
        from_logits: bool = True,
        sync_dist: bool = True,
    ) -> None:
        self.mode = check_mode(mode)
        self.num_classes = num_classes
        self._entries = check_num_classes(num_classes, self.mode)
        self.spacing = _check_spacing(spacing)
        _check_tolerance(tolerance, self._entries)
        self.tolerance = tolerance
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.from_logits = from_logits
        self.sync_dist = sync_dist
        self.reset()

    def reset(self) -> None:
        """Forget everything scored so far."""
        # rows: the sums of SURFACE_KEYS, then the number of images where each is defined
        self._sums = torch.zeros(2, len(SURFACE_KEYS), self._entries, dtype=torch.float64)

    def per_image(self, preds: torch.Tensor, target: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
        """Score one batch without accumulating: float64 ``[4, N, K]`` in :data:`SURFACE_KEYS` order.

        ``spacing`` overrides the metric's own for this batch (images of another resolution).
        """
        return surface_table(
            self.prepare_batch(preds, target),
            spacing=self.spacing if spacing is None else spacing,
            tolerance=self.tolerance,
            include_background=self.include_background,
        )

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor, spacing: Spacing = None) -> None:
        """Score one batch and add it (shapes as in :mod:`pixelwise.modes`; multiclass also takes ``[N, H, W]``).

        Raises:
            ShapeError: shapes that do not fit the mode.
            ConfigError: class ids or labels outside ``[0, K)``, or a bad ``spacing``.
        """
        table = self.per_image(preds, target, spacing)
        defined = ~table.isnan()
        self._sums[0] += torch.where(defined, table, torch.zeros_like(table)).sum(1)
        self._sums[1] += defined.sum(1)

    def merge(self, other: SurfaceDistances) -> SurfaceDistances:
        """Add the sums of ``other`` (same mode and classes); returns ``self``."""
        mine = (self.mode, self._entries)
        theirs = (getattr(other, "mode", None), getattr(other, "_entries", None))
        if not isinstance(other, SurfaceDistances) or mine != theirs:
            raise ConfigError(f"cannot merge (mode, classes) {theirs} into {mine}.")
        self._sums += other._sums
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        """Per class ``[K]``: ``hausdorff``, ``hd95``, ``assd``, ``nsd`` (mean over the images where defined,
        NaN where none is) and ``images`` (how many images define the NSD); scalars ``mean_hausdorff``,
        ``mean_hd95``, ``mean_assd``, ``mean_nsd`` (nanmean over classes). float64."""
        sums = distributed_sum(self._sums) if self.sync_dist else self._sums
        out: dict[str, torch.Tensor] = {}
        for row, key in enumerate(SURFACE_KEYS):
            per_class = sums[0, row] / sums[1, row]  # 0 / 0 = NaN: no image defines it
            out[key] = per_class
            out[f"mean_{key}"] = torch.nanmean(per_class)
        out["images"] = sums[1, SURFACE_KEYS.index("nsd")].clone()
        return out

    def __repr__(self) -> str:
        return (
            f"SurfaceDistances(num_classes={self.num_classes}, mode={self.mode!r}, spacing={self.spacing}, "
            f"tolerance={self.tolerance}, include_background={self.include_background})"
        )


def surface_distances(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    mode: Mode = "multiclass",
    *,
    spacing: Spacing = None,
    tolerance: float | Sequence[float] = DEFAULT_TOLERANCE,
    include_background: bool = False,
    ignore_index: int | None = IGNORE_INDEX,
    per_image: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    from_logits: bool = True,
) -> dict[str, torch.Tensor]:
    """Hausdorff, HD95, ASSD and normalised surface Dice per class for one batch (definitions: module docstring).

    Args:
        preds: multiclass: integer labels ``[N, H, W]``, or ``[N, K, H, W]`` probabilities, logits or one-hot
            masks, turned into labels by argmax; binary / multilabel as in :mod:`pixelwise.modes`.
        target: ``[N, H, W]`` class ids (multiclass, binary) or ``[N, K, H, W]`` 0/1 (multilabel).
        num_classes: K.
        mode, spacing, tolerance, include_background, ignore_index, threshold, from_logits: as in
            :class:`SurfaceDistances`.
        per_image: return ``[N, K]`` scores per image instead of means over the batch's images.

    Returns:
        float64 ``hausdorff``, ``hd95``, ``assd``, ``nsd``: ``[K]`` means over images (NaN skipped, ``inf`` kept)
        plus ``mean_*`` scalars and ``images`` (see :meth:`SurfaceDistances.compute`); with ``per_image`` only
        the four keys, each ``[N, K]``. Index ``c`` is class ``c``; a left-out background is NaN.

    Raises:
        ShapeError: shapes that do not fit the mode.
        ConfigError: class ids out of range, a bad spacing or tolerance.

    Example:
        A square predicted two pixels to the right, pixels 0.5 wide and 1 high:

        >>> target = torch.zeros(1, 16, 16, dtype=torch.long)
        >>> target[:, 4:12, 4:12] = 1
        >>> scores = surface_distances(target.roll(2, dims=2), target, num_classes=2, spacing=(1.0, 0.5))
        >>> scores["hausdorff"], scores["nsd"]
        (tensor([nan, 1.], dtype=torch.float64), tensor([nan, 1.], dtype=torch.float64))
    """
    metric = SurfaceDistances(
        num_classes,
        mode,
        spacing=spacing,
        tolerance=tolerance,
        include_background=include_background,
        ignore_index=ignore_index,
        threshold=threshold,
        from_logits=from_logits,
        sync_dist=False,
    )
    if per_image:
        return dict(zip(SURFACE_KEYS, metric.per_image(preds, target), strict=True))
    metric.update(preds, target)
    return metric.compute()
