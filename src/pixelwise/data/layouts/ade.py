"""The ``ade`` layout: ADE20K (the SceneParsing challenge's ``ADEChallengeData2016``) and MMSegmentation's
general ``img_dir/`` + ``ann_dir/`` folders.

Layout::

    ADEChallengeData2016/images/training/NAME.jpg        root/img_dir/train/NAME.jpg
    ADEChallengeData2016/images/validation/NAME.jpg      root/img_dir/val/NAME.jpg
    ADEChallengeData2016/annotations/training/NAME.png   root/ann_dir/train/NAME.png
    ADEChallengeData2016/annotations/validation/...      root/ann_dir/val/...   (or flat: img_dir/NAME.jpg, unsplit)
    classes.yaml                                         optional, in root or its parent

An image and its annotation share the file stem. ``root`` may also be the folder that holds
``ADEChallengeData2016/``. Split names are the sub-folders found in both trees (``--split train`` finds
``training``).

ADE20K annotations store 0 for "other" (unlabelled) pixels and 1..150 for the classes. With
``reduce_zero_label`` (the default for the ADE20K tree, fixed to True in MMSegmentation's
``ADE20KDataset``) 0 is read as ignore (255) and every other value ``v`` as ``v - 1``, so the 150 classes
are ids 0..149 (wall, building, sky, ...); 255 stays 255. This is done through the scan's
``mask_values``, so masks are never read while scanning.

Classes: the ADE tree has the 150 ADE20K class names (those of MMSegmentation's ``ADE20KDataset``;
its ``'bed '`` is written without the trailing space); with ``reduce_zero_label=False`` the list is
``other`` followed by the 150. ``img_dir/`` + ``ann_dir/`` has no class list of its own: a class file
beside the data gives one, else the count is inferred from the masks.

Deliberate differences from MMSegmentation:

- ``img_dir/`` + ``ann_dir/`` without ``reduce_zero_label`` reads the masks as pixelwise's own folder
  layout does (0/255 binary masks read 255 as class 1, see :func:`~pixelwise.data.readers.binary_mask_values`);
  MMSegmentation would read 255 as ignore. A class file's ``map`` (if any) is used instead.
- image and annotation are paired by stem (any image suffix; ``.png``/``.tif`` annotations), not by
  fixed ``img_suffix`` / ``seg_map_suffix`` strings, and an image without annotation (or the reverse)
  is a problem that ``pixelwise check-data`` lists. MMSegmentation's ``ann_file`` split lists are not read.
- the full ADE20K release (``ADE20K_2021_17_01``, index ``.pkl`` and per-object masks) is out of scope.
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layouts.base import Layout, LayoutScan, MaskFile, Record, check_options
from pixelwise.data.layouts.folder import index_files
from pixelwise.data.readers import IMAGE_SUFFIXES, MASK_SUFFIXES
from pixelwise.errors import ConfigError, DataError
from pixelwise.modes import IGNORE_INDEX

NAME = "ade"
ADE_FOLDERS = ("images", "annotations")
MMSEG_FOLDERS = ("img_dir", "ann_dir")
ADE_SUBFOLDER = "ADEChallengeData2016"
REDUCE_ZERO_LABEL = "reduce_zero_label"
MAX_STORED_VALUE = 255
"""Largest value of an 8-bit annotation: the range ``reduce_zero_label`` shifts."""
OTHER = "other"
"""The name of ADE20K's stored value 0 (unlabelled "other" objects) when it is kept as a class."""
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
"""The 150 ADE20K (SceneParsing) classes in id order: stored value ``k + 1`` is class ``k``."""


