"""The ``generic`` layout: image and mask folders of any name, masks paired by a suffix rule, split lists.

Detected last, after pixelwise's own ``images/`` + ``masks/`` folder, so it takes what users have::

    root/img/NAME.jpg        root/NAME.jpg              root/images_x/NAME.jpg
    root/gt/NAME.png    or   root/NAME_mask.png    or   root/labels_y/NAME_gt.png   (+ options)
    root/train.txt           (optional split lists: one stem per line; also root/splits/*.txt)
    root/classes.yaml        (optional: class names, ``map`` and ``ignore``; see ``pixelwise.data.classes``)

    root/train/img/...  root/train/gt/...  root/val/img/...  root/val/gt/...   (split sub-folders)

How the image and mask folders are found, first rule that matches wins:

1. the options ``images: DIR`` / ``masks: DIR`` (relative to the root, or to each split folder);
2. sub-folders named for what they hold (``img``, ``imgs``, ``image``, ``images``, ``x``, ``inputs``,
   ``rgb`` ↔ ``mask``, ``masks``, ``label``, ``labels``, ``gt``, ``groundtruth``, ``annotations``,
   ``ann``, ``y``, ``targets``, ``seg``, ``segmentation``; case-insensitive, also as a word of the
   name: ``train_images``);
3. masks next to their images, named by a suffix (``NAME_mask.png``, ``NAME_gt.png``,
   ``NAME_label.png``, ``NAME_labels.png``, ``NAME_seg.png``, ``NAME-mask.png``, ``NAME.mask.png``),
   in the root or in an image-named sub-folder;
4. any two sub-folders whose file stems pair up, one holding only PNG/TIFF/BMP files; when names,
   suffixes and file types leave open which one holds the masks, the first file of each is read
   and the one holding a single-channel integer image of few values is the mask folder.

A mask pairs with an image when its stem is the image's stem plus the suffix (``""`` for the same
stem in another folder); the suffix is found from the files (option ``mask_suffix`` fixes it). Two
candidate folder pairs, or masks pairing by two suffixes, are an error that names the option that
resolves it. Detection only lists folders; it never decodes a file.

Splits come from split lists (``split_files: {train: train.txt, val: val.txt}``, or found:
``train.txt``/``val.txt``/``test.txt`` (and their aliases ``training``, ``valid``, ...) at the root,
or every ``splits/*.txt``), else from split sub-folders (named ``train``, ``val``, ``test`` or an
alias) that each hold an image and a mask folder, else the data set is unsplit. A list line may
name the stem or the image file (``0001`` or ``img/0001.jpg``: the stem is kept); blank lines and
``#`` comments are skipped.

Differences from MMSegmentation's ``BaseSegDataset`` (``img_dir``/``ann_dir`` + ``img_suffix``/
``seg_map_suffix`` + ``ann_file``): folders and suffixes are found rather than configured, files
are not searched recursively, a listed stem whose image is missing is a reported problem (MMSeg
fails when it opens the file), and images without a mask are reported rather than silently kept
(unsplit) or failing at load time (split lists). Options of this layout are not seen by the split
discovery of ``open_layout`` (it calls ``splits(root)``), so ``split_files`` naming lists outside the
places above works only when the caller passes the options on to :func:`splits`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelwise.data.classes import ClassInfo
from pixelwise.data.layouts.base import SPLIT_ALIASES, Layout, LayoutScan, MaskFile, Record, check_options
from pixelwise.data.readers import IMAGE_SUFFIXES, MASK_SUFFIXES, read_image_array
from pixelwise.errors import ConfigError, DataError
from pixelwise.io import read_text

NAME = "generic"
IMAGE_FOLDER_NAMES = frozenset({"img", "imgs", "image", "images", "x", "inputs", "rgb"})
"""Folder names (or words of a folder name) that mean "images"."""
MASK_FOLDER_NAMES = frozenset(
    {
        "mask",
        "masks",
        "label",
        "labels",
        "gt",
        "groundtruth",
        "annotations",
        "ann",
        "y",
        "targets",
        "seg",
        "segmentation",
    }
)
"""Folder names (or words of a folder name) that mean "masks"."""
MASK_NAME_SUFFIXES = ("_mask", "_gt", "_label", "_labels", "_seg", "-mask", ".mask")
"""Suffixes of a mask's stem after its image's stem, for masks stored beside (or apart from) their images."""
SAME_STEM = ""
"""The suffix of a mask in another folder named exactly like its image."""
SPLIT_LIST_FOLDER = "splits"
"""Sub-folder of the root whose ``*.txt`` files are all split lists."""
SPLIT_LIST_PATTERN = re.compile(
    rf"({'|'.join(name for names in SPLIT_ALIASES.values() for name in names)}|trainval)[-_]?\d*", re.IGNORECASE
)
"""Stems of split lists found at the root (``train.txt``, ``val.txt``, ``test.txt``, ``training.txt``, ...),
and names of split sub-folders."""
MAX_UNNAMED_FOLDERS = 8
"""Sub-folders compared pairwise when none is named for images or masks (more: not a data set of this layout)."""
MIN_PAIRED_FRACTION = 0.5
"""Share of the mask-candidate files that must pair with an image for two unnamed folders to count as a pair."""
MAX_MASK_LEVELS = 64
"""Most distinct values the first file of a folder may hold to look like a mask (content rule, last resort)."""
OPTIONS = {
    "images": "image folder, relative to the root (or to each split folder)",
    "masks": "mask folder, relative to the root (or to each split folder); may equal images",
    "mask_suffix": "what follows the image's stem in a mask's stem, e.g. '_mask' ('' = same stem)",
    "split_files": "split lists, e.g. {train: train.txt, val: val.txt} (relative to the root; one stem a line)",
}


@dataclass(frozen=True)
class _Plan:
    """A candidate pairing: an image folder, a mask folder (may be the same) and the suffixes that pair them.

    ``oriented`` is False when either folder could hold the masks (decided by content in :func:`scan`).
    """

    images: Path
    masks: Path
    suffixes: tuple[str, ...]
    oriented: bool = True


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes`` by stem (first one of a stem; dot files skipped)."""
    files: dict[str, Path] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(".") and path.suffix.lower() in suffixes and path.is_file():
            files.setdefault(path.stem, path)
    return files


