"""Keras ``segmentation_models`` metrics (``IOUScore``, ``FScore``, ``Precision``, ``Recall``) on PyTorch tensors.

The formulas are those of that library's ``base/functional.py``, with the smoothing term that keeps empty classes
finite (an absent class scores ``smooth / smooth = 1``, which is that library's behaviour, not pixelwise's NaN
policy; use :class:`~pixelwise.metrics.ConfusionMatrix` for dataset-level scores):

    pr = (pr > threshold)                     # when threshold is not None
    tp = Σ gt·pr,  fp = Σ pr − tp,  fn = Σ gt − tp      # over H, W (and the batch unless per_image)
    IoU = (tp + smooth) / (Σ (gt + pr) − tp + smooth)
    F_β = ((1 + β²) tp + smooth) / ((1 + β²) tp + β² fn + fp + smooth)
    precision = (tp + smooth) / (tp + fp + smooth),  recall = (tp + smooth) / (tp + fn + smooth)
    score = mean over classes of (mean over images if per_image) × class_weights

Differences from Keras: tensors are channels-first ``[N, C, H, W]``; arguments are ``(preds, target)`` in that
order (Keras metrics take ``(y_true, y_pred)``); ``threshold`` defaults to 0.5 (Keras: None, i.e. soft scores,
which ``threshold=None`` still gives and which keeps the score differentiable); ``target`` may also be an
integer label map ``[N, H, W]``, turned into one-hot channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.metrics._common import DEFAULT_THRESHOLD
from pixelwise.modes import check_class_ids

SMOOTH = 1e-5
"""Added to numerator and denominator, as in Keras segmentation_models, so empty classes do not divide by zero."""

ClassIndexes = int | Sequence[int] | None
ClassWeights = float | Sequence[float] | torch.Tensor | None


def _one_hot_target(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bring ``target`` to ``preds``' shape ``[N, C, H, W]`` and dtype (a label map becomes one-hot channels)."""
    if preds.ndim != 4:
        raise ShapeError(
            f"preds must be [N, C, H, W] scores; got preds {list(preds.shape)} and target {list(target.shape)}."
        )
    if target.shape == preds.shape:
        return target.to(preds.dtype)
    n, c, h, w = preds.shape
    if target.shape != (n, h, w) or target.is_floating_point():
        raise ShapeError(
            f"target must be [N, C, H, W] like preds, or an integer label map [N, H, W]; "
            f"got preds {list(preds.shape)} and target {list(target.shape)}."
        )
    if c == 1:  # one sigmoid channel: the label map is the binary mask itself
        check_class_ids(target, 2, ignore_index=None)
        return target.unsqueeze(1).to(preds.dtype)
    check_class_ids(target, c, ignore_index=None)
    return F.one_hot(target.long(), c).permute(0, 3, 1, 2).to(preds.dtype)


