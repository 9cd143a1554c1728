"""Folders of images and masks: reading, mask decoding, pairing by file stem, and the dataset.

Layout (split folders optional)::

    root/images/NAME.png          root/train/images/NAME.png   root/val/images/...
    root/masks/NAME.png     or    root/train/masks/NAME.png    root/val/masks/...
    root/instances/NAME.png       root/train/instances/...     (optional: instance ids)
    root/classes.yaml             (optional: class names, ids, colours; see ``pixelwise.data.classes``)

An image and its mask share the file stem (``01.jpg`` ↔ ``01.png``). Files whose names start with
a dot are skipped (editor backups, half-written temporary files).

Images: PNG/JPEG/BMP through Pillow, TIFF through tifffile; gray, RGB or any number of channels,
8 or 16 bit or float. They come back as ``float32 [C, H, W]``: 8-bit divided by 255, 16-bit by
65535, float as stored; 32-bit integers are taken as 16-bit data in a wider container and divided
by 65535. An alpha channel in a PNG (``RGBA``, ``LA``) is dropped: in practice it is transparency,
not signal. Store extra channels (RGB + near-infrared, ...) in a TIFF, which keeps them all.
A 3-D TIFF is ``[C, H, W]`` if its first dimension is at most 16 and its last is larger
(``(4, 512, 512)``), otherwise ``[H, W, C]`` (``(512, 512, 3)``, ``(8, 8, 3)``).

Masks: index PNG/TIFF (8 or 16 bit; values are class ids), palette PNG (the palette indices are
the class ids), or RGB colour-coded (colours mapped to ids through the class file's colours; an
RGB mask with R = G = B everywhere and no class colours is read as an index mask).
"""

from __future__ import annotations

import fnmatch
import math
import os
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError

from pixelwise.data.classes import ClassInfo
from pixelwise.errors import ConfigError, DataError
from pixelwise.modes import IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_CHW_CHANNELS = 16
MAX_TIFF_PAGES = 4096
"""Most pages a TIFF image may have (one per channel, or one per row in tifffile's ``[H, W, C]`` stacks)."""
"""A 3-D TIFF whose first dimension is at most this (and last is larger) is read as ``[C, H, W]``."""
UINT8_MAX = 255.0
UINT16_MAX = 65535.0
MIN_INFERRED_CLASSES = 2
"""Fewest classes inferred from masks: a segmentation has at least background and one class."""
MAX_LISTED = 5
IMAGE_READ_ERRORS = (
    OSError,
    ValueError,
    MemoryError,
    EOFError,
    SyntaxError,  # Pillow's "broken PNG file"
    LookupError,
    ArithmeticError,
    TypeError,  # tifffile, on tags of the wrong type
    NotImplementedError,  # tifffile: an unsupported compression
    struct.error,
    zlib.error,
    UnidentifiedImageError,
    tifffile.TiffFileError,
    Image.DecompressionBombError,
)
"""What decoding a damaged image file raises (Pillow, tifffile, zlib, NumPy), found by feeding them corrupted
files (tests/test_fuzz_inputs.py); :func:`read_error` turns each into a DataError naming the file."""


