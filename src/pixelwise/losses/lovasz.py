"""Lovász losses (Berman et al. 2018): convex surrogates that optimise the Jaccard index (IoU) directly.

The Lovász extension of the Jaccard loss of a class is ``dot(sorted errors, g)``, where the errors
are sorted in decreasing order and ``g`` is the increase of ``1 - IoU`` as each pixel in that
order is counted as wrong. Ignored pixels are dropped before sorting, so they take no part in
the order and get an exactly zero gradient.

- multiclass: Lovász-softmax, errors ``|1[y = c] - p_c|`` with softmax ``p``, averaged over the
  classes present in the (non-ignored) target; 0 when none is.
- binary / multilabel: Lovász hinge on the logits, errors ``max(0, 1 - s * t')`` with
  ``t' = 2 t - 1``, per channel and averaged over the channels; a channel without positives
  still penalises its largest margin violation (the paper's behaviour on empty masks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelwise.errors import ConfigError
from pixelwise.losses.base import SegmentationLoss, probabilities, register_loss, valid_mask
from pixelwise.modes import IGNORE_INDEX, Mode


def lovasz_gradient(fg_sorted: torch.Tensor) -> torch.Tensor:
    """The increments of ``1 - IoU`` when the pixels, in sorted order, are predicted wrong one by one.

    Args:
        fg_sorted: 0/1 float foreground indicators, sorted by decreasing error. Shape ``[P]``.

    Returns:
        ``[P]`` weights whose dot product with the sorted errors is the Lovász extension.
    """
    positives = fg_sorted.sum()
    intersection = positives - fg_sorted.cumsum(0)
    union = positives + (1 - fg_sorted).cumsum(0)  # >= 1 everywhere, so never a division by zero
    jaccard_loss = 1 - intersection / union
    return torch.cat([jaccard_loss[:1], jaccard_loss[1:] - jaccard_loss[:-1]])


def lovasz_extension(errors: torch.Tensor, fg: torch.Tensor, hinge: bool = False) -> torch.Tensor:
    """Lovász extension of the Jaccard loss for one class.

    Args:
        errors: per-pixel errors (larger = worse). Shape ``[P]``.
        fg: 0/1 foreground indicators of the same pixels. Shape ``[P]``.
        hinge: clip the sorted errors at 0 (the Lovász hinge).

    Returns:
        A scalar; 0 (attached to the graph) when ``P == 0``.
    """
    if errors.numel() == 0:
        return errors.sum()
    errors_sorted, order = torch.sort(errors, descending=True)
    if hinge:
        errors_sorted = F.relu(errors_sorted)
    return torch.dot(errors_sorted, lovasz_gradient(fg[order].to(errors.dtype)))


def _mean(values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Mean of scalar tensors; an empty list gives 0 attached to ``like``'s graph (zero gradients)."""
    return torch.stack(values).mean() if values else like.sum() * 0


@register_loss("lovasz")
class LovaszLoss(SegmentationLoss):
    """Lovász-softmax (multiclass) or Lovász hinge (binary, multilabel) loss.

    See :mod:`pixelwise.losses.lovasz` for the definitions and the empty-class policy. Multilabel
    mode averages one hinge per class (segmentation_models_pytorch pools all channels into one).

    Args:
        mode: ``"binary"``, ``"multiclass"`` (default) or ``"multilabel"``.
        ignore_index: target value of pixels that count for nothing (default 255; None: none).
        from_logits: ``preds`` are logits (default). Probabilities (False) are accepted in
            multiclass mode only, since the hinge is defined on logits.
        per_image: compute the loss per image and average over the images (every image counts,
            an all-ignored one as 0) instead of once over the whole batch (default False).

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map.

    Raises:
        ConfigError: ``from_logits=False`` in binary or multilabel mode.

    Example:
        >>> LovaszLoss("multiclass")(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        mode: Mode = "multiclass",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        per_image: bool = False,
    ):
        super().__init__(mode, ignore_index, from_logits)
        if self.mode != "multiclass" and not self.from_logits:
            raise ConfigError(f"the Lovász hinge ({self.mode} mode) needs logits; set from_logits=True.")
        self.per_image = bool(per_image)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        valid = valid_mask(target, self.ignore_index)
        if self.mode == "multiclass":
            scores = probabilities(preds, self.mode, self.from_logits)
            one = self._softmax
        else:
            scores = preds
            one = self._hinge
        if not self.per_image:
            return one(scores, target, valid)
        per_image = [one(scores[i : i + 1], target[i : i + 1], valid[i : i + 1]) for i in range(len(scores))]
        return torch.stack(per_image).mean()

    @staticmethod
    def _softmax(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Lovász-softmax over the classes present in ``target`` ``[N, H, W]``."""
        pixel_probs = probs.movedim(1, -1)[valid]  # [P, K], non-ignored pixels only
        labels = target[valid]
        losses = []
        for c in labels.unique().tolist():
            fg = (labels == c).to(probs.dtype)
            losses.append(lovasz_extension((fg - pixel_probs[:, c]).abs(), fg))
        return _mean(losses, probs)

    @staticmethod
    def _hinge(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Lovász hinge per channel of ``[N, C, H, W]`` logits and 0/1 targets, averaged over channels."""
        losses = []
        for c in range(logits.shape[1]):
            keep = valid[:, c]
            fg = target[:, c][keep].to(logits.dtype)
            losses.append(lovasz_extension(1 - logits[:, c][keep] * (2 * fg - 1), fg, hinge=True))
        return _mean(losses, logits)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", per_image={self.per_image}"
