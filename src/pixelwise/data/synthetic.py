"""Synthetic segmentation data, deterministic by seed, so that the demo and the tests need no download.

``cells``: grayscale microscopy-like images of textured, noisy cells, many touching each other,
under uneven illumination, with semantic (0 background, 1 cell) and instance labels. Cells are
brighter and more granular than the background, so foreground/background is learnable; touching
cells are split only by a faint, sometimes broken, darker line, so separating them is the hard part.

``shapes``: RGB images of overlapping circles, rectangles and triangles (classes 1, 2, 3) on
textured backgrounds (class 0).

Sample ``i`` of a seed depends only on ``(seed, i)``: ``cells(5, seed=0)[:3] == cells(3, seed=0)``.
Everything is vectorised numpy / scipy.ndimage (100 cell images of 256x256 take about a second).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.errors import unknown_name
from pixelwise.io import atomic_path

REFERENCE_SIZE = 256
"""Image size the shape parameters below are given for; other sizes scale them."""
CELL_RADIUS = (15.0, 26.0)
CELL_CLUSTERS = (4, 7)
CELLS_PER_CLUSTER = (1, 6)
CELL_OVERLAP = (0.72, 0.92)  # centre distance / (r_a + r_b) of touching cells: below 1 means the ellipses overlap
CELL_MIN_SEPARATION = 0.62  # no two centres closer than this * (r_a + r_b): no cell swallows another
PLACEMENT_TRIES = 40
BOUNDARY_WOBBLE = 0.22  # relative radius change from smooth noise: irregular cell outlines
MIN_CELL_AREA = 40  # pixels at the reference size; smaller slivers become background
NOISE_SIGMA = (0.035, 0.06)
SMOOTH_NOISE_WIDTH = 0.6  # Gaussian interpolation width, in coarse-grid cells
SHAPE_RADIUS = (14.0, 42.0)
SHAPES_PER_IMAGE = (4, 10)
MIN_COLOR_CONTRAST = 0.3

CELL_CLASSES = ClassInfo(["background", "cell"], [0, 1], default_palette(2))
SHAPE_NAMES = ["background", "circle", "rectangle", "triangle"]
SHAPE_CLASSES = ClassInfo(SHAPE_NAMES, list(range(len(SHAPE_NAMES))), default_palette(len(SHAPE_NAMES)))


@dataclass
class Sample:
    """One synthetic image with its labels.

    Shape:
        ``image``: uint8 ``[H, W]`` (cells) or ``[H, W, 3]`` (shapes); ``semantic``: uint8 ``[H, W]``
        class ids; ``instances``: int32 ``[H, W]``, 0 = background, 1..M one id per object.
    """

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Smooth noise of unit standard deviation with about ``grid`` bumps per side.

    A random ``(grid + 2)^2`` field is interpolated to ``size^2`` with Gaussian weights, as two
    small matrix products (``M @ coarse @ M.T``): much faster than a spline zoom.
    """
    coarse = rng.standard_normal((grid + 2, grid + 2))
    position = np.linspace(0.5, grid + 0.5, size)[:, None] - np.arange(grid + 2)[None, :]
    weights = np.exp(-0.5 * (position / SMOOTH_NOISE_WIDTH) ** 2)
    weights /= weights.sum(1, keepdims=True)
    # einsum, not "@": a BLAS product this small is slower, and multithreaded BLAS stalls on a busy machine
    fine = np.einsum("ik,lk->il", np.einsum("ij,jk->ik", weights, coarse), weights)
    return ((fine - fine.mean()) / (fine.std() + 1e-6)).astype(np.float32)


