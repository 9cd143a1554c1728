"""The data fingerprint: the facts about a data set that a training plan is derived from.

``compute_fingerprint`` reads a (deterministic, evenly spaced) sample of one split through
:class:`~pixelwise.data.SegmentationFolder` and :func:`~pixelwise.data.check_dataset`, and measures::

    images ─ sizes, channels, bit depth, intensity (mean, std, 0.5 / 99.5 percentiles per channel)
    masks  ─ class pixel shares, per-image presence, ignored share, mask offset (from check_dataset)
           ─ objects per class: 8-connected components → count per image, area, width (area / skeleton
             length: the stroke width of thin structures), extent (largest bbox side / image side)
           ─ orientation: class distributions of the top vs bottom half, left vs right half, and of
             rows vs columns (on a square grid), as total-variation distances in [0, 1]

The fingerprint holds measurements only; the planning rules decide what they mean. It is stored as
``fingerprint.json`` (:func:`write_fingerprint` / :func:`read_fingerprint`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize
from tqdm import tqdm

from pixelwise.data.check import MAX_READERS, PROGRESS_MIN_PAIRS, DataReport, check_dataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.folder import SegmentationFolder
from pixelwise.data.geotiff import read_image_with_nodata
from pixelwise.data.layouts import get_layout, open_layout, resolve_split_or_none
from pixelwise.data.readers import scale_image
from pixelwise.errors import DataError
from pixelwise.io import atomic_path

FINGERPRINT_VERSION = 1
"""Written into every fingerprint; raised when a field changes meaning."""
DEFAULT_MAX_IMAGES = 200
"""Larger splits are fingerprinted on this many evenly spaced images (class shares and orientation
settle long before; reading every image of a large set would cost minutes)."""
DEFAULT_MAX_OBJECT_IMAGES = 50
"""Connected components and skeletons (the slow part: ~10 ms per class and image) are measured on at
most this many of the sampled images, evenly spaced."""
PIXELS_PER_IMAGE = 4096
"""Pixels taken from each image (a fixed stride) for the intensity percentiles."""
PERCENTILES = (0.5, 99.5)
"""Intensity percentiles stored per channel: the robust range of the images."""
ORIENTATION_GRID = 8
"""Rows and columns of the square grid on which ``transpose_asymmetry`` compares class distributions."""
PERMUTATIONS = 256
"""Random patterns of turned images from which the chance level of each asymmetry is estimated (small
samples enumerate every pattern instead)."""
PERMUTATION_SEED = 0
"""Seed of those patterns: the fingerprint of a data set is always the same."""
TIE_TOLERANCE = 1e-12
"""Chance asymmetries this close to the measured one count as reaching it (for ``*_p``)."""
SIGNIFICANT_DIGITS = 4
"""``Fingerprint.to_dict`` rounds floats to this many significant digits."""
FLOAT_BIT_DEPTH = 32
"""``bit_depth`` of floating-point images."""
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""Structuring element of 8-connectivity: diagonal neighbours belong to the same component."""


