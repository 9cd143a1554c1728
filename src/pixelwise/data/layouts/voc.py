"""The ``voc`` layout: Pascal VOC's segmentation tree (what torchvision's ``VOCSegmentation`` and
MMSegmentation's ``PascalVOCDataset`` read).

Layout (``root`` is the ``VOC2012`` folder, or a folder above it: ``VOCdevkit/`` or the folder that
holds ``VOCdevkit/``, as torchvision's ``root``)::

    VOC2012/JPEGImages/NAME.jpg                  images (JPEGImages holds many more images than are segmented)
    VOC2012/SegmentationClass/NAME.png           palette PNGs: index = class id, 255 = object border (ignored)
    VOC2012/SegmentationObject/NAME.png          optional: palette PNGs, index = object id, 255 = border
    VOC2012/ImageSets/Segmentation/train.txt     split lists: one image name (no suffix) per line
    VOC2012/ImageSets/Segmentation/val.txt       (and trainval.txt, ...: every list is a split)
    VOC2012/classes.yaml                         optional: other class names / colours (a VOC-style data set
                                                 of your own); default: the 21 VOC classes

Classes: ``background`` and the 20 VOC object classes, ids 0..20, coloured with the VOC colour map
(:func:`~pixelwise.data.classes.default_palette`); the border value 255 is pixelwise's ignore index,
so masks are read as stored (``mask_values`` is ``{}``).

Instance labels: ``SegmentationObject`` indices are object ids (1..N, 0 background); the 255 border
there is read as background 0, because an instance label has no "ignore" value (the semantic mask
already ignores those pixels).

Deliberate differences from torchvision / MMSegmentation:

- without split lists (``ImageSets/Segmentation/`` missing or empty) the data set is one unsplit set
  of every mask in ``SegmentationClass/`` paired with its image; torchvision and MMSegmentation need a
  list. With lists, ``split=None`` is refused (choose one), as everywhere in pixelwise.
- a split list naming an image or mask that is absent is reported as a problem (list file, line, fix)
  by ``pixelwise check-data`` instead of failing on first read; images need not be ``.jpg``.
- a list line's whole text (stripped) is the name.

Out of scope: the Semantic Boundaries Dataset (SBD, ``cls/*.mat`` / ``inst/*.mat``; MMSegmentation's
``SegmentationClassAug`` is made from it). Its MATLAB files are not read: a folder holding
``cls/*.mat`` and no VOC tree gets a DataError that says to convert them to PNG first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelwise.data.classes import VOID_COLOR, ClassInfo, default_palette
from pixelwise.data.layouts.base import Layout, LayoutScan, MaskFile, Record, check_options
from pixelwise.data.readers import IMAGE_SUFFIXES, read_instances
from pixelwise.errors import ConfigError, DataError
from pixelwise.io import read_text
from pixelwise.modes import IGNORE_INDEX

NAME = "voc"
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The Pascal VOC segmentation classes, in id order (as torchvision and MMSegmentation name them)."""
IMAGE_FOLDER = "JPEGImages"
CLASS_FOLDER = "SegmentationClass"
OBJECT_FOLDER = "SegmentationObject"
LIST_FOLDER = Path("ImageSets", "Segmentation")
MASK_SUFFIX = ".png"
VOC_BORDER = 255
"""The value of object borders (and "difficult" regions) in VOC's class and object PNGs."""
SBD_CLASS_FOLDER = "cls"
SBD_SUBFOLDER = "dataset"
"""SBD's ``benchmark_RELEASE/dataset/cls/*.mat``: the layout recognises it only to say it is not read."""
DEVKIT = "VOCdevkit"


def is_voc_tree(folder: Path) -> bool:
    """True when ``folder`` holds ``JPEGImages/`` and ``SegmentationClass/``."""
    return (folder / IMAGE_FOLDER).is_dir() and (folder / CLASS_FOLDER).is_dir()


def find_tree(root: Path) -> Path | None:
    """The VOC tree at ``root``, or one or two levels down (``root/VOC2012``, ``root/VOCdevkit/VOC2012``;
    the newest year when there are several); None when there is none."""
    if not root.is_dir():
        return None
    candidates = [root, *sorted(root.glob("VOC*"), reverse=True), *sorted(root.glob(f"{DEVKIT}/VOC*"), reverse=True)]
    return next((folder for folder in candidates if is_voc_tree(folder)), None)


def _sbd_folder(root: Path) -> Path | None:
    """The SBD ``cls/`` folder at ``root`` (or ``root/dataset``) when it holds ``.mat`` files."""
    for folder in (root / SBD_CLASS_FOLDER, root / SBD_SUBFOLDER / SBD_CLASS_FOLDER):
        if folder.is_dir() and next(folder.glob("*.mat"), None) is not None:
            return folder
    return None


def _tree(root: Path) -> Path:
    """The VOC tree of ``root``.

    Raises:
        DataError: ``root`` is SBD (``cls/*.mat``), or holds no VOC tree.
    """
    tree = find_tree(root)
    if tree is not None:
        return tree
    sbd = _sbd_folder(root)
    if sbd is not None:
        raise DataError(
            f"{str(sbd)!r} holds the Semantic Boundaries Dataset's MATLAB annotations (cls/*.mat), which pixelwise "
            "does not read. Convert them to palette PNGs first (scipy.io.loadmat(f)['GTcls'][0]['Segmentation'][0] "
            f"is the class-id mask; save it with the VOC palette) into {CLASS_FOLDER}/ next to {IMAGE_FOLDER}/, "
            "then point to that folder."
        )
    raise DataError(
        f"{str(root)!r} is not a Pascal VOC tree: expected {IMAGE_FOLDER}/ and {CLASS_FOLDER}/ in it, in "
        f"VOC20xx/ or in {DEVKIT}/VOC20xx/. Point to the VOC2012 folder (or the one above {DEVKIT}/)."
    )


