"""The ``coco`` layout: COCO JSON (``images``, ``annotations``, ``categories``), also as CVAT and
Label Studio export it.

Layouts found (``root`` is the folder, or the JSON file itself)::

    root/annotations/instances_train2017.json    COCO: one file per split, images in root/train2017/
    root/annotations/instances_val2017.json            (or root/images/, root/images/val2017/)
    root/train2017/000000000009.jpg

    root/annotations/instances_default.json      CVAT's COCO export: images in root/images/ (or
    root/images/default/...                      root/images/<subset>/)

    root/result.json                             Label Studio's COCO export: file_name "images/abc.png"
    root/images/abc.png                          (or an upload path; its base name is looked up too)

    root/anything.json                           any COCO file; the JSON file may be given directly

A folder with several annotation files has one split per file, named by the file stem without
``instances_`` (``instances_train2017.json`` → ``train2017``; ``split="train"`` finds it); a single
file is an unsplit data set. An image's ``file_name`` is looked up in, in this order: ``images/``
beside the JSON (and beside ``annotations/``), the folder named like the split beside
``annotations/``, ``images/<split>/``, the JSON's folder and the root; then its base name in the
same folders (Label Studio writes upload paths). An image entry whose file is missing is a problem
(not a record); no image found at all is a DataError.

Classes: the categories in id order become class ids 1..K-1 after background 0 (a category named
``background`` or ``_background_`` with the smallest id is class 0 itself); the category ids are kept
as the class list's ``source_ids`` (0 for an added background). With ``background: false`` (for
exports that label every pixel, such as COCO-Stuff or a converted semantic data set) there is no
background class: the categories are classes 0..K-1 and unannotated pixels are ignored. Masks are drawn from the
annotations when an item is read: polygons and RLE (uncompressed and compressed) by
:mod:`~pixelwise.data.layouts.coco_masks` (pycocotools' pixel rule, pycocotools itself optional).

Painting rule (options ``overlap`` and ``crowd``):

- ``crowd: ignore`` (default): ``iscrowd=1`` regions are ``ignore_index``; ``crowd: class``: painted
  as their category. Crowd regions are painted first, under every other object, so an object
  annotated on its own keeps its pixels inside a crowd region.
- ``overlap: smaller`` (default): where objects overlap, the smaller one (fewer pixels) is on top,
  so a small object is not erased by a large one drawn after it (how panoptic conversions and
  MMDetection stack things on stuff); equal areas: the later annotation on top.
  ``overlap: later``: the later annotation in the file is on top.
- Instance labels: one id per non-crowd annotation of the image, 1..N in file order, painted with
  the same rule; crowd regions and background are 0.

Deliberate differences from torchvision's COCO segmentation reference (``ConvertCocoPolysToMask``)
and MMDetection: torchvision sets overlapping pixels to 255 and lets the larger category id win,
and keeps crowd regions as their class; here overlaps are resolved by ``overlap`` and crowd regions
are ignored (the COCO evaluation ignores them too). Images without annotations are kept, as all
background (torchvision's and MMDetection's training sets drop them; use ``files`` to select). An
annotation with a box only (no polygon or RLE) is a problem named by its annotation id, not drawn.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layouts.base import Layout, LayoutScan, Record, check_options
from pixelwise.data.layouts.coco_masks import decode_segmentation, segmentation_kind
from pixelwise.data.readers import listing, relative_to
from pixelwise.errors import DataError, check_choice

NAME = "coco"
COCO_KEYS = ("images", "annotations", "categories")
INSTANCES_PREFIX = "instances_"
ANNOTATIONS_DIR = "annotations"
IMAGES_DIR = "images"
LABEL_STUDIO_FILE = "result.json"
BACKGROUND_NAMES = ("background", "_background_")
BACKGROUND_SOURCE_ID = 0
"""Source id recorded for an added background class (COCO category ids start at 1)."""
OVERLAP_CHOICES = ("smaller", "later")
CROWD_CHOICES = ("ignore", "class")
DEFAULT_OPTIONS = {"overlap": "smaller", "crowd": "ignore", "background": True}
OPTIONS = {
    "background": "true (default): unannotated pixels are class 0, background; false: they are ignored, "
    "and the categories are classes 0..K-1",
    "overlap": "where objects overlap: 'smaller' (default: fewer pixels on top) or 'later' (later annotation on top)",
    "crowd": "iscrowd=1 regions: 'ignore' (default: ignore_index) or 'class' (painted as their category)",
}
JSON_CACHE_SIZE = 4
"""Parsed annotation files kept in memory (keyed by path, size and modification time), so that
detection, the split list and the scan parse a large file once."""


@functools.lru_cache(maxsize=JSON_CACHE_SIZE)
def _parse(path: str, mtime_ns: int, size: int) -> Any:
    # mtime_ns and size are part of the cache key: an edited file is parsed again
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def load_json(path: Path) -> Any:
    """The parsed JSON file (cached per path, size and modification time).

    Raises:
        DataError: the file cannot be read or is not valid JSON; names the file and the fix.
    """
    try:
        stat = path.stat()
        return _parse(str(path), stat.st_mtime_ns, stat.st_size)
    except json.JSONDecodeError as error:
        reason = f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
    except (OSError, UnicodeDecodeError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise DataError(
        f"cannot read COCO annotation file {str(path)!r}: {reason}. Re-export it from the labelling tool "
        "(COCO format) or fix the file."
    )


def _is_coco(path: Path) -> bool:
    """Whether ``path`` is a readable JSON file holding the three COCO keys (no error when not)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = load_json(path)
    except DataError:
        return False
    return isinstance(data, dict) and all(key in data for key in COCO_KEYS)


