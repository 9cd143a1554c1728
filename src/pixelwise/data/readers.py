"""Reading image, mask and instance files: one home for decoding and for translating read errors.

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

import math
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from pixelwise.data.classes import ClassInfo
from pixelwise.errors import DataError
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


def listing(items: list[str], limit: int = MAX_LISTED) -> str:
    """``"a, b, c, d, e and 3 more"``: the first ``limit`` items of a list for an error message."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def relative_to(file: str | os.PathLike, base: Path) -> str:
    """``file`` relative to ``base`` when it lies under it (shorter messages), else as given."""
    try:
        return str(Path(file).relative_to(base))
    except ValueError:
        return str(file)


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
    return remap_values(mask, values)


def remap_values(mask: np.ndarray, values: Mapping[int, int] | None) -> np.ndarray:
    """Replace stored values by class ids through ``values`` (``{stored: class id}``), in one table lookup.

    Shape:
        ``mask``: int64 ``[H, W]`` (non-negative); returns the same shape (a new array when ``values``
        is not empty, else ``mask`` itself).
    """
    if not values or not mask.size:
        return mask
    top = max(int(mask.max()), max(values)) + 1
    table = np.arange(top, dtype=np.int64)
    keys = np.fromiter(values.keys(), dtype=np.int64)
    table[keys] = np.fromiter(values.values(), dtype=np.int64)
    return table[mask]


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
        colours = listing([str(list(c)) for c in unknown])
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


def infer_num_classes(stored: Iterable[int], values: Mapping[int, int], ignore_index: int = IGNORE_INDEX) -> int:
    """Number of classes implied by the values found in the masks (see :func:`mask_value_set`), after
    the ``values`` map: largest class id (other than ``ignore_index``) + 1, at least 2."""
    ids = {values.get(v, v) for v in stored} - {ignore_index}
    return max(max(ids, default=0) + 1, MIN_INFERRED_CLASSES)
