"""Soft overlap losses: Tversky (``tversky``) and its special cases Dice (``dice``) and Jaccard (``jaccard``).

Per class ``c``, with probabilities ``p`` and 0/1 targets ``t`` summed over the batch and the
pixels (ignored pixels have ``p = t = 0``, so they add nothing)::

    TP = sum p t,   FP = sum p (1 - t),   FN = sum (1 - p) t
    TI_c = (TP + smooth) / max(TP + alpha FP + beta FN + smooth, eps)
    l_c  = 1 - TI_c                      (log_loss: -log(max(TI_c, eps)))
    loss = sum_c w_c l_c ** gamma / sum_c w_c   over the counted classes c

``w_c`` are the ``class_weights`` (1 without them); a class left out of ``classes`` (Keras:
``class_indexes``) weighs 0. This is segmentation_models_pytorch 0.6's ``class_weights`` /
``classes`` / ``log_loss``. Keras segmentation_models computes ``1 - mean_c(w_c TI_c)`` over the
selected classes, which is ``(1 - mean(w)) + mean(w) * loss``: equal when the weights average 1,
otherwise an affine change of ours (same minimiser, gradients scaled by ``mean(w)``).

Dice is ``alpha = beta = 0.5`` (``2 TP / (2 TP + FP + FN)``), Jaccard ``alpha = beta = 1``
(``TP / (TP + FP + FN)``). Binary mode has one class (the foreground); multiclass mode uses all
``K`` softmax channels, including the background; multilabel mode the ``K`` sigmoid channels.

**Classes absent from the target** (no non-ignored positive pixel in the batch): with
``smooth = 0`` their score is 0 whatever the prediction, a constant loss of 1 with no gradient,
so they are left out of the mean (segmentation_models_pytorch zeroes them but keeps them in the
mean; the two agree when every class occurs); when no class is present the loss is 0. With
``smooth > 0`` they stay in the mean, where
``1 - smooth / (alpha FP + smooth)`` penalises false positives on empty masks; choose
``smooth > 0`` (e.g. 1.0) when all-background images should teach the model to predict nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pixelwise.errors import ConfigError
from pixelwise.losses.base import (
    SegmentationLoss,
    as_class_vector,
    check_range,
    class_subset,
    one_vs_rest,
    register_loss,
    selection_weights,
)
from pixelwise.modes import IGNORE_INDEX, Mode

_SUM_DIMS = (0, 2, 3)
"""Batch and pixel dimensions of ``[N, C, H, W]``: the scores are computed over the whole batch, per class."""


@register_loss("tversky")
class TverskyLoss(SegmentationLoss):
    """Soft Tversky loss (Salehi et al. 2017), with the focal exponent of Abraham & Khan (2019).

    See the module docstring for the formula and the absent-class policy. ``gamma`` applies to
    each class's ``1 - TI_c`` before the mean (segmentation_models_pytorch applies it to the mean;
    the two agree in binary mode and for ``gamma = 1``).

    Args:
        mode: ``"binary"``, ``"multiclass"`` (default) or ``"multilabel"``.
        ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        alpha: weight of false positives, ``>= 0`` (default 0.5).
        beta: weight of false negatives, ``>= 0`` (default 0.5).
        gamma: exponent of each class's loss, ``> 0`` (default 1.0).
        smooth: added to numerator and denominator, ``>= 0`` (default 0.0).
        eps: lower bound of the denominator, ``> 0`` (default 1e-7), so that empty classes never divide by zero;
            also the floor of the score under ``log_loss``.
        class_weights: one weight ``>= 0`` per class of ``preds`` (or, Keras style, one per entry of
            ``classes``); the per-class losses are averaged with these weights. Not in binary mode.
        classes: the class ids (channels) that count; None: all. Not in binary mode (one channel).
        class_indexes: Keras segmentation_models' name for ``classes`` (give one of the two).
        log_loss: use ``-log(TI_c)`` instead of ``1 - TI_c`` (default False).

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map (a region score has no per-pixel form).

    Raises:
        ConfigError: an option out of range, ``classes`` / ``class_weights`` in binary mode, or (when
            called) class ids or weights that do not fit the channels of ``preds``.

    Example:
        >>> loss = TverskyLoss("binary", alpha=0.3, beta=0.7)
        >>> loss(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        mode: Mode = "multiclass",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        smooth: float = 0.0,
        eps: float = 1e-7,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        classes: int | Sequence[int] | None = None,
        class_indexes: int | Sequence[int] | None = None,
        log_loss: bool = False,
    ):
        super().__init__(mode, ignore_index, from_logits)
        self.alpha = check_range("alpha", alpha, 0.0)
        self.beta = check_range("beta", beta, 0.0)
        self.gamma = check_range("gamma", gamma, 0.0, open_low=True)
        self.smooth = check_range("smooth", smooth, 0.0)
        self.eps = check_range("eps", eps, 0.0, open_low=True)
        self.log_loss = bool(log_loss)
        self.classes = class_subset(classes, class_indexes)
        if self.mode == "binary" and (self.classes is not None or class_weights is not None):
            raise ConfigError(
                f"loss {self.name!r} in binary mode has one class: drop classes/class_indexes and class_weights "
                "(they select and weigh the channels of multiclass and multilabel modes)."
            )
        self.register_buffer("class_weights", as_class_vector("class_weights", class_weights), persistent=False)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        p, t, _ = one_vs_rest(preds, target, self.mode, self.ignore_index, self.from_logits)
        tp = (p * t).sum(_SUM_DIMS)
        fp = p.sum(_SUM_DIMS) - tp
        fn = t.sum(_SUM_DIMS) - tp
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)
        per_class = -score.clamp_min(self.eps).log() if self.log_loss else 1 - score
        if self.gamma != 1:
            per_class = per_class.clamp_min(0).pow(self.gamma)
        counted = t.sum(_SUM_DIMS) > 0 if self.smooth == 0 else torch.ones_like(per_class, dtype=torch.bool)
        weights = selection_weights(self.class_weights, self.classes, preds.shape[1], per_class)
        weights = torch.where(counted, weights, torch.zeros_like(weights))
        total = weights.sum()
        # No counted class (or only zero weights): 0, attached to the graph, instead of 0 / 0.
        return (weights * per_class).sum() / torch.where(total > 0, total, torch.ones_like(total))

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, smooth={self.smooth}, eps={self.eps}, "
            f"classes={self.classes}, log_loss={self.log_loss}"
        )