def _grain(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Blurred white noise scaled to unit standard deviation: texture of a given grain size."""
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return grain / (grain.std() + np.float32(1e-6))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats to uint8, rounding to the nearest level."""
    top = np.iinfo(np.uint8).max
    return np.rint(np.clip(image, 0, 1) * top).astype(np.uint8)


def _place_cells(rng: np.random.Generator, size: int, scale: float) -> list[tuple[float, float, float]]:
    """Centres and radii of cells, in clusters of touching cells."""
    cells: list[tuple[float, float, float]] = []

    def fits(y: float, x: float, r: float) -> bool:
        return (
            0 <= y < size
            and 0 <= x < size
            and all(np.hypot(y - cy, x - cx) >= CELL_MIN_SEPARATION * (r + cr) for cy, cx, cr in cells)
        )

    clusters = round(rng.integers(*CELL_CLUSTERS, endpoint=True) * (size / REFERENCE_SIZE) ** 2)
    for _ in range(max(clusters, 1)):
        members: list[tuple[float, float, float]] = []
        for _ in range(PLACEMENT_TRIES):
            r = rng.uniform(*CELL_RADIUS) * scale
            y, x = rng.uniform(0, size, 2)
            if fits(y, x, r):
                members.append((y, x, r))
                cells.append((y, x, r))
                break
        target = rng.integers(*CELLS_PER_CLUSTER, endpoint=True)
        for _ in range(PLACEMENT_TRIES * target):
            if not members or len(members) >= target:
                break
            py, px, pr = members[rng.integers(len(members))]  # grow the cluster next to one of its cells
            r = rng.uniform(*CELL_RADIUS) * scale
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(*CELL_OVERLAP) * (pr + r)
            y, x = py + distance * np.sin(angle), px + distance * np.cos(angle)
            if fits(y, x, r):
                members.append((y, x, r))
                cells.append((y, x, r))
    return cells


def _rasterise_cells(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Instance labels of irregular ellipses; where they overlap, each pixel goes to the nearer (relative) cell."""
    best = np.full((size, size), np.inf, np.float32)
    labels = np.zeros((size, size), np.int32)
    wobble = 1 + BOUNDARY_WOBBLE * _smooth_noise(rng, size, 16)
    for label, (cy, cx, r) in enumerate(_place_cells(rng, size, scale), start=1):
        stretch, theta = rng.uniform(1.0, 1.35), rng.uniform(0, np.pi)
        a, b = r * stretch, r / stretch
        reach = int(np.ceil(a * (1 + 2 * BOUNDARY_WOBBLE))) + 1
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, size)
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        dy, dx = (yy - cy).astype(np.float32), (xx - cx).astype(np.float32)
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = dy * np.cos(theta) - dx * np.sin(theta)
        distance = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble[y0:y1, x0:x1]  # 1 on the (wobbly) outline
        window = best[y0:y1, x0:x1]
        nearer = (distance < 1) & (distance < window)
        window[nearer] = distance[nearer]
        labels[y0:y1, x0:x1][nearer] = label
    return _clean_instances(labels, MIN_CELL_AREA * scale**2)


def _clean_instances(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Keep the largest connected piece of each instance, drop tiny ones, renumber 1..M."""
    out = np.zeros_like(labels)
    next_id = 1
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(labels[box] == label)
        if count == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        if sizes.max() < min_area:
            continue
        out[box][pieces == 1 + int(sizes.argmax())] = next_id
        next_id += 1
    return out


def _boundaries(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each instance next to the background (outer) and next to another instance (between)."""
    outer = np.zeros(labels.shape, bool)
    between = np.zeros(labels.shape, bool)
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):  # the four 4-neighbours
        neighbour = padded[dy : dy + height, dx : dx + width]
        differs = (labels > 0) & (neighbour != labels)
        outer |= differs & (neighbour == 0)
        between |= differs & (neighbour > 0)
    return outer, between


def _cell_sample(rng: np.random.Generator, size: int) -> Sample:
    scale = size / REFERENCE_SIZE
    instances = _rasterise_cells(rng, size, scale)
    inside = instances > 0
    outer, between = _boundaries(instances)

    background = rng.uniform(0.32, 0.42)
    image = background + 0.03 * _grain(rng, size, 3.0 * scale)  # smooth, faint background texture
    per_cell = np.concatenate([[0.0], rng.uniform(0.2, 0.3, instances.max())]).astype(np.float32)
    cytoplasm = per_cell[instances] + 0.07 * _grain(rng, size, 0.9 * scale)  # brighter, granular
    image = np.where(inside, background + cytoplasm, image)
    membrane = ndimage.gaussian_filter(outer.astype(np.float32), 0.8 * scale)
    image -= 0.35 * membrane
    # touching cells: a faint darker line that fades in and out, so the split is visible but not given away
    strength = rng.uniform(0.08, 0.2) * np.clip(0.6 + _smooth_noise(rng, size, 8), 0, 1.5)
    image -= strength * ndimage.gaussian_filter(between.astype(np.float32), 0.7 * scale) * 2.0

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    slope = rng.uniform(-0.25, 0.25, 2)
    illumination = 1 + slope[0] * (yy - 0.5) + slope[1] * (xx - 0.5) + 0.08 * _smooth_noise(rng, size, 3)
    image = ndimage.gaussian_filter(image * illumination, 0.6 * scale)
    image += rng.uniform(*NOISE_SIGMA) * rng.standard_normal((size, size)).astype(np.float32)
    image = np.clip(image, 0, 1)
    return Sample(_to_uint8(image), inside.astype(np.uint8), instances)


def cells(n: int, size: int = REFERENCE_SIZE, seed: int = 0) -> list[Sample]:
    """Grayscale microscopy-like images of touching cells, with semantic and instance labels.

    Args:
        n: number of images.
        size: height and width in pixels; cell sizes scale with it (radius 15-26 px at 256).
        seed: same seed, same arrays; sample ``i`` depends only on ``(seed, i)``.

    Shape:
        ``image`` uint8 ``[size, size]``; ``semantic`` uint8 (0 background, 1 cell); ``instances`` int32.

    Example:
        >>> sample = cells(1, size=128)[0]
        >>> sample.image.shape, sample.image.dtype, int(sample.semantic.max())
        ((128, 128), dtype('uint8'), 1)
    """
    return [_cell_sample(np.random.default_rng([seed, i]), size) for i in range(n)]


def _shape_mask(kind: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of one shape of radius about ``r`` centred at 0 in coordinates ``yy``, ``xx``."""
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = yy * np.cos(theta) - xx * np.sin(theta)
    if kind == SHAPE_NAMES.index("circle"):
        return u**2 + v**2 <= r**2
    if kind == SHAPE_NAMES.index("rectangle"):
        aspect = rng.uniform(0.5, 1.0)
        return (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
    # triangle: three vertices at jittered angles around the centre; inside = left of all three edges
    angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    vx, vy = r * 1.2 * np.cos(angles), r * 1.2 * np.sin(angles)
    inside = np.ones(np.broadcast(u, v).shape, bool)
    for i in range(3):
        j = (i + 1) % 3
        inside &= (vx[j] - vx[i]) * (v - vy[i]) - (vy[j] - vy[i]) * (u - vx[i]) >= 0
    return inside


def _shape_sample(rng: np.random.Generator, size: int) -> Sample:
    scale = size / REFERENCE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    pattern = rng.integers(3)
    if pattern == 0:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 24) * scale
        texture = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif pattern == 1:  # checkerboard
        cell = rng.uniform(8, 20) * scale
        texture = ((xx // cell + yy // cell) % 2) * 2 - 1
    else:
        texture = _grain(rng, size, 2.0 * scale)
    image = base + 0.08 * texture[..., None] + 0.1 * np.stack([_smooth_noise(rng, size, 4) for _ in range(3)], -1)
    object_grain = _grain(rng, size, 1.5 * scale)
    semantic = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int32)
    for label in range(1, rng.integers(*SHAPES_PER_IMAGE, endpoint=True) + 1):
        kind = int(rng.integers(1, len(SHAPE_NAMES)))
        r = rng.uniform(*SHAPE_RADIUS) * scale
        cy, cx = rng.uniform(0, size, 2)
        reach = int(r * 1.3) + 1
        y0, y1, x0, x1 = (
            max(int(cy) - reach, 0),
            min(int(cy) + reach, size),
            max(int(cx) - reach, 0),
            min(int(cx) + reach, size),
        )
        if y0 >= y1 or x0 >= x1:
            continue
        mask = _shape_mask(kind, rng, yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx, r)
        color = rng.uniform(0, 1, 3).astype(np.float32)
        while np.linalg.norm(color - base) < MIN_COLOR_CONTRAST:  # keep objects visible against the background
            color = rng.uniform(0, 1, 3).astype(np.float32)
        shading = 0.06 * object_grain[y0:y1, x0:x1, None] + rng.uniform(-0.1, 0.1) * (yy[y0:y1, x0:x1, None] - cy) / r
        image[y0:y1, x0:x1][mask] = (color + shading)[mask]
        semantic[y0:y1, x0:x1][mask] = kind
        instances[y0:y1, x0:x1][mask] = label
    instances = _clean_instances(instances, 1)  # renumber; drop objects hidden entirely by later ones
    semantic[instances == 0] = 0
    image = ndimage.gaussian_filter(image, (0.5 * scale, 0.5 * scale, 0))
    image += rng.uniform(0.02, 0.04) * rng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0, 1)
    return Sample(_to_uint8(image), semantic, instances)


def shapes(n: int, size: int = REFERENCE_SIZE, seed: int = 0) -> list[Sample]:
    """RGB images of overlapping circles (1), rectangles (2) and triangles (3) on textured backgrounds (0).

    Args:
        n: number of images.
        size: height and width in pixels.
        seed: same seed, same arrays; sample ``i`` depends only on ``(seed, i)``.

    Shape:
        ``image`` uint8 ``[size, size, 3]``; ``semantic`` uint8 class ids; ``instances`` int32 (visible parts).

    Example:
        >>> sample = shapes(1, size=64)[0]
        >>> sample.image.shape, set(sample.semantic.ravel().tolist()) <= {0, 1, 2, 3}
        ((64, 64, 3), True)
    """
    return [_shape_sample(np.random.default_rng([seed, i]), size) for i in range(n)]


GENERATORS = {"cells": (cells, CELL_CLASSES), "shapes": (shapes, SHAPE_CLASSES)}


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_synthetic(
    root: str | os.PathLike,
    kind: Literal["cells", "shapes"] = "cells",
    n_train: int = 64,
    n_val: int = 16,
    size: int = REFERENCE_SIZE,
    seed: int = 0,
    n_test: int = 0,
) -> Path:
    """Write a synthetic data set in the folder layout :class:`~pixelwise.data.SegmentationFolder` reads.

    Writes ``root/{train,val}/images/NNNN.png`` (8-bit gray for cells, RGB for shapes),
    ``root/{train,val}/masks/NNNN.png`` (palette PNGs coloured with the class palette),
    ``root/{train,val}/instances/NNNN.png`` (16-bit instance ids; cells only) and
    ``root/classes.yaml``. Every file is written atomically (temporary name, then rename).
    Train and val samples never repeat: val continues the sample sequence of the seed, and
    ``n_test`` unlabelled images (``root/test/images``, for prediction demos) continue after val.

    Returns:
        ``root`` as a Path.

    Raises:
        ConfigError: unknown ``kind``.

    Example:
        >>> root = write_synthetic("/tmp/cells", "cells", n_train=8, n_val=2, size=128)  # doctest: +SKIP
    """
    if kind not in GENERATORS:
        raise unknown_name("synthetic data kind", str(kind), GENERATORS)
    generate, classes = GENERATORS[kind]
    root = Path(root)
    samples = generate(n_train + n_val + n_test, size=size, seed=seed)
    palette = classes.palette()
    for split, chunk in (("train", samples[:n_train]), ("val", samples[n_train : n_train + n_val])):
        for i, sample in enumerate(chunk):
            name = f"{i:04d}.png"
            _save_png(Image.fromarray(sample.image), root / split / "images" / name)
            mask = Image.fromarray(sample.semantic)
            mask.putpalette(palette)  # turns the "L" image into a palette ("P") image
            _save_png(mask, root / split / "masks" / name)
            if kind == "cells":
                _save_png(Image.fromarray(sample.instances.astype(np.uint16)), root / split / "instances" / name)
    for i, sample in enumerate(samples[n_train + n_val :]):
        _save_png(Image.fromarray(sample.image), root / "test" / "images" / f"{i:04d}.png")
    classes.save(root / "classes.yaml")
    return root
