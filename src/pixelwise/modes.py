"""The tensor shapes of the three segmentation modes, in one place for losses and metrics alike.

============  =============================================  ===========================================
mode          ``preds``                                      ``target``
============  =============================================  ===========================================
binary        ``[N, 1, H, W]`` or ``[N, H, W]`` scores       ``[N, 1, H, W]`` or ``[N, H, W]``, values
              (logits or probabilities)                      0 / 1 (or ``ignore_index``)
multiclass    ``[N, K, H, W]`` scores, or ``[N, H, W]``      ``[N, H, W]`` integer class ids in
              integer labels (metrics only)                  ``[0, K)`` (or ``ignore_index``)
multilabel    ``[N, K, H, W]`` scores                        ``[N, K, H, W]``, values 0 / 1 (or
                                                             ``ignore_index``)
============  =============================================  ===========================================

Scores are logits unless a function says otherwise (``from_logits=False`` for probabilities).
Arguments are always named ``preds`` then ``target``, in that order.
"""

from __future__ import annotations

from typing import Literal

import torch

from pixelwise.errors import ConfigError, ShapeError, unknown_name

Mode = Literal["binary", "multiclass", "multilabel"]
MODES: tuple[Mode, ...] = ("binary", "multiclass", "multilabel")
IGNORE_INDEX = 255
"""Default target value of pixels that count for nothing (void, unlabelled, border)."""
NO_TTA = "none"
"""The test-time augmentation name that switches it off (overrides a mode stored with a model)."""
TTA_MODES = (NO_TTA, "hflip", "flips", "d4")
"""Test-time augmentation names (:mod:`pixelwise.inference.tta`): none, the left-right flip, the four flips,
or the eight symmetries of the square. Here, at the lowest layer, because the training configuration, the
model folder and inference all check against this one list."""


def check_mode(mode: str) -> Mode:
    """Return ``mode`` if it is one of :data:`MODES`, else raise a ConfigError with suggestions."""
    if mode not in MODES:
        raise unknown_name("mode", str(mode), MODES)
    return mode  # type: ignore[return-value]


def canonical(
    preds: torch.Tensor, target: torch.Tensor, mode: Mode, *, allow_labels: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``preds``/``target`` against ``mode`` and bring them to one layout per mode.

    Returns:
        binary: ``preds [N, 1, H, W]``, ``target [N, 1, H, W]``;
        multiclass: ``preds [N, K, H, W]`` (or ``[N, H, W]`` labels when ``allow_labels``),
        ``target [N, H, W]`` as int64;
        multilabel: ``preds [N, K, H, W]``, ``target [N, K, H, W]``.

    Raises:
        ShapeError: the shapes do not fit the mode; the message names both shapes and the expected ones.
    """
    mode = check_mode(mode)
    given = f"preds {list(preds.shape)} and target {list(target.shape)}"  # as passed, before any unsqueeze

    def fail(expected: str) -> ShapeError:
        return ShapeError(f"{mode} mode expects {expected}; got {given}.")

    if mode == "binary":
        expected = "preds [N, 1, H, W] or [N, H, W] and target of the same N, H, W"
        if preds.ndim == 3:
            preds = preds.unsqueeze(1)
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if preds.ndim != 4 or preds.shape[1] != 1 or target.shape != preds.shape:
            raise fail(expected)
        return preds, target

    if mode == "multiclass":
        expected = "preds [N, K, H, W] (scores) or [N, H, W] (labels) and target [N, H, W] (class ids)"
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 3 or (target.is_floating_point() and not _is_integral(target)):
            raise fail(expected)
        if preds.ndim == 4 and preds.shape[0] == target.shape[0] and preds.shape[2:] == target.shape[1:]:
            return preds, target.long()
        if allow_labels and preds.ndim == 3 and preds.shape == target.shape and not preds.is_floating_point():
            return preds.long(), target.long()
        raise fail(expected if allow_labels else "preds [N, K, H, W] (scores) and target [N, H, W] (class ids)")

    expected = "preds [N, K, H, W] and target [N, K, H, W] (0/1 per class)"
    if preds.ndim != 4 or target.shape != preds.shape:
        raise fail(expected)
    return preds, target


def _is_integral(x: torch.Tensor) -> bool:
    return bool(torch.all(x == x.round()))


def check_class_ids(target: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> None:
    """Raise a ConfigError if ``target`` holds a class id outside ``[0, num_classes)`` other than ``ignore_index``."""
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid |= target == ignore_index
    if not bool(valid.all()):
        bad = sorted({int(v) for v in target[~valid].unique()[:5]})
        raise ConfigError(
            f"target holds class ids {bad} outside 0..{num_classes - 1}"
            + (f" (ignore_index={ignore_index})" if ignore_index is not None else "")
            + "; set num_classes/classes to cover them, or map them to ignore_index."
        )