def subset_name(path: Path) -> str:
    """The split a COCO file holds: its stem without ``instances_`` (``instances_val2017`` → ``val2017``)."""
    stem = path.stem
    return (
        stem[len(INSTANCES_PREFIX) :]
        if stem.startswith(INSTANCES_PREFIX) and len(stem) > len(INSTANCES_PREFIX)
        else stem
    )


def annotation_files(root: Path) -> dict[str, Path]:
    """The COCO files of ``root`` by split name: ``root`` itself when it is a file, else
    ``annotations/instances_*.json``, else the COCO files in ``annotations/``, else ``result.json``,
    else the COCO files at the top of ``root``."""
    if root.is_file():
        return {subset_name(root): root}
    if not root.is_dir():
        return {}
    folder = root / ANNOTATIONS_DIR
    found = sorted(folder.glob(f"{INSTANCES_PREFIX}*.json")) if folder.is_dir() else []
    if not found and folder.is_dir():
        found = [p for p in sorted(folder.glob("*.json")) if _is_coco(p)]
    if not found and _is_coco(root / LABEL_STUDIO_FILE):
        found = [root / LABEL_STUDIO_FILE]
    if not found:
        found = [p for p in sorted(root.glob("*.json")) if _is_coco(p)]
    return {subset_name(p): p for p in found}


def detect(root: Path) -> bool:
    """A COCO JSON file, or a folder holding one (see :func:`annotation_files`)."""
    if root.is_file():
        return _is_coco(root)
    return bool(annotation_files(root))


def splits(root: Path, **options: Any) -> list[str]:
    """One split per annotation file when there are several; none for a single file (``options``,
    the scan's, do not change the splits)."""
    files = annotation_files(root)
    return sorted(files) if len(files) > 1 else []


# ---------------------------------------------------------------- masks drawn from annotations


@dataclass(frozen=True)
class CocoObject:
    """One annotation of an image, as drawn: its id (for messages), class id, crowd flag and segmentation."""

    annotation_id: Any
    class_id: int
    crowd: bool
    segmentation: Any


@dataclass(frozen=True)
class CocoObjects:
    """The annotations of one image, decoded into a mask when read (see the module's painting rule).

    Attributes:
        path: the COCO file (named in messages).
        height, width: the image's size from its image entry.
        objects: the image's annotations in file order.
        overlap, crowd: the painting options.
    """

    path: Path
    height: int
    width: int
    objects: tuple[CocoObject, ...]
    overlap: str = DEFAULT_OPTIONS["overlap"]
    crowd: str = DEFAULT_OPTIONS["crowd"]
    background: bool = True

    def decoded(self) -> list[tuple[int, CocoObject, np.ndarray]]:
        """Every object with its position in ``objects`` and its ``bool [H, W]`` pixels, in painting
        order (bottom first).

        Raises:
            DataError: a segmentation that cannot be decoded; names the file and the annotation id.
        """
        drawn = []
        for position, obj in enumerate(self.objects):
            try:
                pixels = decode_segmentation(obj.segmentation, self.height, self.width)
            except ValueError as error:
                raise DataError(
                    f"COCO annotation id {obj.annotation_id} in {str(self.path)!r} cannot be drawn: {error}. "
                    "Fix or remove that annotation (re-export it from the labelling tool)."
                ) from None
            drawn.append((position, obj, pixels))
        crowds = [item for item in drawn if item[1].crowd]
        things = [item for item in drawn if not item[1].crowd]
        if self.overlap == "smaller":  # largest first, so smaller objects are painted over them; stable on ties
            things.sort(key=lambda item: -int(item[2].sum()))
        return crowds + things

    def read(self, classes: ClassInfo | None, ignore_index: int) -> np.ndarray:
        """Class ids ``int64 [H, W]``: background 0 (``ignore_index`` without a background class), objects
        by class, crowd regions per ``crowd``."""
        mask = np.full((self.height, self.width), 0 if self.background else ignore_index, np.int64)
        for _, obj, pixels in self.decoded():
            mask[pixels] = ignore_index if obj.crowd and self.crowd == "ignore" else obj.class_id
        return mask


