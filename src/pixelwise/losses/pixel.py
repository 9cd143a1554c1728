"""Per-pixel losses: cross-entropy (``ce``), binary cross-entropy (``bce``) and focal loss (``focal``).

Each computes one loss per pixel (per pixel and class in multilabel mode), multiplies it by the
optional ``weight_map`` and averages over the non-ignored pixels; see each class for the exact
normaliser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixelwise.errors import ConfigError
from pixelwise.losses.base import (
    SegmentationLoss,
    as_class_vector,
    binary_log_probabilities,
    check_class_count,
    check_range,
    log_probabilities,
    reduce_pixels,
    register_loss,
    valid_mask,
)
from pixelwise.modes import IGNORE_INDEX, Mode


def _class_ids(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` class ids with ignored pixels set to class 0, so that indexing stays in range."""
    return torch.where(valid, target, 0).unsqueeze(1)


def _sigmoid_target(target: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 targets as floats, with ignored entries set to 0 (their loss is dropped afterwards)."""
    return torch.where(valid, target, 0).to(dtype)


@register_loss("ce")
class CrossEntropyLoss(SegmentationLoss):
    """Softmax cross-entropy over ``K`` classes (multiclass mode only), equal to ``F.cross_entropy``.

    ``loss = sum_x w(x) * l(x) / sum_x c(y_x)`` over non-ignored pixels ``x``, where ``c`` are the
    class weights (1 without them), ``w`` the optional weight map and, with label smoothing ``e``,
    ``l(x) = (1 - e) * c(y_x) * -log p_y(x) + e / K * sum_k c(k) * -log p_k(x)``. This is
    ``F.cross_entropy(..., weight=c, ignore_index, label_smoothing=e)`` when ``w`` is None or all
    ones; with a weight map it is the U-Net paper's weighted mean ``mean_x w(x) * CE(x)``.

    Binary and multilabel targets need ``"bce"``; ``ce`` refuses those modes rather than silently
    switching to a sigmoid loss.

    Args:
        mode: must be ``"multiclass"``.
        ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        class_weights: one non-negative weight per class, or None for equal weights.
        label_smoothing: ``e`` in ``[0, 1]``; the target becomes ``(1 - e) * one_hot + e / K``.
        mean_over_classes: also divide by ``K``, as Keras segmentation_models' ``CategoricalCELoss``
            does (it averages over the class axis too); used by the ``cce_*`` Keras aliases.

    Shape:
        preds ``[N, K, H, W]``; target ``[N, H, W]`` class ids; weight_map ``[N, H, W]``.

    Example:
        >>> loss = CrossEntropyLoss(class_weights=[1.0, 5.0])
        >>> weight_map = torch.ones(2, 8, 8)  # e.g. the U-Net paper's border weights
        >>> loss(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8)), weight_map).shape
        torch.Size([])
    """

    supported_modes = ("multiclass",)
    accepts_weight_map = True

    def __init__(
        self,
        mode: Mode = "multiclass",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        mean_over_classes: bool = False,
    ):
        super().__init__(mode, ignore_index, from_logits)
        self.mean_over_classes = bool(mean_over_classes)
        # Not persistent: a training checkpoint should not break when the weights are retuned.
        self.register_buffer("class_weights", as_class_vector("class_weights", class_weights), persistent=False)
        self.label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)

    def _mode_hint(self) -> str:
        return ' Use "bce" (sigmoid cross-entropy) for binary and multilabel targets, e.g. "bce+dice".'

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        num_classes = preds.shape[1]
        check_class_count("class_weights", self.class_weights, num_classes)
        log_p = log_probabilities(preds, self.from_logits)
        valid = valid_mask(target, self.ignore_index).unsqueeze(1)
        ids = _class_ids(target, valid[:, 0])
        loss = -log_p.gather(1, ids)
        weights = None if self.class_weights is None else self.class_weights.to(log_p.dtype)
        normaliser = None
        if weights is not None:  # F.cross_entropy divides by the summed weights of the valid pixels' classes
            pixel_weights = weights[ids]
            loss = loss * pixel_weights
            normaliser = torch.where(valid, pixel_weights, 0).sum()
        if self.label_smoothing > 0:
            per_class = -log_p if weights is None else -log_p * weights.view(1, -1, 1, 1)
            smooth = per_class.sum(dim=1, keepdim=True) / num_classes
            loss = (1 - self.label_smoothing) * loss + self.label_smoothing * smooth
        value = reduce_pixels(loss, valid, weight_map, normaliser)
        return value / num_classes if self.mean_over_classes else value

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", label_smoothing={self.label_smoothing}, mean_over_classes={self.mean_over_classes}"
        )


@register_loss("bce")
class BCELoss(SegmentationLoss):
    """Sigmoid binary cross-entropy per pixel and channel (binary and multilabel modes).

    ``loss = mean over non-ignored entries of w(x) * -(q * t * log p + (1 - t) * log(1 - p))``
    with ``p = sigmoid(preds)``, ``q`` the positive weight and ``w`` the optional weight map
    (shared by the ``K`` channels of a pixel). With label smoothing ``s`` the 0/1 target becomes
    ``t = (1 - s) * y + s * (1 - y)`` (1 → ``1 - s``, 0 → ``s``, as segmentation_models_pytorch's
    ``SoftBCEWithLogitsLoss(smooth_factor=s)``). Without ignored entries this is
    ``F.binary_cross_entropy_with_logits(preds, target, pos_weight=q)``. Multiclass targets need
    ``"ce"``; ``bce`` refuses that mode rather than guessing a one-hot encoding.

    Args:
        mode: ``"binary"`` (default) or ``"multilabel"``.
        ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        pos_weight: weight of positive targets: a number, or one per class in multilabel mode.
        smooth_factor: label smoothing ``s`` in ``[0, 1]`` (default 0: hard targets).

    Shape:
        binary: preds and target ``[N, 1, H, W]`` or ``[N, H, W]``; multilabel: both ``[N, K, H, W]``;
        weight_map ``[N, H, W]``.

    Example:
        >>> target = torch.randint(0, 2, (2, 1, 8, 8))
        >>> target[..., :2, :] = 255  # unlabelled top rows: they count for nothing
        >>> BCELoss("binary", pos_weight=3.0)(torch.randn(2, 1, 8, 8), target).shape
        torch.Size([])
    """

    supported_modes = ("binary", "multilabel")
    accepts_weight_map = True

    def __init__(
        self,
        mode: Mode = "binary",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        pos_weight: float | Sequence[float] | torch.Tensor | None = None,
        smooth_factor: float = 0.0,
    ):
        super().__init__(mode, ignore_index, from_logits)
        self.register_buffer("pos_weight", as_class_vector("pos_weight", pos_weight), persistent=False)
        self.smooth_factor = check_range("smooth_factor", smooth_factor, 0.0, 1.0)

    def _mode_hint(self) -> str:
        return ' Use "ce" (softmax cross-entropy) for multiclass targets.'

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        valid = valid_mask(target, self.ignore_index)
        t = _sigmoid_target(target, valid, preds.dtype)
        if self.smooth_factor > 0:
            t = (1 - self.smooth_factor) * t + self.smooth_factor * (1 - t)
        log_p, log_q = binary_log_probabilities(preds, self.from_logits)
        positive = t * log_p
        if self.pos_weight is not None:
            if self.pos_weight.numel() != 1:
                check_class_count("pos_weight", self.pos_weight, preds.shape[1])
            positive = positive * self.pos_weight.to(preds.dtype).view(1, -1, 1, 1)
        return reduce_pixels(-(positive + (1 - t) * log_q), valid, weight_map)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", smooth_factor={self.smooth_factor}"


@register_loss("focal")
class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t) ** gamma`` to focus on hard pixels.

    Multiclass: ``l(x) = -a(y_x) * (1 - p_y) ** gamma * log p_y`` with softmax ``p``.
    Binary / multilabel: ``l = -a_t * (1 - p_t) ** gamma * log p_t`` per entry with sigmoid ``p``,
    ``p_t = p`` for positives and ``1 - p`` for negatives, ``a_t = alpha`` for positives and
    ``1 - alpha`` for negatives. ``loss = mean over non-ignored entries of w(x) * l(x)``: unlike
    ``ce``'s class weights, ``alpha`` is not divided out (as in RetinaNet). ``gamma = 0`` and no
    ``alpha`` give plain (binary) cross-entropy.

    Args:
        mode: ``"binary"``, ``"multiclass"`` (default) or ``"multilabel"``.
        ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        gamma: focusing exponent, ``>= 0`` (default 2.0).
        alpha: None (no balancing); binary/multilabel: the weight of positives in ``[0, 1]``;
            multiclass: one non-negative weight per class.
        mean_over_classes: multiclass only: also divide by ``K``, as Keras segmentation_models'
            ``CategoricalFocalLoss`` does; used by the ``categorical_focal_*`` Keras aliases.

    Shape:
        as the mode (see :mod:`pixelwise.modes`); weight_map ``[N, H, W]``.

    Example:
        >>> loss = FocalLoss("binary", gamma=2.0, alpha=0.25)
        >>> preds, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
        >>> bool(loss(preds, target) < BCELoss()(preds, target))  # easy pixels weigh less
        True
    """

    accepts_weight_map = True

    def __init__(
        self,
        mode: Mode = "multiclass",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        mean_over_classes: bool = False,
    ):
        super().__init__(mode, ignore_index, from_logits)
        self.gamma = check_range("gamma", gamma, 0.0)
        if mean_over_classes and self.mode != "multiclass":
            raise ConfigError(
                f"focal mean_over_classes=True is for multiclass mode; in {self.mode!r} mode the loss is already "
                "a mean over all pixels and channels."
            )
        self.mean_over_classes = bool(mean_over_classes)
        if alpha is None or self.mode == "multiclass":
            if alpha is not None and not isinstance(alpha, (Sequence, torch.Tensor)):
                raise ConfigError(f"in multiclass mode focal alpha is a list of per-class weights; got {alpha!r}.")
            self.register_buffer("alpha", as_class_vector("alpha", alpha), persistent=False)
        else:
            self.register_buffer("alpha", torch.tensor(check_range("alpha", alpha, 0.0, 1.0)), persistent=False)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "multiclass":
            valid = valid_mask(target, self.ignore_index).unsqueeze(1)
            ids = _class_ids(target, valid[:, 0])
            log_pt = log_probabilities(preds, self.from_logits).gather(1, ids)
            balance = None
            if self.alpha is not None:
                check_class_count("alpha", self.alpha, preds.shape[1])
                balance = self.alpha.to(preds.dtype)[ids]
        else:
            valid = valid_mask(target, self.ignore_index)
            t = _sigmoid_target(target, valid, preds.dtype)
            log_p, log_q = binary_log_probabilities(preds, self.from_logits)
            log_pt = t * log_p + (1 - t) * log_q
            balance = None if self.alpha is None else self.alpha * t + (1 - self.alpha) * (1 - t)
        loss = -log_pt
        if self.gamma > 0:  # skip for gamma = 0: pow(0, 0) has an undefined gradient at p_t = 1
            loss = loss * (1 - log_pt.exp()).pow(self.gamma)
        if balance is not None:
            loss = loss * balance
        value = reduce_pixels(loss, valid, weight_map)
        return value / preds.shape[1] if self.mean_over_classes else value

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gamma={self.gamma}"
