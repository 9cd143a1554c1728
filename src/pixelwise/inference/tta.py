"""Test-time augmentation: predict flipped / rotated copies of a tile and average the un-done outputs.

Each transform is a rotation by ``k·90°`` after an optional left-right flip. ``"hflip"`` uses the
identity and the left-right flip (for images whose up and down differ: street scenes, or labels
drawn with a vertical offset); ``"flips"`` the four flips (identity, left-right, up-down, both);
``"d4"`` all eight symmetries of the square (the four rotations, each with and without a flip).
The output of every transformed input is transformed back before averaging, so a model that is
itself equivariant gives the plain output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pixelwise.errors import unknown_name

TTA_MODES = ("hflip", "flips", "d4")

Transform = tuple[int, bool]
"""``(k, flip)``: flip left-right if ``flip``, then rotate by ``k·90°`` counter-clockwise."""

_TRANSFORMS: dict[str, tuple[Transform, ...]] = {
    "hflip": ((0, False), (0, True)),
    # rot180 ∘ hflip = vflip; rot180 alone = both flips.
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, flip) for flip in (False, True) for k in range(4)),
}


def tta_transforms(mode: str) -> tuple[Transform, ...]:
    """The transforms of a TTA mode (``"hflip"``: 2, ``"flips"``: 4, ``"d4"``: 8).

    Raises:
        ConfigError: unknown mode (names the valid ones).
    """
    if mode not in _TRANSFORMS:
        raise unknown_name("tta mode", str(mode), TTA_MODES, "(or tta=None for no test-time augmentation)")
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
