"""Boundary-aware scores for thin structures and edges, where pixel IoU hides errors.

A thin membrane that is predicted one pixel off loses little pixel IoU on a large image but is entirely wrong
at its edges. Two standard scores look only at the contours:

* **Boundary F1** (BF score, Csurka et al., BMVC 2013): precision = fraction of predicted contour pixels within
  ``tolerance`` of a true contour pixel; recall = the fraction of true contour pixels within ``tolerance`` of a
  predicted one; F1 = their harmonic mean.
* **Boundary IoU** (Cheng et al., CVPR 2021): the IoU of the two masks' inner bands, i.e. the mask pixels within
  ``tolerance`` of the mask's own contour (Cheng's dilation ``d`` is ``tolerance + 1``).

Definitions used here (all per class, on each class's mask):

* contour = mask pixels with at least one of their 8 neighbours outside the mask. The image border is *not* a
  contour (a mask that touches the edge of a tile has no edge there); Cheng's reference code pads with
  background instead.
* distance = Chebyshev (chessboard) distance: "within ``tolerance``" means inside the ``(2·tolerance + 1)²``
  square around a pixel, computed with ``max_pool2d`` dilation (no SciPy needed). ``tolerance=0`` demands exact
  pixel agreement.
* pixels whose target is ``ignore_index`` are not counted; predicted contours there still serve as matches,
  so a prediction that spills into a void band does not lose recall.
* counts are summed over all images (and processes) before dividing, like a confusion matrix.
* NaN when undefined: boundary F1 when neither side has a (counted) contour pixel for that class, boundary IoU
  when both bands are empty; means skip NaN. Precision is NaN without counted predicted contour, recall without
  true contour; inside F1 such a ratio counts as 1 (nothing counted can be wrong), so a class whose contour only
  one side has scores F1 = 0.

Memory: one ``[N, K, H, W]`` float tensor per dilation; for many classes on large batches, update in chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pixelwise.errors import ConfigError
from pixelwise.metrics._common import (
    DEFAULT_THRESHOLD,
    Prepared,
    StreamingMetric,
    check_num_classes,
    distributed_sum,
)
from pixelwise.modes import IGNORE_INDEX, Mode, check_mode

DEFAULT_TOLERANCE = 2
"""Default distance in pixels within which contours match (and the boundary-IoU band width beyond the contour)."""

_PRED_MATCHED, _PRED_TOTAL, _TARGET_MATCHED, _TARGET_TOTAL, _BAND_INTER, _BAND_UNION = range(6)


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean dilation by a ``(2·radius + 1)²`` square; outside the image counts as empty."""
    # separable ORs of shifted views: ~20x faster than max_pool2d, which is slow on CPU at stride 1
    out = masks
    for dim in (-1, -2):
        length = out.shape[dim]
        grown = out.clone()
        for shift in range(1, min(radius, length - 1) + 1):
            grown.narrow(dim, shift, length - shift).logical_or_(out.narrow(dim, 0, length - shift))
            grown.narrow(dim, 0, length - shift).logical_or_(out.narrow(dim, shift, length - shift))
        out = grown
    return out


