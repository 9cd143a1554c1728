"""Check a data folder before training: every pair read once, every problem named, class statistics.

``check_dataset`` is what ``pixelwise check-data`` prints and what training runs first, so that a
bad file stops the run with a list of what to fix instead of an exception in the middle of an epoch.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pixelwise.data.classes import ClassInfo
from pixelwise.data.geotiff import read_image_with_nodata
from pixelwise.data.layouts import LayoutScan, Record, get_layout, open_layout
from pixelwise.data.readers import MAX_LISTED, MIN_INFERRED_CLASSES, binary_mask_values, image_scale, remap_values
from pixelwise.errors import ConfigError, DataError
from pixelwise.modes import IGNORE_INDEX

PROGRESS_MIN_PAIRS = 50
"""Folders with at least this many pairs show a progress bar (on stderr)."""
MAX_READERS = 4
"""Threads that read files in parallel."""
MAX_REPORTED_PROBLEMS = 50
"""``DataReport.format()`` lists at most this many problems by default, then counts the rest."""
MIN_OFFSET_PAIRS = 5
"""``DataReport.suggested_mask_offset`` needs the offset measured on at least this many pairs."""
MIN_SUGGESTED_OFFSET = 0.4
"""``DataReport.suggested_mask_offset`` ignores an axis whose offset is smaller than this, in pixels:
smaller ones may come from the scenes themselves (shading beside object edges moves the strongest
intensity step)."""


@dataclass
class DataReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: the checked folder (``root/split`` when a split was given).
        problems: ``(file, message)`` per problem found; empty when the folder is fine.
        num_pairs: image/mask pairs found (whether readable or not).
        in_channels: channel count of most images (0 if none could be read).
        num_classes: ``K`` given, from the class file, or inferred (largest id + 1).
        class_names: one name per class.
        class_pixels: ``[K]`` int64 pixel count per class over all readable pairs.
        void_pixels: pixels equal to ``ignore_index``.
        frequencies: ``[K]`` share of each class among labelled (non-void) pixels.
        median_frequency_weights: ``[K]`` SegNet's median frequency balancing:
            ``freq(c) = pixels of c / pixels of the images where c is present`` and
            ``weight(c) = median(freq) / freq(c)``; classes never present get weight 0.
        mean, std: ``[C]`` per-channel mean and standard deviation of the images (scaled to [0, 1]),
            for normalisation.
        mask_offset: ``[dy, dx]`` pixels, where the masks' class edges sit relative to the images'
            intensity edges (median over the pairs, see :func:`edge_offset`; NaN where unmeasured).
            Labels drawn half a pixel off show here; ``TrainConfig.mask_offset`` compensates.
        offset_pairs: pairs in which the offset could be measured.
        mask_values: stored mask values read as other class ids (``{255: 1}`` for 0/255 binary masks).
        layout: the layout found (or named), e.g. ``"folder"``, ``"coco"``.
        pairing: how the layout paired images and masks, in words.
        splits: pairs per split checked (``{"": n}`` for an unsplit data set).
        mask_values_from: where ``mask_values`` came from: ``"given"``, ``"layout"`` or ``"binary"``
            (found from 0/v binary masks).
        classes: the class list the masks were read with (given, or the layout's); None: inferred.
        notes: what the layout skipped on purpose (e.g. unlabelled tasks of an export); not problems.
    """

    root: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    num_pairs: int = 0
    in_channels: int = 0
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    void_pixels: int = 0
    frequencies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    median_frequency_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ignore_index: int = IGNORE_INDEX
    mask_offset: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
    offset_pairs: int = 0
    mask_values: dict[int, int] = field(default_factory=dict)
    layout: str = ""
    pairing: str = ""
    splits: dict[str, int] = field(default_factory=dict)
    mask_values_from: str = ""
    classes: ClassInfo | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def suggested_mask_offset(self) -> list[float] | None:
        """``mask_offset`` in half pixels for a clear offset (at least ``MIN_SUGGESTED_OFFSET`` px in an
        axis, measured on at least ``MIN_OFFSET_PAIRS`` pairs), else None."""
        if self.offset_pairs < MIN_OFFSET_PAIRS:
            return None
        suggested = [round(2 * v) / 2 if abs(v) >= MIN_SUGGESTED_OFFSET else 0.0 for v in self.mask_offset]
        return suggested if any(suggested) else None

    def _relative(self, file: str) -> str:
        try:
            return str(Path(file).relative_to(self.root))
        except ValueError:
            return file

    def format(self, max_problems: int | None = MAX_REPORTED_PROBLEMS) -> str:
        """The human-readable report: problems per file, then class statistics and channel statistics."""
        lines = [
            f"data set {self.root} ({self.layout} layout): {self.num_pairs} pairs, {self.in_channels} channels, "
            f"{self.num_classes} classes (ignore_index {self.ignore_index})",
            f"paired as {self.pairing}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        if len(self.splits) > 1 or "" not in self.splits:
            lines.append("splits: " + ", ".join(f"{name} {n} pairs" for name, n in self.splits.items()))
        if self.mask_values and self.mask_values_from == "layout":
            lines.append(f"the {self.layout} layout maps {len(self.mask_values)} stored mask values to class ids")
        for stored, class_id in self.mask_values.items() if self.mask_values_from == "binary" else ():
            lines.append(
                f"binary masks stored as 0/{stored}: value {stored} is read as class {class_id} (the foreground); "
                f"if {stored} marks pixels to ignore instead, pass --ignore-index {stored}"
            )
        if self.problems:
            lines.append(f"{len(self.problems)} problems:")
            shown = self.problems if max_problems is None else self.problems[:max_problems]
            lines += [f"  {self._relative(file)}: {message}" for file, message in shown]
            if len(shown) < len(self.problems):
                lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        total = int(self.class_pixels.sum()) + self.void_pixels
        if total:
            lines.append("")
            lines.append(f"{'id':>3}  {'class':<16} {'pixels':>12} {'frequency':>9}  {'median-freq weight':>18}")
            for k in range(self.num_classes):
                lines.append(
                    f"{k:>3}  {self.class_names[k][:16]:<16} {int(self.class_pixels[k]):>12} "
                    f"{self.frequencies[k]:>9.4f}  {self.median_frequency_weights[k]:>18.4f}"
                )
            lines.append(f"{'':>3}  {'(void)':<16} {self.void_pixels:>12} {self.void_pixels / total:>9.4f}  (of all)")
            absent = [self.class_names[k] for k in range(self.num_classes) if self.class_pixels[k] == 0]
            if absent:
                lines.append(f"classes with no pixels: {', '.join(absent)} (weight 0)")
        if self.mean.size:
            fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
            lines.append(f"channel mean {fmt(self.mean)}, std {fmt(self.std)}")
        if self.offset_pairs:
            dy, dx = (f"{v:+.2f}" if np.isfinite(v) else "n/a" for v in self.mask_offset)
            lines.append(
                f"mask edges vs image edges: dy {dy}, dx {dx} px (median of {self.offset_pairs} pairs; "
                "negative: masks above / left of the image)"
            )
            if self.suggested_mask_offset:
                lines.append(
                    f"  if the labels were drawn that far off the structures, train with mask_offset: "
                    f"{self.suggested_mask_offset} (the images are shifted onto them)"
                )
        lines.append("")
        if self.ok:
            lines.append("no problems found.")
        else:
            lines.append(
                f"{len(self.problems)} problems found: fix or remove the files named above, "
                "then run `pixelwise check-data` again."
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as plain JSON types (what ``pixelwise check-data --json`` prints)."""
        finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
        return {
            "root": str(self.root),
            "layout": self.layout,
            "pairing": self.pairing,
            "splits": dict(self.splits),
            "num_pairs": self.num_pairs,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "classes": [
                {
                    "id": k,
                    "name": self.class_names[k],
                    "pixels": int(self.class_pixels[k]),
                    "frequency": float(self.frequencies[k]),
                    "median_frequency_weight": float(self.median_frequency_weights[k]),
                }
                for k in range(self.num_classes)
            ],
            "ignored_pixels": int(self.void_pixels),
            "mask_values": {str(k): v for k, v in self.mask_values.items()},
            "mask_values_from": self.mask_values_from,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "mask_offset": [finite(v) for v in self.mask_offset],
            "offset_pairs": self.offset_pairs,
            "problems": [{"file": file, "message": message} for file, message in self.problems],
            "notes": list(self.notes),
            "ok": self.ok,
        }

    def raise_if_bad(self) -> None:
        """Raise a DataError holding the formatted report if any problem was found."""
        if not self.ok:
            raise DataError(self.format())


@dataclass
class _PairResult:
    mask_path: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    moments: np.ndarray | None = None  # [3, C]: pixels, sum, sum of squares per channel (scaled to [0, 1])
    values: np.ndarray | None = None  # the values stored in the mask (before mask_values), sorted
    counts: np.ndarray | None = None  # pixels of each of those values
    pixels: int = 0
    offset: np.ndarray | None = None  # [dy, dx], see edge_offset
    nodata: int = 0  # GeoTIFF nodata pixels (counted as void, not among values)


def edge_offset(image: np.ndarray, mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``[dy, dx]``: how far the mask's class edges sit from the image's intensity edges, in pixels.

    Per axis, the mean absolute intensity step of the (channel-averaged) image is taken at the
    mask's edges moved by -1, 0 and +1 pixel; a parabola through the three gives the sub-pixel
    position of the best match. Negative: the mask's edges are above (left of) the image's. NaN for
    an axis without a clear peak within ±1 px: no edges, edges that do not follow the image, or
    objects whose strongest step lies inside them on both sides (a dark rim, say).

    Args:
        image: ``[C, H, W]`` or ``[H, W]`` array.
        mask: ``[H, W]`` class ids; ``ignore_index`` pixels take no part.
    """
    gray = image.astype(np.float64).reshape(-1, *mask.shape).mean(0)
    offset = np.full(2, np.nan)
    for axis in (0, 1):
        values, labels = np.moveaxis(gray, axis, 0), np.moveaxis(mask, axis, 0)
        steps = np.abs(np.diff(values, axis=0))  # steps[y] lies between rows y and y + 1
        edges = (labels[1:] != labels[:-1]) & (labels[1:] != ignore_index) & (labels[:-1] != ignore_index)
        rows, cols = np.nonzero(edges[1:-1])  # keep a row on each side for the moves
        if rows.size == 0:
            continue
        before, here, after = (steps[rows + 1 + move, cols].mean() for move in (-1, 0, 1))
        curvature = before - 2 * here + after
        # the image's edge lies at move m = (before - after) / (2 · curvature); the mask's at -m
        move = 0.5 * (before - after) / curvature if curvature < 0 else np.inf
        if abs(move) <= 1:
            offset[axis] = -move
    return offset


def _channel_moments(image: np.ndarray) -> np.ndarray:
    """``[3, C]`` pixel count, sum and sum of squares per channel, in [0, 1] units."""
    c = image.shape[0]
    # one contiguous float64 row per channel: row sums are far faster than column sums of an [N, C] array
    rows = np.ascontiguousarray(image.reshape(c, -1), dtype=np.float64)
    scale = image_scale(image.dtype) or 1.0
    out = np.empty((3, c))
    out[0] = rows.shape[1]
    out[1] = rows.sum(1) / scale
    out[2] = np.einsum("ij,ij->i", rows, rows) / scale**2
    return out


def _inspect_pair(
    record: Record,
    classes: ClassInfo | None,
    ignore_index: int,
    values: dict[int, int] | None,
    explicit_ignore: int | None,
) -> _PairResult:
    mask_path = record.mask.path
    result = _PairResult(str(mask_path))
    image = mask = nodata = None
    try:
        image, nodata = read_image_with_nodata(record.image)
        result.moments = _channel_moments(image)
    except DataError as error:
        result.problems.append((str(record.image), f"unreadable image: {error}"))
    try:
        mask = record.mask.read(classes, ignore_index)
    except DataError as error:
        result.problems.append((str(mask_path), f"unreadable mask: {error}"))
    if image is None or mask is None:
        return result
    if image.shape[1:] != mask.shape:
        result.problems.append(
            (
                str(mask_path),
                f"size mismatch: image {record.image.name} is {image.shape[2]}x{image.shape[1]} (WxH), "
                f"mask is {mask.shape[1]}x{mask.shape[0]}",
            )
        )
        return result
    labelled = mask if nodata is None else mask[~nodata]
    result.values, result.counts = np.unique(labelled, return_counts=True)
    result.pixels = mask.size
    result.nodata = 0 if nodata is None else int(nodata.sum())
    if values is None:  # not known before every mask is read: this mask's own binary map moves its edges alike
        values = binary_mask_values(result.values, explicit_ignore, classes)
    mask = remap_values(mask, values)
    if nodata is not None:
        mask[nodata] = ignore_index
    result.offset = edge_offset(image, mask, ignore_index)
    return result


def median_frequency_weights(class_pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """SegNet's median frequency balancing (Eigen & Fergus 2015).

    Args:
        class_pixels: ``[K]`` pixels of each class.
        present_pixels: ``[K]`` total pixels of the images in which each class is present.

    Returns:
        ``[K]`` weights ``median(freq) / freq(c)`` with ``freq(c) = class_pixels / present_pixels``;
        the median is over the classes that occur; classes that never occur get 0.
    """
    class_pixels = np.asarray(class_pixels, dtype=np.float64)
    present_pixels = np.asarray(present_pixels, dtype=np.float64)
    present = (class_pixels > 0) & (present_pixels > 0)
    weights = np.zeros_like(class_pixels)
    if present.any():
        freq = class_pixels[present] / present_pixels[present]
        weights[present] = np.median(freq) / freq
    return weights


def check_dataset(
    root: str | os.PathLike,
    split: str | None = None,
    num_classes: int | None = None,
    classes: ClassInfo | None = None,
    ignore_index: int | None = None,
    progress: bool | None = None,
    files: str | Sequence[str] | None = None,
    mask_values: Mapping[int, int] | None = None,
    format: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
) -> DataReport:
    """Read every pair once and report what is wrong, per file, with class and channel statistics.

    Checks: missing partner (image without mask or the reverse, an annotation naming a missing
    image), duplicate names, unreadable files (JPEG data in a mask included), size mismatch between
    image and mask, class ids outside ``0..K-1`` (``K`` from ``num_classes``, ``classes`` or the
    layout's class list; inferred as largest id + 1 when none is given), images whose channel count
    differs from the majority, and masks with no labelled pixel at all.

    Args:
        root, split, files, format, layout_options: the data set, as for
            :class:`~pixelwise.data.SegmentationFolder`; with ``split`` None, a data set that has
            splits is checked split by split, and the report counts the pairs of each.
        num_classes: number of classes ``K``, if known.
        classes: class list (its colours decode RGB masks); default: the layout's.
        ignore_index: mask value of void pixels (None: 255, which binary masks may take for their
            foreground, see ``mask_values``).
        progress: show a progress bar on stderr; default: for data sets of ``PROGRESS_MIN_PAIRS`` pairs or more.
        mask_values: stored values replaced by class ids (e.g. ``{255: 1}``); None: the layout's,
            else found by :func:`~pixelwise.data.readers.binary_mask_values` (0/255 and 0/65535
            binary masks read their foreground as class 1); ``{}``: values are class ids as stored.

    Returns:
        A :class:`DataReport`; ``report.ok`` is False when problems were found.

    Raises:
        DataError: the data set itself is unusable (missing, no images/ or masks/ folder, no images,
            an unreadable annotation file).
        ConfigError: ``num_classes`` and the class list disagree; an unknown format or layout option.

    Example:
        >>> report = check_dataset("data/camvid", split="val")  # doctest: +SKIP
        >>> print(report.format()); report.raise_if_bad()  # doctest: +SKIP
    """
    scans = _scan_splits(root, split, format, files, layout_options)
    ignore = IGNORE_INDEX if ignore_index is None else ignore_index
    report = _layout_report(scans, Path(root).expanduser(), ignore)
    classes = report.classes = classes or scans[0].classes
    if classes is not None and num_classes is not None and classes.num_classes != num_classes:
        raise ConfigError(
            f"num_classes={num_classes} but the class list has {classes.num_classes} classes; make them agree."
        )
    records = [record for scan in scans for record in scan.records]
    report.num_pairs = len(records)
    report.mask_values_from = "given" if mask_values is not None else "layout"
    if mask_values is None:
        mask_values = scans[0].mask_values
    values = None if mask_values is None else {int(k): int(v) for k, v in mask_values.items()}
    inspect = functools.partial(
        _inspect_pair, classes=classes, ignore_index=ignore, values=values, explicit_ignore=ignore_index
    )
    results = _inspect_all(records, inspect, progress)
    if values is None:
        stored = set().union(*(r.values.tolist() for r in results if r.values is not None))
        values = binary_mask_values(stored, ignore_index, classes)
        report.mask_values_from = "binary"
    report.mask_values = values
    known_k = classes.num_classes if classes is not None else num_classes
    _count_classes(report, results, known_k)
    _channel_statistics(report, results, [record.image for record in records])
    report.class_names = classes.names if classes is not None else [f"class_{i}" for i in range(report.num_classes)]
    _median_offset(report, results)
    if report.num_pairs and not report.class_pixels.sum() and report.void_pixels:
        report.problems.append((str(scans[0].base), _all_ignored_problem(report, results)))
    report.problems.sort(key=lambda item: item[0])
    return report


def _layout_report(scans: list[LayoutScan], root: Path, ignore: int) -> DataReport:
    """A new report holding what the scans found: the layout, its pairing, the pairs per split, the problems."""
    report = DataReport(root=scans[0].base if len(scans) == 1 else root, ignore_index=ignore)
    report.layout, report.pairing = scans[0].format, scans[0].pairing
    report.splits = {scan.split or "": len(scan.records) for scan in scans}
    report.problems = [problem for scan in scans for problem in scan.problems]
    report.notes = [note for scan in scans for note in scan.notes]
    return report


def _scan_splits(
    root: str | os.PathLike,
    split: str | None,
    format: str | None,
    files: str | Sequence[str] | None,
    options: Mapping[str, Any] | None,
) -> list[LayoutScan]:
    """The scan of ``split``; with ``split`` None, one scan per split of a split data set."""
    splits = get_layout(root, format).splits(Path(root).expanduser(), **dict(options or {})) if split is None else []
    return [open_layout(root, name, format, files, options) for name in (splits or [split])]


def _inspect_all(
    pairs: list[Record], inspect: Callable[[Record], _PairResult], progress: bool | None
) -> list[_PairResult]:
    """``inspect`` every pair, in order, with a progress bar when ``progress`` (default: for large data sets)."""
    show = progress if progress is not None else len(pairs) >= PROGRESS_MIN_PAIRS
    # decoding releases the GIL, so a few threads read files in parallel; results come back in order
    with ThreadPoolExecutor(max_workers=min(MAX_READERS, os.cpu_count() or 1)) as pool:
        mapped = pool.map(inspect, pairs)
        return list(tqdm(mapped, total=len(pairs), desc="checking", unit="pair", file=sys.stderr, disable=not show))


def _median_offset(report: DataReport, results: list[_PairResult]) -> None:
    """Set the median image-to-mask offset over the pairs where it was measured."""
    offsets = [r.offset for r in results if r.offset is not None and np.isfinite(r.offset).any()]
    if offsets:
        with warnings.catch_warnings():  # an axis never measured stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            report.mask_offset = np.nanmedian(np.stack(offsets), axis=0)
        report.offset_pairs = len(offsets)


def _count_classes(report: DataReport, results: list[_PairResult], known_k: int | None) -> None:
    """Fill the class pixel counts, void pixels, frequencies and weights, and report out-of-range ids."""
    ignore, values = report.ignore_index, report.mask_values
    counts = np.zeros(0, np.int64)  # pixels per class id, void excluded, grown as larger ids appear
    present_pixels = np.zeros(0, np.int64)  # pixels of the images in which each id occurs
    for result in results:
        report.problems += result.problems
        report.void_pixels += result.nodata
        if result.values is None:
            continue
        ids_of = np.array([values.get(int(v), int(v)) for v in result.values], dtype=np.int64)
        void = ids_of == ignore
        report.void_pixels += int(result.counts[void].sum())
        ids = np.bincount(ids_of[~void], weights=result.counts[~void], minlength=0).astype(np.int64)
        if known_k is not None and ids[known_k:].any():
            bad = (np.flatnonzero(ids[known_k:]) + known_k).tolist()
            report.problems.append(
                (
                    result.mask_path,
                    f"class ids {bad[:MAX_LISTED]} out of range 0..{known_k - 1} "
                    f"({int(ids[known_k:].sum())} pixels); set the number of classes to cover "
                    f"them or map them to ignore_index {ignore}",
                )
            )
            ids = ids[:known_k]  # the out-of-range pixels are reported, not counted
        if ids.size > counts.size:
            counts = np.pad(counts, (0, ids.size - counts.size))
            present_pixels = np.pad(present_pixels, (0, ids.size - present_pixels.size))
        counts[: ids.size] += ids
        present_pixels[: ids.size] += np.where(ids > 0, result.pixels, 0)
    k = known_k if known_k is not None else max(counts.size, MIN_INFERRED_CLASSES)
    report.num_classes = k
    report.class_pixels = np.pad(counts, (0, max(k - counts.size, 0)))[:k]
    present_pixels = np.pad(present_pixels, (0, max(k - present_pixels.size, 0)))[:k]
    labelled = report.class_pixels.sum()
    report.frequencies = report.class_pixels / labelled if labelled else np.zeros(k)
    report.median_frequency_weights = median_frequency_weights(report.class_pixels, present_pixels)


def _channel_statistics(report: DataReport, results: list[_PairResult], images: list[Path]) -> None:
    """Fill the majority channel count and its mean and std; report images with another channel count."""
    channels: dict[str, int] = {}
    moments: dict[int, np.ndarray] = {}  # channel count -> [3, C]: pixels, sum, sum of squares
    for image_path, result in zip(images, results, strict=True):
        if result.moments is not None:
            channels[str(image_path)] = c = result.moments.shape[1]
            moments[c] = moments.get(c, 0) + result.moments
    if not channels:
        return
    majority, _ = Counter(channels.values()).most_common(1)[0]
    report.in_channels = majority
    for file, c in channels.items():
        if c != majority:
            report.problems.append((file, f"unexpected channel count: {c} channels, most images have {majority}"))
    n, total, squares = moments[majority]
    report.mean = total / n
    report.std = np.sqrt(np.maximum(squares / n - report.mean**2, 0.0))


def _all_ignored_problem(report: DataReport, results: list[_PairResult]) -> str:
    stored = sorted(set().union(*(r.values.tolist() for r in results if r.values is not None)))
    return (
        f"every mask pixel equals ignore_index {report.ignore_index} (values found: {stored[:MAX_LISTED]}): "
        "there is nothing to train or score on. If that value marks the objects, pass a different "
        "--ignore-index, or store the masks as class ids 0..K-1"
    )