class _FixedTversky(TverskyLoss):
    """A Tversky loss whose ``alpha`` and ``beta`` are fixed by the subclass (Dice, Jaccard)."""

    fixed_alpha = fixed_beta = 0.0

    def __init__(
        self,
        mode: Mode = "multiclass",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        smooth: float = 0.0,
        eps: float = 1e-7,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        classes: int | Sequence[int] | None = None,
        class_indexes: int | Sequence[int] | None = None,
        log_loss: bool = False,
    ):
        super().__init__(
            mode,
            ignore_index,
            from_logits,
            alpha=self.fixed_alpha,
            beta=self.fixed_beta,
            smooth=smooth,
            eps=eps,
            class_weights=class_weights,
            classes=classes,
            class_indexes=class_indexes,
            log_loss=log_loss,
        )


@register_loss("dice")
class DiceLoss(_FixedTversky):
    """Soft Dice loss ``1 - 2 TP / (2 TP + FP + FN)`` per class, averaged (Tversky with alpha = beta = 0.5).

    With ``smooth`` the score is ``(2 TP + 2 smooth) / (2 TP + FP + FN + 2 smooth)``, the Tversky form
    that segmentation_models_pytorch 0.6 uses too (older tutorials add ``smooth`` once).

    Args:
        mode, ignore_index, from_logits, smooth, eps, class_weights, classes, class_indexes, log_loss:
            as in :class:`TverskyLoss`.

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map.

    Example:
        >>> DiceLoss("multiclass", classes=[1, 2], class_weights=[0.0, 1.0, 3.0], log_loss=True)(
        ...     torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
        >>> DiceLoss("multiclass")(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    fixed_alpha = fixed_beta = 0.5


@register_loss("jaccard")
class JaccardLoss(_FixedTversky):
    """Soft Jaccard (IoU) loss ``1 - TP / (TP + FP + FN)`` per class, averaged (Tversky with alpha = beta = 1).

    Args:
        mode, ignore_index, from_logits, smooth, eps, class_weights, classes, class_indexes, log_loss:
            as in :class:`TverskyLoss`.

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map.

    Example:
        A perfect prediction (here given as probabilities) has loss 0:

        >>> target = torch.randint(0, 2, (2, 8, 8))
        >>> JaccardLoss("binary", from_logits=False)(target[:, None].float(), target)
        tensor(0.)
    """

    fixed_alpha = fixed_beta = 1.0
