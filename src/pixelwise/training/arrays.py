"""Images and masks held in memory (NumPy arrays or tensors), as a torch Dataset and as a data folder.

What a Keras user has, and what it becomes::

    images  [N, H, W, C] or [N, C, H, W] (or [N, H, W] gray)   uint8 (÷ 255) / uint16 (÷ 65535) / float as is
    masks   [N, H, W] class ids, or one-hot [N, H, W, K]       → int64 [N, H, W] (all-zero one-hot: ignore_index)
                         │
      ArrayDataset[i] = {"image": float32 [C, H, W], "mask": int64 [H, W], "name": "00000"}
                         │  write_split(dataset, root / "train")
      root/train/images/00000.png|.tif  +  root/train/masks/00000.png|.tif   (read back exactly by SegmentationFolder)

The channel axis of a 4-D image array is found by matching the model's ``in_channels``; when both axes
match (``[N, 3, 8, 3]``) the caller must say ``channels_last=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image
from torch.utils.data import Dataset

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.modes import IGNORE_INDEX

PNG_CHANNELS = (1, 3)
"""Channel counts a PNG stores as they are (a 4-channel PNG would be read as RGBA, its fourth channel dropped)."""
UINT8_MAX = 255
UINT16_MAX = 65535
NAME_DIGITS = 5
"""Digits of the file names written for array items (``00000.png``)."""


def _numpy(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values
    raise ShapeError(f"{what} must be a NumPy array or a torch tensor; got {type(values).__name__}.")


def channels_axis(shape: Sequence[int], in_channels: int, channels_last: bool | None, what: str = "x") -> bool:
    """Whether a 4-D array of ``shape`` is ``[N, H, W, C]`` (True) or ``[N, C, H, W]`` (False).

    Raises:
        ConfigError: both axes 1 and 3 have ``in_channels`` entries and ``channels_last`` is None.
        ShapeError: neither axis has ``in_channels`` entries (or not the one ``channels_last`` names).
    """
    last, first = shape[-1] == in_channels, shape[1] == in_channels
    if channels_last is None and last and first:
        raise ConfigError(
            f"{what} has shape {list(shape)}: both [N, H, W, C] and [N, C, H, W] fit a model with "
            f"{in_channels} input channels; pass channels_last=True ([N, H, W, C]) or channels_last=False."
        )
    if channels_last is None:
        channels_last = last
    if not (last if channels_last else first):
        layout = "[N, H, W, C]" if channels_last else "[N, C, H, W]"
        found = "neither axis 1 nor axis 3 has" if not (last or first) else f"{layout} does not have"
        raise ShapeError(
            f"{what} has shape {list(shape)} but the model takes {in_channels} channels: {found} "
            f"{in_channels} entries; give images [N, H, W, {in_channels}] or [N, {in_channels}, H, W]."
        )
    return bool(channels_last)


def as_images(x: Any, in_channels: int, channels_last: bool | None = None, what: str = "x") -> np.ndarray:
    """Images as an ``[N, C, H, W]`` array in their stored dtype (uint8, uint16 or float32).

    Args:
        x: NumPy array or tensor ``[N, H, W, C]``, ``[N, C, H, W]`` or (one channel) ``[N, H, W]``.
        in_channels: the model's input channels C (decides where the channel axis is).
        channels_last: True ``[N, H, W, C]``, False ``[N, C, H, W]``, None: found from ``in_channels``.

    Raises:
        ConfigError: ambiguous channel axis (see :func:`channels_axis`), or NaN / infinite values.
        ShapeError: not 3-D/4-D, no axis with C entries, an empty image, or an unsupported dtype.
    """
    array = _numpy(x, what)
    if array.ndim == 3 and in_channels == 1:
        array = array[:, None]
    elif array.ndim == 4:
        if channels_axis(array.shape, in_channels, channels_last, what):
            array = np.moveaxis(array, -1, 1)
    else:
        raise ShapeError(
            f"{what} has shape {list(array.shape)}; give images [N, H, W, {in_channels}] or [N, {in_channels}, H, W]"
            + (" or [N, H, W]." if in_channels == 1 else ".")
        )
    if 0 in array.shape:
        raise ShapeError(f"{what} has shape {list(array.shape)}: no images, or empty ones.")
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ConfigError(f"{what} holds NaN or infinite values; clean or clip the images first.")
    elif array.dtype == np.bool_ or array.dtype.kind not in "ui" or array.dtype.itemsize > 2:
        raise ShapeError(f"{what} has dtype {array.dtype}; give uint8 (0-255), uint16 or float images in [0, 1].")
    return np.ascontiguousarray(array)


def as_masks(
    y: Any, classes: int, n: int, size: tuple[int, int], ignore_index: int = IGNORE_INDEX, what: str = "y"
) -> np.ndarray:
    """Masks as int64 class ids ``[N, H, W]``.

    Args:
        y: ``[N, H, W]`` class ids (integers, or floats holding whole numbers; ``ignore_index`` allowed),
            ``[N, H, W, 1]``, or one-hot ``[N, H, W, K]`` (a pixel whose K entries are all 0 is ignored).
        classes: K, the classes of the data (2 for a one-channel sigmoid model).
        n, size: the number of images and their ``(H, W)``, which the masks must match.

    Raises:
        ShapeError: a count or size other than the images', or a shape that is no mask.
        ConfigError: class ids outside ``0..K-1`` (and not ``ignore_index``), or one-hot entries other
            than 0 and 1 or several 1s in a pixel.
    """
    array = _numpy(y, what)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4 and array.shape[-1] == classes:
        array = _from_one_hot(array, ignore_index, what)
    if array.ndim != 3 or array.shape[0] != n or tuple(array.shape[1:]) != tuple(size):
        raise ShapeError(
            f"{what} has shape {list(array.shape)} but the {n} images are {size[0]}×{size[1]}: give masks "
            f"[{n}, {size[0]}, {size[1]}] of class ids or one-hot [{n}, {size[0]}, {size[1]}, {classes}]."
        )
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ConfigError(f"{what} holds fractional values; masks hold whole class ids 0..{classes - 1}.")
    if array.dtype.kind not in "uifb":
        raise ShapeError(f"{what} has dtype {array.dtype}; give integer class ids.")
    masks = array.astype(np.int64)
    bad = (masks < 0) | ((masks >= classes) & (masks != ignore_index))
    if bad.any():
        values = sorted({int(v) for v in np.unique(masks[bad])})[:8]
        raise ConfigError(
            f"{what} holds values {values} outside the class ids 0..{classes - 1} (and ignore_index="
            f"{ignore_index}); the model has {classes if classes > 2 else 'one binary'} output(s): check the "
            "masks or build the model with more classes."
        )
    return masks


def _from_one_hot(array: np.ndarray, ignore_index: int, what: str) -> np.ndarray:
    """``[N, H, W, K]`` one-hot → ``[N, H, W]`` ids; all-zero pixels get ``ignore_index``."""
    if not np.isin(array, (0, 1)).all():
        raise ConfigError(f"{what} looks one-hot ([N, H, W, K]) but holds values other than 0 and 1.")
    counts = array.sum(-1)
    if (counts > 1).any():
        raise ConfigError(
            f"{what} is one-hot [N, H, W, K] with several classes set in {int((counts > 1).sum())} pixels; "
            "give one class per pixel (multi-label masks are not supported here)."
        )
    return np.where(counts == 0, ignore_index, array.argmax(-1))


class ArrayDataset(Dataset):
    """Images and masks in memory as items of a :class:`~pixelwise.data.SegmentationFolder`.

    Args:
        images: ``[N, C, H, W]`` uint8 / uint16 / float32 (see :func:`as_images`).
        masks: int64 ``[N, H, W]`` (see :func:`as_masks`).

    Shape:
        item ``{"image": float32 [C, H, W] (uint8 ÷ 255, uint16 ÷ 65535, float as is), "mask": int64 [H, W],
        "name": "00000"}``.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        if len(images) != len(masks):
            raise ShapeError(f"{len(images)} images but {len(masks)} masks; give one mask per image.")
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        scale = {np.dtype(np.uint8): UINT8_MAX, np.dtype(np.uint16): UINT16_MAX}.get(image.dtype)
        pixels = image.astype(np.float32) / np.float32(scale) if scale else image.astype(np.float32)
        return {
            "image": torch.from_numpy(pixels),
            "mask": torch.from_numpy(self.masks[index]),
            "name": f"{index:0{NAME_DIGITS}d}",
        }

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any,
        in_channels: int,
        classes: int,
        channels_last: bool | None = None,
        ignore_index: int = IGNORE_INDEX,
        names: tuple[str, str] = ("x", "y"),
    ) -> ArrayDataset:
        """Check and convert ``x`` and ``y`` (see :func:`as_images`, :func:`as_masks`)."""
        if y is None:
            raise ConfigError(f"{names[0]} is an array of images, so {names[1]} (the masks) is needed.")
        images = as_images(x, in_channels, channels_last, names[0])
        masks = as_masks(y, classes, len(images), images.shape[-2:], ignore_index, names[1])
        return cls(images, masks)