def inner_band(masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Mask pixels within Chebyshev distance ``tolerance`` of the mask's contour (``tolerance=0``: the contour).

    Args:
        masks: bool ``[N, C, H, W]``.
        tolerance: band width beyond the contour, in pixels.

    Returns:
        bool ``[N, C, H, W]``: pixels of ``masks`` that have a pixel outside the mask within ``tolerance + 1``.
    """
    return masks & _dilate(~masks, tolerance + 1)


def _class_masks(prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-class bool masks ``[N, K, H, W]`` of prediction and target, and the counted pixels (or None)."""
    if prepared.multilabel:
        return prepared.preds == 1, prepared.target == 1, prepared.valid
    classes = torch.arange(prepared.num_classes, device=prepared.target.device).view(1, -1, 1, 1)
    valid = None if prepared.valid is None else prepared.valid.unsqueeze(1)
    # ignored target pixels hold ignore_index, which matches no class, so no target mask covers them
    return prepared.preds.unsqueeze(1) == classes, prepared.target.unsqueeze(1) == classes, valid


def boundary_counts(prepared: Prepared, tolerance: int = DEFAULT_TOLERANCE) -> torch.Tensor:
    """Per-class counts ``[6, K]`` (int64): predicted contour matched / total, true contour matched / total,
    band intersection / union. Summable over batches and processes."""
    pred, true, valid = _class_masks(prepared)
    pred_contour, true_contour = inner_band(pred), inner_band(true)
    pred_counted = pred_contour if valid is None else pred_contour & valid
    pred_band = inner_band(pred, tolerance)
    if valid is not None:
        pred_band = pred_band & valid
    true_band = inner_band(true, tolerance)
    dims = (0, 2, 3)
    return torch.stack(
        [
            (pred_counted & _dilate(true_contour, tolerance)).sum(dims),
            pred_counted.sum(dims),
            (true_contour & _dilate(pred_contour, tolerance)).sum(dims),
            true_contour.sum(dims),
            (pred_band & true_band).sum(dims),
            (pred_band | true_band).sum(dims),
        ]
    )


def scores_from_boundary_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boundary precision, recall, F1 and IoU ``[K]`` (float64, NaN where undefined) and their nan-means."""
    c = counts.double()
    prec = c[_PRED_MATCHED] / c[_PRED_TOTAL]
    rec = c[_TARGET_MATCHED] / c[_TARGET_TOTAL]
    # An empty side's ratio is vacuously perfect (nothing counted can be wrong). Without void pixels F1 is still 0
    # when the other side has contour, as nothing matches; only a predicted contour lying wholly in void scores
    # through its recall.
    p = torch.where(c[_PRED_TOTAL] == 0, torch.ones_like(prec), prec)
    r = torch.where(c[_TARGET_TOTAL] == 0, torch.ones_like(rec), rec)
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r), torch.zeros_like(p))
    f1 = torch.where((c[_PRED_TOTAL] == 0) & (c[_TARGET_TOTAL] == 0), torch.full_like(f1, float("nan")), f1)
    iou = c[_BAND_INTER] / c[_BAND_UNION]
    return {
        "boundary_precision": prec,
        "boundary_recall": rec,
        "boundary_f1": f1,
        "mean_boundary_f1": torch.nanmean(f1),
        "boundary_iou": iou,
        "mean_boundary_iou": torch.nanmean(iou),
    }


def _check_tolerance(tolerance: int) -> int:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ConfigError(f"tolerance is a whole number of pixels >= 0; got {tolerance!r}.")
    return tolerance


class BoundaryScores(StreamingMetric):
    """Streaming boundary F1 and boundary IoU per class (see the module docstring for the definitions).

    Args:
        num_classes: K (binary: 1 or 2; reported as background, foreground).
        mode: "multiclass" (default), "binary" or "multilabel"; inputs as in
            :class:`~pixelwise.metrics.ConfusionMatrix` (scores are argmaxed or thresholded first).
        tolerance: match distance in pixels, Chebyshev (default 2).
        ignore_index: target value of pixels that are not counted (default 255); None counts every pixel.
        threshold: binary/multilabel cut on probabilities (default 0.5).
        from_logits: binary/multilabel float ``preds`` are logits (default); False: probabilities.
        sync_dist: sum counts over an initialised ``torch.distributed`` group in :meth:`compute` (default True).

    Raises:
        ConfigError: a bad mode, num_classes or tolerance.

    Example:
        >>> metric = BoundaryScores(num_classes=2, tolerance=1)
        >>> metric.update(torch.randint(0, 2, (1, 16, 16)), torch.randint(0, 2, (1, 16, 16)))
        >>> sorted(metric.compute())[:2]
        ['boundary_f1', 'boundary_iou']
    """

    def __init__(
        self,
        num_classes: int,
        mode: Mode = "multiclass",
        *,
        tolerance: int = DEFAULT_TOLERANCE,
        ignore_index: int | None = IGNORE_INDEX,
        threshold: float = DEFAULT_THRESHOLD,
        from_logits: bool = True,
        sync_dist: bool = True,
    ) -> None:
        self.mode = check_mode(mode)
        self.num_classes = num_classes
        self._entries = check_num_classes(num_classes, self.mode)
        self.tolerance = _check_tolerance(tolerance)
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.from_logits = from_logits
        self.sync_dist = sync_dist
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self._counts = torch.zeros(6, self._entries, dtype=torch.int64)

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch (shapes as in :mod:`pixelwise.modes`; multiclass also takes ``[N, H, W]`` labels).

        Raises:
            ShapeError: shapes that do not fit the mode.
            ConfigError: class ids or labels outside ``[0, K)``.
        """
        prepared = self.prepare_batch(preds, target)
        counts = boundary_counts(prepared, self.tolerance)
        self._counts = self._counts.to(counts.device) + counts

    def merge(self, other: BoundaryScores) -> BoundaryScores:
        """Add the counts of ``other`` (same mode, classes and tolerance); returns ``self``."""
        mine = (self.mode, self._entries, self.tolerance)
        theirs = (getattr(other, "mode", None), getattr(other, "_entries", None), getattr(other, "tolerance", None))
        if not isinstance(other, BoundaryScores) or mine != theirs:
            raise ConfigError(f"cannot merge (mode, classes, tolerance) {theirs} into {mine}.")
        self._counts = self._counts + other._counts.to(self._counts.device)
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        """Per class ``[K]``: ``boundary_precision``, ``boundary_recall``, ``boundary_f1``, ``boundary_iou``;
        scalars ``mean_boundary_f1``, ``mean_boundary_iou`` (nanmean). float64; NaN where undefined."""
        counts = distributed_sum(self._counts) if self.sync_dist else self._counts
        return scores_from_boundary_counts(counts)


def _one_batch_score(key: str, doc: str) -> Callable[..., torch.Tensor]:
    """The public function ``key``: that entry of :meth:`BoundaryScores.compute` for one batch."""

    def score(
        preds: torch.Tensor,
        target: torch.Tensor,
        num_classes: int,
        *,
        mode: Mode = "multiclass",
        tolerance: int = DEFAULT_TOLERANCE,
        ignore_index: int | None = IGNORE_INDEX,
        threshold: float = DEFAULT_THRESHOLD,
        from_logits: bool = True,
    ) -> torch.Tensor:
        metric = BoundaryScores(
            num_classes,
            mode,
            tolerance=tolerance,
            ignore_index=ignore_index,
            threshold=threshold,
            from_logits=from_logits,
            sync_dist=False,
        )
        metric.update(preds, target)
        return metric.compute()[key]

    score.__name__ = score.__qualname__ = key
    score.__doc__ = doc
    return score


boundary_f1 = _one_batch_score(
    "boundary_f1",
    """Boundary F1 (BF score) per class for one batch, counts pooled over its images.

    Args: as in :class:`BoundaryScores`.

    Shape:
        preds: ``[N, H, W]`` labels or ``[N, K, H, W]`` scores (multiclass; see :mod:`pixelwise.modes`).
        target: ``[N, H, W]`` class ids. Returns ``[K]`` (binary: ``[2]``).

    Returns:
        float64 per-class BF scores; NaN for a class with no contour in either.

    Example:
        A prediction one pixel off: half its contour matches exactly, all of it within 1 pixel.

        >>> square = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> square[:, 2:6, 2:6] = 1
        >>> shifted = square.roll(1, dims=2)
        >>> boundary_f1(shifted, square, num_classes=2, tolerance=0)
        tensor([0.5000, 0.5000], dtype=torch.float64)
        >>> boundary_f1(shifted, square, num_classes=2, tolerance=1)
        tensor([1., 1.], dtype=torch.float64)
    """,
)

boundary_iou = _one_batch_score(
    "boundary_iou",
    """Boundary IoU per class for one batch: IoU of the inner bands of width ``tolerance`` beyond the contour.

    Args, Shape: as in :func:`boundary_f1`.

    Returns:
        float64 per-class boundary IoU; NaN for a class whose bands are both empty.

    Example:
        Stricter than the BF score: a one-pixel shift still costs at ``tolerance=1``.

        >>> target = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> target[:, 2:6, 2:6] = 1
        >>> boundary_iou(target.roll(1, dims=2), target, num_classes=2, tolerance=1)
        tensor([0.6923, 0.6000], dtype=torch.float64)
    """,
)
