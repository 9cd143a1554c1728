"""Per-image pixel statistics (tp, fp, fn, tn) and the scores built from them, with segmentation_models_pytorch's names.

Workflow, as in smp: ``tp, fp, fn, tn = get_stats(preds, target, mode, num_classes)`` gives ``[N, K]`` counts
(per image, per class), and ``iou_score(tp, fp, fn, tn, reduction="macro")`` reduces them. Besides IoU,
F-score, precision, recall and accuracy, smp's confusion-derived set is here under its names: ``sensitivity``,
``specificity``, ``balanced_accuracy``, ``positive_predictive_value``, ``negative_predictive_value``,
``false_positive_rate``, ``false_negative_rate``, ``false_discovery_rate``, ``false_omission_rate``,
``positive_likelihood_ratio``, ``negative_likelihood_ratio`` (per class one-vs-rest; :data:`CONFUSION_SCORES`
maps the names to the formulas).

Reductions (``reduction=``):

========================  ==============================================================================
``"micro"``               sum tp, fp, fn, tn over images and classes, then one score
``"macro"``               sum over images, a score per class, then the mean over classes
``"weighted"``            as macro, but a weighted mean: ``class_weights``, or each class's support
                          (``tp + fn``, its target pixel count) when ``class_weights`` is None
``"micro-imagewise"``     sum over classes, a score per image, then the mean over images
``"macro-imagewise"``     a score per image and class, the mean over images, then over classes
``"weighted-imagewise"``  as macro-imagewise with the weighted mean over classes
``"none"`` / None         the ``[N, K]`` scores themselves
========================  ==============================================================================

Undefined scores are NaN, never a made-up 0 or 1: a ratio whose denominator is zero (IoU and F of a class
absent from both prediction and target; precision of a class never predicted; recall of a class absent from
the target) is NaN, and every mean above skips NaN entries (``nanmean``); a mean over nothing is NaN.
smp instead substitutes ``zero_division`` (1.0 by default) and averages it in; torchmetrics substitutes 0 per
class but also leaves classes absent from both sides out of its macro mean. On classes where a score is
defined, all three agree. Scores are float64 so that large pixel counts stay exact.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from pixelwise.errors import ConfigError, ShapeError, unknown_name
from pixelwise.metrics._common import DEFAULT_THRESHOLD, count_pixels, prepare, stats_from_counts
from pixelwise.modes import IGNORE_INDEX, Mode, check_mode

Reduction = Literal["micro", "macro", "weighted", "micro-imagewise", "macro-imagewise", "weighted-imagewise", "none"]
REDUCTIONS: tuple[str, ...] = (
    "micro",
    "macro",
    "weighted",
    "micro-imagewise",
    "macro-imagewise",
    "weighted-imagewise",
    "none",
)

Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def get_stats(
    preds: torch.Tensor,
    target: torch.Tensor,
    mode: Mode,
    num_classes: int | None = None,
    *,
    ignore_index: int | None = IGNORE_INDEX,
    threshold: float = DEFAULT_THRESHOLD,
    from_logits: bool = True,
) -> Stats:
    """Count true/false positives/negatives per image and class, like ``smp.metrics.get_stats``.

    Differences from smp: ``preds`` come first and may be scores (multiclass: argmax; binary/multilabel: a
    ``threshold`` on ``sigmoid(preds)``, or on ``preds`` with ``from_logits=False`` as smp does); ``ignore_index``
    works in every mode (multilabel: per class channel); counting is one ``bincount``, not a loop over images.

    Args:
        preds: see :mod:`pixelwise.modes`; multiclass also takes integer labels ``[N, H, W]``.
        target: see :mod:`pixelwise.modes`.
        mode: "binary", "multiclass" or "multilabel".
        num_classes: K; required for multiclass, read from ``preds`` for multilabel, ignored for binary.
        ignore_index: target value of pixels that are not counted (default 255); None counts every pixel.
        threshold: binary/multilabel: a pixel is positive when its probability is ``> threshold`` (default 0.5).
        from_logits: binary/multilabel float ``preds`` are logits (default); False: probabilities.

    Shape:
        tp, fp, fn, tn: int64 ``[N, K]``; binary: ``[N, 1]``, the foreground class, as in smp.

    Returns:
        ``(tp, fp, fn, tn)``.

    Raises:
        ShapeError: shapes that do not fit ``mode``.
        ConfigError: missing ``num_classes`` in multiclass mode, class ids out of range.

    Example:
        >>> tp, fp, fn, tn = get_stats(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)), "multiclass", 3)
        >>> iou_score(tp, fp, fn, tn, reduction="macro").shape
        torch.Size([])
    """
    mode = check_mode(mode)
    if num_classes is None:
        if mode == "multiclass":
            raise ConfigError("get_stats needs num_classes in multiclass mode.")
        num_classes = preds.shape[1] if mode == "multilabel" and preds.ndim == 4 else 1
    prepared = prepare(
        preds, target, mode, num_classes, ignore_index=ignore_index, threshold=threshold, from_logits=from_logits
    )
    tp, fp, fn, tn = stats_from_counts(count_pixels(prepared, per_image=True), prepared.multilabel)
    if mode == "binary":  # smp reports only the foreground column
        return tp[:, 1:], fp[:, 1:], fn[:, 1:], tn[:, 1:]
    return tp, fp, fn, tn


# The formulas. Inputs are float64; 0 / 0 gives NaN on purpose (the score is undefined).


def _iou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return tp / (tp + fp + fn)


def _fbeta(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor, beta: float) -> torch.Tensor:
    b2 = beta**2
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)


def _precision(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return tp / (tp + fp)


def _recall(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return tp / (tp + fn)


def _accuracy(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return (tp + tn) / (tp + fp + fn + tn)


def _specificity(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return tn / (tn + fp)


def _balanced_accuracy(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return (_recall(tp, fp, fn, tn) + _specificity(tp, fp, fn, tn)) / 2


def _negative_predictive_value(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return tn / (tn + fn)


def _false_negative_rate(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return 1 - _recall(tp, fp, fn, tn)


def _false_positive_rate(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return 1 - _specificity(tp, fp, fn, tn)


def _false_discovery_rate(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return 1 - _precision(tp, fp, fn, tn)


def _false_omission_rate(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return 1 - _negative_predictive_value(tp, fp, fn, tn)


def _positive_likelihood_ratio(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _recall(tp, fp, fn, tn) / _false_positive_rate(tp, fp, fn, tn)


def _negative_likelihood_ratio(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    return _false_negative_rate(tp, fp, fn, tn) / _specificity(tp, fp, fn, tn)


def weighted_nanmean(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the defined (non-NaN) ``scores``; weights are renormalised over those entries.

    Returns NaN when no entry is defined or the remaining weights sum to zero.
    """
    defined = ~scores.isnan()
    w = torch.where(defined, weights.to(scores), torch.zeros_like(scores))
    return torch.where(defined, scores * w, torch.zeros_like(scores)).sum(-1) / w.sum(-1)


