"""What every data layout gives the datasets: records (an image and where its mask comes from), the
class list, how files were paired, and the problems found while pairing them.

A layout is one reader module in this package that registers a :class:`Layout`: a ``detect``
function (does this folder or file look like the layout?), a ``splits`` function (which splits does
it hold?) and a ``scan`` function that returns a :class:`LayoutScan` for one split. The datasets
(:class:`~pixelwise.data.SegmentationFolder`) and the checks (:func:`~pixelwise.data.check_dataset`)
only ever see a :class:`LayoutScan`, so a new layout needs no change anywhere else.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pixelwise.data.classes import ClassInfo
from pixelwise.data.readers import read_instances, read_mask
from pixelwise.errors import ConfigError, DataError


class MaskSource(Protocol):
    """Where one image's mask comes from: a file, or annotations rasterised on demand."""

    path: Path
    """The file named in messages (the mask file, or the annotation file that holds the polygons)."""

    def read(self, classes: ClassInfo | None, ignore_index: int) -> np.ndarray:
        """The mask as ``int64 [H, W]``: stored values (class ids, or values the scan's ``mask_values``
        maps to class ids), ``ignore_index`` for void pixels.

        Raises:
            DataError: the mask cannot be read or decoded; the message names ``path``.
        """
        ...


class InstanceSource(Protocol):
    """Where one image's instance labels come from."""

    path: Path

    def read(self) -> np.ndarray:
        """Instance ids as ``int32 [H, W]``, 0 = background (no object).

        Raises:
            DataError: the labels cannot be read; the message names ``path``.
        """
        ...


@dataclass(frozen=True)
class MaskFile:
    """A mask stored as an image file (index, palette or RGB colour-coded; see :mod:`pixelwise.data.readers`)."""

    path: Path

    def read(self, classes: ClassInfo | None, ignore_index: int) -> np.ndarray:
        return read_mask(self.path, classes, ignore_index)


@dataclass(frozen=True)
class InstanceFile:
    """Instance labels stored as an integer image file (16-bit PNG or TIFF)."""

    path: Path

    def read(self) -> np.ndarray:
        return read_instances(self.path)


@dataclass(frozen=True)
class Record:
    """One training or evaluation sample of a layout.

    Attributes:
        name: unique name within the split (file stem, or a relative path for recursive layouts);
            outputs and reports use it.
        image: the image file.
        mask: where the mask comes from.
        instances: where the instance labels come from, when the layout has them.
    """

    name: str
    image: Path
    mask: MaskSource
    instances: InstanceSource | None = None


@dataclass
class LayoutScan:
    """One split of a data set, as a layout found it.

    Attributes:
        format: the layout's registered name (``"folder"``, ``"coco"``, ...).
        root: the data set's root (folder or annotation file) as given.
        base: the folder (or file) named in messages about this split.
        split: the split scanned, None for an unsplit data set.
        records: the usable samples, sorted by name.
        classes: the class list the layout defines (COCO categories, the VOC classes, a class file
            found next to the data, ...); None: inferred from the masks.
        mask_values: stored mask values read as other class ids (Cityscapes' labelId → trainId,
            ADE20K's reduced zero label, a class file's ``map``); None: found from the masks
            (0/255 binary masks read 255 as class 1).
        pairing: how images and masks were paired, in words, for ``pixelwise check-data``.
        problems: ``(file, message)`` per pairing problem (an image without a mask, a mask
            without an image, a duplicate name, an annotation naming a missing image).
        has_instances: the layout gives instance labels (every record has ``instances``).
        notes: what the layout skipped on purpose and the user should know (unlabelled tasks of a
            labelling-tool export, ...); unlike problems, notes do not stop training.
    """

    format: str
    root: Path
    base: Path
    split: str | None
    records: list[Record]
    classes: ClassInfo | None = None
    mask_values: dict[int, int] | None = None
    pairing: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)
    has_instances: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """A registered data layout.

    Attributes:
        name: what ``--format`` takes.
        summary: one line for ``pixelwise check-data --help`` and the errors.
        detect: ``detect(root)`` → True when ``root`` (a folder or a file) looks like this layout.
        splits: ``splits(root, **options)`` → the split names the data set holds (``[]``: unsplit);
            it takes the same options as ``scan`` (and ignores those it does not need).
        scan: ``scan(root, split, **options)`` → a :class:`LayoutScan`; ``split`` is one of
            ``splits(root)`` or None for an unsplit data set. Raises DataError when the data set is
            unusable (a folder missing, no images), ConfigError for an unknown option.
        options: the keyword options ``scan`` takes, with one line each.
    """

    name: str
    summary: str
    detect: Callable[[Path], bool]
    splits: Callable[..., list[str]]
    scan: Callable[..., LayoutScan]
    options: Mapping[str, str] = field(default_factory=dict)


SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid"),
    "test": ("test", "testing"),
}
"""Split names that mean the same split in different data sets (Pascal VOC's ``val``, ADE20K's
``validation``): any name of a group finds any other; a name followed by digits (COCO's ``val2017``)
matches too."""


def resolve_split(requested: str, available: Sequence[str], where: Path) -> str:
    """The split of ``available`` that ``requested`` names: itself, or its one alias (``train`` →
    ``training`` or ``train2017``).

    Raises:
        DataError: no split, or several, match; the message lists the splits there are.
    """
    if requested in available:
        return requested
    group = [names for names in SPLIT_ALIASES.values() if requested.lower() in names]
    names = group[0] if group else (requested.lower(),)
    pattern = re.compile(rf"({'|'.join(map(re.escape, names))})[-_]?\d*", re.IGNORECASE)
    matches = [s for s in available if pattern.fullmatch(s)]
    if len(matches) == 1:
        return matches[0]
    have = ", ".join(available) if available else "none (an unsplit data set: leave the split out)"
    why = f"it matches several ({', '.join(matches)})" if matches else "no split has that name"
    raise DataError(f"{str(where)!r} has no split {requested!r} ({why}); its splits: {have}. Pass one of those.")


def select_stems(stems: Iterable[str], files: str | Sequence[str] | None) -> set[str]:
    """The stems matching ``files``: a glob pattern over file stems (``"2[0-4]"``), a list of stems
    or patterns, or None for all."""
    stems = set(stems)
    if files is None:
        return stems
    patterns = [files] if isinstance(files, str) else [str(f) for f in files]
    return {s for s in stems if any(fnmatch.fnmatchcase(s, p) for p in patterns)}


def check_options(layout: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise a ConfigError naming an option the layout does not take, and the ones it does."""
    known = sorted(known)
    for name in options:
        if name not in known:
            takes = ", ".join(known) if known else "no options"
            raise ConfigError(f"data option {name!r} is not one the {layout} layout takes; it takes {takes}.")