def _role(folder: Path) -> str | None:
    """``"image"`` or ``"mask"`` when the folder's name (or one word of it) says so, else None."""
    words = set(re.split(r"[^a-z0-9]+", folder.name.lower()))
    image, mask = bool(words & IMAGE_FOLDER_NAMES), bool(words & MASK_FOLDER_NAMES)
    if image == mask:
        return None
    return "image" if image else "mask"


def _subfolders(base: Path) -> list[Path]:
    return sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))


def _strip(stem: str, suffix: str) -> str | None:
    """The image stem of a mask stem under ``suffix``, or None when the stem does not end with it."""
    if suffix == SAME_STEM:
        return stem
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else None


def _pairing_suffixes(images: Path, masks: Path, allowed: tuple[str, ...]) -> tuple[tuple[str, ...], int, int]:
    """The suffixes of ``allowed`` by which masks of ``masks`` pair with images of ``images``.

    Returns:
        ``(suffixes, most pairs by one suffix, mask files)``.
    """
    same = images == masks
    mask_stems = list(_stems(masks, MASK_SUFFIXES))
    all_image_stems = set(_stems(images, IMAGE_SUFFIXES))
    found, best = [], 0
    for suffix in allowed:
        if same and suffix == SAME_STEM:
            continue
        image_stems = {s for s in all_image_stems if not (same and s.endswith(suffix))}
        paired = sum(_strip(s, suffix) in image_stems for s in mask_stems)
        if paired:
            found.append(suffix)
            best = max(best, paired)
    return tuple(found), best, len(mask_stems)


def _plan(images: Path, masks: Path, allowed: tuple[str, ...], oriented: bool = True) -> _Plan | None:
    suffixes, _, _ = _pairing_suffixes(images, masks, allowed)
    return _Plan(images, masks, suffixes, oriented) if suffixes else None


def _given_plans(base: Path, images: str | None, masks: str | None, allowed: tuple[str, ...]) -> list[_Plan]:
    """Candidates when the options name the image folder, the mask folder or both."""
    subfolders = _subfolders(base)
    if images is not None and masks is not None:
        if not ((base / images).is_dir() and (base / masks).is_dir()):
            return []
        return [_plan(base / images, base / masks, allowed) or _Plan(base / images, base / masks, ())]
    if images is not None:
        mask_dirs = [d for d in subfolders if _role(d) == "mask"] + [base / images]
        pairs = [(base / images, d) for d in mask_dirs]
    else:
        image_dirs = [d for d in subfolders if _role(d) == "image"] or [d for d in subfolders if d != base / masks]
        pairs = [(d, base / str(masks)) for d in [*image_dirs, base]]
    plans = [plan for pair in pairs if (plan := _plan(*pair, allowed))]
    # a named mask folder beats the image folder itself (same-folder suffix rule) when both pair
    return [p for p in plans if p.images != p.masks] or plans