def _reduce(
    formula: Callable[..., torch.Tensor],
    stats: Stats,
    reduction: str | None,
    class_weights: Sequence[float] | torch.Tensor | None,
) -> torch.Tensor:
    if reduction is None:
        reduction = "none"
    if reduction not in REDUCTIONS:
        raise unknown_name("reduction", str(reduction), REDUCTIONS)
    tp, fp, fn, tn = (s.double() for s in stats)
    if tp.ndim != 2 or any(s.shape != tp.shape for s in (fp, fn, tn)):
        raise ShapeError(
            "tp, fp, fn, tn must all be [N, K] (per image, per class, as get_stats returns); got "
            + ", ".join(str(list(s.shape)) for s in (tp, fp, fn, tn))
            + "."
        )
    if class_weights is not None and reduction.startswith("macro"):
        raise ConfigError(f"reduction={reduction!r} is an unweighted mean; use 'weighted' for class_weights.")
    if reduction == "none":
        return formula(tp, fp, fn, tn)
    if reduction == "micro":
        return formula(tp.sum(), fp.sum(), fn.sum(), tn.sum())
    if reduction == "micro-imagewise":
        return torch.nanmean(formula(tp.sum(1), fp.sum(1), fn.sum(1), tn.sum(1)))
    if reduction.endswith("imagewise"):
        scores = torch.nanmean(formula(tp, fp, fn, tn), dim=0)
    else:
        scores = formula(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0))
    if reduction.startswith("macro"):
        return torch.nanmean(scores)
    if class_weights is None:
        weights = (tp + fn).sum(0)
    else:
        weights = torch.as_tensor(class_weights, dtype=torch.float64, device=tp.device)
        if weights.shape != scores.shape:
            raise ConfigError(f"class_weights must have one entry per class ({scores.numel()}); got {weights.numel()}.")
    return weighted_nanmean(scores, weights)


# The arguments every score shares, documented once and appended to each docstring below.
_REDUCTION_DOC = """
    Args:
        tp, fp, fn, tn: int ``[N, K]`` statistics from :func:`get_stats`.
        reduction: one of :data:`REDUCTIONS` (see the module docstring); None means "none".
        class_weights: per-class weights ``[K]`` for the "weighted" reductions (default: class support).

    Returns:
        float64 scalar, or ``[N, K]`` for "none"; NaN where undefined (see the module docstring).

    Raises:
        ConfigError: an unknown reduction, class_weights with a "macro" reduction, or of the wrong length.
        ShapeError: statistics that are not all ``[N, K]``.

    Example:
        >>> tp, fp, fn, tn = get_stats(preds, target, "multiclass", num_classes=3)
        >>> {name}(tp, fp, fn, tn, reduction="macro")
"""