def detect(root: Path) -> bool:
    return find_tree(root) is not None or (root.is_dir() and _sbd_folder(root) is not None)


def list_splits(tree: Path) -> list[str]:
    """The names of the split lists ``ImageSets/Segmentation/*.txt`` of ``tree``."""
    folder = tree / LIST_FOLDER
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.txt") if not path.name.startswith("."))


def splits(root: Path, **options: object) -> list[str]:
    """The split names (options are those of ``scan``; none changes the splits)."""
    return list_splits(_tree(root))


def read_split_list(path: Path) -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
    """The names of a split list with their line numbers (blank lines skipped), and a problem per repeated name.

    Raises:
        DataError: the list cannot be read or is not UTF-8 text (names the file and the fix).
    """
    try:
        text = read_text(path, "split list")
    except ConfigError as error:
        raise DataError(str(error)) from error
    names: list[tuple[int, str]] = []
    first: dict[str, int] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first:
            repeat = f"line {number}: {name!r} is listed again (first on line {first[name]}); remove the repeat"
            problems.append((str(path), repeat))
            continue
        first[name] = number
        names.append((number, name))
    return names, problems


def find_image(folders: list[Path], name: str) -> Path | None:
    """The first ``folder/name.<image suffix>`` that exists (lower- or upper-case suffix), or None."""
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            for candidate in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


@dataclass(frozen=True)
class VocObjectFile:
    """A VOC ``SegmentationObject`` palette PNG: indices are object ids, the 255 border is read as 0."""

    path: Path

    def read(self) -> np.ndarray:
        """Object ids as ``int32 [H, W]``, 0 = background (and border).

        Raises:
            DataError: the file cannot be read or is not a 2-D index image (names the file).
        """
        objects = read_instances(self.path)
        objects[objects == VOC_BORDER] = 0  # an instance label has no ignore value; the class mask ignores these
        return objects


def voc_classes(tree: Path, root: Path) -> ClassInfo:
    """A ``classes.yaml`` found in the tree, its parent or ``root``; else the 21 VOC classes."""
    found = ClassInfo.find(tree) or (ClassInfo.find(root) if root != tree else None)
    if found is not None:
        return found
    return ClassInfo(list(VOC_CLASSES), list(range(len(VOC_CLASSES))), default_palette(len(VOC_CLASSES)),
                     IGNORE_INDEX, VOID_COLOR)  # fmt: skip


def _listed_names(tree: Path, split: str, images: list[Path]) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """The names of ``split``'s list whose image and mask exist (with their image), and a problem per other line."""
    path = tree / LIST_FOLDER / f"{split}.txt"
    names, problems = read_split_list(path)
    found: dict[str, Path] = {}
    for number, name in names:
        image = find_image(images, name)
        mask = tree / CLASS_FOLDER / f"{name}{MASK_SUFFIX}"
        if image is None:
            problems.append((str(path), f"line {number}: {name!r} has no image {IMAGE_FOLDER}/{name}.jpg; "
                             "add the image or remove the line"))  # fmt: skip
        elif not mask.is_file():
            problems.append((str(path), f"line {number}: {name!r} has no mask {CLASS_FOLDER}/{name}{MASK_SUFFIX}; "
                             "add the mask or remove the line"))  # fmt: skip
        else:
            found[name] = image
    return found, problems


def _every_mask(tree: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Every mask of ``SegmentationClass/`` with its image (unsplit), and a problem per mask without one."""
    found: dict[str, Path] = {}
    problems = []
    for mask in sorted((tree / CLASS_FOLDER).glob(f"*{MASK_SUFFIX}")):
        if mask.name.startswith("."):
            continue
        image = find_image([tree / IMAGE_FOLDER], mask.stem)
        if image is None:
            problems.append((str(mask), f"mask has no image {IMAGE_FOLDER}/{mask.stem}.jpg; add it or remove the mask"))
        else:
            found[mask.stem] = image
    return found, problems


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """The pairs of one split list (``split``), or of every mask in ``SegmentationClass/`` (``split`` None).

    Raises:
        DataError: no VOC tree at ``root`` (an SBD folder says so), or an unreadable split list.
        ConfigError: any option (the layout takes none).
    """
    check_options(NAME, options, ())
    tree = _tree(root)
    if split is None:
        images, problems = _every_mask(tree)
    else:
        images, problems = _listed_names(tree, split, [tree / IMAGE_FOLDER])
    objects = tree / OBJECT_FOLDER
    has_instances = objects.is_dir()
    records = []
    for name in sorted(images):
        instance = objects / f"{name}{MASK_SUFFIX}"
        instances = VocObjectFile(instance) if has_instances and instance.is_file() else None
        records.append(Record(name, images[name], MaskFile(tree / CLASS_FOLDER / f"{name}{MASK_SUFFIX}"), instances))
    classes = voc_classes(tree, root)
    listed = f"{LIST_FOLDER.as_posix()}/{split}.txt names; " if split is not None else ""
    pairing = (
        f"{listed}{IMAGE_FOLDER}/NAME.jpg ↔ {CLASS_FOLDER}/NAME.png (palette index = class id, "
        f"{VOC_BORDER} border = ignore)" + (f", {OBJECT_FOLDER}/NAME.png as instance labels" if has_instances else "")
    )
    mask_values = classes.mask_values() or {}  # palette indices are class ids (a class file may map them)
    return LayoutScan(NAME, root, tree, split, records, classes, mask_values, pairing, problems, has_instances)


LAYOUT = Layout(NAME, "Pascal VOC (JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/)", detect, splits, scan)