def _unnamed_plans(base: Path, allowed: tuple[str, ...]) -> list[_Plan]:
    """Candidates among sub-folders named for neither role: two folders whose stems pair up."""
    folders = [d for d in _subfolders(base) if _role(d) is None]
    if len(folders) > MAX_UNNAMED_FOLDERS:
        return []
    plans = []
    for k, first in enumerate(folders):
        for second in folders[k + 1 :]:
            forward, backward = _mask_folder_plan(first, second, allowed), _mask_folder_plan(second, first, allowed)
            if forward and backward:
                plans.append(_Plan(first, second, forward.suffixes, oriented=False))
            elif forward or backward:
                plans.append(forward or backward)
    return plans


def _mask_folder_plan(images: Path, masks: Path, allowed: tuple[str, ...]) -> _Plan | None:
    """``images`` ↔ ``masks`` when ``masks`` holds only mask files and most of them pair with an image."""
    files = [p for p in masks.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files or any(p.suffix.lower() not in MASK_SUFFIXES for p in files):
        return None
    suffixes, paired, total = _pairing_suffixes(images, masks, allowed)
    if not suffixes or paired < MIN_PAIRED_FRACTION * total:
        return None
    # a mask named NAME_mask.png decides the orientation; with equal stems either folder may be the masks
    return _Plan(images, masks, suffixes)


def candidates(base: Path, options: Mapping[str, object] | None = None) -> list[_Plan]:
    """The candidate image/mask folder pairs of ``base`` (options first, then the rules of the module docstring)."""
    options = options or {}
    if not base.is_dir():
        return []
    suffix = options.get("mask_suffix")
    allowed = (str(suffix),) if suffix is not None else (SAME_STEM, *MASK_NAME_SUFFIXES)
    images, masks = options.get("images"), options.get("masks")
    if images is not None or masks is not None:
        return _given_plans(
            base, None if images is None else str(images), None if masks is None else str(masks), allowed
        )
    named_images = [d for d in _subfolders(base) if _role(d) == "image"]
    named_masks = [d for d in _subfolders(base) if _role(d) == "mask"]
    plans = [plan for i in named_images for m in named_masks if (plan := _plan(i, m, allowed))]
    if plans:
        return plans
    plans = [plan for folder in [base, *named_images] if (plan := _plan(folder, folder, allowed))]
    return plans or _unnamed_plans(base, allowed)


def _split_lists(root: Path, split_files: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Split name → split list: the ``split_files`` option, else the lists found at the root."""
    if split_files is not None:
        return {str(name): root / str(path) for name, path in split_files.items()}
    lists = {p.stem: p for p in root.glob("*.txt") if SPLIT_LIST_PATTERN.fullmatch(p.stem) and p.is_file()}
    lists.update({p.stem: p for p in sorted((root / SPLIT_LIST_FOLDER).glob("*.txt")) if p.is_file()})
    return lists


def _split_folders(root: Path, options: Mapping[str, object] | None = None) -> list[str]:
    """Sub-folders named like a split (``train``, ``val``, ``test``, ``training``, ...) that each hold an image
    and a mask folder (``train/img`` + ``train/gt``) or images with suffixed masks."""
    return [d.name for d in _subfolders(root) if SPLIT_LIST_PATTERN.fullmatch(d.name) and candidates(d, options)]


def splits(root: Path, split_files: Mapping[str, str] | None = None, **options: object) -> list[str]:
    """The splits: those of the split lists, else the split sub-folders; none when unsplit."""
    if not root.is_dir():
        return []
    lists = _split_lists(root, split_files)
    if lists:
        return sorted(lists)
    if candidates(root, options):
        return []
    return _split_folders(root, options)


def detect(root: Path) -> bool:
    """True when ``root`` holds an image folder and a mask folder that pair up (itself or per split folder)."""
    return root.is_dir() and bool(candidates(root) or _split_folders(root))


def _checked_options(options: Mapping[str, object]) -> dict[str, object]:
    """The options, type-checked (folder names and the suffix are strings, ``split_files`` a mapping)."""
    check_options(NAME, options, OPTIONS)
    for name in ("images", "masks", "mask_suffix"):
        if name in options and not isinstance(options[name], str):
            raise ConfigError(f"data option {name!r} is {options[name]!r}; give a string ({OPTIONS[name]}).")
    split_files = options.get("split_files")
    if split_files is not None and (
        not isinstance(split_files, Mapping) or not all(isinstance(v, str) for v in split_files.values())
    ):
        raise ConfigError(f"data option 'split_files' is {split_files!r}; give {OPTIONS['split_files']}.")
    return dict(options)


def _read_split_list(path: Path) -> list[tuple[int, str]]:
    """``(line number, stem)`` of a split list; blank lines and ``#`` comments skipped, a file name's stem kept.

    Raises:
        DataError: the list is missing or not UTF-8 text.
    """
    if not path.is_file():
        raise DataError(f"split list {str(path)!r} does not exist; fix the path in split_files or create the file.")
    try:
        text = read_text(path, "split list")
    except ConfigError as error:
        raise DataError(str(error)) from error
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            name = Path(entry).name
            entries.append((number, Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name))
    return entries


def _fix(option: str) -> str:
    return f'--data-options "{{{option}}}" (Python: layout_options={{...}} with the same keys)'


def _choose(base: Path, options: Mapping[str, object]) -> _Plan:
    """The one image/mask folder pair of ``base``.

    Raises:
        DataError: a named folder is missing, no pair is found, or several pairs or suffixes are.
    """
    for name in ("images", "masks"):
        if name in options and not (base / str(options[name])).is_dir():
            raise DataError(f"{str(base / str(options[name]))!r} ({name} option) is not a folder; fix the path.")
    plans = candidates(base, options)
    if not plans:
        raise DataError(
            f"{str(base)!r} holds no image folder and mask folder whose files pair up (looked for folders such as "
            "img/ + gt/, masks beside their images as NAME_mask.png, and two folders with the same file stems); "
            f"name them with {_fix('images: DIR, masks: DIR, mask_suffix: _mask')}."
        )
    if len(plans) > 1:
        shown = ", ".join(f"{_rel(p.images, base)} ↔ {_rel(p.masks, base)}" for p in plans)
        same_images = len({p.images for p in plans}) == 1
        first = plans[0]
        option = f"masks: {_rel(first.masks, base)}"
        if not same_images:
            option = f"images: {_rel(first.images, base)}, " + option
        raise DataError(
            f"{str(base)!r} holds {len(plans)} candidate image/mask folder pairs ({shown}); "
            f"choose one with {_fix(option)}."
        )
    plan = plans[0]
    if not plan.suffixes:
        raise DataError(
            f"no mask in {str(plan.masks)!r} pairs with an image in {str(plan.images)!r} by a suffix rule "
            f"(same stem, {', '.join(MASK_NAME_SUFFIXES)}); set the suffix with {_fix('mask_suffix: _mask')}."
        )
    if len(plan.suffixes) > 1:
        shown = ", ".join(f"NAME{s}" for s in plan.suffixes)
        raise DataError(
            f"masks in {str(plan.masks)!r} pair with the images of {str(plan.images)!r} by several suffixes ({shown}); "
            f"choose one with {_fix(f'mask_suffix: {plan.suffixes[-1]}')}."
        )
    return plan if plan.oriented else _orient(plan, base)


def _looks_like_mask(folder: Path) -> bool:
    """True when the first mask-type file of ``folder`` is a single-channel integer image of few values."""
    first = next(iter(_stems(folder, MASK_SUFFIXES).values()))
    array = read_image_array(first)
    return array.shape[0] == 1 and np.issubdtype(array.dtype, np.integer) and len(np.unique(array)) <= MAX_MASK_LEVELS


def _orient(plan: _Plan, base: Path) -> _Plan:
    """Decide which of two same-stem folders holds the masks by reading the first file of each.

    Raises:
        DataError: both, or neither, look like masks.
    """
    first, second = _looks_like_mask(plan.images), _looks_like_mask(plan.masks)
    if first != second:
        return _Plan(plan.masks, plan.images, plan.suffixes) if first else _Plan(plan.images, plan.masks, plan.suffixes)
    a, b = _rel(plan.images, base), _rel(plan.masks, base)
    raise DataError(
        f"{str(base)!r}: {a}/ and {b}/ hold files with the same stems, and their names and contents do not tell "
        f"which holds the masks; name them with {_fix(f'images: {a}, masks: {b}')}."
    )


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix() if path != base else "."


def _index(plan: _Plan, problems: list[tuple[str, str]]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images by stem and masks by the stem of their image; duplicates and misnamed masks go to ``problems``."""
    (suffix,) = plan.suffixes
    same = plan.images == plan.masks
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for path in sorted(plan.masks.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in MASK_SUFFIXES or not path.is_file():
            continue
        key = _strip(path.stem, suffix)
        if key is None:
            if not same:  # beside the images, a file without the suffix is an image
                problems.append(
                    (str(path), f"mask name does not end with {suffix!r} after the image's stem; rename it")
                )
            continue
        _add(masks, key, path, problems)
    for path in sorted(plan.images.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if not (same and _strip(path.stem, suffix) is not None):
            _add(images, path.stem, path, problems)
    return images, masks


def _add(files: dict[str, Path], key: str, path: Path, problems: list[tuple[str, str]]) -> None:
    if key in files:
        problems.append((str(path), f"pairs under the same name as {files[key].name}; keep one file per name"))
    else:
        files[key] = path


def _listed(list_path: Path, images: dict[str, Path], plan: _Plan, problems: list[tuple[str, str]]) -> list[str]:
    """The stems of a split list that have an image; each stem without one is a problem naming the line."""
    stems: list[str] = []
    for number, stem in _read_split_list(list_path):
        if stem in images:
            if stem not in stems:
                stems.append(stem)
            continue
        problems.append(
            (
                str(list_path),
                f"{list_path.name} line {number} names {stem!r}, which has no image in {str(plan.images)!r}; "
                "remove the line or add the image",
            )
        )
    return stems


def _pairing_text(plan: _Plan, base: Path, images: dict[str, Path], masks: dict[str, Path]) -> str:
    """``img/NAME.jpg ↔ gt/NAME_mask.png (suffix _mask)``."""
    (suffix,) = plan.suffixes
    image_ext = next(iter(images.values())).suffix if images else ".*"
    mask_ext = next(iter(masks.values())).suffix if masks else ".*"
    folder = {p: "" if p == base else f"{_rel(p, base)}/" for p in (plan.images, plan.masks)}
    rule = f"suffix {suffix}" if suffix else "same file stem"
    return f"{folder[plan.images]}NAME{image_ext} ↔ {folder[plan.masks]}NAME{suffix}{mask_ext} ({rule})"


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    """Pair the image and mask folders of ``root`` (or ``root/split``) by the suffix rule, one split's stems.

    Args:
        root: the data set's root folder.
        split: a split of :func:`splits` (a split list's name, or a split sub-folder), None: unsplit.
        **options: ``images``, ``masks``, ``mask_suffix``, ``split_files`` (see :data:`OPTIONS`).

    Returns:
        The :class:`LayoutScan`; images without a mask, masks without an image and listed stems
        without an image are ``problems``.

    Raises:
        DataError: no (or more than one) image/mask folder pair, a missing split list or folder,
            an image folder without images.
        ConfigError: an unknown option, or one of the wrong type.
    """
    options = _checked_options(options)
    split_files = options.pop("split_files", None)
    lists = _split_lists(root, split_files) if root.is_dir() else {}
    if split is not None and lists and split not in lists:
        raise DataError(f"{str(root)!r} has no split list for {split!r}; its lists: {', '.join(sorted(lists))}.")
    base = root if split is None or lists else root / split
    if not base.is_dir():
        raise DataError(f"{str(base)!r} is not a folder; check the data path and the split.")
    plan = _choose(base, options)
    problems: list[tuple[str, str]] = []
    images, masks = _index(plan, problems)
    if not images:
        raise DataError(f"{str(plan.images)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}); fix the path.")
    stems = _listed(lists[split], images, plan, problems) if split is not None and lists else sorted(images)
    problems += [
        (str(images[s]), f"image has no mask ({_pairing_text(plan, base, images, masks)})")
        for s in stems
        if s not in masks
    ]
    if not (split is not None and lists):  # with split lists, files no list names are simply not used
        problems += [(str(masks[s]), "mask has no image") for s in sorted(masks) if s not in images]
    records = [Record(s, images[s], MaskFile(masks[s])) for s in sorted(stems) if s in masks]
    classes = ClassInfo.find(base) or ClassInfo.find(plan.masks)
    pairing = _pairing_text(plan, base, images, masks)
    if split is not None and lists:
        pairing += ", splits from " + ", ".join(_rel(p, root) for _, p in sorted(lists.items()))
    mask_values = classes.mask_values() if classes is not None else None
    return LayoutScan(NAME, root, base, split, records, classes, mask_values, pairing, problems)


LAYOUT = Layout(
    NAME,
    "image and mask folders of any name, masks paired by a suffix rule, split lists",
    detect,
    splits,
    scan,
    OPTIONS,
)