@dataclass
class Fingerprint:
    """What a data set looks like, as far as choosing a model and a training recipe goes.

    Attributes:
        images: pairs in the split (after ``files``).
        sampled: pairs that were read (``images``, or ``DEFAULT_MAX_IMAGES`` evenly spaced ones).
        sizes: ``{"height": {"min", "median", "max"}, "width": {...}}`` in pixels, over the sample.
        channels: channel count of the images.
        bit_depth: bits per stored sample: 8, 16 (also for other integer types up to 16 bits), 32 for
            float (the most common over the sample).
        intensity: ``{"mean", "std", "p0.5", "p99.5"}``, each a list with one value per channel, of the
            images as pixelwise scales them to [0, 1] (float images: as stored).
        num_classes, class_names: the classes.
        class_pixels: ``[K]`` share of each class among the labelled (non-ignored) pixels.
        class_presence: ``[K]`` share of the sampled images holding at least one pixel of the class.
        ignored_share: share of all pixels equal to ``ignore_index`` (or GeoTIFF nodata).
        objects: one dict per class, over the 8-connected components of the class in up to
            ``DEFAULT_MAX_OBJECT_IMAGES`` images: ``count_per_image`` (median over the images holding
            the class), ``median_area`` (pixels), ``median_width`` (median over components of area /
            skeleton length, ``skimage.morphology.skeletonize``: about the stroke width in pixels, a
            few for membranes or vessels (ISBI 2012's labelled membranes: about 6), large for blobs),
            ``weighted_width`` (the same median weighted by area: the width of the component a
            typical pixel of the class lies in), ``median_extent`` (median of max(bbox height / image
            height, bbox width / image width): 1 for a component spanning the image),
            ``weighted_extent`` (the same weighted by area), ``components`` (how
            many were measured). Values are None for a class without pixels in those images. The plain
            medians count every fragment (a class split into many specks has a median area of a few
            pixels); the area-weighted ones describe where most of the class's pixels lie.
        mask_offset: ``DataReport.suggested_mask_offset``: ``[dy, dx]`` in half pixels when the masks
            sit clearly off the image edges, else None.
        measured_offset: ``DataReport.mask_offset``, the measured ``[dy, dx]`` (None where unmeasured).
        orientation: ``{"classes": [{"top", "bottom", "left", "right"}] * K, "vertical_asymmetry",
            "horizontal_asymmetry", "transpose_asymmetry"}`` and each score's ``*_chance`` and ``*_p``.
            ``top[c]`` is the share of class ``c`` among the labelled pixels of the top halves of all
            images (pooled; the middle row of an odd height is left out), likewise ``bottom``,
            ``left``, ``right``. With ``T``, ``B`` the class distributions of the two halves,
            ``vertical_asymmetry = ½ Σ_c |T_c − B_c|``, the total-variation distance: 0 when a
            vertical flip leaves the class statistics unchanged, 1 when no class occurs in both
            halves; ``horizontal_asymmetry`` likewise for left/right.
            ``transpose_asymmetry = ½ Σ_{c,i} |R_{c,i} − C_{c,i}|``, where ``R_{c,i}`` is the share of
            all labelled pixels that are of class ``c`` and lie in row band ``i`` of
            ``ORIENTATION_GRID`` equal bands (by relative position, i.e. on the image resized to a
            square grid), and ``C_{c,i}`` the same for column band ``i``: 0 when transposing (and so,
            with flip symmetry, a 90° turn) leaves the statistics unchanged.
            Small samples look asymmetric by chance, so each score comes with ``*_chance``: its mean
            when each image is first flipped (transposed) or not at random, which leaves the statistics
            of a symmetric data set unchanged, and ``*_p``: the share of those random patterns at least as
            asymmetric as the data (a permutation test; all ``2**n`` patterns for up to 8 images, else
            ``PERMUTATIONS`` seeded ones). A real up/down shows as a score well above its chance level
            with a small ``p``. The test takes the images as independent: frames of one video or
            serial sections of one volume share their structures, so there a small ``p`` comes with
            small scores too (ISBI: horizontal 0.029, chance 0.007); judge by the score first.
        split, root, layout: where the data came from.
        version: ``FINGERPRINT_VERSION``.
    """

    images: int
    sampled: int
    sizes: dict
    channels: int
    bit_depth: int
    intensity: dict
    num_classes: int
    class_names: list[str]
    class_pixels: list[float]
    class_presence: list[float]
    ignored_share: float
    objects: list[dict]
    mask_offset: list[float] | None
    measured_offset: list[float | None]
    orientation: dict
    split: str
    root: str
    layout: str = ""
    version: int = FINGERPRINT_VERSION

    def to_dict(self) -> dict:
        """The fingerprint as plain JSON types, floats rounded to ``SIGNIFICANT_DIGITS`` significant digits."""
        return _rounded(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        """The fingerprint from :meth:`to_dict`'s output (keys this version does not know are ignored).

        Raises:
            DataError: a field is missing.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise DataError(f"the fingerprint lacks {', '.join(missing)}; compute it again (pixelwise check-data).")
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """A few human-readable lines: images, intensities, classes with their objects, orientation, offset."""
        h, w = self.sizes["height"], self.sizes["width"]
        lines = [
            f"fingerprint of {self.root} ({self.split or 'unsplit'}): {self.images} images"
            + (f" ({self.sampled} sampled)" if self.sampled < self.images else "")
            + f", {w['median']:g}x{h['median']:g} (WxH median; {w['min']}-{w['max']} x {h['min']}-{h['max']}), "
            f"{self.channels} channel(s), {self.bit_depth}-bit",
            "intensity per channel: mean "
            + _values(self.intensity["mean"])
            + ", std "
            + _values(self.intensity["std"])
            + ", p0.5-p99.5 "
            + ", ".join(
                f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(self.intensity["p0.5"], self.intensity["p99.5"], strict=True)
            ),
            f"{self.num_classes} classes, {100 * self.ignored_share:.1f}% of pixels ignored:",
        ]
        for k, name in enumerate(self.class_names):
            obj = self.objects[k]
            shape = (
                f"{_number(obj['count_per_image'])} objects/image, area {_number(obj['median_area'])} px, "
                f"width {_number(obj['median_width'])} px (area-weighted {_number(obj['weighted_width'])}), "
                f"extent {_number(obj['median_extent'])} (area-weighted {_number(obj['weighted_extent'])})"
                if obj["components"]
                else "no objects measured"
            )
            lines.append(
                f"  {k:>2} {name[:16]:<16} {100 * self.class_pixels[k]:5.1f}% of pixels, "
                f"in {100 * self.class_presence[k]:3.0f}% of images; {shape}"
            )
        o = self.orientation
        lines.append(
            f"orientation (0: symmetric, 1: no overlap): vertical {o['vertical_asymmetry']:.3f}, "
            f"horizontal {o['horizontal_asymmetry']:.3f}, transpose {o['transpose_asymmetry']:.3f}; "
            f"by chance {o['vertical_chance']:.3f}, {o['horizontal_chance']:.3f}, {o['transpose_chance']:.3f} "
            f"(p {o['vertical_p']:.3g}, {o['horizontal_p']:.3g}, {o['transpose_p']:.3g})"
        )
        offset = "none" if self.mask_offset is None else f"{self.mask_offset} (dy, dx px)"
        measured = ", ".join("n/a" if v is None else f"{v:+.2f}" for v in self.measured_offset)
        lines.append(f"mask offset: {offset}; measured dy, dx = {measured} px")
        return "\n".join(lines)


def compute_fingerprint(
    root: str | os.PathLike,
    split: str | None = "train",
    *,
    files: str | Sequence[str] | None = None,
    format: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    classes: ClassInfo | None = None,
    mask_values: Mapping[int, int] | None = None,
    ignore_index: int | None = None,
    max_images: int | None = DEFAULT_MAX_IMAGES,
    progress: bool | None = None,
) -> Fingerprint:
    """Measure the fingerprint of one split of a data set (any layout).

    The sample (every pair, or ``max_images`` evenly spaced ones) is checked with
    :func:`~pixelwise.data.check_dataset` (class pixels, channel mean and std, mask values, the mask
    offset), then read once more through :class:`~pixelwise.data.SegmentationFolder` for what the
    check does not measure (sizes, bit depth, percentiles, presence, objects, orientation).

    Args:
        root, split, files, format, layout_options: the data set, as for
            :class:`~pixelwise.data.SegmentationFolder` (``split`` None: an unsplit data set; see
            :func:`default_split`).
        num_classes, classes, mask_values, ignore_index: as for :func:`~pixelwise.data.check_dataset`.
        max_images: read at most this many pairs (None: all).
        progress: progress bars on stderr; default: for samples of ``PROGRESS_MIN_PAIRS`` pairs or more.

    Returns:
        The :class:`Fingerprint`.

    Raises:
        DataError: the data set is unusable, or the check found problems (the message lists them).
        ConfigError: an unknown format or layout option; ``num_classes`` and ``classes`` disagree.

    Example:
        >>> fp = compute_fingerprint("data/camvid", "train")  # doctest: +SKIP
        >>> print(fp.summary()); fp.orientation["vertical_asymmetry"]  # doctest: +SKIP
    """
    scan = open_layout(root, split, format, files, layout_options)
    total = len(scan.records)
    names = _sample_names([r.name for r in scan.records], max_images)
    sample_files = files if len(names) == total else [glob.escape(name) for name in names]
    report = check_dataset(
        root, split, num_classes, classes, ignore_index, progress, sample_files, mask_values, format, layout_options
    )
    report.raise_if_bad()
    folder = SegmentationFolder(
        root,
        split,
        classes=report.classes,
        num_classes=None if report.classes is not None else report.num_classes,
        ignore_index=report.ignore_index,
        mask_values=report.mask_values,
        files=sample_files,
        format=format,
        layout_options=layout_options,
    )
    stats = _measure_all(folder, report.num_classes, progress)
    return _assemble(report, stats, total, split, scan.format)


def default_split(
    root: str | os.PathLike, format: str | None = None, layout_options: Mapping[str, Any] | None = None
) -> str | None:
    """The split to fingerprint when none is named: the training split (else the first) of a split data set;
    None for an unsplit one."""
    available = get_layout(root, format).splits(Path(root).expanduser(), **dict(layout_options or {}))
    return (resolve_split_or_none("train", available) or available[0]) if available else None


def write_fingerprint(fingerprint: Fingerprint, path: str | os.PathLike) -> None:
    """Write ``fingerprint`` as JSON to ``path`` atomically (readers never see half a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(fingerprint.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_fingerprint(path: str | os.PathLike) -> Fingerprint:
    """Read a fingerprint written by :func:`write_fingerprint`.

    Raises:
        DataError: the file is missing, is not JSON, or lacks fields.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the fingerprint {str(path)!r}: {error}; compute it again.") from error
    if not isinstance(data, dict):
        raise DataError(f"{str(path)!r} holds no fingerprint (a JSON object); compute it again.")
    return Fingerprint.from_dict(data)


# --- measuring --------------------------------------------------------------------------------------------------


@dataclass
class _PairStats:
    """What one pair contributes; summed or collected over the sample by :func:`_assemble`."""

    height: int
    width: int
    bit_depth: int
    pixels: np.ndarray  # [n, C] a strided sample of the scaled image's pixels, for percentiles
    present: np.ndarray  # [K] bool
    halves: np.ndarray  # [4, K] labelled pixels per class in the top, bottom, left, right half
    rows: np.ndarray  # [K, G] labelled pixels per class and row band
    cols: np.ndarray  # [K, G] labelled pixels per class and column band
    objects: list[dict] | None = None  # per class: counts, areas, widths, extents (None: not measured)


def _sample_names(names: list[str], max_images: int | None) -> list[str]:
    """``max_images`` evenly spaced names (first and last included), or all of them."""
    if max_images is None or len(names) <= max_images:
        return names
    picks = np.unique(np.linspace(0, len(names) - 1, max(max_images, 1)).round().astype(int))
    return [names[i] for i in picks]


def _measure_all(folder: SegmentationFolder, k: int, progress: bool | None) -> list[_PairStats]:
    """:func:`_measure_pair` for every record, objects on ``DEFAULT_MAX_OBJECT_IMAGES`` evenly spaced ones."""
    n = len(folder)
    with_objects = set(np.linspace(0, n - 1, min(n, DEFAULT_MAX_OBJECT_IMAGES)).round().astype(int).tolist())
    show = progress if progress is not None else n >= PROGRESS_MIN_PAIRS

    def measure(index: int) -> _PairStats:
        return _measure_pair(folder, index, k, index in with_objects)

    # decoding, labelling and skeletonizing mostly release the GIL; results come back in order
    with ThreadPoolExecutor(max_workers=min(MAX_READERS, os.cpu_count() or 1)) as pool:
        mapped = pool.map(measure, range(n))
        return list(tqdm(mapped, total=n, desc="fingerprint", unit="pair", file=sys.stderr, disable=not show))


def _measure_pair(folder: SegmentationFolder, index: int, k: int, objects: bool) -> _PairStats:
    """Sizes, bit depth, pixel sample, presence, orientation counts (and objects) of one pair."""
    stored, nodata = read_image_with_nodata(folder.records[index].image)
    mask = folder.read_mask(index)
    if nodata is not None:
        mask[nodata] = folder.ignore_index
    image = scale_image(stored)
    c, h, w = image.shape
    flat = image.reshape(c, -1)
    step = max(1, flat.shape[1] // PIXELS_PER_IMAGE)
    labelled = (mask >= 0) & (mask < k)  # ignore_index and nodata take no part
    ids = np.where(labelled, mask, k)  # k: a bin for unlabelled pixels, dropped below
    halves = np.stack(
        [
            _counts(ids[: h // 2], k),
            _counts(ids[h - h // 2 :], k),
            _counts(ids[:, : w // 2], k),
            _counts(ids[:, w - w // 2 :], k),
        ]
    )
    row_band = (np.arange(h) * ORIENTATION_GRID // h)[:, None]
    col_band = (np.arange(w) * ORIENTATION_GRID // w)[None, :]
    grid = (k + 1, ORIENTATION_GRID)
    rows = np.bincount((ids * ORIENTATION_GRID + row_band).ravel(), minlength=grid[0] * grid[1]).reshape(grid)
    cols = np.bincount((ids * ORIENTATION_GRID + col_band).ravel(), minlength=grid[0] * grid[1]).reshape(grid)
    return _PairStats(
        height=h,
        width=w,
        bit_depth=_bit_depth(stored.dtype),
        pixels=flat[:, ::step].T,
        present=_counts(ids, k) > 0,
        halves=halves,
        rows=rows[:k],
        cols=cols[:k],
        objects=[_components(ids == cls) for cls in range(k)] if objects else None,
    )


def _counts(ids: np.ndarray, k: int) -> np.ndarray:
    """``[K]`` pixels of each class id in ``ids`` (the unlabelled bin ``k`` dropped)."""
    return np.bincount(ids.ravel(), minlength=k + 1)[:k]


def _bit_depth(dtype: np.dtype) -> int:
    """8 or 16 for integer images (bits of the stored type, at most 16), 32 for float."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return FLOAT_BIT_DEPTH
    if dtype.kind == "b":
        return 1
    return min(8 * dtype.itemsize, 16)  # 16-bit data may come in an int32 container (Pillow's mode "I")


def _components(binary: np.ndarray) -> dict:
    """The 8-connected components of ``binary``: their count, areas, widths (area / skeleton length), extents."""
    labels, n = ndimage.label(binary, structure=EIGHT_CONNECTED)
    if n == 0:
        return {"count": 0, "areas": np.zeros(0), "widths": np.zeros(0), "extents": np.zeros(0)}
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    # a component's skeleton stays inside it (skeletonize keeps 8-connected topology), so one
    # skeleton of the whole mask, counted per label, gives every component's skeleton length
    lengths = np.bincount(labels[skeletonize(binary)], minlength=n + 1)[1:]
    h, w = binary.shape
    extents = np.array([max((r.stop - r.start) / h, (c.stop - c.start) / w) for r, c in ndimage.find_objects(labels)])
    return {"count": n, "areas": areas, "widths": areas / np.maximum(lengths, 1), "extents": extents}


# --- assembling ---------------------------------------------------------------------------------------------------


def _assemble(report: DataReport, stats: list[_PairStats], total: int, split: str | None, layout: str) -> Fingerprint:
    """The fingerprint from the check's report and the per-pair measurements."""
    k = report.num_classes
    heights, widths = [s.height for s in stats], [s.width for s in stats]
    pixels = np.concatenate([s.pixels for s in stats if s.pixels.shape[1] == report.in_channels])
    labelled = int(report.class_pixels.sum())
    return Fingerprint(
        images=total,
        sampled=len(stats),
        sizes={"height": _min_median_max(heights), "width": _min_median_max(widths)},
        channels=report.in_channels,
        bit_depth=Counter(s.bit_depth for s in stats).most_common(1)[0][0],
        intensity={
            "mean": report.mean.tolist(),
            "std": report.std.tolist(),
            **{f"p{q:g}": np.percentile(pixels, q, axis=0).tolist() for q in PERCENTILES},
        },
        num_classes=k,
        class_names=list(report.class_names),
        class_pixels=report.frequencies.tolist(),
        class_presence=(np.sum([s.present for s in stats], axis=0) / len(stats)).tolist(),
        ignored_share=report.void_pixels / max(labelled + report.void_pixels, 1),
        objects=[_class_objects([s.objects[c] for s in stats if s.objects is not None]) for c in range(k)],
        mask_offset=report.suggested_mask_offset,
        measured_offset=[float(v) if np.isfinite(v) else None for v in report.mask_offset],
        orientation=_orientation(stats, k),
        split=split or "",
        root=str(report.root),
        layout=layout,
    )


def _min_median_max(values: list[int]) -> dict:
    return {"min": int(np.min(values)), "median": float(np.median(values)), "max": int(np.max(values))}


def _class_objects(per_image: list[dict]) -> dict:
    """One class's object statistics from its components in each measured image."""
    counts = [obj["count"] for obj in per_image if obj["count"]]
    if not counts:
        return dict.fromkeys(_OBJECT_KEYS) | {"components": 0}
    areas = np.concatenate([obj["areas"] for obj in per_image])
    widths = np.concatenate([obj["widths"] for obj in per_image])
    extents = np.concatenate([obj["extents"] for obj in per_image])
    return {
        "count_per_image": float(np.median(counts)),
        "median_area": float(np.median(areas)),
        "median_width": float(np.median(widths)),
        "weighted_width": _weighted_median(widths, areas),
        "median_extent": float(np.median(extents)),
        "weighted_extent": _weighted_median(extents, areas),
        "components": int(areas.size),
    }


_OBJECT_KEYS = ("count_per_image", "median_area", "median_width", "weighted_width", "median_extent", "weighted_extent")


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The smallest value at which the cumulative weight (values sorted) reaches half the total."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _orientation(stats: list[_PairStats], k: int) -> dict:
    """Per-class half shares, the three total-variation asymmetries and their chance levels (see
    ``Fingerprint.orientation``)."""
    halves = np.stack([s.halves for s in stats]).astype(np.float64)  # [n, 4, K]: top, bottom, left, right
    top, bottom, left, right = (_distribution(half) for half in halves.sum(0))
    out: dict[str, Any] = {
        "classes": [
            {"top": float(top[c]), "bottom": float(bottom[c]), "left": float(left[c]), "right": float(right[c])}
            for c in range(k)
        ]
    }
    rows = np.stack([s.rows.ravel() for s in stats]).astype(np.float64)  # [n, K * G]
    cols = np.stack([s.cols.ravel() for s in stats]).astype(np.float64)
    flips, exact = _flip_patterns(len(stats))
    for name, a, b in (
        ("vertical", halves[:, 0], halves[:, 1]),
        ("horizontal", halves[:, 2], halves[:, 3]),
        ("transpose", rows, cols),
    ):
        observed = _total_variation(_distribution(a.sum(0)), _distribution(b.sum(0)))
        # each image turned with probability 1/2: how asymmetric the pooled statistics look by chance alone
        turned_a, turned_b = (1 - flips) @ a + flips @ b, flips @ a + (1 - flips) @ b
        chance = np.abs(_distribution_rows(turned_a) - _distribution_rows(turned_b)).sum(1) / 2
        at_least = int(np.sum(chance >= observed - TIE_TOLERANCE))
        out[f"{name}_asymmetry"] = observed
        out[f"{name}_chance"] = float(chance.mean())
        out[f"{name}_p"] = at_least / len(flips) if exact else (1 + at_least) / (1 + len(flips))
    return out


def _flip_patterns(n: int) -> tuple[np.ndarray, bool]:
    """``[P, n]`` 0/1 patterns of which images to turn: all ``2**n`` of them (True) when there are at most
    ``PERMUTATIONS``, else ``PERMUTATIONS`` random ones (False)."""
    if 2**n <= PERMUTATIONS:
        return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64), True
    return np.random.default_rng(PERMUTATION_SEED).integers(0, 2, (PERMUTATIONS, n)).astype(np.float64), False


def _distribution_rows(counts: np.ndarray) -> np.ndarray:
    """Each row of ``counts`` divided by its sum (zeros for an empty row)."""
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _distribution(counts: np.ndarray) -> np.ndarray:
    """``counts`` divided by their sum (zeros when there are none)."""
    total = counts.sum()
    return counts / total if total else np.zeros(counts.shape)


def _total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """½ Σ |p − q|: the total-variation distance of two distributions, in [0, 1]."""
    return float(np.abs(p - q).sum() / 2)


def _rounded(value: Any) -> Any:
    """``value`` with numpy scalars made plain and floats rounded to ``SIGNIFICANT_DIGITS`` significant digits."""
    if isinstance(value, dict):
        return {str(key): _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if np.isfinite(value) else None
    return value


def _values(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
