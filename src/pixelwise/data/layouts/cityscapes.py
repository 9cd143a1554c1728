"""The ``cityscapes`` layout: Cityscapes (``leftImg8bit/`` + ``gtFine/`` or ``gtCoarse/``).

Layout (as unpacked from ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)::

    root/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png
    root/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png      (labelIds 0..33)
    root/gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png   (labelId * 1000 + k)
    root/leftImg8bit/val/frankfurt/...      root/gtFine/val/frankfurt/...
    root/leftImg8bit/test/berlin/...        root/gtFine/test/berlin/...    (dummy labels: all void)

An image ``SPLIT/DIR/NAME_leftImg8bit.png`` (``DIR``: the city folder; searched recursively) pairs
with ``gtFine/SPLIT/DIR/NAME_gtFine_labelIds.png``; with the option ``annotations: coarse``, with
``gtCoarse/SPLIT/DIR/NAME_gtCoarse_labelIds.png`` (splits ``train``, ``train_extra``, ``val``).

Classes: the 19 train classes of the official cityscapesScripts ``labels.py`` (table :data:`LABELS`,
checked entry by entry against mcordts/cityscapesScripts, ``cityscapesscripts/helpers/labels.py``),
with their official colours and their labelIds as ``source_ids``. The scan's ``mask_values`` map
every labelId 0..33 to its trainId, 255 (ignore) for the 15 labels not trained on.

Instances: ``*_instanceIds.png`` stores ``labelId * 1000 + k`` on the pixels of each object of a
class with instances (person, rider, car, truck, bus, caravan, trailer, train, motorcycle, bicycle),
and the plain labelId (< 1000) elsewhere, including crowd regions ("cargroup"). They are read as
consecutive ids ``1..N`` (``int32``) for the distinct stored values ≥ 1000, 0 for the rest.

Like torchvision's ``Cityscapes`` (``mode="fine"|"coarse"``, ``target_type="semantic"|"instance"``)
and MMSegmentation's ``CityscapesDataset`` (19 classes, recursive image search), with these
deliberate differences:

- torchvision returns raw labelIds; MMSegmentation needs ``*_labelTrainIds.png`` files made
  beforehand by its converter. Here labelIds are mapped to trainIds when read (no conversion step);
  where a split holds no ``*_labelIds.png`` but MMSegmentation's ``*_labelTrainIds.png``, those are
  read as stored (``mask_values`` is ``{}``: they already hold trainIds and 255).
- Stored values 34..254 (never written by the official tools: a damaged or foreign mask) are left
  as stored, not sent to 255, so that the dataset's range check names the file instead of training
  silently on fewer labels. -1 (license plate) never appears in an 8-bit PNG.
- The void labelIds map to 255 (pixelwise's ``IGNORE_INDEX``), whatever ``ignore_index`` a dataset
  is given: keep the default 255 for this layout.
- Records are named by the file name without ``_leftImg8bit.png`` (``aachen_000000_000019``), not
  by a relative path: the official names start with their city, so they are unique, and outputs
  (evaluation panels, predictions) stay flat files. Two cities holding the same name is a problem
  listed by ``pixelwise check-data``, as are images without labels and labels without images
  (torchvision and MMSegmentation build the label paths unchecked and fail when one is loaded).
- Instance labels are relabelled to ``1..N`` (torchvision returns the raw ``labelId * 1000 + k``).
- The ``test`` split is included when its labels are present, as torchvision does; the official
  test labels are dummies (all void), so it is for prediction, not for scores.
- Splits are the sub-folders of ``leftImg8bit/`` with a matching folder in the chosen annotation
  tree (``train``/``val``/``test`` for gtFine, ``train``/``train_extra``/``val`` for gtCoarse), as
  torchvision's ``split`` choices per ``mode``; while that tree is missing, all sub-folders, so that
  asking for one gives the error that says what to download.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layouts.base import Layout, LayoutScan, MaskFile, Record, check_options
from pixelwise.data.readers import read_instances, relative_to
from pixelwise.errors import DataError, check_choice
from pixelwise.modes import IGNORE_INDEX

NAME = "cityscapes"
IMAGE_FOLDER = "leftImg8bit"
IMAGE_SUFFIX = "_leftImg8bit.png"
ANNOTATION_FOLDERS = {"fine": "gtFine", "coarse": "gtCoarse"}
"""The ``annotations`` option → the folder (and file-name infix) of the label files."""
DOWNLOADS = {"fine": "gtFine_trainvaltest.zip", "coarse": "gtCoarse.zip"}
DOWNLOAD_PAGE = "https://www.cityscapes-dataset.com/downloads/"
DEFAULT_ANNOTATIONS = "fine"
LABEL_IDS = "labelIds"
TRAIN_IDS = "labelTrainIds"
"""MMSegmentation's converted masks (trainIds 0..18, 255 void), read when a split has no labelIds."""
INSTANCE_IDS = "instanceIds"
INSTANCE_OFFSET = 1000
"""``instanceIds`` files store ``labelId * INSTANCE_OFFSET + k`` on object pixels, the labelId elsewhere."""
CITYSCAPES_VOID = 255
"""The trainId ``labels.py`` gives labels that are not trained on."""
NO_ID = -1
"""The id and trainId of ``license plate``: never stored in the label images."""


