"""The ``folder`` layout: ``images/`` + ``masks/`` whose files share a stem (pixelwise's own layout).

Layout (split folders optional)::

    root/images/NAME.png          root/train/images/NAME.png   root/val/images/...
    root/masks/NAME.png     or    root/train/masks/NAME.png    root/val/masks/...
    root/instances/NAME.png       root/train/instances/...     (optional: instance ids)
    root/classes.yaml             (optional: class names, ids, colours; see ``pixelwise.data.classes``)

An image and its mask share the file stem (``01.jpg`` ↔ ``01.png``). Files whose names start with
a dot are skipped (editor backups, half-written temporary files).
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layouts.base import InstanceFile, Layout, LayoutScan, MaskFile, Record, check_options
from pixelwise.data.readers import IMAGE_SUFFIXES, MASK_SUFFIXES
from pixelwise.errors import DataError

NAME = "folder"
PAIRING = "images/NAME.* ↔ masks/NAME.* (same file stem)"


def splits(root: Path, **options: object) -> list[str]:
    """The split sub-folders (those holding ``images/``); none when ``root`` holds ``images/`` itself."""
    if not root.is_dir() or (root / "images").is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "images").is_dir())


def detect(root: Path) -> bool:
    return root.is_dir() and ((root / "images").is_dir() or bool(splits(root)))


def index_files(folder: Path, suffixes: tuple[str, ...], problems: list[tuple[str, str]]) -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes``, by stem; a second file with the same stem is a problem."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            problems.append((str(path), f"has the same stem as {files[path.stem].name}; keep one file per name"))
            continue
        files[path.stem] = path
    return files


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """Pair ``images/`` and ``masks/`` of ``root`` (or ``root/split``) by file stem.

    Raises:
        DataError: a folder is missing or ``images/`` holds no images.
    """
    check_options(NAME, options, ())
    base = root / split if split is not None else root
    hint = "expected ROOT/images and ROOT/masks, or ROOT/<split>/images and ROOT/<split>/masks"
    for name in ("images", "masks"):
        if not (base / name).is_dir():
            raise DataError(f"{str(base)!r} has no {name}/ folder; {hint}.")
    problems: list[tuple[str, str]] = []
    images = index_files(base / "images", IMAGE_SUFFIXES, problems)
    masks = index_files(base / "masks", MASK_SUFFIXES, problems)
    if not images:
        raise DataError(
            f"{str(base / 'images')!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
            "add images or fix the path."
        )
    has_instances = (base / "instances").is_dir()
    instances = index_files(base / "instances", MASK_SUFFIXES, problems) if has_instances else {}
    problems += [
        (str(images[s]), "image has no mask (same file stem) in masks/") for s in sorted(images) if s not in masks
    ]
    problems += [
        (str(masks[s]), "mask has no image (same file stem) in images/") for s in sorted(masks) if s not in images
    ]
    records = [
        Record(s, images[s], MaskFile(masks[s]), InstanceFile(instances[s]) if s in instances else None)
        for s in sorted(images)
        if s in masks
    ]
    pairing = PAIRING + (", instances/NAME.* as instance labels" if has_instances else "")
    classes = ClassInfo.find(base)
    mask_values = classes.mask_values() if classes is not None else None  # the class file's map and ignore ranges
    return LayoutScan(NAME, root, base, split, records, classes, mask_values, pairing, problems, has_instances)


LAYOUT = Layout(
    NAME, "images/ + masks/ folders whose files share a stem (optionally in split folders)", detect, splits, scan
)
