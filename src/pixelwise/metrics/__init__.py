"""Segmentation metrics: a streaming confusion matrix, smp-style functional scores, the Keras API, boundary scores.

=====================================  ==================================================================
:class:`ConfusionMatrix`               dataset-level IoU, F-score/Dice, precision, recall, accuracy,
                                       mean accuracy, frequency-weighted IoU; one ``bincount`` per update;
                                       ``merge`` and ``torch.distributed`` sums
:func:`get_stats` + :func:`iou_score`  segmentation_models_pytorch's workflow: per-image ``[N, K]`` tp, fp,
(``f_score``, ``precision``, ...)      fn, tn, then micro / macro / weighted / imagewise reductions
:class:`IOUScore`, :class:`FScore`     Keras segmentation_models callables ``metric(preds, target)``
:class:`BoundaryScores`                boundary F1 (Csurka 2013) and boundary IoU (Cheng 2021) with a pixel
(:func:`boundary_f1`,                  tolerance, for thin structures
:func:`boundary_iou`)
:func:`confusion_metrics`              smp's confusion-derived set (sensitivity, specificity, balanced
(``sensitivity``, ... as functions)    accuracy, PPV, NPV, FPR, FNR, FDR, FOR, LR+, LR-) of a matrix
:class:`SurfaceDistances`              Hausdorff, HD95, ASSD and normalised surface Dice per class, as
(:func:`surface_distances`)            MONAI's surface metrics, with pixel ``spacing``
=====================================  ==================================================================

Undefined scores (a class absent from both prediction and target, every pixel ignored) are NaN, never 0 or 1,
and means skip them; :mod:`pixelwise.metrics.functional` explains how torchmetrics and smp differ.
"""

from pixelwise.metrics.boundary import BoundaryScores, boundary_f1, boundary_iou, inner_band
from pixelwise.metrics.confusion import ConfusionMatrix, confusion_matrix, confusion_metrics
from pixelwise.metrics.functional import (
    REDUCTIONS,
    accuracy,
    balanced_accuracy,
    f1_score,
    f_score,
    false_discovery_rate,
    false_negative_rate,
    false_omission_rate,
    false_positive_rate,
    fbeta_score,
    get_stats,
    iou_score,
    negative_likelihood_ratio,
    negative_predictive_value,
    positive_likelihood_ratio,
    positive_predictive_value,
    precision,
    recall,
    sensitivity,
    specificity,
)
from pixelwise.metrics.keras import FScore, IOUScore, Precision, Recall
from pixelwise.metrics.surface import SurfaceDistances, surface_distances

__all__ = [
    "REDUCTIONS",
    "BoundaryScores",
    "ConfusionMatrix",
    "FScore",
    "IOUScore",
    "Precision",
    "Recall",
    "SurfaceDistances",
    "accuracy",
    "balanced_accuracy",
    "boundary_f1",
    "boundary_iou",
    "confusion_matrix",
    "confusion_metrics",
    "f1_score",
    "f_score",
    "false_discovery_rate",
    "false_negative_rate",
    "false_omission_rate",
    "false_positive_rate",
    "fbeta_score",
    "get_stats",
    "inner_band",
    "iou_score",
    "negative_likelihood_ratio",
    "negative_predictive_value",
    "positive_likelihood_ratio",
    "positive_predictive_value",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "surface_distances",
]
