"""Test-time augmentation: predict flipped / rotated / resized copies of a tile and average the un-done outputs.

Each transform is a rotation by ``k·90°`` after an optional left-right flip. ``"none"`` uses the identity
alone (the same as no TTA; it overrides a mode stored with the model); ``"hflip"`` uses the
identity and the left-right flip (for images whose up and down differ: street scenes, or labels
drawn with a vertical offset); ``"flips"`` the four flips (identity, left-right, up-down, both);
``"d4"`` all eight symmetries of the square (the four rotations, each with and without a flip).
The output of every transformed input is transformed back before averaging, so a model that is
itself equivariant gives the plain output.

Multi-scale TTA (``tta_scales``, as MMSeg's ``MultiScaleFlipAug``) adds input scales: every flip
transform is predicted at every scale, and the probabilities of all ``scales × transforms`` copies
are averaged with equal weight::

    tile [N, C, H, W] ─► flip/rotate ─► resize to round(s·H) × round(s·W) ─► model ─► logits
                                                                                 │
    mean over scales × transforms ◄─ un-flip ◄─ softmax ◄─ resize back to H × W ◄┘

The resizing is done by the caller's function (the :class:`~pixelwise.inference.Predictor`, which
composes it with the model's own input scale and resizes logits, not probabilities); this module
only checks the scales and averages. A single scale of 1 calls the function once per transform
with scale 1, exactly as without ``tta_scales``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from pixelwise.errors import ConfigError, unknown_name
from pixelwise.modes import NO_TTA as NO_TTA  # re-exported: the names live in modes, the lowest layer
from pixelwise.modes import TTA_MODES as TTA_MODES

MAX_TTA_SCALE = 4.0
"""Largest TTA scale: beyond it a tile costs more than 16 forward passes at scale 1 (same as ``TrainConfig.scale``)."""
MAX_TTA_SCALES = 8
"""Most scales one prediction may average (each is a full forward pass per flip transform)."""

Transform = tuple[int, bool]
"""``(k, flip)``: flip left-right if ``flip``, then rotate by ``k·90°`` counter-clockwise."""

_TRANSFORMS: dict[str, tuple[Transform, ...]] = {
    NO_TTA: ((0, False),),
    "hflip": ((0, False), (0, True)),
    # rot180 ∘ hflip = vflip; rot180 alone = both flips.
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, flip) for flip in (False, True) for k in range(4)),
}


def tta_transforms(mode: str) -> tuple[Transform, ...]:
    """The transforms of a TTA mode (``"none"``: 1, the identity; ``"hflip"``: 2, ``"flips"``: 4, ``"d4"``: 8).

    Raises:
        ConfigError: unknown mode (names the valid ones).
    """
    if mode not in _TRANSFORMS:
        raise unknown_name("tta mode", str(mode), TTA_MODES, f"({NO_TTA!r}: no test-time augmentation)")
    return _TRANSFORMS[mode]


def apply_transform(x: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Transform the last two (H, W) dimensions of ``x``."""
    k, flip = transform
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def invert_transform(y: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Undo :func:`apply_transform` on the last two dimensions of ``y``."""
    k, flip = transform
    if k:
        y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


def tta_average(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean over the transforms of ``mode`` of ``invert(fn(apply(x)))``.

    Shape: ``x`` is ``[N, C, H, W]``; ``fn`` maps it to ``[N, K, H', W']`` (probabilities, so that
    the average is a probability); returns ``[N, K, H', W']`` float32.
    """
    total = None
    transforms = tta_transforms(mode)
    for transform in transforms:
        out = invert_transform(fn(apply_transform(x, transform)), transform).float()
        total = out if total is None else total + out
    return total / len(transforms)


def _shown(option: str, value: object) -> str:
    """``--tta-scales 0,1`` for command-line options, ``tta_scales=(0, 1)`` for Python arguments."""
    return f"{option} {value}" if option.startswith("--") else f"{option}={value!r}"


def _as_scale(option: str, shown: str, item: object) -> float:
    """One scale as a float in ``(0, MAX_TTA_SCALE]``."""
    try:
        scale = float(str(item).strip()) if isinstance(item, str) else float(item)
        valid = not isinstance(item, bool) and math.isfinite(scale) and 0 < scale <= MAX_TTA_SCALE
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(
            f"{shown}: {item!r} is not a valid scale; give numbers in (0, {MAX_TTA_SCALE:g}], e.g. "
            f"{_shown(option, '0.75,1,1.25' if option.startswith('--') else (0.75, 1, 1.25))}."
        )
    return scale


def check_tta_scales(scales: str | Sequence[float] | None, option: str = "tta_scales") -> tuple[float, ...] | None:
    """``scales`` as a tuple of floats, checked; None stays None.

    Args:
        scales: numbers, or a comma-separated string such as ``"0.75,1,1.25"`` (the command line's form).
        option: the name errors give (``"--tta-scales"`` on the command line).

    Returns:
        The scales in the order given (None for None).

    Raises:
        ConfigError: no scale, more than :data:`MAX_TTA_SCALES`, a repeated scale, or one that is not a
            number in ``(0, MAX_TTA_SCALE]`` (names the option and the value).
    """
    if scales is None:
        return None
    shown = _shown(option, scales)
    items = scales.split(",") if isinstance(scales, str) else scales
    try:
        items = list(items)
    except TypeError:
        items = [items]  # a lone number: reported as a scale below if it is not one
    parsed = tuple(_as_scale(option, shown, item) for item in items)
    if not parsed or len(parsed) > MAX_TTA_SCALES:
        raise ConfigError(f"{shown} gives {len(parsed)} scales; give 1 to {MAX_TTA_SCALES}, e.g. 0.75,1,1.25.")
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"{shown} repeats a scale, which would weigh it twice; give each scale once.")
    return parsed


def multiscale_average(
    fn: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    scales: Sequence[float] | None,
    mode: str | None,
) -> torch.Tensor:
    """Mean over ``scales`` (default: 1 alone) and the transforms of ``mode`` (None: identity) of ``fn``'s output.

    Args:
        fn: ``fn(x, scale)`` predicts ``x`` resized by ``scale`` and returns probabilities resized back
            to ``x``'s size.
        x: the (normalised) tiles.
        scales: the TTA scales (checked by :func:`check_tta_scales`), or None for 1 alone.
        mode: a TTA mode of :data:`TTA_MODES`, or None (or ``"none"``) for no flips.

    Shape: ``x`` is ``[N, C, H, W]``; returns ``[N, K, H, W]`` float32. One scale and no mode return
    ``fn(x, scale)`` itself (no arithmetic), so ``scales=(1,)`` equals no multi-scale TTA bit for bit.
    """
    total = None
    scales = (1.0,) if scales is None else tuple(scales)
    for scale in scales:

        def at_scale(tiles: torch.Tensor, scale: float = scale) -> torch.Tensor:
            return fn(tiles, scale)

        out = tta_average(at_scale, x, mode) if mode and mode != NO_TTA else at_scale(x)
        total = out if total is None else total + out
    return total if len(scales) == 1 else total / len(scales)
