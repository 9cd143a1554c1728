"""Losses by name and weighted sums of them: :func:`get_loss` and :class:`CombinedLoss`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pixelwise.errors import ConfigError, unknown_name
from pixelwise.losses.aliases import KERAS_ALIASES, check_alias_mode, keras_alias
from pixelwise.losses.base import build_loss, list_losses, loss_options, option_hints
from pixelwise.modes import IGNORE_INDEX, Mode, check_mode

LossSpec = str | Mapping[str, float | Mapping[str, Any]] | Sequence[str] | nn.Module
"""What :func:`get_loss` accepts: ``"dice"``, ``"ce+0.5*dice"``, ``{"ce": 1.0, "dice": 0.5}``,
``{"ce": {"weight": 1.0, "class_weights": [1, 3]}}``, ``["ce", "dice"]``, a Keras segmentation_models name
(``"bce_dice_loss"``, see :mod:`pixelwise.losses.aliases`) or a ready ``nn.Module``."""

_Terms = dict[str, tuple[float, dict[str, Any], dict[str, Any]]]
"""Registered name → (weight, default options from a Keras alias, options given in the spec)."""

_TERM = re.compile(r"^(?:(?P<weight>\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?(?P<name>[A-Za-z_]\w*)$")
_SYNTAX = "write loss names joined by '+', each optionally weighted, e.g. 'ce + 0.5*dice'"


class CombinedLoss(nn.Module):
    """A weighted sum of losses; remembers each component's last value for logging.

    Args:
        components: name → loss module, called as ``loss(preds, target)`` (plus ``weight_map``
            for the components whose ``accepts_weight_map`` is True).
        weights: name → non-negative weight; a missing name weighs 1.

    Attributes:
        last_components: name → the detached value of each component in the last call.

    Example:
        >>> loss = get_loss({"ce": 1.0, "dice": 0.5})
        >>> value = loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> sorted(loss.last_components)
        ['ce', 'dice']
    """

    def __init__(self, components: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not components:
            raise ConfigError("a combined loss needs at least one component.")
        self.components = nn.ModuleDict(dict(components))
        self.weights = {name: _check_weight(name, (weights or {}).get(name, 1.0)) for name in components}
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def accepts_weight_map(self) -> bool:
        """True if at least one component takes a per-pixel weight map."""
        return any(getattr(loss, "accepts_weight_map", False) for loss in self.components.values())

    def forward(
        self, preds: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sum_i weight_i * loss_i(preds, target)``; ``weight_map`` goes to the components that take one.

        Shape:
            as the components' mode (see :mod:`pixelwise.modes`); weight_map ``[N, H, W]``.

        Raises:
            ConfigError: a weight map when no component can use it.
        """
        if weight_map is not None and not self.accepts_weight_map:
            raise ConfigError(
                f"none of the losses {list(self.components)} can use a weight_map; add a per-pixel loss "
                "such as 'ce', 'bce' or 'focal'."
            )
        total = None
        values = {}
        for name, loss in self.components.items():
            if weight_map is not None and getattr(loss, "accepts_weight_map", False):
                value = loss(preds, target, weight_map)
            else:
                value = loss(preds, target)
            values[name] = value.detach()
            term = self.weights[name] * value
            total = term if total is None else total + term
        self.last_components = values
        return total

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{name}: {weight:g}" for name, weight in self.weights.items())


def _check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"the weight of loss {name!r} must be a finite number >= 0; got {weight!r}.")
    return float(weight)


def _entries(spec: str | Mapping[str, Any] | Sequence[str]) -> list[tuple[str, Any]]:
    """The ``(name, weight or options)`` pairs of a spec, in order."""
    entries: list[tuple[str, Any]] = []
    if isinstance(spec, str):
        for term in spec.split("+"):
            match = _TERM.match(term.strip())
            if match is None:
                raise ConfigError(f"cannot read loss term {term.strip()!r} in {spec!r}; {_SYNTAX}.")
            entries.append((match["name"], float(match["weight"] or 1.0)))
    elif isinstance(spec, Mapping):
        entries = list(spec.items())
    elif isinstance(spec, Sequence) and all(isinstance(item, str) for item in spec):
        for item in spec:
            entries.extend(_entries(item))
    else:
        raise ConfigError(f"cannot read loss spec {spec!r}; {_SYNTAX}, or pass a dict of name → weight.")
    if not entries:
        raise ConfigError(f"the loss spec {spec!r} names no loss; {_SYNTAX}.")
    return entries


def _weight_and_options(name: str, value: Any) -> tuple[float, dict[str, Any]]:
    if isinstance(value, Mapping):
        options = dict(value)
        return _check_weight(name, options.pop("weight", 1.0)), options
    return _check_weight(name, value), {}