class Label(NamedTuple):
    """One row of cityscapesScripts' ``labels.py``."""

    name: str
    id: int
    train_id: int
    has_instances: bool
    color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
    Label("unlabeled",             0, 255, False, (0, 0, 0)),
    Label("ego vehicle",           1, 255, False, (0, 0, 0)),
    Label("rectification border",  2, 255, False, (0, 0, 0)),
    Label("out of roi",            3, 255, False, (0, 0, 0)),
    Label("static",                4, 255, False, (0, 0, 0)),
    Label("dynamic",               5, 255, False, (111, 74, 0)),
    Label("ground",                6, 255, False, (81, 0, 81)),
    Label("road",                  7,   0, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, False, (244, 35, 232)),
    Label("parking",               9, 255, False, (250, 170, 160)),
    Label("rail track",           10, 255, False, (230, 150, 140)),
    Label("building",             11,   2, False, (70, 70, 70)),
    Label("wall",                 12,   3, False, (102, 102, 156)),
    Label("fence",                13,   4, False, (190, 153, 153)),
    Label("guard rail",           14, 255, False, (180, 165, 180)),
    Label("bridge",               15, 255, False, (150, 100, 100)),
    Label("tunnel",               16, 255, False, (150, 120, 90)),
    Label("pole",                 17,   5, False, (153, 153, 153)),
    Label("polegroup",            18, 255, False, (153, 153, 153)),
    Label("traffic light",        19,   6, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, False, (220, 220, 0)),
    Label("vegetation",           21,   8, False, (107, 142, 35)),
    Label("terrain",              22,   9, False, (152, 251, 152)),
    Label("sky",                  23,  10, False, (70, 130, 180)),
    Label("person",               24,  11, True,  (220, 20, 60)),
    Label("rider",                25,  12, True,  (255, 0, 0)),
    Label("car",                  26,  13, True,  (0, 0, 142)),
    Label("truck",                27,  14, True,  (0, 0, 70)),
    Label("bus",                  28,  15, True,  (0, 60, 100)),
    Label("caravan",              29, 255, True,  (0, 0, 90)),
    Label("trailer",              30, 255, True,  (0, 0, 110)),
    Label("train",                31,  16, True,  (0, 80, 100)),
    Label("motorcycle",           32,  17, True,  (0, 0, 230)),
    Label("bicycle",              33,  18, True,  (119, 11, 32)),
    Label("license plate",        -1,  -1, False, (0, 0, 142)),
)
"""The 34 Cityscapes labels and ``license plate``, as in cityscapesScripts' ``helpers/labels.py``
(its category columns left out)."""
# fmt: on

TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((label for label in LABELS if label.train_id not in (CITYSCAPES_VOID, NO_ID)), key=lambda x: x.train_id)
)
"""The 19 classes trained and scored on, in trainId order."""

LABEL_TO_TRAIN_ID: dict[int, int] = {
    label.id: IGNORE_INDEX if label.train_id in (CITYSCAPES_VOID, NO_ID) else label.train_id
    for label in LABELS
    if label.id != NO_ID
}
"""labelId (0..33) → trainId (0..18, or ``IGNORE_INDEX``): the layout's ``mask_values``."""

VOID_COLOR = LABELS[0].color
"""The colour of ``unlabeled``, the first label with trainId 255 (what labels.py's ``trainId2label[255]`` gives)."""


def cityscapes_classes() -> ClassInfo:
    """The 19 Cityscapes train classes: names, trainIds, official colours, labelIds as ``source_ids``."""
    return ClassInfo(
        names=[label.name for label in TRAIN_LABELS],
        ids=[label.train_id for label in TRAIN_LABELS],
        colors=[label.color for label in TRAIN_LABELS],
        ignore_index=IGNORE_INDEX,
        ignore_color=VOID_COLOR,
        source_ids=[label.id for label in TRAIN_LABELS],
    )


def relabel_instances(stored: np.ndarray) -> np.ndarray:
    """Cityscapes instance ids → consecutive ids.

    Shape:
        ``stored``: integer ``[H, W]`` (``labelId * 1000 + k`` on objects, labelId elsewhere);
        returns int32 ``[H, W]``: 0 where ``stored < 1000``, else ``1..N`` in the order of the
        distinct stored values.
    """
    objects = stored >= INSTANCE_OFFSET
    out = np.zeros(stored.shape, np.int32)
    if objects.any():
        _, inverse = np.unique(stored[objects], return_inverse=True)
        out[objects] = inverse.astype(np.int32) + 1
    return out


