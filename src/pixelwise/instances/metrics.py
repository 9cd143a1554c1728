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

Average precision and AJI (StarDist / Cellpose / Kumar conventions, computed from sparse overlaps so that
images with thousands of objects stay fast: one pass over the pixels, never a dense ``[T, P]`` matrix)::

    true, pred ──overlaps()──► areas [T], [P] + touching pairs (rows, cols, inter) [E]
        ├─ per threshold t: maximum matching on pairs with IoU >= t ─► TP, FP, FN ─► AP = TP / (TP + FP + FN)
        │     average_precision (one image) · average_precision_dataset (counts pooled, StarDist by_image=False)
        └─ aggregated_jaccard_index: Kumar 2017 (default) or Cellpose's variant

Here a match needs IoU ``>= t`` (StarDist's ``matching``, Cellpose's ``average_precision``): an IoU of
exactly 0.5 counts at 0.5, where the DSB score above (strict ``>``) does not. Otherwise ``map`` (the mean
of the pooled AP over 0.5:0.95) and ``dsb_score`` (the mean of the per-image AP) differ by the pooling.

An image with no object in either label image has no defined score: its ratios are NaN, and
:class:`InstanceScores` leaves it out of the averages. Otherwise a ratio whose denominator is 0 is 0
(no prediction: precision 0; no match: ``sq`` 0), as in the COCO panoptic API.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, maximum_bipartite_matching

