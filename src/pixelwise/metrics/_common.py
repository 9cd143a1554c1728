"""What every metric does first: turn predictions into labels, count pixels with one bincount, sum across processes.

Shapes follow :mod:`pixelwise.modes`. After :func:`prepare`, the three modes look like this:

============  ===========================================  ==============================================
mode          labels (``Prepared.preds`` / ``.target``)      counts from :func:`count_pixels`
============  ===========================================  ==============================================
multiclass    ``[N, H, W]`` class ids in ``[0, K)``          ``[K, K]`` (``[N, K, K]`` per image),
                                                             rows = target, columns = prediction
binary        ``[N, H, W]`` 0 = background, 1 = foreground   ``[2, 2]``: a two-class multiclass problem
multilabel    ``[N, K, H, W]`` 0 / 1 per class channel        ``[K, 2, 2]`` (``[N, K, 2, 2]``), one 2×2
                                                             table per class: ``[class, target, pred]``
============  ===========================================  ==============================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.modes import IGNORE_INDEX, Mode, canonical, check_class_ids, check_mode

DEFAULT_THRESHOLD = 0.5
"""Default cut on sigmoid probabilities in binary and multilabel modes (a pixel is positive when ``p > 0.5``)."""

BINARY_CLASSES = 2
"""Binary mode is counted as two classes: 0 = background, 1 = foreground."""


@dataclass(frozen=True)
class Prepared:
    """Labels ready for counting (see the module table); ``valid`` is None when every pixel counts."""

    preds: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor | None
    num_classes: int
    multilabel: bool


def check_num_classes(num_classes: int, mode: Mode) -> int:
    """Validate ``num_classes`` for ``mode`` and return the number of per-class entries metrics report.

    Binary mode accepts 1 or 2 (both mean foreground against background) and reports 2 entries.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}.")
    if mode == "binary":
        if num_classes > BINARY_CLASSES:
            raise ConfigError(
                f"binary mode has one foreground class (num_classes=1 or 2); got num_classes={num_classes}. "
                "Use mode='multiclass' or 'multilabel' for more classes."
            )
        return BINARY_CLASSES
    return num_classes


