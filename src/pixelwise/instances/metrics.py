"""Instance metrics: match predicted to true objects by IoU, then count.

A predicted and a true object *match* at threshold ``t`` when the optimal one-to-one assignment
(``scipy.optimize.linear_sum_assignment``, maximising the summed IoU over the pairs whose IoU exceeds
``t``) pairs them and their IoU is **strictly greater** than ``t`` (the 2018 Data Science Bowl and
panoptic-quality convention; for ``t >= 0.5`` each object can have at most one such partner, so the
matching is unique). Then ``TP`` = matched pairs, ``FP`` = unmatched predictions, ``FN`` = unmatched
true objects, and:

- ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1 = 2TP / (2TP + FP + FN)`` at IoU 0.5;
- ``dsb_score``: the mean over ``t = 0.5, 0.55, ..., 0.95`` of ``TP / (TP + FP + FN)``;
- panoptic quality at 0.5: ``sq`` = mean IoU of the matched pairs, ``rq = TP / (TP + FP/2 + FN/2)``
  (= F1), ``pq = sq · rq``.

An image with no object in either label image has no defined score: its ratios are NaN, and
:class:`InstanceScores` leaves it out of the averages. Otherwise a ratio whose denominator is 0 is 0
(no prediction: precision 0; no match: ``sq`` 0), as in the COCO panoptic API.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pixelwise.errors import ShapeError

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.5, 0.55, ..., 0.95: the thresholds of the DSB 2018 score (and COCO's AP)."""
MATCH_THRESHOLD = 0.5
"""IoU threshold of ``precision``, ``recall``, ``f1`` and the panoptic quality."""
RATIO_KEYS = ("precision", "recall", "f1", "dsb_score", "pq", "sq", "rq")
COUNT_KEYS = ("tp", "fp", "fn", "n_true", "n_pred")


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every predicted with every true object, from one pass over the pixel pairs.

    Shape:
        ``pred``, ``true``: int ``[H, W]`` (0 = background) → ``(iou float64 [P, T], pred_ids [P],
        true_ids [T])``, rows and columns in increasing id order.

    Raises:
        ShapeError: the label images differ in shape.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ShapeError(f"pred_labels {list(pred.shape)} and true_labels {list(true.shape)} must have one shape.")
    pred_ids, pred_index = np.unique(pred.ravel(), return_inverse=True)
    true_ids, true_index = np.unique(true.ravel(), return_inverse=True)
    # index 0 is background when present; shift so that background is always row/column 0
    pred_shift = 0 if pred_ids.size and pred_ids[0] == 0 else 1
    true_shift = 0 if true_ids.size and true_ids[0] == 0 else 1
    rows, cols = pred_index.ravel() + pred_shift, true_index.ravel() + true_shift
    n_true = true_ids.size + true_shift
    pairs, overlap = np.unique(rows.astype(np.int64) * n_true + cols, return_counts=True)
    pred_area = np.bincount(rows, minlength=pred_ids.size + pred_shift)[1:]
    true_area = np.bincount(cols, minlength=n_true)[1:]
    intersection = np.zeros((pred_area.size, true_area.size))
    r, c = pairs // n_true, pairs % n_true
    both = (r > 0) & (c > 0)
    intersection[r[both] - 1, c[both] - 1] = overlap[both]
    union = pred_area[:, None] + true_area[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return iou, pred_ids[pred_ids != 0], true_ids[true_ids != 0]


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of rows (predictions) to columns (true objects) with IoU > ``threshold``.

    Maximises the summed IoU over the pairs above the threshold (``linear_sum_assignment``), solved only
    on the rows and columns that have such a pair.

    Shape:
        ``iou`` ``[P, T]`` → ``(rows [M], cols [M])`` of the matched pairs.
    """
    rows = np.flatnonzero((iou > threshold).any(1))
    cols = np.flatnonzero((iou > threshold).any(0))
    if rows.size == 0:
        return rows, cols
    from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize is slow to import

    sub = iou[np.ix_(rows, cols)]
    sub = np.where(sub > threshold, sub, 0.0)
    r, c = linear_sum_assignment(sub, maximize=True)
    keep = sub[r, c] > threshold
    return rows[r[keep]], cols[c[keep]]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def instance_metrics(
    pred_labels: np.ndarray, true_labels: np.ndarray, thresholds: tuple[float, ...] = IOU_THRESHOLDS
) -> dict[str, float]:
    """Precision, recall, F1 (IoU 0.5), DSB 2018 score, panoptic quality of one pair of label images.

    Args:
        pred_labels, true_labels: instance labels, 0 = background (ids need not be consecutive).
        thresholds: IoU thresholds the DSB score averages over.

    Shape:
        ``pred_labels``, ``true_labels``: int ``[H, W]`` (or any shape, the same for both).

    Returns:
        ``precision``, ``recall``, ``f1``, ``dsb_score``, ``pq``, ``sq``, ``rq`` (floats, NaN when neither
        image holds an object), ``tp``, ``fp``, ``fn`` (at IoU 0.5), ``n_true``, ``n_pred``, and
        ``matched_iou_sum`` (summed IoU of the pairs matched at 0.5).

    Raises:
        ShapeError: the label images differ in shape.

    Example:
        >>> true = np.zeros((4, 8), np.int32); true[:, :4] = 1; true[:, 4:] = 2
        >>> pred = np.zeros((4, 8), np.int32); pred[:, :4] = 7        # one exact, one missed
        >>> m = instance_metrics(pred, true); m["precision"], m["recall"], m["pq"]
        (1.0, 0.5, 0.6666666666666666)
    """
    iou, pred_ids, true_ids = iou_matrix(pred_labels, true_labels)
    n_pred, n_true = len(pred_ids), len(true_ids)
    rows, cols = match(iou, MATCH_THRESHOLD)
    tp = len(rows)
    fp, fn = n_pred - tp, n_true - tp
    matched = float(iou[rows, cols].sum())
    counts = {"tp": tp, "fp": fp, "fn": fn, "n_true": n_true, "n_pred": n_pred, "matched_iou_sum": matched}
    if n_pred == 0 and n_true == 0:
        return dict.fromkeys(RATIO_KEYS, math.nan) | counts
    per_threshold = []
    for t in thresholds:
        hits = len(match(iou, t)[0])
        per_threshold.append(hits / (n_pred + n_true - hits))
    rq = _ratio(tp, tp + fp / 2 + fn / 2)
    sq = _ratio(matched, tp)
    ratios = {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": rq,
        "dsb_score": float(np.mean(per_threshold)),
        "pq": sq * rq,
        "sq": sq,
        "rq": rq,
    }
    return ratios | counts


class InstanceScores:
    """Instance metrics over many images: per-image means (the DSB convention) and pooled counts.

    Example:
        >>> scores = InstanceScores()
        >>> _ = scores.update(np.ones((4, 4), int), np.ones((4, 4), int))
        >>> scores.compute()["dsb_score"]
        1.0
    """

    def __init__(self, thresholds: tuple[float, ...] = IOU_THRESHOLDS) -> None:
        self.thresholds = thresholds
        self.per_image: list[dict[str, float]] = []

    def update(self, pred_labels: np.ndarray, true_labels: np.ndarray) -> dict[str, float]:
        """Score one image (shapes as :func:`instance_metrics`) and return its metrics."""
        result = instance_metrics(pred_labels, true_labels, self.thresholds)
        self.per_image.append(result)
        return result

    def compute(self) -> dict[str, Any]:
        """``precision``, ``recall``, ``f1``, ``dsb_score``, ``pq``, ``sq``, ``rq``: means over the images
        with objects (NaN if none); ``pooled_f1``, ``pooled_pq``: from the counts summed over all images;
        ``count_error``: mean over images of ``|n_pred - n_true|``; ``tp``, ``fp``, ``fn``, ``n_true``,
        ``n_pred``: totals; ``images``: number of images."""
        out: dict[str, Any] = {}
        for key in RATIO_KEYS:
            values = [r[key] for r in self.per_image if not math.isnan(r[key])]
            out[key] = float(np.mean(values)) if values else math.nan
        totals = {key: int(sum(r[key] for r in self.per_image)) for key in COUNT_KEYS}
        matched = sum(r["matched_iou_sum"] for r in self.per_image)
        denominator = totals["tp"] + totals["fp"] / 2 + totals["fn"] / 2
        out["pooled_f1"] = _ratio(totals["tp"], denominator) if denominator else math.nan
        out["pooled_pq"] = _ratio(matched, denominator) if denominator else math.nan
        errors = [abs(r["n_pred"] - r["n_true"]) for r in self.per_image]
        out["count_error"] = float(np.mean(errors)) if errors else math.nan
        return out | totals | {"images": len(self.per_image)}