from pixelwise.errors import ConfigError, ShapeError, unknown_name

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.5, 0.55, ..., 0.95: the thresholds of the DSB 2018 score (and COCO's AP)."""
MATCH_THRESHOLD = 0.5
"""IoU threshold of ``precision``, ``recall``, ``f1`` and the panoptic quality."""
RATIO_KEYS = ("precision", "recall", "f1", "dsb_score", "pq", "sq", "rq")
COUNT_KEYS = ("tp", "fp", "fn", "n_true", "n_pred")
AP_SUMMARY = {"ap50": 0.5, "ap75": 0.75}
"""The single-threshold APs :meth:`InstanceScores.average_precision` names (key: IoU threshold)."""
AP_DECIMALS = 4
"""Decimals of the IoU thresholds written in the AP table (``np.arange`` leaves 0.6000000000000001)."""


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
    """Instance metrics over many images: per-image means (the DSB convention), pooled counts, the average
    precision table (StarDist's ``matching_dataset``, counts pooled) and the aggregated Jaccard index.

    Example:
        >>> scores = InstanceScores()
        >>> _ = scores.update(np.ones((4, 4), int), np.ones((4, 4), int))
        >>> result = scores.compute(); result["dsb_score"], result["map"], result["aji"]
        (1.0, 1.0, 1.0)
    """

    def __init__(self, thresholds: tuple[float, ...] = IOU_THRESHOLDS) -> None:
        self.thresholds = thresholds
        self.per_image: list[dict[str, float]] = []
        self.ap_counts: list[np.ndarray] = []
        """Per image ``[3, len(thresholds)]``: TP, FP, FN at each threshold (IoU >= t)."""
        self.aji_counts: list[tuple[int, int]] = []
        """Per image ``(C, U)`` of Kumar's AJI."""

    def update(self, pred_labels: np.ndarray, true_labels: np.ndarray) -> dict[str, float]:
        """Score one image (shapes as :func:`instance_metrics`) and return its metrics, with its ``aji``."""
        result = instance_metrics(pred_labels, true_labels, self.thresholds)
        found = overlaps(true_labels, pred_labels)
        table = _ap_from(found, self.thresholds)
        self.ap_counts.append(np.stack([table["tp"], table["fp"], table["fn"]]))
        intersection, union = _aji_from(found, "kumar")
        self.aji_counts.append((intersection, union))
        result["aji"] = intersection / union if union else math.nan
        self.per_image.append(result)
        return result

    def compute(self) -> dict[str, Any]:
        """``precision``, ``recall``, ``f1``, ``dsb_score``, ``pq``, ``sq``, ``rq``, ``aji``: means over the
        images with objects (NaN if none); ``map``, ``ap50``, ``ap75``, ``ap_table``: :meth:`average_precision`;
        ``pooled_aji``: ΣC / ΣU over all images; ``pooled_f1``, ``pooled_pq``: from the counts summed over all
        images; ``count_error``: mean over images of ``|n_pred - n_true|``; ``tp``, ``fp``, ``fn``, ``n_true``,
        ``n_pred``: totals at IoU > 0.5; ``images``: number of images."""
        out: dict[str, Any] = {}
        for key in (*RATIO_KEYS, "aji"):
            values = [r[key] for r in self.per_image if not math.isnan(r[key])]
            out[key] = float(np.mean(values)) if values else math.nan
        out |= self.average_precision()
        aji_total = np.sum(self.aji_counts, axis=0) if self.aji_counts else np.zeros(2)
        out["pooled_aji"] = float(aji_total[0] / aji_total[1]) if aji_total[1] else math.nan
        totals = {key: int(sum(r[key] for r in self.per_image)) for key in COUNT_KEYS}
        matched = sum(r["matched_iou_sum"] for r in self.per_image)
        denominator = totals["tp"] + totals["fp"] / 2 + totals["fn"] / 2
        out["pooled_f1"] = _ratio(totals["tp"], denominator) if denominator else math.nan
        out["pooled_pq"] = _ratio(matched, denominator) if denominator else math.nan
        errors = [abs(r["n_pred"] - r["n_true"]) for r in self.per_image]
        out["count_error"] = float(np.mean(errors)) if errors else math.nan
        return out | totals | {"images": len(self.per_image)}

    def average_precision(self) -> dict[str, Any]:
        """The data set's average precision from counts pooled over the images (StarDist's
        ``matching_dataset(by_image=False)``, see :func:`average_precision_dataset`).

        Returns:
            ``map``: mean of the table's AP over the thresholds (COCO's "AP", the DSB score on pooled counts);
            ``ap50``, ``ap75``: AP at IoU 0.5 and 0.75 (NaN when not among the thresholds); ``ap_table``: one
            ``{"iou", "ap", "tp", "fp", "fn"}`` per threshold. AP is NaN when no image holds an object.
        """
        counts = np.sum(self.ap_counts, axis=0) if self.ap_counts else np.zeros((3, len(self.thresholds)), np.int64)
        table = _ap_table(self.thresholds, *counts)
        rows = [
            {"iou": round(float(t), AP_DECIMALS), "ap": float(ap), "tp": int(tp), "fp": int(fp), "fn": int(fn)}
            for t, ap, tp, fp, fn in zip(*(table[k] for k in ("thresholds", "ap", "tp", "fp", "fn")), strict=True)
        ]
        ap = table["ap"]
        summary = {"map": float(np.mean(ap)) if ap.size and not np.isnan(ap).all() else math.nan}
        for key, threshold in AP_SUMMARY.items():
            at = np.flatnonzero(np.isclose(table["thresholds"], threshold))
            summary[key] = float(ap[at[0]]) if at.size else math.nan
        return summary | {"ap_table": rows}


# ----------------------------------------------------------------------------------------------------------------
# Average precision over IoU thresholds (StarDist / Cellpose) and the aggregated Jaccard index (Kumar et al. 2017)

THRESHOLD_SCALE = 10**6
"""Thresholds are compared exactly at this resolution: ``inter · SCALE >= round(t · SCALE) · union`` in integers."""
AJI_VARIANTS = ("kumar", "cellpose")
CELLPOSE_AJI_MATCH = 0.5
"""Cellpose's AJI pairs objects to maximise first the number of pairs with IoU >= this, then the summed IoU."""


@dataclasses.dataclass(frozen=True)
class Overlaps:
    """The pixel overlaps of a true and a predicted label image, kept sparse (only pairs that touch).

    Shape:
        ``true_area [T]``, ``pred_area [P]``: int64 pixel counts of the objects in increasing id order;
        ``rows [E]`` (index into the true objects), ``cols [E]`` (into the predictions), ``inter [E]``:
        one entry per (true, predicted) pair that shares at least one pixel.
    """

    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """``[E]`` int64: pixels in either object of each touching pair."""
        return self.true_area[self.rows] + self.pred_area[self.cols] - self.inter

    @property
    def iou(self) -> np.ndarray:
        """``[E]`` float64: IoU of each touching pair (every other pair has IoU 0)."""
        return self.inter / self.union


def _dense_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index [N], ids)``: each pixel's object as 1 + its position in the sorted object ids (0: background)."""
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    objects = ids[ids != 0]
    index = inverse.ravel().astype(np.int64) + (0 if ids.size and ids[0] == 0 else 1)
    return index, objects