def _check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Raise a ConfigError if predicted labels fall outside ``[0, num_classes)``."""
    if labels.numel() == 0:
        return
    lo, hi = torch.aminmax(labels)
    if lo < 0 or hi >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
        raise ConfigError(f"{what} holds labels {bad} outside 0..{num_classes - 1}; check num_classes and mode.")


def _as_integer_target(target: torch.Tensor, mode: str) -> torch.Tensor:
    """Return ``target`` as int64; a float target must hold whole numbers (soft labels cannot be counted)."""
    if target.is_floating_point() and not bool(torch.all(target == target.round())):
        raise ConfigError(f"{mode} target must hold 0/1 (or ignore_index); got fractional values.")
    return target.long()


def _valid_pixels(target: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor | None:
    """Check target ids and return the mask of counted pixels, or None when every pixel counts."""
    if target.numel() == 0:
        return None
    lo, hi = torch.aminmax(target)
    ignore_in_range = ignore_index is not None and 0 <= ignore_index < num_classes
    # Fast path: every id is a class and ignore_index cannot occur, so no mask is needed.
    if lo >= 0 and hi < num_classes and not ignore_in_range:
        return None
    check_class_ids(target, num_classes, ignore_index)
    return None if ignore_index is None else target != ignore_index


def _binarize(preds: torch.Tensor, threshold: float, from_logits: bool, what: str) -> torch.Tensor:
    """Scores → 0/1 labels (``p > threshold``, with ``p = sigmoid(preds)`` for logits); labels pass through."""
    if preds.is_floating_point():
        probs = preds.sigmoid() if from_logits else preds
        return (probs > threshold).long()
    labels = preds.long()
    _check_labels(labels, BINARY_CLASSES, what)
    return labels


def prepare(
    preds: torch.Tensor,
    target: torch.Tensor,
    mode: Mode,
    num_classes: int,
    *,
    ignore_index: int | None = IGNORE_INDEX,
    threshold: float = DEFAULT_THRESHOLD,
    from_logits: bool = True,
) -> Prepared:
    """Check shapes and values, and turn ``preds`` into labels (argmax or threshold).

    Args:
        preds: multiclass: scores ``[N, K, H, W]`` (argmax; logits or probabilities alike) or integer labels
            ``[N, H, W]``; binary: scores or 0/1 labels ``[N, 1, H, W]`` / ``[N, H, W]``; multilabel: scores or
            0/1 labels ``[N, K, H, W]``.
        target: see :mod:`pixelwise.modes`.
        mode: "binary", "multiclass" or "multilabel".
        num_classes: K (binary: 1 or 2).
        ignore_index: target value of pixels that count for nothing; None: every pixel counts.
        threshold: binary/multilabel cut on probabilities.
        from_logits: binary/multilabel float scores are logits (sigmoid first); False: probabilities.

    Raises:
        ShapeError: shapes that do not fit ``mode`` (the message names both shapes).
        ConfigError: class ids or labels outside ``[0, K)``, or a bad ``mode``/``num_classes``.
    """
    mode = check_mode(mode)
    entries = check_num_classes(num_classes, mode)
    preds, target = canonical(preds, target, mode, allow_labels=True)
    if mode == "multiclass":
        if preds.ndim == 4:
            if preds.shape[1] != num_classes:
                raise ShapeError(
                    f"multiclass preds have {preds.shape[1]} channels but num_classes={num_classes}; "
                    f"got preds {list(preds.shape)} and target {list(target.shape)}."
                )
            # max(1).indices is argmax (first index on ties) but runs several times faster on CPU than argmax(1)
            preds = preds.max(1).indices
        else:
            _check_labels(preds, num_classes, "preds")
        return Prepared(preds, target, _valid_pixels(target, num_classes, ignore_index), entries, multilabel=False)

    if mode == "multilabel" and preds.shape[1] != num_classes:
        raise ShapeError(
            f"multilabel preds have {preds.shape[1]} channels but num_classes={num_classes}; "
            f"got preds {list(preds.shape)} and target {list(target.shape)}."
        )
    target = _as_integer_target(target, mode)
    valid = _valid_pixels(target, BINARY_CLASSES, ignore_index)
    labels = _binarize(preds, threshold, from_logits, "preds")
    if mode == "binary":  # drop the channel: binary is counted as a two-class label map
        return Prepared(labels[:, 0], target[:, 0], None if valid is None else valid[:, 0], entries, False)
    return Prepared(labels, target, valid, entries, multilabel=True)


class StreamingMetric:
    """Base of the streaming metrics: :meth:`prepare_batch` applies :func:`prepare` with the metric's
    settings, which the subclass's constructor sets."""

    mode: Mode
    num_classes: int
    ignore_index: int | None
    threshold: float
    from_logits: bool

    def prepare_batch(self, preds: torch.Tensor, target: torch.Tensor) -> Prepared:
        """:func:`prepare` ``preds`` and ``target`` (shapes as in :mod:`pixelwise.modes`) for counting."""
        return prepare(
            preds,
            target,
            self.mode,
            self.num_classes,
            ignore_index=self.ignore_index,
            threshold=self.threshold,
            from_logits=self.from_logits,
        )


def count_pixels(prepared: Prepared, *, per_image: bool = False) -> torch.Tensor:
    """Count (target, prediction) pairs with a single ``bincount``; ignored pixels land in a dropped extra bin.

    Returns:
        int64 ``[K, K]`` or, for multilabel, ``[K, 2, 2]``; with ``per_image`` an extra leading ``N`` axis.
    """
    p, t, k = prepared.preds, prepared.target, prepared.num_classes
    # torch.add(p, t, alpha=...) computes p + alpha * t in one pass; the later steps update that fresh tensor in place
    if prepared.multilabel:
        code = torch.add(p, t, alpha=2).add_(torch.arange(0, 4 * k, 4, device=t.device).view(1, k, 1, 1))
        table: tuple[int, ...] = (k, 2, 2)
    else:
        code = torch.add(p, t, alpha=k)
        table = (k, k)
    cells = math.prod(table)
    shape = table
    if per_image:
        n = t.shape[0]
        code.add_(torch.arange(0, n * cells, cells, device=t.device).view(n, *[1] * (code.ndim - 1)))
        cells, shape = cells * n, (n, *table)
    if prepared.valid is not None:
        code.masked_fill_(~prepared.valid, cells)
    counts = torch.bincount(code.reshape(-1), minlength=cells + 1)[:cells]
    return counts.reshape(shape)


def stats_from_counts(
    counts: torch.Tensor, multilabel: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split count tables into per-class tp, fp, fn, tn (each ``[..., K]``) of the positive / row class."""
    if multilabel:
        return counts[..., 1, 1], counts[..., 0, 1], counts[..., 1, 0], counts[..., 0, 0]
    tp = counts.diagonal(dim1=-2, dim2=-1)
    fp = counts.sum(-2) - tp
    fn = counts.sum(-1) - tp
    tn = counts.sum((-2, -1)).unsqueeze(-1) - tp - fp - fn
    return tp, fp, fn, tn


def distributed_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all processes of an initialised ``torch.distributed`` group; a copy, so ``x`` is unchanged.

    Without a process group (or with one process) ``x`` itself is returned.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    total = x.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
