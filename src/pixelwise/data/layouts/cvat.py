"""The ``cvat`` layout: CVAT's "Segmentation mask 1.1" export (a Pascal VOC-like tree with a ``labelmap.txt``).

Layout (the unzipped export)::

    root/labelmap.txt                         `# label:color_rgb:parts:actions`, `background:0,0,0::`, `car:250,50,83::`
    root/ImageSets/Segmentation/default.txt   image names, one per line (a task's subsets: train.txt, val.txt, ...)
    root/SegmentationClass/NAME.png           RGB masks: each pixel the colour of its label in labelmap.txt
    root/SegmentationObject/NAME.png          optional: RGB, one colour per object, black background
    root/JPEGImages/NAME.jpg                  the images, when the export included them ("Save images")

Classes: the labels of ``labelmap.txt`` with the names and colours CVAT wrote, in file order, except
that ``background`` is always class 0 (added, black, when the label map has none). The RGB masks
are decoded through those colours (a colour that is no label's is reported by ``pixelwise check-data``,
naming the mask). A label written without a colour gets the VOC colour of its position, as CVAT's
exporter (Datumaro) assigns it.

Images: CVAT writes only the annotations unless "Save images" is ticked; the images are then looked
for, by name, in ``JPEGImages/``, ``images/`` and the export folder itself (any image suffix), and the
error says where it looked.

Splits: the lists in ``ImageSets/Segmentation/``. A lone ``default.txt`` (CVAT's one subset) is an
unsplit data set; several lists are splits (``--split train``). Without lists, every mask is used.

Instance labels: each ``SegmentationObject`` colour is one object. The colours CVAT writes are the VOC
colour map's, so an object's id is its colour's index in that map (as CVAT numbered the objects);
masks with other colours get ids 1..N in colour order. Black is background 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixelwise.data.classes import MAX_CHANNEL_VALUE, ClassInfo, default_palette, pack_rgb
from pixelwise.data.layouts.base import Layout, LayoutScan, MaskFile, Record, check_options
from pixelwise.data.layouts.voc import (
    CLASS_FOLDER,
    IMAGE_FOLDER,
    LIST_FOLDER,
    MASK_SUFFIX,
    OBJECT_FOLDER,
    VOC_BORDER,
    VocObjectFile,
    find_image,
    list_splits,
    read_split_list,
)
from pixelwise.data.readers import IMAGE_READ_ERRORS, read_error
from pixelwise.errors import ConfigError, DataError
from pixelwise.io import read_text
from pixelwise.modes import IGNORE_INDEX

NAME = "cvat"
LABELMAP = "labelmap.txt"
LABELMAP_FIELDS = 4
"""``name:r,g,b:parts:actions``."""
BACKGROUND = "background"
BLACK = (0, 0, 0)
DEFAULT_LIST = "default"
"""CVAT's name for the subset of a task without subsets."""
OTHER_IMAGE_FOLDER = "images"
RGB_MODES = ("RGB", "RGBA")


def detect(root: Path) -> bool:
    return root.is_dir() and (root / LABELMAP).is_file() and (root / CLASS_FOLDER).is_dir()


def splits(root: Path, **options: object) -> list[str]:
    """The split names (options are those of ``scan``; none changes the splits)."""
    lists = list_splits(root)
    return [] if set(lists) <= {DEFAULT_LIST} else lists


def _color(text: str, path: Path, number: int, position: int) -> tuple[int, int, int]:
    """The ``r,g,b`` of a label map line; an empty colour is the VOC colour of the label's position."""
    if not text.strip():
        return default_palette(position + 1)[position]
    try:
        channels = tuple(int(value) for value in text.split(","))
    except ValueError:
        channels = ()
    if len(channels) != len(BLACK) or not all(0 <= c <= MAX_CHANNEL_VALUE for c in channels):
        raise DataError(
            f"label map {str(path)!r} line {number}: colour {text!r} is not `r,g,b` with values 0..255; "
            "fix the line (e.g. `car:250,50,83::`) or export the task again."
        )
    return channels  # type: ignore[return-value]