class _KerasMetric:
    """Shared parts of the metrics below: the constructor (options checked), channel selection, averaging."""

    default_name = ""
    """The metric's name when none is given (Keras' spelling, e.g. ``iou_score``)."""

    def __init__(
        self,
        class_weights: ClassWeights = None,
        class_indexes: ClassIndexes = None,
        threshold: float | None = DEFAULT_THRESHOLD,
        per_image: bool = False,
        smooth: float = SMOOTH,
        name: str | None = None,
    ) -> None:
        if smooth < 0:
            raise ConfigError(f"smooth must be >= 0; got {smooth!r}.")
        self.class_weights = 1.0 if class_weights is None else class_weights
        self.class_indexes = [class_indexes] if isinstance(class_indexes, int) else class_indexes
        self.threshold = threshold
        self.per_image = per_image
        self.smooth = smooth
        self.name = self.__name__ = name or self.default_name

    def _stats(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tp, fp, fn summed over H, W (and N unless ``per_image``): ``[C]`` or ``[N, C]``."""
        if not preds.is_floating_point():
            preds = preds.float()
        gt = _one_hot_target(preds, target)
        pr = preds
        if self.class_indexes is not None:
            index = torch.as_tensor(self.class_indexes, dtype=torch.long, device=preds.device)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= preds.shape[1]):
                raise ConfigError(f"class_indexes {self.class_indexes} outside 0..{preds.shape[1] - 1}.")
            gt, pr = gt.index_select(1, index), pr.index_select(1, index)
        if self.threshold is not None:
            pr = (pr > self.threshold).to(pr.dtype)
        axes = (2, 3) if self.per_image else (0, 2, 3)
        tp = (gt * pr).sum(axes)
        return tp, pr.sum(axes) - tp, gt.sum(axes) - tp

    def _average(self, score: torch.Tensor) -> torch.Tensor:
        if self.per_image:
            score = score.mean(0)
        weights = torch.as_tensor(self.class_weights, dtype=score.dtype, device=score.device)
        if weights.ndim and weights.shape != score.shape:
            raise ConfigError(
                f"class_weights must be a number or have one entry per used class ({score.numel()}); "
                f"got {weights.numel()}."
            )
        # Keras multiplies by the weights and then takes a plain mean; it is not a weighted average.
        return (score * weights).mean()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, threshold={self.threshold}, per_image={self.per_image}, "
            f"class_indexes={self.class_indexes}, smooth={self.smooth})"
        )


class IOUScore(_KerasMetric):
    """Intersection over union with Keras segmentation_models semantics (see the module docstring).

    Args:
        class_weights: a number or one weight per (selected) class; multiplies the per-class scores before the
            mean over classes (default 1).
        class_indexes: an int or list of channel indexes to score; None: all channels.
        threshold: predictions are ``pr > threshold`` (default 0.5); None keeps soft scores.
        per_image: score each image, then average over the batch; False pools the batch first.
        smooth: added to numerator and denominator (default 1e-5).
        name: metric name (default "iou_score"), also ``__name__``.

    Shape:
        preds: ``[N, C, H, W]`` probabilities (after sigmoid/softmax, as in Keras).
        target: ``[N, C, H, W]`` one-hot / 0-1 masks, or an integer label map ``[N, H, W]``.

    Returns:
        a scalar tensor.

    Raises:
        ShapeError: preds and target shapes that do not fit (both are named).
        ConfigError: class ids, ``class_indexes`` or ``class_weights`` that do not fit the channels.

    Example:
        >>> metric = IOUScore(threshold=0.5)
        >>> metric(torch.rand(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    default_name = "iou_score"

    def __call__(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = self._stats(preds, target)
        return self._average((tp + self.smooth) / (tp + fp + fn + self.smooth))


class FScore(_KerasMetric):
    """F-β score (β = 1: F1 / Dice) with Keras segmentation_models semantics (see the module docstring).

    Args:
        beta: weight of recall against precision (default 1).
        class_weights, class_indexes, threshold, per_image, smooth: as in :class:`IOUScore`.
        name: metric name (default ``f"f{beta}-score"``, e.g. "f1-score", "f2-score"), also ``__name__``.

    Shape:
        as in :class:`IOUScore`.

    Returns:
        a scalar tensor.

    Raises:
        ConfigError: ``beta <= 0``, or class ids / options that do not fit the channels.
        ShapeError: preds and target shapes that do not fit.

    Example:
        >>> FScore(beta=2).name
        'f2-score'
    """

    def __init__(
        self,
        beta: float = 1,
        class_weights: ClassWeights = None,
        class_indexes: ClassIndexes = None,
        threshold: float | None = DEFAULT_THRESHOLD,
        per_image: bool = False,
        smooth: float = SMOOTH,
        name: str | None = None,
    ) -> None:
        if not beta > 0:
            raise ConfigError(f"beta must be positive; got {beta!r}.")
        super().__init__(class_weights, class_indexes, threshold, per_image, smooth, name or f"f{beta:g}-score")
        self.beta = beta

    def __call__(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = self._stats(preds, target)
        b2 = self.beta**2
        return self._average(((1 + b2) * tp + self.smooth) / ((1 + b2) * tp + b2 * fn + fp + self.smooth))


class Precision(_KerasMetric):
    """Precision ``(tp + smooth) / (tp + fp + smooth)`` with Keras segmentation_models semantics (module docstring).

    Args:
        class_weights, class_indexes, threshold, per_image, smooth: as in :class:`IOUScore`.
        name: metric name (default "precision"), also ``__name__``.

    Shape:
        as in :class:`IOUScore`.

    Returns:
        a scalar tensor.

    Raises:
        ShapeError, ConfigError: as in :class:`IOUScore`.

    Example:
        >>> round(Precision()(torch.ones(1, 1, 2, 2), torch.tensor([[[1, 0], [0, 0]]])).item(), 4)
        0.25
    """

    default_name = "precision"

    def __call__(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, _ = self._stats(preds, target)
        return self._average((tp + self.smooth) / (tp + fp + self.smooth))


class Recall(_KerasMetric):
    """Recall ``(tp + smooth) / (tp + fn + smooth)`` with Keras segmentation_models semantics (module docstring).

    Args:
        class_weights, class_indexes, threshold, per_image, smooth: as in :class:`IOUScore`.
        name: metric name (default "recall"), also ``__name__``.

    Shape:
        as in :class:`IOUScore`.

    Returns:
        a scalar tensor.

    Raises:
        ShapeError, ConfigError: as in :class:`IOUScore`.

    Example:
        >>> round(Recall()(torch.ones(1, 1, 2, 2), torch.tensor([[[1, 0], [0, 0]]])).item(), 4)
        1.0
    """

    default_name = "recall"

    def __call__(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, _, fn = self._stats(preds, target)
        return self._average((tp + self.smooth) / (tp + fn + self.smooth))
