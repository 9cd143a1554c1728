"""A study's figures: bar charts with seed spread, and one validation image predicted by every variant.

Figures are small PNGs (≤ about 100 kB): drawn at 100 dpi, then stored with an adaptive 128-colour palette.
They are ``matplotlib.figure.Figure`` objects, never pyplot ones: drawing a figure changes no backend and
leaves no figure open.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelwise.io import atomic_path
from pixelwise.viz import colorize, number, to_rgb
from pixelwise_experiments.base import Study

COLOURS = 128
"""Palette size of the stored PNGs: plots use a handful of colours, gray EM images survive 128 levels."""


def _save(fig: Any, path: str | Path) -> None:
    """Save a figure as a palette PNG (the plots have few colours; photos and EM images survive 128 well enough)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)


def bar_chart(study: Study, rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """One panel per headline metric: a bar per variant at its mean, ±1 s.d. error bars, one dot per seed.

    Variants with a ``group`` are drawn as grouped bars (x = group, colour = variant label).
    """
    # deferred: matplotlib is slow to import and only needed once a study has results to draw
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    metrics = [*study.metrics, *[m for m in study.extra_columns if m.key in ("params", "ms_per_image")]]
    groups = list(dict.fromkeys(v.group for v in study.variants))
    labels = list(dict.fromkeys(v.title for v in study.variants))
    fig = Figure(figsize=(2.2 + 2.4 * len(metrics), 3.0))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    colors = colormaps["tab10"].colors
    width = 0.8 / (len(labels) if groups != [None] else 1)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for v in study.variants:
            values = [number(r.get(metric.key)) for r in rows if r["variant"] == v.name]
            values = [x for x in values if np.isfinite(x)]
            if metric.key == "params":
                values = [x / 1e6 for x in values]
            if not values:
                continue
            color = colors[labels.index(v.title) % len(colors)]
            if groups == [None]:
                x = study.variants.index(v)
            else:
                x = groups.index(v.group) + (labels.index(v.title) - (len(labels) - 1) / 2) * width
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            ax.bar(x, np.mean(values), width * 0.9, yerr=std, capsize=3, color=color, alpha=0.8)
            ax.plot([x] * len(values), values, "o", color="black", markersize=2.5)
        if groups == [None]:
            ax.set_xticks(range(len(study.variants)), [v.title for v in study.variants], rotation=30, ha="right")
        else:
            ax.set_xticks(range(len(groups)), groups)
        unit = " (M)" if metric.key == "params" else ""
        ax.set_title(metric.label + unit + (" ↑" if metric.higher_is_better else " ↓"), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    if groups != [None]:
        handles = [Rectangle((0, 0), 1, 1, color=colors[i % len(colors)], alpha=0.8) for i in range(len(labels))]
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(labels))
    fig.suptitle(f"{study.name}: mean ± s.d. over seeds (dots: single runs)", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    _save(fig, path)


def _crop(array: np.ndarray, side: int | None) -> np.ndarray:
    if side is None:
        return array
    height, width = array.shape[:2]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return array[top : top + side, left : left + side]


def sample_panel(
    study: Study,
    image: np.ndarray,
    target: np.ndarray,
    predictions: dict[str, np.ndarray],
    palette: np.ndarray,
    path: str | Path,
) -> None:
    """Image | ground truth | one column per variant (rows: the variants' groups), for one validation image.

    Args:
        image: ``[C, H, W]`` float in [0, 1]; target: ``[H, W]`` class ids; predictions: variant name →
            ``[H, W]`` class ids; palette: ``[K, 3]`` uint8.
    """
    from matplotlib.figure import Figure  # deferred, as in bar_chart

    groups = list(dict.fromkeys(v.group for v in study.variants))
    columns = max(sum(v.group == g for v in study.variants) for g in groups) + 2
    height, width = _crop(target, study.panel_crop).shape
    tile, title_space = 2.1, 0.3  # inches at 100 dpi: a 192-pixel crop is shown without dropping rows
    size = (tile * columns, (tile * height / width + title_space) * len(groups))
    fig = Figure(figsize=size)
    axes = fig.subplots(len(groups), columns, squeeze=False)
    for index, (row, group) in enumerate(zip(axes, groups, strict=True)):
        # image and truth once, in the first row: repeating them would only make the PNG bigger
        tiles = (
            [("image", to_rgb(image)), ("ground truth", colorize(target, palette))] if index == 0 else [("", None)] * 2
        )
        tiles += [
            (v.title, colorize(predictions[v.name], palette) if v.name in predictions else None)
            for v in study.variants
            if v.group == group
        ]
        for ax, (title, array) in zip(row, tiles + [("", None)] * (columns - len(tiles)), strict=True):
            ax.axis("off")
            if array is not None:
                ax.imshow(_crop(array, study.panel_crop), interpolation="nearest")
                suffix = f" · {group}" if group and title not in ("image", "ground truth") else ""
                ax.set_title(title + suffix, fontsize=8)
        if group and index > 0:
            row[0].text(0.5, 0.5, f"{group} →", ha="center", va="center", fontsize=10, transform=row[0].transAxes)
    fig.tight_layout(pad=0.3)
    _save(fig, path)