def _alias_options(alias: str, components: list[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split the options given to a Keras alias among its components (each to those that accept it)."""
    accepted = {name: loss_options(name) for name in components}
    unused = [key for key in options if not any(key in valid for valid in accepted.values())]
    if unused:
        everything = sorted({option for valid in accepted.values() for option in valid})
        raise ConfigError(
            f"Keras loss {alias!r} ({' + '.join(components)}) has no option {option_hints(unused, everything)}."
        )
    return {name: {k: v for k, v in options.items() if k in accepted[name]} for name in components}


def _parse(spec: str | Mapping[str, Any] | Sequence[str]) -> tuple[_Terms, list[str]]:
    """Registered name → (weight, alias defaults, own options), and the Keras aliases used."""
    terms: _Terms = {}
    aliases: list[str] = []

    def add(name: str, weight: float, defaults: dict[str, Any], own: dict[str, Any]) -> None:
        if name in terms:
            raise ConfigError(f"loss {name!r} appears twice in {spec!r}; give it one weight.")
        terms[name] = (weight, defaults, own)

    for raw_name, value in _entries(spec):
        key = str(raw_name).strip().lower()
        alias = keras_alias(key)
        weight, options = _weight_and_options(key, value)
        if alias is not None:
            aliases.append(key)
            split = _alias_options(key, [name for name, _, _ in alias.terms], options)
            for name, factor, defaults in alias.terms:
                add(name, weight * factor, dict(defaults), split[name])
        elif key in list_losses():
            add(key, weight, {}, options)
        else:
            raise unknown_name("loss", str(raw_name), [*list_losses(), *KERAS_ALIASES])
    return terms, aliases


def parse_loss_spec(spec: str | Mapping[str, Any] | Sequence[str]) -> dict[str, tuple[float, dict[str, Any]]]:
    """Split a loss spec into ``{registered name: (weight, own options)}``.

    Args:
        spec: ``"ce+dice"``, ``"ce + 0.5*dice"`` (whitespace does not matter; weights are plain
            decimals), ``{"ce": 1.0, "dice": 0.5}``, ``{"ce": {"weight": 1.0, "label_smoothing": 0.1}}``
            (a missing ``"weight"`` is 1) or ``["ce", "0.5*dice"]``. A Keras segmentation_models
            name (``"bce_dice_loss"``) stands for its terms, with their options, its weight
            multiplying theirs (see :mod:`pixelwise.losses.aliases`).

    Returns:
        Registered (lower-case) names in the order given, each with its weight and options.

    Raises:
        ConfigError: an unknown name (with the closest ones), a malformed term, a repeated loss,
            or a weight that is not a finite number >= 0.

    Example:
        >>> parse_loss_spec("ce + 0.5*dice")
        {'ce': (1.0, {}), 'dice': (0.5, {})}
        >>> parse_loss_spec("bce_dice_loss")
        {'bce': (1.0, {}), 'dice': (1.0, {'smooth': 5e-06})}
    """
    terms, _ = _parse(spec)
    return {name: (weight, {**defaults, **own}) for name, (weight, defaults, own) in terms.items()}


def get_loss(
    spec: LossSpec, mode: Mode = "multiclass", ignore_index: int | None = IGNORE_INDEX, **options: Any
) -> nn.Module:
    """Build a loss, or a weighted sum of losses, from a name or a config value.

    Known names: ``ce``, ``bce``, ``dice``, ``jaccard``, ``focal``, ``tversky``, ``lovasz``,
    ``generalized_dice``, ``mcc``, ``cldice`` (see :func:`~pixelwise.losses.list_losses`), and the
    Keras segmentation_models names of :mod:`pixelwise.losses.aliases` (``"categorical_crossentropy"``,
    ``"bce_dice_loss"``, ...), which may be summed with the others (``"dice_loss + 0.5*cldice"``).

    Args:
        spec: a name, a ``"+"``-joined string with optional weights (``"ce + 0.5*dice"``), a dict
            ``{name: weight}`` or ``{name: {"weight": w, **options}}``, a list of names, or an
            ``nn.Module`` (returned unchanged).
        mode: ``"binary"``, ``"multiclass"`` (default) or ``"multilabel"``, for every component.
        ignore_index: target value of pixels that count for nothing (default 255; None: none).
        **options: constructor options, each passed to every component that accepts it
            (``from_logits`` to all, ``class_weights`` to ``ce`` and the overlap losses, ``alpha``
            to both ``focal`` and ``tversky``). Options inside a dict spec go to that component and
            win; both override a Keras alias's own settings (e.g. its Dice ``smooth``).

    Returns:
        The loss module itself for a single name of weight 1, else a :class:`CombinedLoss`.

    Raises:
        ConfigError: an unknown loss (with the closest names), an option no component accepts
            (with the valid ones), a loss or Keras name that does not support ``mode``, or a malformed spec.

    Example:
        >>> loss = get_loss("ce + 0.5*dice", mode="multiclass", class_weights=[1.0, 2.0, 2.0])
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """
    if isinstance(spec, nn.Module):
        if options:
            raise ConfigError(f"options {sorted(options)} cannot be applied to the ready loss {type(spec).__name__}.")
        return spec
    mode = check_mode(mode)
    terms, aliases = _parse(spec)
    for alias in aliases:
        check_alias_mode(alias, mode)
    accepted = {name: loss_options(name) for name in terms}
    unused = [key for key in options if not any(key in valid for valid in accepted.values())]
    if unused:
        everything = sorted({option for valid in accepted.values() for option in valid})
        valid = "; ".join(f"{name}: {', '.join(options_)}" for name, options_ in accepted.items())
        raise ConfigError(
            f"no loss in {list(terms)} accepts option {option_hints(unused, everything)}. Valid options: {valid}."
        )
    components = {}
    for name, (_, defaults, own) in terms.items():
        shared = {key: value for key, value in options.items() if key in accepted[name]}
        components[name] = build_loss(name, mode, ignore_index, **{**defaults, **shared, **own})
    if len(terms) == 1 and next(iter(terms.values()))[0] == 1.0:
        return next(iter(components.values()))
    return CombinedLoss(components, {name: weight for name, (weight, _, _) in terms.items()})
