"""The LightningDataModule: training and validation splits of a SegmentationFolder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from pixelwise.data import ClassPresence, SegmentationFolder, build_transforms, class_presence
from pixelwise.data.targets import TargetOptions, training_targets
from pixelwise.data.transforms import DATA_SET_SAMPLINGS, shift_image
from pixelwise.training.config import TrainConfig

MIN_EPOCH_STEPS = 50
"""Fewest optimiser steps in an epoch when ``samples_per_epoch`` is not given."""


def pad_collate(samples: list[dict[str, Any]], ignore_index: int) -> dict[str, Any]:
    """Stack samples of different sizes: images padded with 0, masks with ``ignore_index``
    (bottom/right), so padding never counts in the loss or the metrics."""
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)

    def pad(x: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=value)

    batch: dict[str, Any] = {
        "image": torch.stack([pad(s["image"], 0.0) for s in samples]),
        "mask": torch.stack([pad(s["mask"], ignore_index) for s in samples]),
        "name": [s["name"] for s in samples],
    }
    for key in ("weight_map", "instances"):
        if key in samples[0]:
            batch[key] = torch.stack([pad(s[key], 0) for s in samples])
    return batch


class _Collate:
    """``pad_collate`` with its ignore value bound; a class so DataLoader workers can pickle it."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return pad_collate(samples, self.ignore_index)


def rescale(sample: dict[str, Any], scale: float) -> dict[str, Any]:
    """Resize a sample by ``scale``: the image bilinearly (antialiased), masks by nearest neighbour."""
    if scale == 1:
        return sample
    height, width = sample["image"].shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    out = dict(sample)
    out["image"] = F.interpolate(sample["image"][None], size=size, mode="bilinear", antialias=True)[0]
    for key in ("mask", "instances", "weight_map"):
        if key in sample:
            out[key] = F.interpolate(sample[key][None, None].float(), size=size, mode="nearest")[0, 0].to(
                sample[key].dtype
            )
    return out


class PreparedTransform:
    """Shift the image onto its mask's grid (``mask_offset``, see :func:`~pixelwise.data.transforms.shift_image`),
    resize by ``scale`` (see :func:`rescale`), then apply ``transform``; picklable for DataLoader workers."""

    def __init__(self, scale: float, mask_offset: list[float], transform: Any = None) -> None:
        self.scale, self.mask_offset, self.transform = scale, mask_offset, transform

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, *rest: torch.Tensor):
        image = shift_image(image, self.mask_offset)
        sample = rescale({"image": image, "mask": mask, **({"instances": rest[0]} if rest else {})}, self.scale)
        parts = (sample["image"], sample["mask"], *([sample["instances"]] if rest else []))
        return self.transform(*parts) if self.transform is not None else parts


class InstanceTargets(Dataset):
    """A dataset whose items get their training target after augmentation: separation gaps, the boundary
    target and the U-Net weight map (:func:`pixelwise.instances.training_targets`), from the item's
    ``instances`` (else the connected components of its mask). Adds ``item["weight_map"]`` (float32
    ``[H, W]``) when a weight map is asked for, and drops ``instances``."""

    def __init__(self, dataset: SegmentationFolder, options: TargetOptions) -> None:
        self.dataset, self.options = dataset, options

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        instances = item.pop("instances", None)
        mask, weights = training_targets(
            item["mask"].numpy(), instances.numpy() if instances is not None else None, self.options
        )
        item["mask"] = torch.from_numpy(mask)
        if weights is not None:
            item["weight_map"] = torch.from_numpy(weights)
        return item


class SegmentationDataModule(L.LightningDataModule):
    """Training crops with augmentation and whole validation images, from one data folder.

    Args:
        config: the resolved TrainConfig (``data``, splits, ``crop``, ``augment``, ...); a mapping of its
            fields is accepted too.
        num_classes: K, as established by the data check.
        mirror_border: mirror-pad training images by this many pixels before cropping (masks get
            ``ignore_index``): the context of a valid-convolution model, see
            :func:`pixelwise.training.task.training_tile`.
    """

    def __init__(self, config: TrainConfig | Mapping[str, Any], num_classes: int, mirror_border: int = 0) -> None:
        super().__init__()
        self.config = config if isinstance(config, TrainConfig) else TrainConfig(**config)
        self.num_classes = num_classes
        self.mirror_border = mirror_border
        self.collate = _Collate(self.config.ignore_index)

    def setup(self, stage: str | None = None) -> None:
        config = self.config
        targets = config.target_options()
        # a boundary-target model predicts 3 classes; the masks keep the data's own (checked by their class file)
        data_classes = None if targets.num_classes else self.num_classes
        common = {
            "num_classes": data_classes,
            "ignore_index": config.ignore_index,
            "mask_values": config.mask_values,
            "instances": targets.active,
            "format": config.data_format,
            "layout_options": config.data_options,
        }
        self.train_set = SegmentationFolder(config.data, split=config.train_split, files=config.train_files, **common)
        self.presence = self._class_presence(self.train_set)
        augment = build_transforms(
            config.augment,
            crop_size=config.crop,
            ignore_index=config.ignore_index,
            mirror_border=self.mirror_border,
            crop_sampling=config.crop_sampling,
            crop_sampling_ratio=config.crop_sampling_ratio,
            class_presence=self.presence,
        )
        prepared = config.scale != 1 or any(config.mask_offset)
        self.train_set.transform = PreparedTransform(config.scale, config.mask_offset, augment) if prepared else augment
        val_transform = PreparedTransform(config.scale, config.mask_offset) if prepared else None
        self.val_set = SegmentationFolder(
            config.data, split=config.val_split, files=config.val_files, transform=val_transform, **common
        )
        if targets.active:
            self.train_set = InstanceTargets(self.train_set, targets)
            self.val_set = InstanceTargets(self.val_set, targets)

    def _class_presence(self, train_set: SegmentationFolder) -> ClassPresence | None:
        """Which training masks hold which classes, for ``class_balanced`` and ``rare_class`` crops (else None):
        one pass over the masks (no images), so the sampler can draw classes over the whole data set."""
        sampling = self.config.crop_sampling
        if sampling not in DATA_SET_SAMPLINGS or self.config.crop is None:
            return None
        rank_zero_info(f"crop_sampling {sampling}: reading the classes of {len(train_set)} training masks")
        masks = (train_set.read_mask(i) for i in range(len(train_set)))
        return class_presence(masks, train_set.num_classes, sampling)

    def samples_per_epoch(self) -> int:
        """Training crops per epoch: ``samples_per_epoch`` if given, else one per training image and at
        least ``MIN_EPOCH_STEPS`` batches (a small data set's epochs would otherwise shrink to a few
        steps, and its budget go to validation passes)."""
        config = self.config
        return config.samples_per_epoch or max(len(self.train_set), MIN_EPOCH_STEPS * config.batch_size)

    def train_dataloader(self) -> DataLoader:
        config = self.config
        samples = self.samples_per_epoch()
        sampler: Sampler[int]
        if self.presence is not None:  # class-uniform sampling: images holding rare classes come more often
            weights = torch.from_numpy(self.presence.image_weights(config.crop_sampling_ratio))
            sampler = WeightedRandomSampler(weights, num_samples=samples, replacement=True)
        else:
            sampler = RandomSampler(self.train_set, replacement=samples > len(self.train_set), num_samples=samples)
        return DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            drop_last=samples > config.batch_size,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            collate_fn=self.collate,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.config.batch_size,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            collate_fn=self.collate,
        )