@dataclass(frozen=True)
class CocoInstances:
    """Instance labels of one image drawn from its annotations: ``int32 [H, W]``, 1..N per non-crowd
    annotation in file order, 0 elsewhere."""

    objects: CocoObjects

    @property
    def path(self) -> Path:
        return self.objects.path

    def read(self) -> np.ndarray:
        things = [position for position, obj in enumerate(self.objects.objects) if not obj.crowd]
        numbers = {position: number for number, position in enumerate(things, start=1)}
        labels = np.zeros((self.objects.height, self.objects.width), np.int32)
        for position, obj, pixels in self.objects.decoded():
            if not obj.crowd:
                labels[pixels] = numbers[position]
        return labels


# ---------------------------------------------------------------- reading the annotation file


def coco_data(path: Path) -> dict[str, list]:
    """The parsed COCO file, checked to hold the lists ``images``, ``annotations`` and ``categories``.

    Raises:
        DataError: unreadable, invalid JSON, or not a COCO file; names the file and the fix.
    """
    data = load_json(path)
    missing = [key for key in COCO_KEYS if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise DataError(
            f"{str(path)!r} is not a COCO annotation file: it has no {' / '.join(repr(k) for k in missing)} list. "
            "A COCO file is a JSON object with 'images', 'annotations' and 'categories' lists; export the "
            "annotations as COCO (instances) or point to the right file."
        )
    return data


def coco_classes(categories: list, path: Path, background: bool = True) -> tuple[ClassInfo, dict[Any, int]]:
    """The class list of the categories (background 0, then the categories in id order; without
    ``background``, the categories alone) and the class id of every category id.

    Raises:
        DataError: no categories, a category without a whole-number ``id`` or a ``name``, or a repeated id.
    """
    fix = "fix the 'categories' list (each entry {'id': 1, 'name': 'cat'}, ids unique)"
    if not categories:
        raise DataError(f"{str(path)!r} has no categories, so no class to train; {fix}.")
    for number, category in enumerate(categories):
        cid = category.get("id") if isinstance(category, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool) or "name" not in category:
            raise DataError(f"category #{number} of {str(path)!r} is {category!r}; {fix}.")
    ordered = sorted(categories, key=lambda category: category["id"])
    ids = [category["id"] for category in ordered]
    if len(set(ids)) < len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"{str(path)!r} repeats category ids {repeated}; {fix}.")
    names = [str(category["name"]) for category in ordered]
    if not background or names[0].lower() in BACKGROUND_NAMES:  # no background, or the file names its own
        class_of = {cid: k for k, cid in enumerate(ids)}
        return ClassInfo(names, list(range(len(ids))), source_ids=ids), class_of
    class_of = {cid: k for k, cid in enumerate(ids, start=1)}
    names, source_ids = [BACKGROUND_NAMES[0], *names], [BACKGROUND_SOURCE_ID, *ids]
    return ClassInfo(names, list(range(len(names))), source_ids=source_ids), class_of


def _image_entries(images: list, path: Path, problems: list[tuple[str, str]]) -> dict[Any, dict]:
    """The usable image entries by id; a malformed or repeated entry is a problem."""
    entries: dict[Any, dict] = {}
    for number, entry in enumerate(images):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        label = f"COCO image entry #{number}" + (f" (id {image_id})" if image_id is not None else "")
        sizes = [entry.get(key) for key in ("height", "width")] if isinstance(entry, dict) else []
        if image_id is None or not isinstance(entry.get("file_name"), str):
            problems.append((str(path), f"{label} has no 'id' or 'file_name'; give it both (or remove it)"))
        elif not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            problems.append((str(path), f"{label} has no positive whole-number 'height' and 'width'; add the size"))
        elif image_id in entries:
            problems.append((str(path), f"{label} repeats an image id; give every image entry its own id"))
        else:
            entries[image_id] = entry
    return entries


