"""Per-sample training targets built from instance labels, after augmentation.

:func:`training_targets` turns one (augmented) sample's semantic mask and instance labels into the
mask the loss sees (with separation gaps, or the three-class boundary target) and, optionally, the
U-Net weight map. It runs on each crop after augmentation, so the weights follow every flip, rotation
and elastic deformation exactly.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pixelwise.data.weights import (
    BACKGROUND,
    BOUNDARY_WIDTH,
    SIGMA,
    W0,
    boundary_target,
    instances_from_mask,
    separate_touching,
    unet_weight_map,
)
from pixelwise.errors import ConfigError, unknown_name
from pixelwise.modes import IGNORE_INDEX

Target = Literal["semantic", "boundary"]
"""What a model is trained to predict: the mask's classes, or background / interior / boundary of objects."""
TARGETS: tuple[Target, ...] = typing.get_args(Target)
WEIGHT_MAPS = ("unet",)
BOUNDARY_CLASSES = ("background", "interior", "boundary")
"""Class names of the ``boundary`` target, in id order."""
DEFAULT_UNET_GAP = 1
"""Separation gap (pixels cut from each side of a contact) used with the U-Net weight map when none is given."""


@dataclass(frozen=True)
class TargetOptions:
    """How a sample's training target is built (see :func:`training_targets`).

    Args:
        target: ``"semantic"`` (the mask as given) or ``"boundary"`` (background / interior / boundary).
        weight_map: None or ``"unet"`` (the U-Net border weight map).
        gap: pixels cut from each side of a contact between objects (:func:`separate_touching`);
            None: :data:`DEFAULT_UNET_GAP` with the U-Net weight map and a semantic target, else 0.
        boundary_width: boundary width of the ``boundary`` target, in pixels.
        w0, sigma: border weight and width (pixels) of the U-Net weight map.
        ignore_index: mask value of void pixels (kept void in every target).
    """

    target: Target = "semantic"
    weight_map: str | None = None
    gap: int | None = None
    boundary_width: int = BOUNDARY_WIDTH
    w0: float = W0
    sigma: float = SIGMA
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise unknown_name("target", str(self.target), TARGETS)
        if self.weight_map is not None and self.weight_map not in WEIGHT_MAPS:
            raise unknown_name("loss_weight_map", str(self.weight_map), (*WEIGHT_MAPS, "none"))
        if self.gap is not None and self.gap < 0:
            raise ConfigError(f"separation_gap={self.gap} must be >= 0 pixels.")
        if self.boundary_width < 1:
            raise ConfigError(f"boundary_width={self.boundary_width} must be at least 1 pixel.")
        if self.sigma <= 0 or self.w0 < 0:
            raise ConfigError(f"weight_map_sigma={self.sigma} must be > 0 and weight_map_w0={self.w0} >= 0.")

    @property
    def effective_gap(self) -> int:
        if self.gap is not None:
            return self.gap
        return DEFAULT_UNET_GAP if self.weight_map == "unet" and self.target == "semantic" else 0

    @property
    def active(self) -> bool:
        """Whether anything differs from the plain semantic mask."""
        return self.target != "semantic" or self.weight_map is not None or self.effective_gap > 0

    @property
    def num_classes(self) -> int | None:
        """Classes the model must predict for this target (None: those of the data)."""
        return len(BOUNDARY_CLASSES) if self.target == "boundary" else None


def training_targets(
    mask: np.ndarray, instances: np.ndarray | None, options: TargetOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """The loss target and weight map of one sample.

    Steps: instance labels (given, else :func:`instances_from_mask` of ``mask``) → separation gaps
    (their pixels become background, class 0, in the mask) → the boundary target if asked → the U-Net
    weight map of the separated labels (class frequencies over the non-void pixels). Void pixels stay
    ``ignore_index``.

    Shape:
        ``mask`` integer ``[H, W]``; ``instances`` integer ``[H, W]`` or None → ``(int64 [H, W],
        float32 [H, W] or None)``.
    """
    mask = np.asarray(mask).astype(np.int64)
    valid = mask != options.ignore_index
    labels = instances_from_mask(mask, options.ignore_index) if instances is None else np.asarray(instances)
    labels = np.where(valid, labels, 0).astype(np.int32)
    gap = options.effective_gap
    if gap > 0:
        separated = separate_touching(labels, gap)
        mask = np.where(valid & (separated == 0) & (labels > 0), BACKGROUND, mask)
        labels = separated
    if options.target == "boundary":
        mask = np.where(valid, boundary_target(labels, options.boundary_width), options.ignore_index)
    weights = None
    if options.weight_map == "unet":
        weights = unet_weight_map(labels, options.w0, options.sigma, valid=valid)
    return mask, weights
