"""Pictures: colour palettes, label colouring, overlays, image | truth | prediction | error panels,
training curves and confusion matrices. Everything returns uint8 arrays or writes PNG files.

Plots are drawn on ``matplotlib.figure.Figure`` objects and saved with ``Figure.savefig`` (which picks
the Agg canvas for PNG by itself): no pyplot, no ``matplotlib.use``, so a notebook's backend and its
list of open figures are left alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.data.classes import default_palette as classes_palette
from pixelwise.io import atomic_path
from pixelwise.modes import IGNORE_INDEX

IGNORE_COLOR = (0, 0, 0)
ERROR_COLOR = (255, 40, 40)
CORRECT_COLOR = (40, 40, 40)


def default_palette(num_classes: int) -> np.ndarray:
    """The class colours of :func:`pixelwise.data.classes.default_palette` (the Pascal VOC map) as ``[K, 3]`` uint8.

    The one default palette: written masks, overlays, panels and reports colour class ``k`` alike.
    """
    return np.asarray(classes_palette(num_classes), dtype=np.uint8).reshape(-1, 3)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """``(r, g, b)`` 0..255 of a hue, saturation and value in [0, 1] (colours of object ids, not classes)."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``[H, W]`` class ids → ``[H, W, 3]`` uint8 colours (ignored pixels: IGNORE_COLOR)."""
    labels = np.asarray(labels)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(palette))
    out[valid] = palette[labels[valid]]
    out[labels == ignore_index] = IGNORE_COLOR
    return out


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An image ``[C, H, W]`` or ``[H, W]`` (float in [0, 1] or uint8) → ``[H, W, 3]`` uint8 for display.

    Gray is repeated to RGB; more than 3 channels show the first three.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] <= 16 and image.shape[0] < image.shape[-1]:
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Class colours blended over the image (class 0 is left transparent)."""
    rgb = to_rgb(image).astype(np.float32)
    colors = colorize(labels, palette).astype(np.float32)
    mask = (np.asarray(labels) > 0)[..., None] & (np.asarray(labels) != IGNORE_INDEX)[..., None]
    return np.where(mask, (1 - alpha) * rgb + alpha * colors, rgb).round().astype(np.uint8)


def error_map(prediction: np.ndarray, target: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Red where the prediction is wrong, dark grey where right, black where ignored."""
    out = np.full((*target.shape, 3), CORRECT_COLOR, dtype=np.uint8)
    out[prediction != target] = ERROR_COLOR
    out[target == ignore_index] = IGNORE_COLOR
    return out


def panel(
    image: np.ndarray, target: np.ndarray, prediction: np.ndarray, palette: np.ndarray, gap: int = 4
) -> np.ndarray:
    """One row: image | ground truth | prediction | errors, as ``[H, 4W + 3·gap, 3]`` uint8."""
    tiles = [to_rgb(image), colorize(target, palette), colorize(prediction, palette), error_map(prediction, target)]
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for tile in tiles:
        row += [tile, spacer]
    return np.concatenate(row[:-1], axis=1)


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write a uint8 ``[H, W]`` or ``[H, W, 3]`` array as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Loss and mIoU per epoch (train and val) from ``metrics.csv`` rows, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "miou"), strict=True):
        for stage, style in (("train", "-"), ("val", "-o")):
            # validation may skip epochs (it is kept to a share of the time): join the epochs it has
            points = [(int(r["epoch"]), number(r.get(f"{stage}_{key}_epoch", r.get(f"{stage}_{key}")))) for r in rows]
            points = [(epoch, value) for epoch, value in points if math.isfinite(value)]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=stage, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title({"loss": "loss", "miou": "mean IoU"}[key])
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def number(value: Any) -> float:
    """``float(value)``, or NaN for None, an empty CSV cell or other text that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


MAX_CONFUSION_INCHES = 18
"""Largest side of the confusion-matrix figure, in inches (at 100 dpi)."""
MAX_ANNOTATED_CLASSES = 20
"""Confusion matrices of at most this many classes print each cell's value."""
SMALL_TICK_FONT = 4
"""Tick label size of confusion matrices of more than twice ``MAX_ANNOTATED_CLASSES`` classes."""


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) as a PNG heat map."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    # the figure grows with the classes up to a cap: ADE20K's 150 would otherwise draw a 7000-pixel square
    size = min(max(3.5, 0.45 * len(names) + 1.5), MAX_CONFUSION_INCHES)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fontsize = None if len(names) <= MAX_ANNOTATED_CLASSES * 2 else SMALL_TICK_FONT
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(names)), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= MAX_ANNOTATED_CLASSES:
        for i in range(len(names)):
            for j in range(len(names)):
                value = normalised[i, j]
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