def _annotation_object(
    annotation: Any, number: int, images: Mapping, class_of: Mapping
) -> tuple[Any, CocoObject] | str:
    """The image id and object of one annotation, or the problem with it (a message)."""
    if not isinstance(annotation, dict):
        return f"COCO annotation #{number} is not an object; remove it or re-export the file"
    label = f"COCO annotation id {annotation.get('id', f'#{number}')}"
    if annotation.get("image_id") not in images:
        return (
            f"{label} names image_id {annotation.get('image_id')!r}, which is not in 'images' (or is unusable); "
            "add the image entry or remove the annotation"
        )
    if annotation.get("category_id") not in class_of:
        return (
            f"{label} names category_id {annotation.get('category_id')!r}, which is not in 'categories' "
            f"(ids {listing([str(c) for c in class_of])}); add the category or fix category_id"
        )
    try:
        segmentation_kind(annotation.get("segmentation"))
    except ValueError as error:
        return f"{label} has {error}; it is not drawn: add a polygon or RLE, or remove the annotation"
    obj = CocoObject(
        annotation.get("id", f"#{number}"),
        class_of[annotation["category_id"]],
        bool(annotation.get("iscrowd", 0)),
        annotation["segmentation"],
    )
    return annotation["image_id"], obj


def _objects_by_image(
    annotations: list, images: Mapping, class_of: Mapping, path: Path, problems: list[tuple[str, str]]
) -> dict[Any, list[CocoObject]]:
    """Every image's drawable annotations in file order; every other annotation is a problem."""
    objects: dict[Any, list[CocoObject]] = {}
    for number, annotation in enumerate(annotations):
        found = _annotation_object(annotation, number, images, class_of)
        if isinstance(found, str):
            problems.append((str(path), found))
        else:
            objects.setdefault(found[0], []).append(found[1])
    return objects


# ---------------------------------------------------------------- finding the image files


def image_folders(root: Path, path: Path, subset: str) -> list[Path]:
    """The existing folders an image's ``file_name`` is looked up in, in order (see the module docstring)."""
    here = path.parent
    top = here.parent if here.name == ANNOTATIONS_DIR else here
    base = root if root.is_dir() else root.parent
    candidates = [here / IMAGES_DIR, top / IMAGES_DIR, top / subset, top / IMAGES_DIR / subset, here, top, base]
    folders: list[Path] = []
    for folder in candidates:
        if folder not in folders and folder.is_dir():
            folders.append(folder)
    return folders


def find_image(file_name: str, folders: list[Path]) -> Path | None:
    """The file ``file_name`` names: as given (absolute) or under one of ``folders``, else its base
    name in one of them; None when none exists."""
    name = PurePosixPath(file_name.replace("\\", "/"))  # exports written on Windows use backslashes
    if name.is_absolute() and Path(file_name).is_file():
        return Path(file_name)
    tries = [] if name.is_absolute() else [folder / name for folder in folders]
    for candidate in tries + [folder / name.name for folder in folders]:
        if candidate.is_file():
            return candidate
    return None


def _locate(
    images: dict[Any, dict], folders: list[Path], path: Path, top: Path, problems: list[tuple[str, str]]
) -> list[tuple[Any, dict, Path]]:
    """``(image id, entry, file)`` of every image entry whose file exists; a missing one is a problem.

    Raises:
        DataError: no image file is found at all.
    """
    looked = ", ".join(relative_to(folder, top) + "/" for folder in folders)
    located, first = [], folders[0] if folders else top
    for image_id, entry in images.items():
        image = find_image(entry["file_name"], folders)
        if image is None:
            problems.append(
                (
                    str(first / entry["file_name"]),
                    f"COCO image id {image_id}: file not found; looked in {looked} (under {top}); "
                    "put the images there or fix file_name",
                )
            )
        else:
            located.append((image_id, entry, image))
    if images and not located:
        raise DataError(
            f"none of the {len(images)} images listed in {str(path)!r} was found: looked for their file_name in "
            f"{looked} (under {top}). Put the images in {top / IMAGES_DIR} (or {top}/<split>/ as COCO does) or "
            "fix file_name in the JSON."
        )
    return located