def _subfolders(folder: Path) -> set[str]:
    return {d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")}


def _has_files(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def find_tree(root: Path) -> tuple[Path, tuple[str, str]] | None:
    """``(base, (image folder, annotation folder))`` of the tree at ``root`` (or ``root/ADEChallengeData2016``).

    ``images/`` + ``annotations/`` count only with split sub-folders common to both (so that a COCO
    tree's ``annotations/*.json`` is not taken for one); ``img_dir/`` + ``ann_dir/`` may also be flat.
    """
    if not root.is_dir():
        return None
    for base in (root, root / ADE_SUBFOLDER):
        for names in (ADE_FOLDERS, MMSEG_FOLDERS):
            images, annotations = base / names[0], base / names[1]
            if not (images.is_dir() and annotations.is_dir()):
                continue
            if _subfolders(images) & _subfolders(annotations) or (names == MMSEG_FOLDERS and _has_files(images)):
                return base, names
    return None


def detect(root: Path) -> bool:
    return find_tree(root) is not None


def _tree(root: Path) -> tuple[Path, tuple[str, str]]:
    found = find_tree(root)
    if found is None:
        raise DataError(
            f"{str(root)!r} is not an ADE20K / MMSegmentation tree: expected images/<split>/ and "
            "annotations/<split>/ (ADEChallengeData2016), or img_dir/ and ann_dir/ (with the same split "
            "sub-folders, or flat). Point to the folder that holds them."
        )
    return found


def splits(root: Path, **options: object) -> list[str]:
    """The split names (options are those of ``scan``; none changes the splits)."""
    base, (images, annotations) = _tree(root)
    return sorted(_subfolders(base / images) & _subfolders(base / annotations))


def reduced_zero_label(ignore_index: int = IGNORE_INDEX) -> dict[int, int]:
    """``{0: ignore, v: v - 1, 255: 255}``: MMSegmentation's ``reduce_zero_label`` as stored value → class id."""
    values = {0: ignore_index, MAX_STORED_VALUE: ignore_index}
    values.update({v: v - 1 for v in range(1, MAX_STORED_VALUE)})
    return values


def _reduce_option(options: dict[str, object], is_ade: bool, class_map: bool) -> bool:
    """The ``reduce_zero_label`` to use (default: True for the ADE20K tree without a class-file map).

    Raises:
        ConfigError: not a boolean, or True together with a class file's ``map``.
    """
    value = options.get(REDUCE_ZERO_LABEL, is_ade and not class_map)
    if not isinstance(value, bool):
        raise ConfigError(f"data option {REDUCE_ZERO_LABEL} is {value!r}; give true or false.")
    if value and class_map:
        raise ConfigError(
            f"data option {REDUCE_ZERO_LABEL}=true and the class file's `map` both say how to read the stored "
            f"values; keep one (put `0: {IGNORE_INDEX}` and the shifted ids in the map, or drop the map)."
        )
    return value


def _classes(found: ClassInfo | None, is_ade: bool, reduce: bool) -> ClassInfo | None:
    """The class file beside the data (``found``); else the ADE20K classes for the ADE tree; else None (inferred)."""
    if found is not None or not is_ade:
        return found
    names = list(ADE20K_CLASSES) if reduce else [OTHER, *ADE20K_CLASSES]
    return ClassInfo(names, list(range(len(names))), None, IGNORE_INDEX)


def _pairs(images: Path, annotations: Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """Pair the files of two folders by stem; a problem per file without a partner."""
    problems: list[tuple[str, str]] = []
    image_files = index_files(images, IMAGE_SUFFIXES, problems)
    mask_files = index_files(annotations, MASK_SUFFIXES, problems)
    if not image_files:
        raise DataError(
            f"{str(images)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}); add images or fix the path."
        )
    problems += [
        (str(image_files[s]), f"image has no annotation {annotations.name}/{s}.png (same file stem)")
        for s in sorted(image_files)
        if s not in mask_files
    ]
    problems += [
        (str(mask_files[s]), f"annotation has no image (same file stem) in {images.name}/")
        for s in sorted(mask_files)
        if s not in image_files
    ]
    records = [Record(s, image_files[s], MaskFile(mask_files[s])) for s in sorted(image_files) if s in mask_files]
    return records, problems


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """Pair ``images/<split>/`` with ``annotations/<split>/`` (or ``img_dir`` with ``ann_dir``) by file stem.

    Args:
        root: the ADE20K / MMSegmentation folder.
        split: a split sub-folder name, or None for flat ``img_dir/`` + ``ann_dir/``.
        reduce_zero_label: read stored 0 as ignore and ``v`` as ``v - 1`` (default: True for the
            ADE20K tree, False for ``img_dir/`` + ``ann_dir/``).

    Raises:
        DataError: no tree at ``root``, or no images.
        ConfigError: an unknown option, a non-boolean ``reduce_zero_label``, or ``reduce_zero_label``
            together with a class file's ``map``.
    """
    check_options(NAME, options, (REDUCE_ZERO_LABEL,))
    base, (image_name, annotation_name) = _tree(root)
    is_ade = image_name == ADE_FOLDERS[0]
    class_file = ClassInfo.find(base)
    class_values = class_file.mask_values() if class_file is not None else None
    reduce = _reduce_option(dict(options), is_ade, class_values is not None)
    images, annotations = base / image_name, base / annotation_name
    if split is not None:
        images, annotations = images / split, annotations / split
    records, problems = _pairs(images, annotations)
    if reduce:
        mask_values: dict[int, int] | None = reduced_zero_label()
    else:
        mask_values = class_values if class_values is not None else ({} if is_ade else None)
    folder = f"{split}/" if split else ""
    pairing = f"{image_name}/{folder}NAME.* ↔ {annotation_name}/{folder}NAME.png (same file stem)"
    pairing += ", reduce_zero_label: 0 → ignore, v → v-1" if reduce else ""
    classes = _classes(class_file, is_ade, reduce)
    return LayoutScan(NAME, root, base, split, records, classes, mask_values, pairing, problems)


LAYOUT = Layout(
    NAME,
    "ADE20K / MMSegmentation (images/ + annotations/, or img_dir/ + ann_dir/; reduce_zero_label)",
    detect,
    splits,
    scan,
    {REDUCE_ZERO_LABEL: "read stored 0 as ignore and v as v-1 (default: true for ADE20K, false for img_dir/ann_dir)"},
)
