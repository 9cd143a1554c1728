"""Region losses weighed by class size or by all four confusion counts: Generalized Dice and MCC.

Both work on soft counts per class ``c`` (probabilities ``p``, 0/1 targets ``t``; ignored pixels
have ``p = t = 0`` and do not count as true negatives)::

    TP = sum p t    FP = sum p (1 - t)    FN = sum (1 - p) t    TN = sum over valid (1 - p)(1 - t)

- ``generalized_dice`` (Sudre et al. 2017): ``1 - 2 sum_c w_c TP_c / sum_c w_c (2 TP_c + FP_c + FN_c)``
  with ``w_c = 1 / (sum t_c) ** 2``, per image by default: MONAI's ``GeneralizedDiceLoss``.
- ``mcc`` (Abhishek & Hamarneh 2021): ``1 - MCC`` with the counts summed over the batch:
  segmentation_models_pytorch's ``MCCLoss`` in binary mode; per class and averaged otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from pixelwise.errors import check_choice
from pixelwise.losses.base import SegmentationLoss, check_range, one_vs_rest, register_loss
from pixelwise.modes import IGNORE_INDEX, Mode

Weighting = Literal["square", "simple", "uniform"]
WEIGHTINGS: tuple[Weighting, ...] = ("square", "simple", "uniform")
_PIXEL_DIMS = (2, 3)
_SUM_DIMS = (0, 2, 3)
_GDL_SMOOTH = 1e-5
"""MONAI's default ``smooth_nr`` and ``smooth_dr``."""
_MCC_EPS = 1e-5
"""segmentation_models_pytorch's default: added to each count, so one-class batches stay finite."""


@register_loss("generalized_dice")
class GeneralizedDiceLoss(SegmentationLoss):
    """Generalized Dice loss (Sudre et al. 2017): Dice with each class weighted by its inverse size.

    Per image (``per_image=True``, MONAI's ``batch=False``) or over the whole batch::

        w_c  = 1 / G_c**2 (square), 1 / G_c (simple) or 1 (uniform),  G_c = sum t_c
        loss = 1 - (2 sum_c w_c TP_c + smooth_nr) / (sum_c w_c (2 TP_c + FP_c + FN_c) + smooth_dr)

    A class absent from an image (``G_c = 0``) gets that image's largest finite weight, and an image
    with no class present gets loss ``1 - smooth_nr / smooth_dr`` (0 by default), as in MONAI
    (with ``"uniform"`` every class weighs 1, present or not); the per-image losses are averaged.
    Equal to ``monai.losses.GeneralizedDiceLoss(w_type=weighting, batch=not per_image)`` with
    ``softmax=True, to_onehot_y=True`` (multiclass) or ``sigmoid=True``.

    Args:
        mode, ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        weighting: ``"square"`` (default), ``"simple"`` or ``"uniform"``.
        per_image: one loss per image, then the mean (default True); False pools the batch.
        smooth_nr, smooth_dr: added to numerator and denominator, ``>= 0`` and ``> 0`` (default 1e-5).

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map.

    Example:
        >>> GeneralizedDiceLoss("multiclass")(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        mode: Mode = "multiclass",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        weighting: Weighting = "square",
        per_image: bool = True,
        smooth_nr: float = _GDL_SMOOTH,
        smooth_dr: float = _GDL_SMOOTH,
    ):
        super().__init__(mode, ignore_index, from_logits)
        check_choice("weighting", weighting, WEIGHTINGS)
        self.weighting = weighting
        self.per_image = bool(per_image)
        self.smooth_nr = check_range("smooth_nr", smooth_nr, 0.0)
        self.smooth_dr = check_range("smooth_dr", smooth_dr, 0.0, open_low=True)

    def _weights(self, size: torch.Tensor) -> torch.Tensor:
        """``w_c`` per (image,) class from the class sizes; absent classes get the largest finite weight."""
        if self.weighting == "uniform":
            return torch.ones_like(size)
        present = size > 0
        safe = torch.where(present, size, torch.ones_like(size))
        weights = safe.pow(-2) if self.weighting == "square" else safe.reciprocal()
        weights = torch.where(present, weights, torch.zeros_like(weights))
        largest = weights.amax(dim=-1, keepdim=True)
        return torch.where(present, weights, largest)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        p, t, valid = one_vs_rest(preds, target, self.mode, self.ignore_index, self.from_logits)
        if not bool(valid.any()):
            return p.sum() * 0  # everything ignored: exactly 0, with zero gradients
        dims = _PIXEL_DIMS if self.per_image else _SUM_DIMS
        tp = (p * t).sum(dims)  # [N, C] per image, [C] pooled
        size = t.sum(dims)
        denominator = p.sum(dims) + size  # 2 TP + FP + FN
        weights = self._weights(size)
        numerator = 2 * (weights * tp).sum(-1) + self.smooth_nr
        return (1 - numerator / ((weights * denominator).sum(-1) + self.smooth_dr)).mean()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weighting={self.weighting!r}, per_image={self.per_image}"


@register_loss("mcc")
class MCCLoss(SegmentationLoss):
    """Matthews correlation coefficient loss ``1 - MCC`` on soft counts summed over the batch.

    ``MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN))`` with ``eps`` added to
    each count. Binary mode is segmentation_models_pytorch's ``MCCLoss(eps)`` on sigmoid
    probabilities; multilabel and multiclass (one class against the rest) average the loss of
    every channel, including classes absent from the target (their true negatives still count).

    Args:
        mode, ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        eps: added to each count, ``> 0`` (default 1e-5), so that a batch of one class stays finite.

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map.

    Example:
        >>> MCCLoss("binary")(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        mode: Mode = "binary",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        eps: float = _MCC_EPS,
    ):
        super().__init__(mode, ignore_index, from_logits)
        self.eps = check_range("eps", eps, 0.0, open_low=True)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        p, t, valid = one_vs_rest(preds, target, self.mode, self.ignore_index, self.from_logits)
        if not bool(valid.any()):
            return p.sum() * 0  # everything ignored: exactly 0, with zero gradients
        tp = (p * t).sum(_SUM_DIMS) + self.eps
        fp = (p * (1 - t)).sum(_SUM_DIMS) + self.eps
        fn = ((1 - p) * t).sum(_SUM_DIMS) + self.eps
        tn = torch.where(valid, (1 - p) * (1 - t), torch.zeros_like(p)).sum(_SUM_DIMS) + self.eps
        mcc = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).sqrt()
        return (1 - mcc).mean()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"
