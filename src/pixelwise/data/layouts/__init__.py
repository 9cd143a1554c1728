"""Data layouts: the folder trees and annotation exports pixelwise reads directly.

Each layout is one module here that defines a :class:`~pixelwise.data.layouts.base.Layout` and one
line in :data:`LAYOUTS`. :func:`open_layout` detects the layout of a folder or file (or takes the
one named with ``format``) and returns the :class:`~pixelwise.data.layouts.base.LayoutScan` of one
split; the datasets and ``pixelwise check-data`` are built on it.

Detection tries the layouts in the order of :data:`LAYOUTS`: the most specific first (an annotation
file, a public data set's tree) and pixelwise's own ``images/`` + ``masks/`` folder last but one,
before the generic folder rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixelwise.data.layouts import ade, cityscapes, coco, cvat, folder, generic, labelstudio, voc
from pixelwise.data.layouts.base import (
    InstanceFile,
    InstanceSource,
    Layout,
    LayoutScan,
    MaskFile,
    MaskSource,
    Record,
    resolve_split,
    select_stems,
)
from pixelwise.data.readers import IMAGE_SUFFIXES
from pixelwise.errors import DataError, unknown_name

LAYOUTS: dict[str, Layout] = {}
"""Registered layouts by name, in detection order."""


def register_layout(layout: Layout) -> Layout:
    """Add a layout to :data:`LAYOUTS` (detected after those registered before it).

    Raises:
        ValueError: a layout of that name is already registered.
    """
    if layout.name in LAYOUTS:
        raise ValueError(f"a data layout named {layout.name!r} is already registered")
    LAYOUTS[layout.name] = layout
    return layout


# most specific first: an annotation file, a public data set's tree, then plain folders
for _module in (coco, labelstudio, cityscapes, cvat, voc, ade, folder, generic):
    register_layout(_module.LAYOUT)


def detect_layout(root: str | os.PathLike) -> Layout:
    """The first layout of :data:`LAYOUTS` whose ``detect`` accepts ``root``.

    Raises:
        DataError: ``root`` does not exist, or no layout matches (the message lists the layouts).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist; check the path.")
    for layout in LAYOUTS.values():
        if layout.detect(root):
            return layout
    known = "\n".join(f"  {layout.name}: {layout.summary}" for layout in LAYOUTS.values())
    raise DataError(
        f"{str(root)!r} is not a data set layout pixelwise knows. It reads:\n{known}\n"
        "Point to the data set's root folder (or its annotation file), or name the layout with --format."
    )


def get_layout(root: str | os.PathLike, format: str | None = None) -> Layout:
    """The layout named ``format``, or the one detected at ``root`` when ``format`` is None or ``"auto"``.

    Raises:
        ConfigError: an unknown ``format`` (with the closest names).
        DataError: as :func:`detect_layout`.
    """
    if format is None or format == "auto":
        return detect_layout(root)
    if format not in LAYOUTS:
        raise unknown_name("data format", format, list(LAYOUTS))
    if not Path(root).expanduser().exists():
        raise DataError(f"data path {str(root)!r} does not exist; check the path.")
    return LAYOUTS[format]


def open_layout(
    root: str | os.PathLike,
    split: str | None = None,
    format: str | None = None,
    files: str | Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> LayoutScan:
    """Scan one split of the data set at ``root``.

    Args:
        root: the data set's root folder, or its annotation file (COCO JSON, Label Studio JSON).
        split: the split (``"train"``, ``"val"``, ...; aliases such as ``training`` or ``val2017``
            are found); None for an unsplit data set.
        format: a name of :data:`LAYOUTS`; None or ``"auto"``: detected.
        files: keep only the records whose names match (a glob or a list of names or globs, see
            :func:`~pixelwise.data.layouts.base.select_stems`); pairing problems about other files
            are not reported.
        options: layout options (``{"overlap": "smaller"}`` for COCO, ...).

    Raises:
        DataError: the path, the split or the layout is unusable; the message names the file and the fix.
        ConfigError: an unknown format or option.
    """
    root = Path(root).expanduser()
    layout = get_layout(root, format)
    options = dict(options or {})
    available = layout.splits(root, **options)
    if split is None and available:
        example = resolve_split_or_none("train", available) or available[0]
        raise DataError(
            f"{str(root)!r} holds splits ({', '.join(available)}); choose one with split='{example}' "
            f"(command line: --split {example})."
        )
    if split is not None:
        if not available:
            raise DataError(
                f"{str(root)!r} has no split {split!r}: it is one unsplit set ({layout.name} layout); leave the "
                "split out, or divide its files into splits (train/ and val/ folders, or split lists)."
            )
        split = resolve_split(split, available, root)
    scan = layout.scan(root, split, **options)
    return _select(scan, files) if files is not None else scan


def resolve_split_or_none(requested: str, available: Sequence[str]) -> str | None:
    """:func:`~pixelwise.data.layouts.base.resolve_split`, or None when no split (or several) match."""
    try:
        return resolve_split(requested, available, Path("."))
    except DataError:
        return None


def _select(scan: LayoutScan, files: str | Sequence[str]) -> LayoutScan:
    keep = select_stems((r.name for r in scan.records), files)
    if not keep:
        raise DataError(
            f"files={files!r} selects none of the {len(scan.records)} images in {str(scan.base)!r}; "
            "give a glob over file names without suffix, e.g. '2[0-4]' or ['20', '21']."
        )
    scan.records = [r for r in scan.records if r.name in keep]
    scan.problems = [(file, message) for file, message in scan.problems if _concerns_selection(file, files, keep)]
    return scan


def _concerns_selection(file: str, files: str | Sequence[str], keep: set[str]) -> bool:
    """Whether a problem about ``file`` still matters once ``files`` selects the records named ``keep``:
    a problem about an image or mask file only when its name is selected (``NAME.png``, or
    ``NAME_leftImg8bit.png`` for a record ``NAME``); a problem about anything else (an annotation
    file, a split list) always."""
    path = Path(file)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return True
    return bool(select_stems([path.stem], files)) or any(path.stem.startswith(f"{name}_") for name in keep)


def layouts_help() -> str:
    """Every layout with its summary and options, for ``pixelwise check-data --help``."""
    lines = ["layouts (detected in this order; --format NAME forces one, --data-options sets its options):"]
    for layout in LAYOUTS.values():
        lines.append(f"  {layout.name}: {layout.summary}")
        lines += [f"      {name}: {doc}" for name, doc in layout.options.items()]
    return "\n".join(lines)


__all__ = [
    "LAYOUTS",
    "InstanceFile",
    "InstanceSource",
    "Layout",
    "LayoutScan",
    "MaskFile",
    "MaskSource",
    "Record",
    "detect_layout",
    "get_layout",
    "open_layout",
    "register_layout",
    "resolve_split",
    "select_stems",
]