def _count_score(name: str, formula: Callable[..., torch.Tensor], summary: str) -> Callable[..., torch.Tensor]:
    """The public score ``name``: ``formula`` applied to tp, fp, fn, tn under a reduction."""

    def score(
        tp: torch.Tensor,
        fp: torch.Tensor,
        fn: torch.Tensor,
        tn: torch.Tensor,
        reduction: Reduction | None = None,
        class_weights: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return _reduce(formula, (tp, fp, fn, tn), reduction, class_weights)

    score.__name__ = score.__qualname__ = name
    score.__doc__ = f"{summary}\n{_REDUCTION_DOC.format(name=name)}"
    return score


def f_score(
    tp: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    tn: torch.Tensor,
    beta: float = 1.0,
    reduction: Reduction | None = None,
    class_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """F-beta score ``(1 + β²) tp / ((1 + β²) tp + β² fn + fp)``; ``beta=1`` is F1, the Dice coefficient.

    ``beta`` (default 1) weighs recall β times as much as precision; the other arguments are shared:"""
    return _reduce(functools.partial(_fbeta, beta=beta), (tp, fp, fn, tn), reduction, class_weights)


f_score.__doc__ = f"{f_score.__doc__}\n{_REDUCTION_DOC.format(name='f_score')}"

iou_score = _count_score("iou_score", _iou, "Intersection over union (Jaccard index) ``tp / (tp + fp + fn)``.")
f1_score = _count_score(
    "f1_score", functools.partial(_fbeta, beta=1.0), "F1 score (Dice coefficient) ``2 tp / (2 tp + fn + fp)``."
)
precision = _count_score("precision", _precision, "Precision (positive predictive value) ``tp / (tp + fp)``.")
recall = _count_score("recall", _recall, "Recall (sensitivity, true positive rate) ``tp / (tp + fn)``.")
accuracy = _count_score("accuracy", _accuracy, "Accuracy ``(tp + tn) / (tp + fp + fn + tn)`` (per class: one-vs-rest).")

fbeta_score = f_score
"""smp's name for :func:`f_score`."""

# The rest of smp's confusion-derived set; per class they are one-vs-rest (negatives = every other class).
sensitivity = _count_score("sensitivity", _recall, "Sensitivity (recall, true positive rate) ``tp / (tp + fn)``.")
specificity = _count_score("specificity", _specificity, "Specificity (true negative rate) ``tn / (tn + fp)``.")
balanced_accuracy = _count_score(
    "balanced_accuracy", _balanced_accuracy, "Balanced accuracy ``(sensitivity + specificity) / 2``."
)
positive_predictive_value = _count_score(
    "positive_predictive_value", _precision, "Positive predictive value (precision) ``tp / (tp + fp)``."
)
negative_predictive_value = _count_score(
    "negative_predictive_value", _negative_predictive_value, "Negative predictive value ``tn / (tn + fn)``."
)
false_negative_rate = _count_score(
    "false_negative_rate", _false_negative_rate, "False negative rate (miss rate) ``1 - sensitivity``."
)
false_positive_rate = _count_score(
    "false_positive_rate", _false_positive_rate, "False positive rate (fall-out) ``1 - specificity``."
)
false_discovery_rate = _count_score(
    "false_discovery_rate", _false_discovery_rate, "False discovery rate ``1 - positive_predictive_value``."
)
false_omission_rate = _count_score(
    "false_omission_rate", _false_omission_rate, "False omission rate ``1 - negative_predictive_value``."
)
positive_likelihood_ratio = _count_score(
    "positive_likelihood_ratio",
    _positive_likelihood_ratio,
    "Positive likelihood ratio (LR+) ``sensitivity / false_positive_rate``; ``inf`` when no negative is\n"
    "    predicted positive (as smp: a non-zero ratio over 0).",
)
negative_likelihood_ratio = _count_score(
    "negative_likelihood_ratio",
    _negative_likelihood_ratio,
    "Negative likelihood ratio (LR-) ``false_negative_rate / specificity``.",
)

CONFUSION_SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "sensitivity": _recall,
    "specificity": _specificity,
    "balanced_accuracy": _balanced_accuracy,
    "positive_predictive_value": _precision,
    "negative_predictive_value": _negative_predictive_value,
    "false_positive_rate": _false_positive_rate,
    "false_negative_rate": _false_negative_rate,
    "false_discovery_rate": _false_discovery_rate,
    "false_omission_rate": _false_omission_rate,
    "positive_likelihood_ratio": _positive_likelihood_ratio,
    "negative_likelihood_ratio": _negative_likelihood_ratio,
}
"""smp's confusion-derived scores by name: the formulas on float64 tp, fp, fn, tn (0 / 0 = NaN)."""