def overlaps(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Object areas and pairwise intersections in one pass over the pixels (no ``[T, P]`` matrix).

    Args:
        true, pred: instance labels, 0 = background, ids need not be consecutive.

    Shape:
        ``true``, ``pred``: int ``[H, W]`` (or any shape, the same for both) → :class:`Overlaps`.

    Raises:
        ShapeError: the label images differ in shape.
    """
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ShapeError(f"true_labels {list(true.shape)} and pred_labels {list(pred.shape)} must have one shape.")
    t_index, t_ids = _dense_index(true)
    p_index, p_ids = _dense_index(pred)
    true_area = np.bincount(t_index, minlength=t_ids.size + 1)[1:]
    pred_area = np.bincount(p_index, minlength=p_ids.size + 1)[1:]
    both = (t_index > 0) & (p_index > 0)
    codes, inter = np.unique(t_index[both] * (p_ids.size + 1) + p_index[both], return_counts=True)
    rows, cols = codes // (p_ids.size + 1) - 1, codes % (p_ids.size + 1) - 1
    return Overlaps(true_area, pred_area, rows, cols, inter.astype(np.int64))


def _at_least(found: Overlaps, threshold: float) -> np.ndarray:
    """``[E]`` bool: IoU >= ``threshold``, decided exactly in integers at :data:`THRESHOLD_SCALE`."""
    return found.inter * THRESHOLD_SCALE >= round(threshold * THRESHOLD_SCALE) * found.union


def _true_positives(found: Overlaps, threshold: float) -> int:
    """Most one-to-one pairs with IoU >= ``threshold`` (maximum bipartite matching, as StarDist's assignment)."""
    keep = _at_least(found, threshold)
    if not keep.any():
        return 0
    shape = (found.true_area.size, found.pred_area.size)
    graph = csr_matrix((np.ones(int(keep.sum())), (found.rows[keep], found.cols[keep])), shape=shape)
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def average_precision(
    true: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS
) -> dict[str, np.ndarray]:
    """Average precision ``TP / (TP + FP + FN)`` of one image at each IoU threshold (StarDist, Cellpose, DSB).

    A predicted and a true object are a true positive at ``t`` when the one-to-one matching with the most
    pairs of IoU ``>= t`` pairs them (StarDist's ``matching`` and Cellpose's ``_true_positive``: an IoU of
    exactly 0.5 counts at 0.5). ``FP`` = predictions left unmatched, ``FN`` = true objects left unmatched.
    Ties are decided exactly (:data:`THRESHOLD_SCALE`): an IoU of exactly 0.65 counts at 0.65 even when the
    threshold is ``np.arange``'s 0.6500000000000001, where StarDist's float32 IoU may not. The argument
    order ``(true, pred)`` is StarDist's and Cellpose's, so their calls port unchanged.

    Args:
        true, pred: instance labels, 0 = background, ids need not be consecutive.
        thresholds: IoU thresholds (default 0.5, 0.55, ..., 0.95).

    Shape:
        ``true``, ``pred``: int ``[H, W]`` (or any shape, the same for both).

    Returns:
        ``{"thresholds", "ap", "tp", "fp", "fn"}``: arrays ``[len(thresholds)]``; ``ap`` is NaN when neither
        image holds an object (Cellpose's 0/0; StarDist writes 0), 0 when there are objects but no match.

    Raises:
        ShapeError: the label images differ in shape.

    Example:
        >>> true = np.zeros((1, 20), np.int32); true[0, :10] = 1
        >>> pred = np.zeros_like(true); pred[0, 5:10] = 1                   # IoU exactly 0.5
        >>> average_precision(true, pred, [0.5, 0.75])["ap"].tolist()
        [1.0, 0.0]
    """
    return _ap_from(overlaps(true, pred), thresholds)


def _ap_from(found: Overlaps, thresholds: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
    """The table of :func:`average_precision` from the overlaps of one image."""
    tp = np.array([_true_positives(found, t) for t in thresholds], dtype=np.int64)
    return _ap_table(thresholds, tp, found.pred_area.size - tp, found.true_area.size - tp)


def _ap_table(thresholds: Sequence[float] | np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict:
    """The table of :func:`average_precision` from counts: ``ap`` = TP / (TP + FP + FN), NaN where 0 / 0."""
    total = tp + fp + fn
    ap = np.divide(tp, total, out=np.full(tp.shape, math.nan), where=total > 0)
    return {"thresholds": np.asarray(thresholds, dtype=np.float64), "ap": ap, "tp": tp, "fp": fp, "fn": fn}


def average_precision_dataset(
    trues: Iterable[np.ndarray], preds: Iterable[np.ndarray], thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS
) -> dict[str, np.ndarray]:
    """Average precision of a data set from counts pooled over its images (StarDist's
    ``matching_dataset(by_image=False)``'s ``accuracy``): ``ΣTP / (ΣTP + ΣFP + ΣFN)`` at each threshold.

    Pooling weighs every object alike, so an image with many objects counts more than one with few; the mean
    of the per-image :func:`average_precision` (StarDist's ``by_image=True``, Cellpose's per-image array)
    weighs every image alike instead. An image without objects adds nothing to the pools; the result is NaN
    only when no image holds an object (StarDist writes 0).

    Args:
        trues, preds: instance label images, paired in order.
        thresholds: IoU thresholds (default 0.5, 0.55, ..., 0.95).

    Returns:
        ``{"thresholds", "ap", "tp", "fp", "fn"}`` as :func:`average_precision`, with summed counts.

    Raises:
        ConfigError: ``trues`` and ``preds`` differ in length.
        ShapeError: a pair of label images differ in shape.
    """
    trues, preds = list(trues), list(preds)
    if len(trues) != len(preds):
        raise ConfigError(f"trues has {len(trues)} label images and preds {len(preds)}; give one per image in each.")
    counts = np.zeros((3, len(thresholds)), dtype=np.int64)
    for true, pred in zip(trues, preds, strict=True):
        table = average_precision(true, pred, thresholds)
        counts += np.stack([table["tp"], table["fp"], table["fn"]])
    return _ap_table(thresholds, *counts)


def aji_counts(true: np.ndarray, pred: np.ndarray, variant: str = "kumar") -> tuple[int, int]:
    """``(C, U)``: the aggregated intersection and union of :func:`aggregated_jaccard_index` (AJI = C / U).

    Shape and raises as :func:`aggregated_jaccard_index`; summing ``C`` and ``U`` over images pools them.
    """
    return _aji_from(overlaps(true, pred), variant)


def _aji_from(found: Overlaps, variant: str) -> tuple[int, int]:
    """``(C, U)`` of :func:`aji_counts` from the overlaps of one image."""
    if variant == "kumar":
        return _kumar_counts(found)
    if variant == "cellpose":
        # labels are disjoint within each image, so the foreground union is both areas less the overlaps
        foreground = int(found.true_area.sum() + found.pred_area.sum() - found.inter.sum())
        return _cellpose_intersection(found), foreground
    raise unknown_name("AJI variant", variant, AJI_VARIANTS)


def _kumar_counts(found: Overlaps) -> tuple[int, int]:
    """Kumar et al. 2017, Algorithm 1: each true object takes the prediction of highest IoU (lowest id on a
    tie; a prediction may serve several), adding their intersection to C and union to U; a true object that
    touches none adds its area to U; every prediction no true object took adds its area to U."""
    iou = found.iou
    # sort by true object, then IoU descending, then prediction id: the first entry of each row is its best
    order = np.lexsort((found.cols, -iou, found.rows))
    rows = found.rows[order]
    first = order[np.r_[True, rows[1:] != rows[:-1]]] if rows.size else order
    chosen = np.zeros(found.pred_area.size, dtype=bool)
    chosen[found.cols[first]] = True
    touched = np.zeros(found.true_area.size, dtype=bool)
    touched[found.rows[first]] = True
    intersection = int(found.inter[first].sum())
    union = int(found.union[first].sum() + found.true_area[~touched].sum() + found.pred_area[~chosen].sum())
    return intersection, union


def _cellpose_intersection(found: Overlaps) -> int:
    """Summed intersection of Cellpose's one-to-one pairing (``mask_ious``): the most pairs with IoU >= 0.5,
    then the largest summed IoU, solved on each connected group of touching objects (pairs that do not touch
    add nothing, so the optimum is the same as on the full ``[T, P]`` matrix)."""
    n_true, n_pred = found.true_area.size, found.pred_area.size
    if found.inter.size == 0:
        return 0
    graph = csr_matrix((np.ones(found.inter.size), (found.rows, found.cols + n_true)), shape=(n_true + n_pred,) * 2)
    _, group = connected_components(graph, directed=False)
    iou, good = found.iou, _at_least(found, CELLPOSE_AJI_MATCH)
    edge_group = group[found.rows]
    total = 0
    for g in np.unique(edge_group):
        edges = np.flatnonzero(edge_group == g)
        rows, row_at = np.unique(found.rows[edges], return_inverse=True)
        cols, col_at = np.unique(found.cols[edges], return_inverse=True)
        # count of good pairs first; IoU / (2 · n) sums to at most 1/2, so it only breaks ties
        gain = np.zeros((rows.size, cols.size))
        gain[row_at, col_at] = good[edges] + iou[edges] / (2 * min(rows.size, cols.size))
        inter = np.zeros((rows.size, cols.size), dtype=np.int64)
        inter[row_at, col_at] = found.inter[edges]
        r, c = linear_sum_assignment(gain, maximize=True)
        total += int(inter[r, c].sum())
    return total


def aggregated_jaccard_index(true: np.ndarray, pred: np.ndarray, variant: str = "kumar") -> float:
    """Aggregated Jaccard index (AJI) of one image: C / U, aggregated over all objects.

    ``variant="kumar"`` (the default) is the published definition (Kumar et al., IEEE TMI 2017, Algorithm 1):
    each true object G_i takes the prediction S_j of highest IoU; C += |G_i ∩ S_j|, U += |G_i ∪ S_j|; then every
    prediction no true object took adds its whole area to U, so splitting an object is penalised twice.
    ``variant="cellpose"`` is Cellpose's ``aggregated_jaccard_index``: C sums the intersections of a one-to-one
    pairing (most pairs with IoU >= 0.5, then largest summed IoU) and U is the foreground union
    ``|⋃G ∪ ⋃S|``. The two agree when every object overlaps at most its partner; a split object scores
    lower by Kumar's (true 10 px split 6 + 4: Kumar 6 / (10 + 4), Cellpose 6 / 10).

    Args:
        true, pred: instance labels, 0 = background, ids need not be consecutive.
        variant: ``kumar`` or ``cellpose``.

    Shape:
        ``true``, ``pred``: int ``[H, W]`` (or any shape, the same for both).

    Returns:
        AJI in [0, 1]; NaN when neither image holds an object (U = 0).

    Raises:
        ShapeError: the label images differ in shape.
        ConfigError: unknown ``variant``.
    """
    intersection, union = aji_counts(true, pred, variant)
    return intersection / union if union else math.nan
