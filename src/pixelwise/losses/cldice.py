"""Soft clDice (Shit et al., CVPR 2021): an overlap loss on skeletons, for thin tubular structures.

Vessels, membranes and neurites are a few pixels wide: a Dice loss hardly notices a break in one,
clDice does, because it compares each mask with the other's centre line::

    S_p = soft_skeleton(p),  S_t = soft_skeleton(t)
    Tprec = (sum S_p t + smooth) / (sum S_p + smooth)     (predicted skeleton inside the target)
    Tsens = (sum S_t p + smooth) / (sum S_t + smooth)     (target skeleton inside the prediction)
    clDice = 2 Tprec Tsens / (Tprec + Tsens),   loss = 1 - clDice

The soft skeleton iterates soft morphology: erosion is a minimum over the 4-neighbourhood
(a vertical then a horizontal 3-pixel minimum pool), dilation a 3 x 3 maximum pool, opening is
dilation after erosion; each step adds the part of the eroded image that an opening removes::

    skel = relu(x - open(x));  repeat n times: x = erode(x); d = relu(x - open(x)); skel += relu(d - skel d)

The authors train with Dice plus clDice; here that is the combination syntax of
:func:`~pixelwise.losses.get_loss`, e.g. ``get_loss("dice + cldice", mode="binary")`` or
``"0.5*dice + 0.5*cldice"`` (their ``soft_dice_cldice`` with ``alpha = 0.5``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelwise.errors import ConfigError
from pixelwise.losses.base import SegmentationLoss, check_range, one_vs_rest, register_loss
from pixelwise.modes import IGNORE_INDEX, Mode

DEFAULT_ITERATIONS = 3
"""The authors' default number of erosions: enough for structures up to about 2 * 3 + 1 pixels wide."""
_LINE = 3
"""Length of the 1-D min-pooling windows of the erosion and side of the dilation's max-pooling window."""
_HALF = _LINE // 2


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Minimum over each pixel and its 4 neighbours (outside the image counts as +inf).

    Shape:
        ``[N, C, H, W]`` in, same out.
    """
    vertical = -F.max_pool2d(-x, (_LINE, 1), stride=1, padding=(_HALF, 0))
    horizontal = -F.max_pool2d(-x, (1, _LINE), stride=1, padding=(0, _HALF))
    return torch.minimum(vertical, horizontal)


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each pixel's 3 x 3 neighbourhood. Shape: ``[N, C, H, W]`` in, same out."""
    return F.max_pool2d(x, _LINE, stride=1, padding=_HALF)


def soft_skeleton(x: torch.Tensor, iterations: int = DEFAULT_ITERATIONS) -> torch.Tensor:
    """Soft skeleton of soft masks in ``[0, 1]`` (see the module docstring); differentiable.

    Args:
        x: masks or probabilities. Shape ``[N, C, H, W]``.
        iterations: number of erosions ``>= 0``.

    Returns:
        The skeleton, same shape, values in ``[0, 1]``; a one-pixel-wide line is its own skeleton.
    """
    skeleton = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton


@register_loss("cldice")
class ClDiceLoss(SegmentationLoss):
    """Soft clDice loss ``1 - clDice`` (Shit et al. 2021); see the module docstring for the formula.

    The sums run over the batch, the pixels and all counted channels together, as in the authors'
    code: binary mode the one channel, multilabel mode all channels, multiclass mode the softmax
    channels of classes 1..K-1 (background left out, as the authors do) unless ``include_background``.
    Ignored pixels are set to 0 in both masks before skeletonisation. Usually combined with Dice:
    ``get_loss("dice + cldice")``.

    Args:
        mode, ignore_index, from_logits: as in :class:`~pixelwise.losses.base.SegmentationLoss`.
        iterations: erosions of the soft skeleton, an int ``>= 0`` (default 3); larger for thicker structures.
        smooth: added to numerators and denominators, ``> 0`` (default 1.0, the authors' value).
        include_background: multiclass mode: also count class 0 (default False).

    Shape:
        as the mode (see :mod:`pixelwise.modes`). Takes no weight map.

    Example:
        >>> target = torch.zeros(1, 1, 9, 9, dtype=torch.long)
        >>> target[0, 0, :, 4] = 1  # a vertical vessel, one pixel wide
        >>> ClDiceLoss("binary", from_logits=False)(target.float(), target)  # perfect: 0
        tensor(0.)
    """

    def __init__(
        self,
        mode: Mode = "binary",
        ignore_index: int | None = IGNORE_INDEX,
        from_logits: bool = True,
        iterations: int = DEFAULT_ITERATIONS,
        smooth: float = 1.0,
        include_background: bool = False,
    ):
        super().__init__(mode, ignore_index, from_logits)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ConfigError(f"cldice iterations must be an integer >= 0, e.g. 3; got {iterations!r}.")
        self.iterations = iterations
        self.smooth = check_range("smooth", smooth, 0.0, open_low=True)
        self.include_background = bool(include_background)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        p, t, valid = one_vs_rest(preds, target, self.mode, self.ignore_index, self.from_logits)
        if self.mode == "multiclass" and not self.include_background:
            p, t = p[:, 1:], t[:, 1:]
        if not bool(valid.any()):
            return p.sum() * 0  # everything ignored: exactly 0, with zero gradients
        skeleton_p = soft_skeleton(p, self.iterations)
        skeleton_t = soft_skeleton(t, self.iterations)
        precision = ((skeleton_p * t).sum() + self.smooth) / (skeleton_p.sum() + self.smooth)
        sensitivity = ((skeleton_t * p).sum() + self.smooth) / (skeleton_t.sum() + self.smooth)
        return 1 - 2 * precision * sensitivity / (precision + sensitivity)

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", iterations={self.iterations}, smooth={self.smooth}, include_background={self.include_background}"
        )
