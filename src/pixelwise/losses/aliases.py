"""Keras segmentation_models loss names, as aliases of pixelwise losses and sums of them.

A Keras user writes ``model.compile(loss="categorical_crossentropy")`` or
``loss=sm.losses.bce_jaccard_loss``; :func:`~pixelwise.losses.get_loss` accepts the same names::

    alias                           pixelwise spec (Keras definition)
    categorical_crossentropy        ce                            (Keras' built-in loss of that name)
    binary_crossentropy             bce
    dice_loss                       dice, smooth 1e-5             (sm.losses.DiceLoss())
    jaccard_loss                    jaccard, smooth 1e-5          (sm.losses.JaccardLoss())
    binary_focal_loss               focal, alpha 0.25, gamma 2    (sm.losses.BinaryFocalLoss())
    categorical_focal_loss          0.25 * focal / K, gamma 2     (sm.losses.CategoricalFocalLoss())
    bce_dice_loss, bce_jaccard_loss                 bce + dice / jaccard
    cce_dice_loss, cce_jaccard_loss                 ce / K + dice / jaccard
    binary_focal_dice_loss, ..._jaccard_loss        binary_focal_loss + dice / jaccard
    categorical_focal_dice_loss, ..._jaccard_loss   categorical_focal_loss + dice / jaccard

Keras segmentation_models defines the combined names as sums (``bce_dice_loss = binary_crossentropy
+ dice_loss``). Its ``CategoricalCELoss`` and ``CategoricalFocalLoss`` average over the class axis
too, hence ``/ K`` (the ``mean_over_classes`` option) in the ``cce_*`` and ``categorical_focal*``
names, while ``categorical_crossentropy`` alone is Keras' built-in (no ``/ K``), the loss a
``compile(loss="categorical_crossentropy")`` string selects. sm's Dice is
``(2 TP + s) / (2 TP + FP + FN + s)``, ours ``(2 TP + 2 s') / (2 TP + FP + FN + 2 s')``, so
``s' = s / 2`` makes them equal. Keras losses take probabilities (the model's activation); pass
``from_logits=False`` for a model that ends in a softmax / sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pixelwise.errors import ConfigError
from pixelwise.modes import MODES, Mode

KERAS_SMOOTH = 1e-5
"""segmentation_models' ``SMOOTH`` of its Dice and Jaccard losses."""
KERAS_FOCAL_ALPHA = 0.25
KERAS_FOCAL_GAMMA = 2.0
CATEGORICAL: tuple[Mode, ...] = ("multiclass",)
SIGMOID: tuple[Mode, ...] = ("binary", "multilabel")

Term = tuple[str, float, dict[str, Any]]
"""(registered loss name, weight, default options)."""


@dataclass(frozen=True)
class KerasAlias:
    """A Keras loss name: the weighted pixelwise losses it stands for and the modes it fits."""

    terms: tuple[Term, ...]
    modes: tuple[Mode, ...] = MODES
    hint: str = ""
    """Advice for an unsupported mode (the alias of the other family)."""


_CE: Term = ("ce", 1.0, {})
_CCE: Term = ("ce", 1.0, {"mean_over_classes": True})
_BCE: Term = ("bce", 1.0, {})
_DICE: Term = ("dice", 1.0, {"smooth": KERAS_SMOOTH / 2})
_JACCARD: Term = ("jaccard", 1.0, {"smooth": KERAS_SMOOTH})
_BINARY_FOCAL: Term = ("focal", 1.0, {"alpha": KERAS_FOCAL_ALPHA, "gamma": KERAS_FOCAL_GAMMA})
# One alpha for every class is a constant factor; our multiclass alpha is per class, so it becomes the weight.
_CATEGORICAL_FOCAL: Term = ("focal", KERAS_FOCAL_ALPHA, {"gamma": KERAS_FOCAL_GAMMA, "mean_over_classes": True})

_USE_BINARY = "for binary or multilabel masks use the binary_* / bce_* names"
_USE_CATEGORICAL = "for multiclass masks use the categorical_* / cce_* names"


def _categorical(*terms: Term) -> KerasAlias:
    return KerasAlias(terms, CATEGORICAL, _USE_BINARY)


def _sigmoid(*terms: Term) -> KerasAlias:
    return KerasAlias(terms, SIGMOID, _USE_CATEGORICAL)


KERAS_ALIASES: dict[str, KerasAlias] = {
    "categorical_crossentropy": _categorical(_CE),
    "binary_crossentropy": _sigmoid(_BCE),
    "dice_loss": KerasAlias((_DICE,)),
    "jaccard_loss": KerasAlias((_JACCARD,)),
    "categorical_focal_loss": _categorical(_CATEGORICAL_FOCAL),
    "binary_focal_loss": _sigmoid(_BINARY_FOCAL),
    "bce_dice_loss": _sigmoid(_BCE, _DICE),
    "bce_jaccard_loss": _sigmoid(_BCE, _JACCARD),
    "cce_dice_loss": _categorical(_CCE, _DICE),
    "cce_jaccard_loss": _categorical(_CCE, _JACCARD),
    "binary_focal_dice_loss": _sigmoid(_BINARY_FOCAL, _DICE),
    "binary_focal_jaccard_loss": _sigmoid(_BINARY_FOCAL, _JACCARD),
    "categorical_focal_dice_loss": _categorical(_CATEGORICAL_FOCAL, _DICE),
    "categorical_focal_jaccard_loss": _categorical(_CATEGORICAL_FOCAL, _JACCARD),
}


def keras_alias(name: str) -> KerasAlias | None:
    """The alias called ``name`` (case-insensitive), or None if it is not a Keras loss name."""
    return KERAS_ALIASES.get(name.strip().lower())


def check_alias_mode(name: str, mode: Mode) -> None:
    """Raise a ConfigError if the Keras loss ``name`` does not fit ``mode``, naming the alternative."""
    alias = keras_alias(name)
    if alias is not None and mode not in alias.modes:
        raise ConfigError(
            f"Keras loss {name!r} is for {' / '.join(alias.modes)} masks, not mode {mode!r}; {alias.hint}."
        )