def write_split(dataset: Dataset, root: Path) -> Path:
    """Write a dataset's items as ``root/images/<name>`` and ``root/masks/<name>``, read back exactly.

    Items are ``{"image": float [C, H, W] in [0, 1] (or uint8/uint16 arrays of an ArrayDataset), "mask":
    int [H, W]}``. Images are 8-bit PNGs where that is exact (uint8 data with 1 or 3 channels), else
    TIFFs of their stored dtype; masks are 8-bit PNGs (16-bit TIFFs from 255 classes on).

    Raises:
        ShapeError: an item without ``image`` and ``mask`` of those shapes.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        image, mask = _stored_item(dataset, index)
        stem = f"{index:0{NAME_DIGITS}d}"
        if image.dtype == np.uint8 and image.shape[0] in PNG_CHANNELS:
            pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
            Image.fromarray(np.ascontiguousarray(pixels)).save(root / "images" / f"{stem}.png")
        else:
            tifffile.imwrite(root / "images" / f"{stem}.tif", image)  # [C, H, W]; read back as CHW
        if mask.max(initial=0) <= UINT8_MAX:
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        else:
            tifffile.imwrite(root / "masks" / f"{stem}.tif", mask.astype(np.uint16))
    return root


def _stored_item(dataset: Dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image [C, H, W] in its stored dtype, mask [H, W])`` of item ``index``."""
    if isinstance(dataset, ArrayDataset):
        return dataset.images[index], dataset.masks[index]
    item = dataset[index]
    if not isinstance(item, dict) or "image" not in item or "mask" not in item:
        raise ShapeError(
            f"item {index} of the dataset is a {type(item).__name__}; a dataset must yield dicts "
            '{"image": float [C, H, W] in [0, 1], "mask": int [H, W]} as SegmentationFolder does.'
        )
    image, mask = _numpy(item["image"], "image"), _numpy(item["mask"], "mask")
    if image.ndim != 3 or mask.ndim != 2 or image.shape[-2:] != mask.shape:
        raise ShapeError(
            f"item {index} of the dataset has image {list(image.shape)} and mask {list(mask.shape)}; "
            "give image [C, H, W] and mask [H, W] of the same size."
        )
    return image.astype(np.float32), mask.astype(np.int64)
