"""A streaming confusion matrix and every dataset-level score derived from it (IoU, F-score/Dice, accuracy, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixelwise.errors import ConfigError, ShapeError, unknown_name
from pixelwise.metrics._common import (
    DEFAULT_THRESHOLD,
    StreamingMetric,
    check_num_classes,
    count_pixels,
    distributed_sum,
    prepare,
    stats_from_counts,
)
from pixelwise.metrics.functional import (
    CONFUSION_SCORES,
    _fbeta,
    _iou,
    _precision,
    _recall,
    _reduce,
    weighted_nanmean,
)
from pixelwise.modes import IGNORE_INDEX, Mode, check_mode

MULTILABEL_MATRIX_DIMS = 3
"""A multilabel matrix is ``[K, 2, 2]``: one 2 × 2 table per class."""

DEFAULT_BETA = 1.0
"""F-score β: 1 weighs precision and recall equally (F1 = Dice)."""


def confusion_matrix(
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    mode: Mode = "multiclass",
    *,
    ignore_index: int | None = IGNORE_INDEX,
    threshold: float = DEFAULT_THRESHOLD,
    from_logits: bool = True,
) -> torch.Tensor:
    """Count pixels by (target, prediction) for one batch; the options mean what they mean in :class:`ConfusionMatrix`.

    Shape:
        multiclass ``[K, K]``, binary ``[2, 2]``, multilabel ``[K, 2, 2]``; int64; rows = target, columns =
        prediction (multilabel: ``[class, target, prediction]``).

    Example:
        >>> confusion_matrix(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]), num_classes=2)
        tensor([[1, 1],
                [0, 0]])
    """
    prepared = prepare(
        preds, target, mode, num_classes, ignore_index=ignore_index, threshold=threshold, from_logits=from_logits
    )
    return count_pixels(prepared)


MATRIX_REDUCTIONS: tuple[str, ...] = ("none", "micro", "macro", "weighted")
"""Reductions of a dataset-level matrix (smp's, without the per-image ones, which need per-image counts)."""


def confusion_metrics(
    matrix: torch.Tensor,
    reduction: str | None = "none",
    class_weights: Sequence[float] | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """smp's confusion-derived scores of a confusion matrix, each class one-vs-rest.

    The keys are :data:`~pixelwise.metrics.functional.CONFUSION_SCORES`: ``sensitivity``, ``specificity``,
    ``balanced_accuracy``, ``positive_predictive_value``, ``negative_predictive_value``, ``false_positive_rate``,
    ``false_negative_rate``, ``false_discovery_rate``, ``false_omission_rate``, ``positive_likelihood_ratio``,
    ``negative_likelihood_ratio``. Each equals smp's function of the same name on ``get_stats`` counts summed
    over images, where defined; undefined entries (0 / 0) are NaN and means skip them (smp substitutes
    ``zero_division``). A likelihood ratio over a zero rate is ``inf``, as in smp.

    Args:
        matrix: counts from :func:`confusion_matrix` or :attr:`ConfusionMatrix.matrix`: ``[K, K]`` (rows =
            target, columns = prediction) or multilabel ``[K, 2, 2]``.
        reduction: "none" (per class, default; None means the same), "micro" (pool tp, fp, fn, tn over
            classes, then one score), "macro" (nanmean over classes) or "weighted" (weighted by
            ``class_weights``, or by each class's target pixel count when None).
        class_weights: per-class weights ``[K]`` for "weighted".

    Returns:
        float64 tensors, ``[K]`` for "none", scalars otherwise.

    Raises:
        ConfigError: an unknown reduction, or class_weights that do not fit it.
        ShapeError: a matrix that is neither ``[K, K]`` nor ``[K, 2, 2]``.

    Example:
        >>> matrix = torch.tensor([[5, 1], [2, 4]])  # rows = target, columns = prediction
        >>> confusion_metrics(matrix)["specificity"]
        tensor([0.6667, 0.8333], dtype=torch.float64)
    """
    reduction = "none" if reduction is None else reduction
    if reduction not in MATRIX_REDUCTIONS:
        raise unknown_name("reduction", str(reduction), MATRIX_REDUCTIONS, "(per-image reductions need get_stats)")
    multilabel = matrix.ndim == MULTILABEL_MATRIX_DIMS
    square = matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]
    if not (square or (multilabel and tuple(matrix.shape[1:]) == (2, 2))):
        raise ShapeError(f"matrix must be [K, K] or multilabel [K, 2, 2]; got {list(matrix.shape)}.")
    # one "image" holding every count: smp's micro / macro / weighted sum over images first, so this is the same
    stats = tuple(s.unsqueeze(0) for s in stats_from_counts(matrix, multilabel))
    out = {name: _reduce(formula, stats, reduction, class_weights) for name, formula in CONFUSION_SCORES.items()}
    return {name: score[0] if reduction == "none" else score for name, score in out.items()}


class ConfusionMatrix(StreamingMetric):
    """Accumulate a confusion matrix over batches and report IoU, F-score, precision, recall and accuracy.

    Each :meth:`update` counts all pixels of a batch with a single ``torch.bincount`` over ``target * K + pred``
    (no Python loop over pixels or classes). Pixels whose target is ``ignore_index`` are not counted.

    Layout of :attr:`matrix` (int64): multiclass ``[K, K]`` and binary ``[2, 2]`` have rows = target and
    columns = prediction; multilabel keeps K independent 2×2 tables, ``[K, 2, 2]`` = ``[class, target, pred]``.

    Modes: multiclass float ``preds [N, K, H, W]`` (logits or probabilities) go through argmax, integer
    ``[N, H, W]`` are labels. Binary and multilabel float ``preds`` are positive where
    ``sigmoid(preds) > threshold`` (``preds > threshold`` with ``from_logits=False``); integer or bool ``preds``
    are 0/1 labels. Binary mode reports two classes, index 0 = background and index 1 = foreground (so
    ``compute()["iou"][1]`` is torchmetrics' ``BinaryJaccardIndex``); multilabel reports per class the scores
    of its positive (1) side, and ignores ``ignore_index`` per class channel.

    Undefined scores are NaN: a class absent from both target and prediction has IoU and F-score NaN (a class
    in the target but never predicted has IoU 0); precision is NaN for a class never predicted, recall for one
    absent from the target. ``mean_*`` values are ``nanmean`` over classes, so NaN classes are left out; a mean
    over nothing (e.g. every pixel ignored) is NaN. See :mod:`pixelwise.metrics.functional` for how the peers
    (torchmetrics, smp) differ.

    Args:
        num_classes: K; binary mode takes 1 or 2 (both mean foreground vs background).
        mode: "multiclass" (default), "binary" or "multilabel" (see :mod:`pixelwise.modes`).
        ignore_index: target value of pixels that are not counted (default 255); None counts every pixel.
        threshold: binary/multilabel cut on probabilities (default 0.5).
        beta: β of the ``fscore`` entries (default 1, when they equal ``f1``).
        from_logits: binary/multilabel float ``preds`` are logits (default); False: probabilities.
        per_image: also keep per-image IoU and F-score means (the smp "imagewise" reductions, streamed).
        sync_dist: in :meth:`compute`, sum the counts over all processes of an initialised ``torch.distributed``
            group, so every rank reports the same numbers (default True; a no-op without a group).
        device: where the counts start; they follow the device of the first batch.

    Raises:
        ConfigError: a bad mode, num_classes, threshold or beta.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3)
        >>> cm.update(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> scores = cm.compute()
        >>> scores["iou"].shape, scores["mean_iou"].shape
        (torch.Size([3]), torch.Size([]))
    """

    def __init__(
        self,
        num_classes: int,
        mode: Mode = "multiclass",
        *,
        ignore_index: int | None = IGNORE_INDEX,
        threshold: float = DEFAULT_THRESHOLD,
        beta: float = DEFAULT_BETA,
        from_logits: bool = True,
        per_image: bool = False,
        sync_dist: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        self.mode = check_mode(mode)
        self.num_classes = num_classes
        self._entries = check_num_classes(num_classes, self.mode)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold is a probability in [0, 1]; got {threshold!r}.")
        if not beta > 0:
            raise ConfigError(f"beta must be positive; got {beta!r}.")
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.beta = beta
        self.from_logits = from_logits
        self.per_image = per_image
        self.sync_dist = sync_dist
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    @property
    def _multilabel(self) -> bool:
        return self.mode == "multilabel"

    def reset(self) -> None:
        """Forget everything counted so far."""
        k = self._entries
        shape = (k, 2, 2) if self._multilabel else (k, k)
        self._counts = torch.zeros(shape, dtype=torch.int64, device=self._device)
        # Per-image state is kept as sums (IoU sum, IoU count, F sum, F count) so that it merges and all-reduces.
        self._imagewise = torch.zeros(4, k, dtype=torch.float64, device=self._device) if self.per_image else None

    @property
    def matrix(self) -> torch.Tensor:
        """A copy of this process's counts (not summed over processes); layout in the class docstring."""
        return self._counts.clone()

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of one batch.

        Args:
            preds: scores or labels, see the class docstring and :mod:`pixelwise.modes`.
            target: class ids (multiclass), 0/1 masks (binary, multilabel), ``ignore_index`` where void.

        Raises:
            ShapeError: shapes that do not fit the mode (the message names both shapes).
            ConfigError: class ids or labels outside ``[0, K)``.
        """
        prepared = self.prepare_batch(preds, target)
        counts = count_pixels(prepared, per_image=self.per_image)
        if counts.device != self._counts.device:
            self._device = counts.device
            self._counts = self._counts.to(counts.device)
            if self._imagewise is not None:
                self._imagewise = self._imagewise.to(counts.device)
        if self._imagewise is not None:
            tp, fp, fn, tn = (s.double() for s in stats_from_counts(counts, self._multilabel))
            for row, scores in ((0, _iou(tp, fp, fn, tn)), (2, _fbeta(tp, fp, fn, tn, self.beta))):
                self._imagewise[row] += scores.nansum(0)
                self._imagewise[row + 1] += (~scores.isnan()).sum(0)
            counts = counts.sum(0)
        self._counts += counts

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` (same mode, classes and ``per_image``) to this one; returns ``self``."""
        if not isinstance(other, ConfusionMatrix):
            raise ConfigError(f"merge expects a ConfusionMatrix; got {type(other).__name__}.")
        mine = (self.mode, self._entries, self.per_image)
        theirs = (other.mode, other._entries, other.per_image)
        if mine != theirs:
            raise ConfigError(f"cannot merge (mode, classes, per_image) {theirs} into {mine}.")
        self._counts += other._counts.to(self._counts.device)
        if self._imagewise is not None and other._imagewise is not None:
            self._imagewise += other._imagewise.to(self._imagewise.device)
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        """Scores of everything counted so far (summed over processes when ``sync_dist``).

        Returns:
            float64 tensors. Per class ``[K]`` (binary ``[2]``: background, foreground): ``iou``, ``f1``
            (Dice), ``fscore`` (F-β), ``precision``, ``recall``. Scalars: ``mean_iou``, ``mean_f1``,
            ``mean_fscore``, ``mean_precision``, ``mean_recall`` (``nanmean`` over classes), ``accuracy``
            (pixel accuracy: correct / counted pixels; multilabel: over all class channels), ``mean_accuracy``
            (mean per-class recall, as in Long et al. 2015), ``fw_iou`` (IoU weighted by target pixel
            counts). With ``per_image``: ``iou_imagewise`` and ``fscore_imagewise`` ``[K]`` (mean over
            images where defined) and ``mean_iou_imagewise``, ``mean_fscore_imagewise``.
        """
        counts = distributed_sum(self._counts) if self.sync_dist else self._counts
        tp, fp, fn, tn = (s.double() for s in stats_from_counts(counts, self._multilabel))
        iou = _iou(tp, fp, fn, tn)
        f1 = _fbeta(tp, fp, fn, tn, 1.0)
        fscore = _fbeta(tp, fp, fn, tn, self.beta)
        prec = _precision(tp, fp, fn, tn)
        rec = _recall(tp, fp, fn, tn)
        if self._multilabel:
            correct, counted = (tp + tn).sum(), (tp + fp + fn + tn).sum()
        else:
            correct, counted = tp.sum(), counts.sum().double()
        out = {
            "iou": iou,
            "mean_iou": torch.nanmean(iou),
            "f1": f1,
            "mean_f1": torch.nanmean(f1),
            "fscore": fscore,
            "mean_fscore": torch.nanmean(fscore),
            "precision": prec,
            "mean_precision": torch.nanmean(prec),
            "recall": rec,
            "mean_recall": torch.nanmean(rec),
            "accuracy": correct / counted,
            "mean_accuracy": torch.nanmean(rec),
            "fw_iou": weighted_nanmean(iou, tp + fn),
        }
        if self._imagewise is not None:
            sums = distributed_sum(self._imagewise) if self.sync_dist else self._imagewise
            for row, name in ((0, "iou"), (2, "fscore")):
                per_class = sums[row] / sums[row + 1]  # 0 / 0 = NaN: no image where the score is defined
                out[f"{name}_imagewise"] = per_class
                out[f"mean_{name}_imagewise"] = torch.nanmean(per_class)
        return out

    def confusion_metrics(
        self, reduction: str | None = "none", class_weights: Sequence[float] | torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """smp's confusion-derived scores (sensitivity, specificity, ..., likelihood ratios) of everything counted
        so far, summed over processes when ``sync_dist``; see :func:`confusion_metrics` for keys and reductions.

        Binary mode reports both classes (background, foreground), as :meth:`compute` does.
        """
        counts = distributed_sum(self._counts) if self.sync_dist else self._counts
        return confusion_metrics(counts, reduction, class_weights)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, mode={self.mode!r}, ignore_index={self.ignore_index}, "
            f"threshold={self.threshold}, beta={self.beta}, per_image={self.per_image})"
        )