@dataclass(frozen=True)
class CityscapesInstances:
    """A Cityscapes ``*_instanceIds.png``, read as consecutive instance ids (see :func:`relabel_instances`)."""

    path: Path

    def read(self) -> np.ndarray:
        """Instance ids as ``int32 [H, W]``, 0 = no object (stuff, void and crowd regions).

        Raises:
            DataError: the file cannot be read; the message names it.
        """
        return relabel_instances(read_instances(self.path))


def detect(root: Path) -> bool:
    """A folder holding ``leftImg8bit/`` (the name is Cityscapes' own; a tree missing its labels is
    still detected, so that scanning it says what to download)."""
    return root.is_dir() and (root / IMAGE_FOLDER).is_dir()


def _subfolders(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")}


def _annotations(options: Mapping[str, object]) -> str:
    """The ``annotations`` option, checked (with every other option name).

    Raises:
        ConfigError: an unknown option or ``annotations`` value.
    """
    check_options(NAME, options, ("annotations",))
    annotations = options.get("annotations", DEFAULT_ANNOTATIONS)
    check_choice("annotations", annotations, tuple(ANNOTATION_FOLDERS))
    return str(annotations)


def splits(root: Path, **options: object) -> list[str]:
    """The sub-folders of ``leftImg8bit/`` with a matching split folder in the annotation tree the
    ``annotations`` option picks (``gtFine/`` by default); all of them while that tree is missing.

    Raises:
        ConfigError: an unknown option or ``annotations`` value.
    """
    images = _subfolders(root / IMAGE_FOLDER)
    tree = root / ANNOTATION_FOLDERS[_annotations(options)]
    return sorted(images & _subfolders(tree) if tree.is_dir() else images)


def _split_folders(root: Path, split: str | None, annotations: str) -> tuple[Path, Path]:
    """``(leftImg8bit/SPLIT, gtFine/SPLIT)``, checked.

    Raises:
        DataError: no split folders, or the annotation tree or its split folder is missing.
    """
    tree = ANNOTATION_FOLDERS[annotations]
    if split is None:
        raise DataError(
            f"{str(root / IMAGE_FOLDER)!r} holds no split folders; Cityscapes keeps its images in "
            f"{IMAGE_FOLDER}/train/CITY/, {IMAGE_FOLDER}/val/CITY/ and {IMAGE_FOLDER}/test/CITY/. "
            "Unpack leftImg8bit_trainvaltest.zip into the data folder as it comes."
        )
    other = next(name for name, folder in ANNOTATION_FOLDERS.items() if folder != tree)
    switch = (
        f" (or pass the data option `annotations: {other}` to use the {ANNOTATION_FOLDERS[other]}/ labels there)"
        if (root / ANNOTATION_FOLDERS[other] / split).is_dir()
        else ""
    )
    if not (root / tree).is_dir():
        raise DataError(
            f"{str(root)!r} has {IMAGE_FOLDER}/ but no {tree}/ folder with its labels; download "
            f"{DOWNLOADS[annotations]} from {DOWNLOAD_PAGE} and unpack it beside {IMAGE_FOLDER}/ "
            f"(giving {tree}/{split}/CITY/NAME_{tree}_{LABEL_IDS}.png){switch}."
        )
    if not (root / tree / split).is_dir():
        raise DataError(
            f"{str(root / tree)!r} has no {split}/ folder: the {annotations} annotations of split {split!r} are "
            f"missing; unpack {DOWNLOADS[annotations]} from {DOWNLOAD_PAGE} beside {IMAGE_FOLDER}/{switch}."
        )
    return root / IMAGE_FOLDER / split, root / tree / split


def _index_images(folder: Path, problems: list[tuple[str, str]]) -> dict[str, Path]:
    """``*_leftImg8bit.png`` under ``folder`` (recursively) by name; a name seen in two cities is a problem."""
    images: dict[str, Path] = {}
    for path in sorted(folder.rglob(f"*{IMAGE_SUFFIX}")):
        if path.name.startswith(".") or not path.is_file():
            continue
        name = path.name[: -len(IMAGE_SUFFIX)]
        if name in images:
            problems.append((str(path), f"has the same name as {images[name]}; keep one image per name"))
            continue
        images[name] = path
    return images


def _label_path(image: Path, image_dir: Path, label_dir: Path, tree: str, kind: str) -> Path:
    """The ``kind`` file (labelIds, labelTrainIds, instanceIds) of ``image``, at the same place under ``label_dir``."""
    name = image.name[: -len(IMAGE_SUFFIX)]
    return label_dir / image.parent.relative_to(image_dir) / f"{name}_{tree}_{kind}.png"


def _mask_kind(label_dir: Path, tree: str) -> str:
    """``labelIds`` when the split holds any such file, else ``labelTrainIds`` when it holds those.

    Raises:
        DataError: the split holds neither.
    """
    for kind in (LABEL_IDS, TRAIN_IDS):
        if next(label_dir.rglob(f"*_{tree}_{kind}.png"), None) is not None:
            return kind
    raise DataError(
        f"{str(label_dir)!r} holds no *_{tree}_{LABEL_IDS}.png (nor *_{tree}_{TRAIN_IDS}.png) files; "
        f"unpack the full {tree} archive from {DOWNLOAD_PAGE} (it has them next to the *_color.png and "
        "*_polygons.json files)."
    )


def _records(
    images: dict[str, Path], image_dir: Path, label_dir: Path, tree: str, kind: str
) -> tuple[list[Record], list[tuple[str, str]]]:
    """Pair each image with its mask (and instance file when present); an image without a mask is a problem."""
    records, problems = [], []
    for name, image in sorted(images.items()):
        mask = _label_path(image, image_dir, label_dir, tree, kind)
        if not mask.is_file():
            problems.append(
                (str(image), f"image has no labels: {relative_to(mask, label_dir.parent.parent)} is missing")
            )
            continue
        instances = _label_path(image, image_dir, label_dir, tree, INSTANCE_IDS)
        records.append(
            Record(name, image, MaskFile(mask), CityscapesInstances(instances) if instances.is_file() else None)
        )
    return records, problems


def _stray_labels(
    images: dict[str, Path], image_dir: Path, label_dir: Path, tree: str, kind: str
) -> list[tuple[str, str]]:
    """Mask files whose image is missing."""
    suffix = f"_{tree}_{kind}.png"
    root = image_dir.parent.parent
    strays = []
    for path in sorted(label_dir.rglob(f"*{suffix}")):
        name = path.name[: -len(suffix)]
        if not path.name.startswith(".") and name not in images:
            image = image_dir / path.parent.relative_to(label_dir) / f"{name}{IMAGE_SUFFIX}"
            strays.append((str(path), f"labels have no image: {relative_to(image, root)} is missing"))
    return strays


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """Pair ``leftImg8bit/SPLIT/**/NAME_leftImg8bit.png`` with ``gtFine/SPLIT/**/NAME_gtFine_labelIds.png``.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/`` (or ``gtCoarse/``).
        split: a sub-folder of ``leftImg8bit/`` (``train``, ``val``, ``test``, ``train_extra``).
        options: ``annotations``: ``"fine"`` (default, ``gtFine/``) or ``"coarse"`` (``gtCoarse/``).

    Raises:
        DataError: the label tree or split folder is missing, the split holds no images or no label files.
        ConfigError: an unknown option or ``annotations`` value.
    """
    annotations = _annotations(options)
    image_dir, label_dir = _split_folders(root, split, annotations)
    tree = ANNOTATION_FOLDERS[annotations]
    problems: list[tuple[str, str]] = []
    images = _index_images(image_dir, problems)
    if not images:
        raise DataError(
            f"{str(image_dir)!r} holds no *{IMAGE_SUFFIX} images (looked in its city folders); "
            "unpack leftImg8bit_trainvaltest.zip there or fix the path."
        )
    kind = _mask_kind(label_dir, tree)
    records, unpaired = _records(images, image_dir, label_dir, tree, kind)
    problems += unpaired + _stray_labels(images, image_dir, label_dir, tree, kind)
    mask_values: Mapping[int, int] = LABEL_TO_TRAIN_ID if kind == LABEL_IDS else {}
    has_instances = any(record.instances is not None for record in records)
    pairing = (
        f"{IMAGE_FOLDER}/{split}/CITY/NAME{IMAGE_SUFFIX} ↔ {tree}/{split}/CITY/NAME_{tree}_{kind}.png"
        + (" (labelIds read as the 19 trainIds)" if kind == LABEL_IDS else " (trainIds as stored)")
        + (f", NAME_{tree}_{INSTANCE_IDS}.png as instance labels" if has_instances else "")
    )
    return LayoutScan(
        NAME, root, image_dir, split, records, cityscapes_classes(), dict(mask_values), pairing, problems, has_instances
    )


LAYOUT = Layout(
    NAME,
    "Cityscapes (leftImg8bit/SPLIT/CITY/*_leftImg8bit.png + gtFine/ or gtCoarse/ labelIds; 19 train classes)",
    detect,
    splits,
    scan,
    {"annotations": "fine (gtFine/, default) or coarse (gtCoarse/)"},
)