def _labelmap_lines(path: Path) -> list[tuple[int, str]]:
    """The non-comment lines of ``labelmap.txt`` with their numbers.

    Raises:
        DataError: the file cannot be read or is not UTF-8 text.
    """
    try:
        text = read_text(path, "label map")
    except ConfigError as error:
        raise DataError(str(error)) from error
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    return [(number, line) for number, line in lines if line and not line.startswith("#")]


def read_labelmap(path: Path) -> ClassInfo:
    """The classes of a CVAT ``labelmap.txt``: names and colours in file order, ``background`` first (class 0).

    Raises:
        DataError: a malformed line, a repeated label name, or two labels of one colour (names the file).
    """
    names: list[str] = []
    colors: list[tuple[int, int, int]] = []
    for number, line in _labelmap_lines(path):
        fields = line.rsplit(":", LABELMAP_FIELDS - 1)  # a name may hold ':'; the last three fields never do
        if len(fields) != LABELMAP_FIELDS:
            raise DataError(
                f"label map {str(path)!r} line {number} ({line!r}) is not `name:r,g,b:parts:actions`; "
                "fix the line (e.g. `car:250,50,83::`) or export the task again."
            )
        if fields[0] in names:
            raise DataError(f"label map {str(path)!r} line {number}: label {fields[0]!r} appears twice; keep one.")
        names.append(fields[0])
        colors.append(_color(fields[1], path, number, len(names) - 1))
    lowered = [name.lower() for name in names]
    if BACKGROUND in lowered:  # background is class 0 wherever the file lists it
        position = lowered.index(BACKGROUND)
        names.insert(0, names.pop(position))
        colors.insert(0, colors.pop(position))
    else:
        names.insert(0, BACKGROUND)
        colors.insert(0, BLACK)
    for k, color in enumerate(colors):
        if color in colors[:k]:
            other = names[colors.index(color)]
            raise DataError(
                f"label map {str(path)!r}: labels {other!r} and {names[k]!r} share the colour {list(color)}, so "
                "their pixels cannot be told apart; give each label its own colour in CVAT and export again."
            )
    return ClassInfo(names, list(range(len(names))), colors, IGNORE_INDEX)


def object_ids(rgb: np.ndarray) -> np.ndarray:
    """Instance ids of an RGB object mask: VOC colour-map indices when every colour is one (the VOC border
    colour read as 0), else 1..N in colour order; black is 0.

    Shape:
        ``rgb``: ``[H, W, 3]`` uint8; returns ``int32 [H, W]``.
    """
    packed = pack_rgb(rgb[..., :3])
    colours, inverse = np.unique(packed, return_inverse=True)
    voc = {int(pack_rgb(np.asarray(c, dtype=np.uint8))): index for index, c in enumerate(default_palette())}
    if all(int(c) in voc for c in colours):
        ids = np.asarray([voc[int(c)] for c in colours], dtype=np.int32)
        ids[ids == VOC_BORDER] = 0
    else:
        ids = np.zeros(len(colours), dtype=np.int32)
        objects = colours != 0  # packed black is 0: background
        ids[objects] = np.arange(1, int(objects.sum()) + 1)
    return ids[inverse.reshape(packed.shape)]


@dataclass(frozen=True)
class CvatObjectFile:
    """A CVAT ``SegmentationObject`` PNG (RGB, one colour per object; a palette PNG is read as VOC's)."""

    path: Path

    def read(self) -> np.ndarray:
        """Instance ids as ``int32 [H, W]``, 0 = background.

        Raises:
            DataError: the file cannot be read (names the file).
        """
        try:
            with Image.open(self.path) as image:
                image.load()
                if image.mode not in RGB_MODES:
                    return VocObjectFile(self.path).read()
                rgb = np.asarray(image.convert("RGB"))
        except IMAGE_READ_ERRORS as error:
            raise read_error(self.path, "instance file", error) from error
        return object_ids(rgb)