def _record_names(located: list[tuple[Any, dict, Path]]) -> list[str]:
    """File stems, or the ``file_name`` without suffix where two images share a stem."""
    stems = [image.stem for _, _, image in located]
    counts = Counter(stems)
    return [
        stem if counts[stem] == 1 else str(PurePosixPath(entry["file_name"].replace("\\", "/")).with_suffix(""))
        for stem, (_, entry, _) in zip(stems, located, strict=True)
    ]


def _records(
    located: list[tuple[Any, dict, Path]],
    objects: Mapping[Any, list[CocoObject]],
    path: Path,
    settings: Mapping[str, str],
    problems: list[tuple[str, str]],
) -> list[Record]:
    """One record per located image (a second entry with the same name is a problem), sorted by name."""
    records: dict[str, Record] = {}
    for name, (image_id, entry, image) in zip(_record_names(located), located, strict=True):
        if name in records:
            problems.append(
                (str(image), f"COCO image id {image_id} names the same file as another entry; keep one entry per image")
            )
            continue
        source = CocoObjects(
            path,
            entry["height"],
            entry["width"],
            tuple(objects.get(image_id, ())),
            settings["overlap"],
            settings["crowd"],
            settings["background"],
        )
        records[name] = Record(name, image, source, CocoInstances(source))
    return [records[name] for name in sorted(records)]


def _annotation_file(root: Path, split: str | None) -> Path:
    """The COCO file of ``split`` (the only one for an unsplit data set).

    Raises:
        DataError: ``root`` holds no COCO file (or not one for ``split``).
    """
    files = annotation_files(root)
    if split is not None and split in files:
        return files[split]
    if split is None and len(files) == 1:
        return next(iter(files.values()))
    if root.is_file():  # named with --format coco although detection would not take it: say why
        coco_data(root)
    raise DataError(
        f"{str(root)!r} holds no COCO annotation file{f' for split {split!r}' if split else ''}: expected "
        f"{ANNOTATIONS_DIR}/{INSTANCES_PREFIX}<split>.json, {LABEL_STUDIO_FILE}, or a .json file with 'images', "
        "'annotations' and 'categories'. Point to the data set's root or to its annotation file."
    )


def scan(root: Path, split: str | None, **options: Any) -> LayoutScan:
    """Read the COCO file of ``split`` (or the only one) and find its images.

    Args:
        root: the folder holding the annotation files, or one COCO JSON file.
        split: a name of :func:`splits`, or None for a single file.
        options: ``overlap`` (``"smaller"`` or ``"later"``), ``crowd`` (``"ignore"`` or ``"class"``) and
            ``background`` (True or False).

    Returns:
        The scan; its masks and instance labels are drawn from the annotations when read, its
        ``mask_values`` is ``{}`` (the masks hold class ids).

    Raises:
        DataError: no or an unreadable/invalid annotation file, no categories, or none of the images found.
        ConfigError: an unknown option or option value.
    """
    check_options(NAME, options, OPTIONS)
    settings = {**DEFAULT_OPTIONS, **options}
    check_choice("overlap", settings["overlap"], OVERLAP_CHOICES)
    check_choice("crowd", settings["crowd"], CROWD_CHOICES)
    check_choice("background", settings["background"], (True, False))
    path = _annotation_file(root, split)
    data = coco_data(path)
    classes, class_of = coco_classes(data["categories"], path, settings["background"])
    problems: list[tuple[str, str]] = []
    images = _image_entries(data["images"], path, problems)
    if not images:
        raise DataError(f"{str(path)!r} lists no usable image; add image entries (id, file_name, height, width).")
    objects = _objects_by_image(data["annotations"], images, class_of, path, problems)
    folders = image_folders(root, path, split if split is not None else subset_name(path))
    top = path.parent.parent if path.parent.name == ANNOTATIONS_DIR else path.parent
    located = _locate(images, folders, path, top, problems)
    records = _records(located, objects, path, settings, problems)
    where = relative_to(records[0].image.parent, top) if records else "."
    pairing = (
        f"COCO file {path.name}: file_name → {where}/…, polygons/RLE rasterised, crowd → {settings['crowd']}, "
        f"overlap: {settings['overlap']} on top"
        + ("" if settings["background"] else ", unannotated pixels ignored (no background class)")
    )
    return LayoutScan(NAME, root, path, split, records, classes, {}, pairing, problems, has_instances=True)


LAYOUT = Layout(
    NAME,
    "COCO JSON (images, annotations, categories): annotations/instances_*.json, CVAT and Label Studio COCO exports",
    detect,
    splits,
    scan,
    OPTIONS,
)
