"""The dataset over every layout: images, masks (and instance labels) as tensors, checked as they are read.

:class:`SegmentationFolder` reads any layout of :mod:`pixelwise.data.layouts` (pixelwise's own
``images/`` + ``masks/`` folder, COCO, Pascal VOC, Cityscapes, ADE20K, labelling-tool exports, ...):
the layout is detected, or named with ``format``. File formats are in :mod:`pixelwise.data.readers`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.data.classes import ClassInfo
from pixelwise.data.geotiff import read_image_with_nodata
from pixelwise.data.layouts import LayoutScan, Record, open_layout
from pixelwise.data.readers import (
    MAX_LISTED,
    binary_mask_values,
    infer_num_classes,
    listing,
    relative_to,
    remap_values,
    scale_image,
)
from pixelwise.errors import ConfigError, DataError
from pixelwise.modes import IGNORE_INDEX


class SegmentationFolder(torch.utils.data.Dataset):
    """Images and masks of one split of a data set in any layout (:mod:`pixelwise.data.layouts`).

    Args:
        root: data folder (or annotation file: a COCO or Label Studio JSON).
        split: the split (``"train"``, ``"val"``, ...; ``training``/``val2017`` and the like are found
            as aliases); None for an unsplit data set.
        transform: called as ``transform(image, mask)`` → ``(image, mask)``, or, when instance labels
            are loaded, ``transform(image, mask, instances)`` → ``(image, mask, instances)``
            (the callables of :func:`pixelwise.data.build_transforms` take both forms).
        classes: class list; default: the layout's (a class file next to the data, COCO categories,
            the VOC or Cityscapes classes, ...), else ``ClassInfo.default(num_classes)``, else
            ``num_classes`` is inferred from the masks.
        num_classes: number of classes ``K``; checked against ``classes`` when both are known.
        ignore_index: mask value of void pixels (None: 255, which a binary mask set may take for its
            foreground, see ``mask_values``).
        mask_values: stored mask values replaced by class ids, e.g. ``{255: 1}``; None: the layout's
            (Cityscapes' labelId → trainId, ...), else found from the masks on first use
            (:func:`~pixelwise.data.readers.binary_mask_values`: masks holding only 0 and one other
            value read that value as class 1); ``{}``: values are class ids as stored.
        instances: also load instance labels (int32 instance ids) when the layout has them.
        files: use only these samples: a glob over their names (``"[01]?"``) or a list of names/globs.
        format: the layout's name (``"folder"``, ``"coco"``, ``"voc"``, ...); None: detected.
        layout_options: options of the layout (``{"overlap": "smaller"}`` for COCO, ...).

    Shape:
        ``item["image"]``: float32 ``[C, H, W]`` in ``[0, 1]`` (float TIFF: as stored);
        ``item["mask"]``: int64 ``[H, W]`` (GeoTIFF nodata pixels: ``ignore_index``);
        ``item["instances"]``: int32 ``[H, W]``; ``item["name"]``: the sample's name.

    Raises:
        DataError: an unusable layout (missing folders or annotation file, no images), unpaired or
            duplicate files, or (when an item is read) an unreadable file, a size or channel
            mismatch, or a class id outside ``0..K-1``.
        ConfigError: ``classes`` and ``num_classes`` disagree; an unknown format or layout option.

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
        format: str | None = None,
        layout_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.layout: LayoutScan = open_layout(root, split, format, files, layout_options)
        self.root, self.split, self.transform = self.layout.root, split, transform
        self.ignore_index = IGNORE_INDEX if ignore_index is None else ignore_index
        self._explicit_ignore = ignore_index
        if mask_values is None:
            mask_values = self.layout.mask_values
        self._mask_values = None if mask_values is None else {int(k): int(v) for k, v in mask_values.items()}
        self._stored_values: set[int] | None = None
        self._raise_on_pairing_problems()
        self.records: list[Record] = self.layout.records
        classes = classes or self.layout.classes
        if classes is not None and num_classes is not None and classes.num_classes != num_classes:
            raise ConfigError(
                f"num_classes={num_classes} but the class list has {classes.num_classes} classes "
                f"({', '.join(classes.names)}); make them agree or leave num_classes out."
            )
        if classes is None and num_classes is not None:
            classes = ClassInfo.default(num_classes, self.ignore_index)
        self._classes = classes
        self.with_instances = instances and self.layout.has_instances
        if self.with_instances:
            missing = [r.name for r in self.records if r.instances is None]
            if missing:
                raise DataError(
                    f"{str(self.layout.base)!r} has no instance labels for {listing(missing)}; "
                    "give every image one (same name) or load without instances."
                )
        self.in_channels: int = self._read_image(self.records[0].image)[0].shape[0]

    @property
    def pairs(self) -> list[tuple[Path, Path]]:
        """``(image, mask file)`` of every record (the annotation file for masks drawn from annotations)."""
        return [(r.image, r.mask.path) for r in self.records]

    def _raise_on_pairing_problems(self) -> None:
        problems = self.layout.problems
        if not self.layout.records:
            raise DataError(
                f"{str(self.layout.base)!r} ({self.layout.format} layout) holds no usable image/mask pair"
                + (f": {listing([f'{Path(f).name}: {m}' for f, m in problems])}" if problems else "")
                + ". Fix the files named (`pixelwise check-data` lists every problem)."
            )
        if problems:
            shown = listing([f"{relative_to(f, self.layout.base)}: {m}" for f, m in problems])
            raise DataError(
                f"images and masks of {str(self.layout.base)!r} do not pair up ({self.layout.pairing}): "
                f"{len(problems)} problems: {shown}. Add the missing files or remove the strays "
                "(`pixelwise check-data` lists every problem)."
            )

    def _stored(self) -> set[int]:
        """Every value stored in the masks (one pass over them, on first use)."""
        if self._stored_values is None:
            found: set[int] = set()
            for record in self.records:
                found.update(np.unique(record.mask.read(self._classes, self.ignore_index)).tolist())
            self._stored_values = found
        return self._stored_values

    @property
    def mask_values(self) -> dict[int, int]:
        """Stored mask values replaced by class ids when reading (found from the masks when not given)."""
        if self._mask_values is None:
            self._mask_values = binary_mask_values(self._stored(), self._explicit_ignore, self._classes)
        return self._mask_values

    @mask_values.setter
    def mask_values(self, values: Mapping[int, int] | None) -> None:
        self._mask_values = None if values is None else {int(k): int(v) for k, v in values.items()}

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
        return len(self.records)

    @staticmethod
    def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """The image as float32 ``[C, H, W]`` and its nodata pixels (``bool [H, W]``, or None)."""
        stored, nodata = read_image_with_nodata(path)
        return scale_image(stored), nodata

    def read_mask(self, index: int) -> np.ndarray:
        """The mask of record ``index`` as class ids ``int64 [H, W]`` (``mask_values`` applied)."""
        mask = self.records[index].mask.read(self._classes, self.ignore_index)
        return remap_values(mask, self.mask_values)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image, nodata = self._read_image(record.image)
        mask = self.read_mask(index)
        if image.shape[1:] != mask.shape:
            raise DataError(
                f"image {str(record.image)!r} is {image.shape[2]}x{image.shape[1]} (WxH) but its mask "
                f"{str(record.mask.path)!r} is {mask.shape[1]}x{mask.shape[0]}; "
                "masks must match their image pixel for pixel."
            )
        if image.shape[0] != self.in_channels:
            raise DataError(
                f"image {str(record.image)!r} has {image.shape[0]} channels but {self.records[0].image.name} has "
                f"{self.in_channels}; convert all images to the same channel count."
            )
        if nodata is not None:
            mask[nodata] = self.ignore_index
        if self._classes is not None:  # an inferred class count covers every mask by construction
            bad = (mask >= self._classes.num_classes) & (mask != self.ignore_index)
            if bad.any():
                found = sorted(np.unique(mask[bad]).tolist())[:MAX_LISTED]
                raise DataError(
                    f"mask {str(record.mask.path)!r} holds class ids {found} "
                    f"outside 0..{self._classes.num_classes - 1}; raise num_classes (--classes) or map those pixels "
                    f"to ignore_index {self.ignore_index}."
                )
        sample = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}
        if self.with_instances:
            instances = record.instances.read()
            if instances.shape != mask.shape:
                raise DataError(
                    f"instance labels {str(record.instances.path)!r} are {instances.shape[1]}x{instances.shape[0]} "
                    f"(WxH) but the mask is {mask.shape[1]}x{mask.shape[0]}; they must match pixel for pixel."
                )
            sample["instances"] = torch.from_numpy(instances)
        if self.transform is not None:
            keys = list(sample)
            sample = dict(zip(keys, self.transform(*sample.values()), strict=True))
        sample["name"] = record.name
        return sample

    def __repr__(self) -> str:
        return (
            f"SegmentationFolder({str(self.layout.base)!r}, {self.layout.format} layout, {len(self)} pairs, "
            f"in_channels={self.in_channels})"
        )