def _listing(items: list[str], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _open_pil(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()  # decode now, so that a truncated file fails here and not later
    return image


def _read_raw(path: Path, mask: bool) -> tuple[np.ndarray, str]:
    """Return the stored array and the Pillow mode (``"tiff"`` for TIFF files), alpha dropped.

    A palette image gives its indices when read as a mask (they are the class ids) and its
    colours when read as an image.
    """
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            check_tiff_pages(tif)
            _refuse_huge(tif.series[0].shape)
            return np.asarray(tif.asarray()), "tiff"
    image = _open_pil(path)
    if mask and image.format == "JPEG":
        raise ValueError(
            "it holds JPEG-compressed data (lossy: the class ids are smeared at every edge); "
            "export the masks losslessly, as PNG or TIFF"
        )
    if image.mode in ("P", "PA") and mask:
        return np.asarray(image.convert("P") if image.mode == "PA" else image), "P"
    if image.mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif image.mode not in ("L", "RGB", "I", "F") and not image.mode.startswith("I;16"):
        image = image.convert("RGB")  # RGBA, palette images, CMYK, YCbCr, ...
    return np.asarray(image), image.mode


def check_tiff_pages(tif: tifffile.TiffFile) -> None:
    """Refuse a TIFF of more than ``MAX_TIFF_PAGES`` pages before its pages are gathered into a series:
    a damaged page chain (a loop, say) can make gathering them take minutes.

    Raises:
        ValueError: too many pages (the readers turn it into a DataError naming the file).
    """
    try:
        tif.pages[MAX_TIFF_PAGES]
    except IndexError:
        return
    raise ValueError(
        f"it holds more than {MAX_TIFF_PAGES} pages (a stack, or a damaged page chain); "
        "save one 2-D image (with its channels) per file"
    )


def _refuse_huge(shape: tuple[int, ...]) -> None:
    """Apply Pillow's decompression-bomb limit to a TIFF's declared size before decoding it (a damaged
    header can declare billions of pixels; decoding them would take minutes and gigabytes)."""
    channels = shape[0] if len(shape) == 3 and shape[0] <= MAX_CHW_CHANNELS < shape[-1] else 1
    channels = shape[-1] if len(shape) == 3 and channels == 1 else channels
    pixels = math.prod(shape) // max(channels, 1)
    if pixels > 2 * (Image.MAX_IMAGE_PIXELS or pixels):
        raise Image.DecompressionBombError(f"{pixels} pixels declared")


def read_error(path: Path, what: str, error: BaseException) -> DataError:
    """The DataError for an image file that could not be decoded (``what``: "image", "mask", ...):
    names the file, the reason and the fix."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, Image.DecompressionBombError):
        reason = (
            f"its header declares more pixels than Pillow's safety limit of {Image.MAX_IMAGE_PIXELS * 2} "
            "(a decompression bomb, or an image too large to read whole; save huge images as tiled TIFFs)"
        )
    elif isinstance(error, MemoryError):
        reason = "its declared size does not fit in memory"
    return DataError(
        f"cannot read {what} {str(path)!r}: {reason}. The file is corrupt, truncated or not an image; "
        "re-export it or remove it (in a data folder, with its partner: `pixelwise check-data` lists every such file)."
    )


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``[C, H, W]`` in its stored dtype (uint8, uint16, float, ...), unscaled.

    Raises:
        DataError: the file cannot be decoded, or has more than three dimensions.
    """
    path = Path(path)
    try:
        array, mode = _read_raw(path, mask=False)
    except IMAGE_READ_ERRORS as error:
        raise read_error(path, "image", error) from error
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        if mode == "tiff" and array.shape[0] <= MAX_CHW_CHANNELS < array.shape[-1]:
            return array
        return np.moveaxis(array, -1, 0)  # HWC -> CHW
    raise DataError(
        f"image {str(path)!r} has shape {list(array.shape)}; expected [H, W], [H, W, C] or [C, H, W]. "
        "Split stacks and time series into one file per 2-D image."
    )


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``float32 [C, H, W]``: :func:`read_image_array`, scaled as the module docstring says.

    Raises:
        DataError: as in :func:`read_image_array`.

    Example:
        >>> read_image("data/images/01.png").shape  # doctest: +SKIP
        (3, 360, 480)
    """
    return scale_image(read_image_array(path))


def image_scale(dtype: np.dtype) -> float | None:
    """The number an image of this dtype is divided by to reach ``[0, 1]`` (None: float, kept as stored)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return UINT8_MAX
    if dtype.kind in "fb":
        return None
    if dtype.itemsize <= 2:  # uint16 (65535), int8 / int16 (their own maximum)
        return float(np.iinfo(dtype).max)
    return UINT16_MAX  # 16-bit data in an int32 container (Pillow's mode "I")


def scale_image(array: np.ndarray) -> np.ndarray:
    """Convert an image array to float32, dividing by :func:`image_scale` of its dtype."""
    scale = image_scale(array.dtype)
    if scale is None:
        return np.ascontiguousarray(array, dtype=np.float32)
    return array.astype(np.float32) / np.float32(scale)


def read_mask(
    path: str | os.PathLike,
    classes: ClassInfo | None = None,
    ignore_index: int = IGNORE_INDEX,
    values: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Read a mask file as class ids ``int64 [H, W]`` (index, palette or RGB colour-coded; see module docstring).

    Args:
        path: mask file.
        classes: class list whose colours decode RGB masks; not needed for index and palette masks.
        ignore_index: value given to void pixels of RGB masks (the class file's void colour).
        values: stored values replaced by class ids, e.g. ``{255: 1}`` for a binary mask stored as
            0/255 (see :func:`binary_mask_values`).

    Raises:
        DataError: unreadable file, negative or fractional values, an RGB mask without class colours,
            or a colour that belongs to no class (names the file, the colours and the fix).
    """
    path = Path(path)
    try:
        array, _ = _read_raw(path, mask=True)
    except IMAGE_READ_ERRORS as error:
        raise read_error(path, "mask", error) from error
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return _decode_rgb_mask(path, array[..., :3], classes, ignore_index)
    if array.ndim != 2:
        raise DataError(
            f"mask {str(path)!r} has shape {list(array.shape)}; expected [H, W] class ids (index or palette PNG) "
            "or [H, W, 3] colours. Save one 2-D mask per image."
        )
    if array.dtype.kind == "f" and not (np.all(np.isfinite(array)) and np.all(array == np.round(array))):
        raise DataError(f"mask {str(path)!r} holds fractional values; masks must hold integer class ids.")
    mask = array.astype(np.int64)
    if mask.size and mask.min() < 0:
        raise DataError(f"mask {str(path)!r} holds negative values ({int(mask.min())}); class ids start at 0.")
    for stored, class_id in (values or {}).items():
        mask[array == stored] = class_id
    return mask


def binary_mask_values(
    stored: Iterable[int], ignore_index: int | None = None, classes: ClassInfo | None = None
) -> dict[int, int]:
    """``{v: 1}`` when masks hold exactly the values 0 and one other value ``v`` > 1, else ``{}``.

    Binary masks are most often exported as 0/255 (8 bit) or 0/65535 (16 bit). Read as they are,
    255 would be the ignore value and 65535 would imply 65,536 classes; read with this map, ``v``
    is the foreground class 1.

    Args:
        stored: every value found in the masks.
        ignore_index: an ignore value the user chose explicitly; it is never taken for the
            foreground (None: not chosen, so the default 255 may be).
        classes: the data set's class file, if any; a class file of more than two classes, or one
            that names ``v`` as a class, turns the rule off.
    """
    present = set(int(v) for v in stored)
    if 0 not in present or len(present) != 2:
        return {}
    (value,) = present - {0}
    if value <= 1 or value == ignore_index:
        return {}
    if classes is not None and (classes.num_classes != MIN_INFERRED_CLASSES or value in classes.ids):
        return {}
    return {value: 1}


def mask_value_set(mask_paths: Iterable[Path], classes: ClassInfo | None, ignore_index: int = IGNORE_INDEX) -> set[int]:
    """Every value stored in the masks (RGB masks decoded through ``classes``)."""
    found: set[int] = set()
    for path in mask_paths:
        found.update(np.unique(read_mask(path, classes, ignore_index)).tolist())
    return found


def _decode_rgb_mask(path: Path, rgb: np.ndarray, classes: ClassInfo | None, ignore_index: int) -> np.ndarray:
    if classes is None or classes.colors is None:
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].astype(np.int64)  # a gray index mask saved as RGB
        raise DataError(
            f"mask {str(path)!r} is an RGB colour-coded image, but no class file gives the class colours. "
            "Put a classes.yaml next to the images/ and masks/ folders (or in their parent), e.g. "
            "`classes: [{name: road, id: 0, color: [128, 64, 128]}, ...]`, or save the masks as index PNGs."
        )
    ids, unknown = classes.decode_colors(rgb)
    if unknown:
        colours = _listing([str(list(c)) for c in unknown])
        raise DataError(
            f"mask {str(path)!r} holds colours {colours} that belong to no class of the class file. "
            "Add each to classes.yaml as a class (`{name: ..., id: ..., color: [r, g, b]}`), or with "
            f"id {classes.ignore_index} to ignore its pixels."
        )
    if classes.ignore_index != ignore_index:
        ids[ids == classes.ignore_index] = ignore_index
    return ids


def read_instances(path: str | os.PathLike) -> np.ndarray:
    """Read an instance label file (16-bit PNG or integer TIFF) as ``int32 [H, W]``, 0 = background.

    Raises:
        DataError: unreadable file or not a 2-D integer array.
    """
    path = Path(path)
    try:
        array, _ = _read_raw(path, mask=True)
    except IMAGE_READ_ERRORS as error:
        raise read_error(path, "instance file", error) from error
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise DataError(
            f"instance file {str(path)!r} has shape {list(array.shape)} and type {array.dtype}; "
            "expected [H, W] integer instance ids (0 = background), e.g. a 16-bit PNG."
        )
    return array.astype(np.int32)


@dataclass
class FolderLayout:
    """The files of one data folder (one split), indexed by stem; built by :func:`scan_folder`."""

    root: Path
    base: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    instances: dict[str, Path] | None = None
    duplicates: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[Path, Path]]:
        """``(image, mask)`` paths of every stem that has both, sorted by stem."""
        return [(self.images[s], self.masks[s]) for s in sorted(self.images) if s in self.masks]

    @property
    def images_without_mask(self) -> list[Path]:
        return [self.images[s] for s in sorted(self.images) if s not in self.masks]

    @property
    def masks_without_image(self) -> list[Path]:
        return [self.masks[s] for s in sorted(self.masks) if s not in self.images]


def _index(folder: Path, suffixes: tuple[str, ...], duplicates: list[tuple[Path, str]]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            duplicates.append((path, f"has the same stem as {files[path.stem].name}; keep one file per name"))
            continue
        files[path.stem] = path
    return files


def select_stems(stems: Iterable[str], files: str | Sequence[str] | None) -> set[str]:
    """The stems matching ``files``: a glob pattern over file stems (``"2[0-4]"``), a list of stems
    or patterns, or None for all."""
    stems = set(stems)
    if files is None:
        return stems
    patterns = [files] if isinstance(files, str) else [str(f) for f in files]
    return {s for s in stems if any(fnmatch.fnmatchcase(s, p) for p in patterns)}


def scan_folder(
    root: str | os.PathLike, split: str | None = None, files: str | Sequence[str] | None = None
) -> FolderLayout:
    """Find the ``images/``, ``masks/`` (and ``instances/``) files of ``root`` or ``root/split``,
    keeping only the stems that ``files`` selects (see :func:`select_stems`).

    Raises:
        DataError: ``root`` or the split does not exist, a folder is missing, or there are no images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist or is not a folder; check the path.")
    splits = sorted(d.name for d in root.iterdir() if (d / "images").is_dir())
    if split is not None:
        base = root / split
        if not base.is_dir():
            if splits:
                fix = f"it has {', '.join(splits)}; pass one of those as the split"
            elif (root / "images").is_dir():
                fix = "its images/ and masks/ are one unsplit set; put them in train/ and val/ sub-folders"
            else:
                fix = "expected split sub-folders such as train/images/ and train/masks/"
            raise DataError(f"{str(root)!r} has no split folder {split!r}: {fix}.")
    elif (root / "images").is_dir() or not splits:
        base = root
    else:
        example = "train" if "train" in splits else splits[0]
        raise DataError(
            f"{str(root)!r} holds split folders ({', '.join(splits)}); choose one with split='{example}' "
            f"(command line: --split {example})."
        )
    layout_hint = "expected ROOT/images and ROOT/masks, or ROOT/<split>/images and ROOT/<split>/masks"
    for name in ("images", "masks"):
        if not (base / name).is_dir():
            raise DataError(f"{str(base)!r} has no {name}/ folder; {layout_hint}.")
    duplicates: list[tuple[Path, str]] = []
    images = _index(base / "images", IMAGE_SUFFIXES, duplicates)
    masks = _index(base / "masks", MASK_SUFFIXES, duplicates)
    if not images:
        raise DataError(
            f"{str(base / 'images')!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
            "add images or fix the path."
        )
    instances = _index(base / "instances", MASK_SUFFIXES, duplicates) if (base / "instances").is_dir() else None
    if files is not None:
        keep = select_stems(images, files) | select_stems(masks, files)
        if not keep:
            raise DataError(
                f"files={files!r} selects none of the {len(images)} images in {str(base)!r}; "
                "give a glob over file names without suffix, e.g. '2[0-4]' or ['20', '21']."
            )
        images = {k: v for k, v in images.items() if k in keep}
        masks = {k: v for k, v in masks.items() if k in keep}
        instances = {k: v for k, v in instances.items() if k in keep} if instances is not None else None
    return FolderLayout(root, base, images, masks, instances, duplicates)


def infer_num_classes(stored: Iterable[int], values: Mapping[int, int], ignore_index: int = IGNORE_INDEX) -> int:
    """Number of classes implied by the values found in the masks (see :func:`mask_value_set`), after
    the ``values`` map: largest class id (other than ``ignore_index``) + 1, at least 2."""
    ids = {values.get(v, v) for v in stored} - {ignore_index}
    return max(max(ids, default=0) + 1, MIN_INFERRED_CLASSES)


class SegmentationFolder(torch.utils.data.Dataset):
    """Pairs of images and masks from a folder (layout and file formats in the module docstring).

    Args:
        root: data folder.
        split: split sub-folder (``"train"``, ``"val"``, ...); None when ``root`` holds images/ itself.
        transform: called as ``transform(image, mask)`` → ``(image, mask)``, or, when instance labels
            are loaded, ``transform(image, mask, instances)`` → ``(image, mask, instances)``
            (the callables of :func:`pixelwise.data.build_transforms` take both forms).
        classes: class list; default: the ``classes.yaml``/``.json`` of the folder or its parent, else
            ``ClassInfo.default(num_classes)``, else ``num_classes`` is inferred from the masks.
        num_classes: number of classes ``K``; checked against ``classes`` when both are known.
        ignore_index: mask value of void pixels (None: 255, which a binary mask set may take for its
            foreground, see ``mask_values``).
        mask_values: stored mask values replaced by class ids, e.g. ``{255: 1}``; None: found from the
            masks on first use (:func:`binary_mask_values`: masks holding only 0 and one other value
            read that value as class 1); ``{}``: values are class ids as stored.
        instances: also load ``instances/NAME.*`` (int32 instance ids) when that folder exists.
        files: use only these files: a glob over file stems (``"[01]?"``) or a list of stems/globs.

    Shape:
        ``item["image"]``: float32 ``[C, H, W]`` in ``[0, 1]`` (float TIFF: as stored);
        ``item["mask"]``: int64 ``[H, W]``; ``item["instances"]``: int32 ``[H, W]``; ``item["name"]``: the stem.

    Raises:
        DataError: missing folders, no images, images without masks (or the reverse), duplicate
            stems, or (when an item is read) an unreadable file, a size or channel mismatch, or a
            class id outside ``0..K-1``.
        ConfigError: ``classes`` and ``num_classes`` disagree.

    Example:
        >>> data = SegmentationFolder("data/camvid", split="val")  # doctest: +SKIP
        >>> item = data[0]; item["image"].shape, item["mask"].shape  # doctest: +SKIP
        (torch.Size([3, 360, 480]), torch.Size([360, 480]))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        transform=None,
        classes: ClassInfo | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        instances: bool = False,
        files: str | Sequence[str] | None = None,
        mask_values: Mapping[int, int] | None = None,
    ) -> None:
        self.layout = scan_folder(root, split, files)
        self.root, self.split, self.transform = self.layout.root, split, transform
        self.ignore_index = IGNORE_INDEX if ignore_index is None else ignore_index
        self._explicit_ignore = ignore_index
        self._mask_values = None if mask_values is None else {int(k): int(v) for k, v in mask_values.items()}
        self._stored_values: set[int] | None = None
        self._raise_on_pairing_problems()
        self.pairs: list[tuple[Path, Path]] = self.layout.pairs
        if classes is None:
            classes = ClassInfo.find(self.layout.base)
        if classes is not None and num_classes is not None and classes.num_classes != num_classes:
            raise ConfigError(
                f"num_classes={num_classes} but the class list has {classes.num_classes} classes "
                f"({', '.join(classes.names)}); make them agree or leave num_classes out."
            )
        if classes is None and num_classes is not None:
            classes = ClassInfo.default(num_classes, self.ignore_index)
        self._classes = classes
        self.instance_paths: list[Path] | None = None
        if instances and self.layout.instances is not None:
            missing = [image.stem for image, _ in self.pairs if image.stem not in self.layout.instances]
            if missing:
                raise DataError(
                    f"{str(self.layout.base / 'instances')!r} has no instance file for {_listing(missing)}; "
                    "give every image one (same stem) or load without instances."
                )
            self.instance_paths = [self.layout.instances[image.stem] for image, _ in self.pairs]
        self.in_channels: int = read_image(self.pairs[0][0]).shape[0]

    def _raise_on_pairing_problems(self) -> None:
        layout = self.layout
        messages = []
        if layout.duplicates:
            messages.append("duplicate names: " + _listing([f"{p} {why}" for p, why in layout.duplicates]))
        if layout.images_without_mask:
            names = [p.name for p in layout.images_without_mask]
            messages.append(f"{len(names)} images without a mask in {layout.base / 'masks'}: {_listing(names)}")
        if layout.masks_without_image:
            names = [p.name for p in layout.masks_without_image]
            messages.append(f"{len(names)} masks without an image in {layout.base / 'images'}: {_listing(names)}")
        if messages:
            raise DataError(
                f"images and masks of {str(layout.base)!r} do not pair up by file name: {'; '.join(messages)}. "
                "Every image needs a mask with the same stem (01.jpg ↔ 01.png); add the missing files or remove "
                "the strays (`pixelwise check-data` lists every problem)."
            )

    def _stored(self) -> set[int]:
        """Every value stored in the masks (one pass over them, on first use)."""
        if self._stored_values is None:
            self._stored_values = mask_value_set((m for _, m in self.pairs), self._classes, self.ignore_index)
        return self._stored_values

    @property
    def mask_values(self) -> dict[int, int]:
        """Stored mask values replaced by class ids when reading (found from the masks when not given)."""
        if self._mask_values is None:
            self._mask_values = binary_mask_values(self._stored(), self._explicit_ignore, self._classes)
        return self._mask_values

    @property
    def classes(self) -> ClassInfo:
        """The class list (inferred from the masks on first use when neither classes nor num_classes was given)."""
        if self._classes is None:
            k = infer_num_classes(self._stored(), self.mask_values, self.ignore_index)
            self._classes = ClassInfo.default(k, self.ignore_index)
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return self.classes.num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = read_mask(mask_path, self._classes, self.ignore_index, self.mask_values)
        if image.shape[1:] != mask.shape:
            raise DataError(
                f"image {str(image_path)!r} is {image.shape[2]}x{image.shape[1]} (WxH) but its mask {str(mask_path)!r} "
                f"is {mask.shape[1]}x{mask.shape[0]}; masks must match their image pixel for pixel."
            )
        if image.shape[0] != self.in_channels:
            raise DataError(
                f"image {str(image_path)!r} has {image.shape[0]} channels but {self.pairs[0][0].name} has "
                f"{self.in_channels}; convert all images to the same channel count."
            )
        if self._classes is not None:  # an inferred class count covers every mask by construction
            bad = (mask >= self._classes.num_classes) & (mask != self.ignore_index)
            if bad.any():
                raise DataError(
                    f"mask {str(mask_path)!r} holds class ids {sorted(np.unique(mask[bad]).tolist())[:MAX_LISTED]} "
                    f"outside 0..{self._classes.num_classes - 1}; raise num_classes (--classes) or map those pixels "
                    f"to ignore_index {self.ignore_index}."
                )
        sample = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}
        if self.instance_paths is not None:
            instances = read_instances(self.instance_paths[index])
            if instances.shape != mask.shape:
                raise DataError(
                    f"instance file {str(self.instance_paths[index])!r} is {instances.shape[1]}x{instances.shape[0]} "
                    f"(WxH) but its mask is {mask.shape[1]}x{mask.shape[0]}; they must match pixel for pixel."
                )
            sample["instances"] = torch.from_numpy(instances)
        if self.transform is not None:
            keys = list(sample)
            sample = dict(zip(keys, self.transform(*sample.values()), strict=True))
        sample["name"] = image_path.stem
        return sample

    def __repr__(self) -> str:
        where = self.layout.base
        return f"SegmentationFolder({str(where)!r}, {len(self)} pairs, in_channels={self.in_channels})"
