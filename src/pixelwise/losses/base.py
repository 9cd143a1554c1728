"""What every pixelwise loss shares: the base class, the loss registry and the masking helpers.

A loss is an ``nn.Module`` called as ``loss(preds, target, weight_map=None)``. The base class
checks the shapes once (through :func:`pixelwise.modes.canonical`, the one home of the mode
shapes), checks the optional per-pixel weight map, and hands canonical tensors to the
subclass's :meth:`SegmentationLoss.compute`.

Policies shared by all losses:

- **ignore_index**: a pixel (multilabel: a pixel of one class channel) whose target equals
  ``ignore_index`` contributes nothing: neither to the value nor to any gradient, and its own
  gradient is exactly zero. ``ignore_index=None`` disables ignoring.
- **Empty input**: a batch whose pixels are all ignored gives a loss of exactly 0 (never NaN)
  with zero gradients.
- **weight_map** (``[N, H, W]``, e.g. the U-Net border weights): per-pixel losses (``ce``,
  ``bce``, ``focal``) multiply each pixel's loss by its weight and keep the normaliser they
  use without a map (see each loss), so a map of ones changes nothing and the map's scale
  matters, as in the U-Net paper's ``mean(w(x) * CE(x))``. Region losses (``dice``,
  ``jaccard``, ``tversky``, ``lovasz``) have no per-pixel form and raise a ConfigError when
  given a map; :class:`~pixelwise.losses.CombinedLoss` passes the map only to the components
  that accept it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError, ShapeError, closest, unknown_name
from pixelwise.modes import IGNORE_INDEX, MODES, Mode, canonical, check_class_ids, check_mode


class SegmentationLoss(nn.Module):
    """Base class: validates shapes and the weight map, then calls :meth:`compute`.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (shapes in :mod:`pixelwise.modes`).
        ignore_index: target value of pixels (entries, in multilabel mode) that count for nothing
            (default 255); ``None`` ignores nothing.
        from_logits: ``True`` (default) if ``preds`` are raw scores (logits), ``False`` if
            probabilities (softmax ones in multiclass mode, sigmoid ones otherwise).

    Raises:
        ConfigError: unknown mode, or a mode this loss does not support.
    """

    name: ClassVar[str] = ""
    """The registry name (``"dice"``), set by :func:`register_loss`."""
    supported_modes: ClassVar[tuple[Mode, ...]] = MODES
    accepts_weight_map: ClassVar[bool] = False
    """Whether :meth:`forward` takes a per-pixel ``weight_map``."""

    def __init__(self, mode: Mode = "multiclass", ignore_index: int | None = IGNORE_INDEX, from_logits: bool = True):
        super().__init__()
        self.mode = check_mode(mode)
        if self.mode not in self.supported_modes:
            raise ConfigError(
                f"loss {self.name or type(self).__name__!r} does not support mode {mode!r} "
                f"(supported: {', '.join(self.supported_modes)}).{self._mode_hint()}"
            )
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)

    def _mode_hint(self) -> str:
        """Extra advice appended to the unsupported-mode error (e.g. which loss to use instead)."""
        return ""

    def forward(
        self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            preds: scores (logits, or probabilities with ``from_logits=False``).
            target: ground truth in the layout of ``mode``.
            weight_map: optional per-pixel weights (only for losses with ``accepts_weight_map``).

        Shape:
            see :mod:`pixelwise.modes`; ``weight_map`` is ``[N, H, W]`` or ``[N, 1, H, W]``.

        Returns:
            A scalar tensor.

        Raises:
            ShapeError: ``preds``/``target``/``weight_map`` do not fit the mode (names the shapes).
            ConfigError: a weight map for a loss that cannot use it, or class ids out of range.
        """
        preds, target = canonical(preds, target, self.mode)
        if self.mode == "multiclass":
            check_class_ids(target, preds.shape[1], self.ignore_index)
        if weight_map is not None:
            weight_map = self._check_weight_map(preds, weight_map)
        return self.compute(preds, target, weight_map)

    def compute(self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
        """The loss on canonical tensors (``preds [N, C, H, W]``; ``weight_map [N, 1, H, W]`` or None)."""
        raise NotImplementedError

    def _check_weight_map(self, preds: torch.Tensor, weight_map: torch.Tensor) -> torch.Tensor:
        if not self.accepts_weight_map:
            raise ConfigError(
                f"loss {self.name!r} has no per-pixel form and cannot use a weight_map; "
                f"losses that can: {', '.join(n for n, c in _REGISTRY.items() if c.accepts_weight_map)}."
            )
        expected = (preds.shape[0], 1, *preds.shape[2:])
        given = weight_map.unsqueeze(1) if weight_map.ndim == 3 else weight_map
        if tuple(given.shape) != expected:
            raise ShapeError(
                f"weight_map must be [N, H, W] = {[expected[0], *expected[2:]]} for preds {list(preds.shape)}; "
                f"got weight_map {list(weight_map.shape)}."
            )
        return given.to(preds.dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ignore_index={self.ignore_index}, from_logits={self.from_logits}"


# ----------------------------------------------------------------------------- helpers


def valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """``True`` where ``target`` is not ``ignore_index`` (all ``True`` when it is None)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def log_probabilities(preds: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Multiclass log-probabilities ``[N, K, H, W]``: log-softmax of logits, or the log of probabilities.

    Probabilities are floored at the dtype's smallest normal number, so that a probability of
    exactly 0 gives a large finite log instead of ``-inf``.
    """
    if from_logits:
        return F.log_softmax(preds, dim=1)
    return preds.clamp_min(torch.finfo(preds.dtype).tiny).log()


def binary_log_probabilities(preds: torch.Tensor, from_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log(1 - p))`` per channel for sigmoid outputs (binary and multilabel modes).

    From logits both come from ``logsigmoid`` (stable for large scores); probabilities are floored
    as in :func:`log_probabilities`.
    """
    if from_logits:
        return F.logsigmoid(preds), F.logsigmoid(-preds)
    tiny = torch.finfo(preds.dtype).tiny
    return preds.clamp_min(tiny).log(), (1 - preds).clamp_min(tiny).log()


def probabilities(preds: torch.Tensor, mode: Mode, from_logits: bool) -> torch.Tensor:
    """Per-channel probabilities: softmax over classes in multiclass mode, sigmoid otherwise."""
    if not from_logits:
        return preds
    return preds.softmax(dim=1) if mode == "multiclass" else preds.sigmoid()


def one_vs_rest(
    preds: torch.Tensor, target: torch.Tensor, mode: Mode, ignore_index: int | None, from_logits: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, 0/1 targets and validity, all ``[N, C, H, W]``, zeroed at ignored pixels.

    Multiclass targets become one-hot over ``C = K`` classes; ignored ids are replaced by 0 before
    ``one_hot`` (255 would be out of range) and zeroed afterwards. Binary and multilabel targets
    are used as they are (``C = 1`` or ``K``).
    """
    probs = probabilities(preds, mode, from_logits)
    valid = valid_mask(target, ignore_index)
    if mode == "multiclass":
        ids = torch.where(valid, target, 0)
        onehot = F.one_hot(ids, preds.shape[1]).movedim(-1, 1)
        valid = valid.unsqueeze(1).expand_as(probs)
    else:
        onehot = torch.where(valid, target, 0)
    zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
    return torch.where(valid, probs, zero), torch.where(valid, onehot.to(probs.dtype), zero), valid


def reduce_pixels(
    loss: torch.Tensor, valid: torch.Tensor, weight_map: torch.Tensor | None, normaliser: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum(weight_map * loss over valid pixels) / normaliser``; 0 (not NaN) when nothing is valid.

    Args:
        loss: per-pixel losses, broadcastable with ``valid``.
        valid: boolean mask of the pixels that count.
        weight_map: per-pixel multipliers ``[N, 1, H, W]`` or None.
        normaliser: the divisor; defaults to the number of valid entries.
    """
    loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if weight_map is not None:
        loss = loss * weight_map
    if normaliser is None:
        normaliser = valid.sum()
    normaliser = normaliser.to(loss.dtype)
    # An empty batch has a zero sum, so any non-zero divisor gives 0 with finite gradients.
    return loss.sum() / torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))


def as_class_vector(name: str, values: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    """Turn per-class numbers from a config (list, tuple or tensor) into a 1-D float tensor."""
    if values is None:
        return None
    vector = torch.as_tensor(values, dtype=torch.float64).flatten()
    if vector.numel() == 0 or not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()):
        raise ConfigError(f"{name} must be a non-empty list of finite numbers >= 0, one per class; got {values}.")
    return vector


def check_class_count(name: str, vector: torch.Tensor | None, num_classes: int) -> None:
    """Raise a ConfigError unless a per-class ``vector`` has ``num_classes`` entries."""
    if vector is not None and vector.numel() != num_classes:
        raise ConfigError(f"{name} has {vector.numel()} entries but preds have {num_classes} classes.")


def class_subset(classes: int | Sequence[int] | None, class_indexes: int | Sequence[int] | None) -> list[int] | None:
    """Validate a class subset given as ``classes`` or as Keras' ``class_indexes`` (one int or a list).

    Returns:
        The distinct class ids in the order given, or None (all classes).

    Raises:
        ConfigError: both names given, an empty list, repeated ids, or ids that are not integers >= 0.
    """
    if classes is not None and class_indexes is not None:
        raise ConfigError(
            f"give the class subset once: classes={classes!r} or class_indexes={class_indexes!r} (Keras' name)."
        )
    chosen = classes if classes is not None else class_indexes
    if chosen is None:
        return None
    ids = [chosen] if isinstance(chosen, int) else list(chosen.tolist() if torch.is_tensor(chosen) else chosen)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"classes must be distinct class ids >= 0, e.g. [1, 2]; got {chosen!r}.")
    return ids


def selection_weights(
    class_weights: torch.Tensor | None, classes: list[int] | None, num_classes: int, like: torch.Tensor
) -> torch.Tensor:
    """Per-channel weights ``[C]`` of the per-class losses: ``class_weights`` with unselected classes at 0.

    ``class_weights`` has one entry per channel (segmentation_models_pytorch), or, when ``classes``
    is given, may instead have one entry per selected class in that order (Keras segmentation_models).

    Raises:
        ConfigError: a class id ``>= num_classes`` or a weight vector of another length.
    """
    if classes is not None and max(classes) >= num_classes:
        raise ConfigError(
            f"classes {classes} are out of range for preds with {num_classes} classes (0..{num_classes - 1})."
        )
    weights = torch.ones(num_classes, dtype=like.dtype, device=like.device)
    if class_weights is not None:
        given = class_weights.to(like.device, like.dtype)
        if given.numel() == num_classes:
            weights = given
        elif classes is not None and given.numel() == len(classes):
            weights = torch.zeros_like(weights).index_copy(0, torch.tensor(classes, device=like.device), given)
        else:
            per_subset = f" or {len(classes)} (one per entry of classes)" if classes is not None else ""
            raise ConfigError(
                f"class_weights has {given.numel()} entries but preds have {num_classes} classes; "
                f"give {num_classes}{per_subset}."
            )
    if classes is not None:
        keep = torch.zeros(num_classes, dtype=torch.bool, device=like.device)
        keep[classes] = True
        weights = torch.where(keep, weights, torch.zeros_like(weights))
    return weights


def check_range(name: str, value: float, low: float, high: float = float("inf"), *, open_low: bool = False) -> float:
    """Return ``float(value)`` if it lies in ``[low, high]`` (``(low, high]`` with ``open_low``), else raise."""
    value = float(value)
    if not (low < value if open_low else low <= value) or value > high:
        bracket = "(" if open_low else "["
        raise ConfigError(f"{name}={value} is out of range; expected {bracket}{low}, {high}].")
    return value


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[SegmentationLoss]] = {}
L = TypeVar("L", bound=type[SegmentationLoss])
_SHARED_OPTIONS = ("mode", "ignore_index")
"""Constructor arguments set once for a whole combination (by :func:`get_loss`), not per component."""


def _key(name: str) -> str:
    return name.strip().lower()


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator: make a loss available to :func:`~pixelwise.losses.get_loss` as ``name``.

    Raises:
        ConfigError: ``name`` is already registered.
    """

    def decorator(cls: L) -> L:
        if _key(name) in _REGISTRY:
            raise ConfigError(f"loss name {name!r} is already registered (by {_REGISTRY[_key(name)].__name__}).")
        cls.name = _key(name)
        _REGISTRY[_key(name)] = cls
        return cls

    return decorator


def list_losses() -> list[str]:
    """Names of all registered losses, sorted."""
    return sorted(_REGISTRY)


def get_loss_class(name: str) -> type[SegmentationLoss]:
    """The loss class registered as ``name`` (case-insensitive); unknown names get the closest ones."""
    if _key(name) not in _REGISTRY:
        raise unknown_name("loss", name, list_losses())
    return _REGISTRY[_key(name)]


def loss_options(name: str) -> list[str]:
    """The options a loss accepts besides ``mode`` and ``ignore_index`` (set once per combination)."""
    parameters = inspect.signature(get_loss_class(name).__init__).parameters
    return [p for p in parameters if p != "self" and p not in _SHARED_OPTIONS]


def option_hints(unknown: list[str], valid: list[str]) -> str:
    """``'gama' (did you mean 'gamma'?); 'foo'``: each unknown option with its closest valid one, if any."""
    hints = []
    for key in unknown:
        close = closest(key, valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return "; ".join(hints)


def build_loss(name: str, mode: Mode, ignore_index: int | None, **options: Any) -> SegmentationLoss:
    """Construct the loss ``name``; unknown options raise a ConfigError naming the valid ones."""
    valid = loss_options(name)
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no option {option_hints(unknown, valid)}. Valid options: {', '.join(valid)}."
        )
    return get_loss_class(name)(mode=mode, ignore_index=ignore_index, **options)
