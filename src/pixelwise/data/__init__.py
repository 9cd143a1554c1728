"""Data: folder datasets, mask decoding, dataset checks, synthetic data and augmentation.

- :class:`SegmentationFolder` reads ``images/`` + ``masks/`` pairs (optional ``train/``, ``val/``,
  ``test/`` splits and ``instances/``); :class:`ClassInfo` holds class names, ids and colours.
- :func:`check_dataset` reads every pair once and reports problems per file, class frequencies and
  median-frequency class weights (``pixelwise check-data``).
- :func:`cells` and :func:`shapes` generate data deterministically; :func:`write_synthetic` writes
  them as a folder data set.
- :func:`build_transforms` builds augmentation (presets ``none``, ``light``, ``strong``, or a config list).
"""

from pixelwise.data.check import DataReport, check_dataset, median_frequency_weights
from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.folder import (
    DataError,
    SegmentationFolder,
    read_image,
    read_image_array,
    read_instances,
    read_mask,
    scan_folder,
)
from pixelwise.data.synthetic import CELL_CLASSES, SHAPE_CLASSES, Sample, cells, shapes, write_synthetic
from pixelwise.data.transforms import (
    CUSTOM_TRANSFORMS,
    PRESETS,
    InstanceMask,
    MirrorPad,
    RandomBrightness,
    RandomContrast,
    RandomElasticGrid,
    RandomGamma,
    RandomGaussianNoise,
    RandomRot90,
    SegmentationTransform,
    build_transforms,
)

__all__ = [
    "CELL_CLASSES",
    "CUSTOM_TRANSFORMS",
    "PRESETS",
    "SHAPE_CLASSES",
    "ClassInfo",
    "DataError",
    "DataReport",
    "InstanceMask",
    "MirrorPad",
    "RandomBrightness",
    "RandomContrast",
    "RandomElasticGrid",
    "RandomGamma",
    "RandomGaussianNoise",
    "RandomRot90",
    "Sample",
    "SegmentationFolder",
    "SegmentationTransform",
    "build_transforms",
    "cells",
    "check_dataset",
    "default_palette",
    "median_frequency_weights",
    "read_image",
    "read_image_array",
    "read_instances",
    "read_mask",
    "scan_folder",
    "shapes",
    "write_synthetic",
]