def _named(root: Path, split: str | None) -> tuple[list[tuple[str, int | None, str]], list[tuple[str, str]]]:
    """``(file naming it, line or None, name)`` per sample of ``split`` (a list, or every mask); list problems."""
    listed = root / LIST_FOLDER / f"{split or DEFAULT_LIST}.txt"
    if listed.is_file():
        names, problems = read_split_list(listed)
        return [(str(listed), number, name) for number, name in names], problems
    masks = sorted((root / CLASS_FOLDER).rglob(f"*{MASK_SUFFIX}"))
    names = [m.relative_to(root / CLASS_FOLDER).with_suffix("").as_posix() for m in masks if not m.name.startswith(".")]
    return [(str(root / CLASS_FOLDER / f"{name}{MASK_SUFFIX}"), None, name) for name in names], []


def _no_images_error(root: Path, count: int, looked: str) -> DataError:
    return DataError(
        f"the CVAT export {str(root)!r} holds no images: looked for the {count} annotated images (NAME.jpg, .png, "
        f"...) in {looked}. CVAT writes only the annotations unless 'Save images' is ticked when exporting: export "
        f"again with it, or copy the images into {str(root / IMAGE_FOLDER)!r} (file names as in "
        f"{LIST_FOLDER.as_posix()}/{DEFAULT_LIST}.txt)."
    )


def _records(root: Path, named: list[tuple[str, int | None, str]], problems: list[tuple[str, str]]) -> list[Record]:
    """A record per name whose mask and image exist; a problem per other (raises when no image is found at all)."""
    folders = [f for f in (root / IMAGE_FOLDER, root / OTHER_IMAGE_FOLDER, root) if f.is_dir()]
    looked = f"{IMAGE_FOLDER}/, {OTHER_IMAGE_FOLDER}/ and the export folder itself"
    records, without_image = [], []
    for file, number, name in named:
        where = f"line {number}: {name!r}" if number is not None else "mask"
        mask = root / CLASS_FOLDER / f"{name}{MASK_SUFFIX}"
        image = find_image(folders, name)
        if not mask.is_file():
            problems.append(
                (file, f"{where} has no mask {CLASS_FOLDER}/{name}{MASK_SUFFIX}; add it or remove the line")
            )
        elif image is None:
            without_image.append((file, f"{where} has no image (looked in {looked}); add it or remove the entry"))
        else:
            objects = root / OBJECT_FOLDER / f"{name}{MASK_SUFFIX}"
            records.append(Record(name, image, MaskFile(mask), CvatObjectFile(objects) if objects.is_file() else None))
    if without_image and not records:
        raise _no_images_error(root, len(without_image), looked)
    problems += without_image
    return records


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """The pairs of one subset list (``split``), of ``default.txt``, or of every mask (no lists).

    Raises:
        DataError: a malformed ``labelmap.txt``, no ``SegmentationClass/``, an unreadable list, or no
            image found for any annotated name (the export holds only annotations).
        ConfigError: any option (the layout takes none).
    """
    check_options(NAME, options, ())
    if not (root / LABELMAP).is_file() or not (root / CLASS_FOLDER).is_dir():
        raise DataError(
            f"{str(root)!r} is not a CVAT 'Segmentation mask 1.1' export: expected {LABELMAP} and {CLASS_FOLDER}/ "
            "in it. Export the task or project in that format and point to the unzipped folder."
        )
    classes = read_labelmap(root / LABELMAP)
    named, problems = _named(root, split)
    records = sorted(_records(root, named, problems), key=lambda record: record.name)
    has_instances = (root / OBJECT_FOLDER).is_dir()
    listed = f"{LIST_FOLDER.as_posix()}/{split or DEFAULT_LIST}.txt"
    source = f"{listed} names; " if named and named[0][1] is not None else ""
    pairing = f"{source}{IMAGE_FOLDER}/NAME.* ↔ {CLASS_FOLDER}/NAME.png (RGB, {LABELMAP} colours)" + (
        f", {OBJECT_FOLDER}/NAME.png (one colour per object) as instance labels" if has_instances else ""
    )
    return LayoutScan(NAME, root, root, split, records, classes, {}, pairing, problems, has_instances)


LAYOUT = Layout(NAME, "CVAT Segmentation mask 1.1 export (labelmap.txt)", detect, splits, scan)
