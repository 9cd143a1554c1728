"""Data: folder datasets, mask decoding, dataset checks, synthetic data and augmentation.

- :class:`SegmentationFolder` reads one split of a data set in any layout of :data:`LAYOUTS`
  (pixelwise's ``images/`` + ``masks/`` folders, COCO, Pascal VOC, Cityscapes, ADE20K, CVAT and
  Label Studio exports, generic folders), detected by :func:`detect_layout`; :class:`ClassInfo`
  holds class names, ids and colours; :mod:`pixelwise.data.readers` decodes the files.
- :func:`check_dataset` reads every pair once and reports problems per file, class frequencies and
  median-frequency class weights (``pixelwise check-data``); :func:`compute_fingerprint` measures the
  :class:`Fingerprint` a training plan is derived from (sizes, intensities, class shares, objects,
  orientation, mask offset; ``pixelwise check-data --fingerprint``).
- :func:`cells` and :func:`shapes` generate data deterministically; :func:`write_synthetic` writes
  them as a folder data set.
- :func:`build_transforms` builds augmentation (presets ``none``, ``light``, ``strong``, or a config list).
"""

from pixelwise.data.check import DataReport, check_dataset, median_frequency_weights
from pixelwise.data.classes import ClassInfo, default_palette
from pixelwise.data.fingerprint import (
    DEFAULT_MAX_IMAGES,
    Fingerprint,
    compute_fingerprint,
    read_fingerprint,
    write_fingerprint,
)
from pixelwise.data.folder import SegmentationFolder
from pixelwise.data.layouts import LAYOUTS, Layout, LayoutScan, Record, detect_layout, open_layout, register_layout
from pixelwise.data.readers import read_image, read_image_array, read_instances, read_mask
from pixelwise.data.synthetic import CELL_CLASSES, SHAPE_CLASSES, Sample, cells, shapes, write_synthetic
from pixelwise.data.transforms import (
    CUSTOM_TRANSFORMS,
    PRESETS,
    ClassPresence,
    InstanceMask,
    MirrorPad,
    RandomBrightness,
    RandomClassCrop,
    RandomContrast,
    RandomElasticGrid,
    RandomGamma,
    RandomGaussianNoise,
    RandomRot90,
    SegmentationTransform,
    build_transforms,
    class_presence,
)
from pixelwise.errors import DataError

__all__ = [
    "CELL_CLASSES",
    "CUSTOM_TRANSFORMS",
    "DEFAULT_MAX_IMAGES",
    "LAYOUTS",
    "PRESETS",
    "SHAPE_CLASSES",
    "ClassInfo",
    "ClassPresence",
    "DataError",
    "DataReport",
    "Fingerprint",
    "InstanceMask",
    "Layout",
    "LayoutScan",
    "MirrorPad",
    "RandomBrightness",
    "RandomClassCrop",
    "RandomContrast",
    "RandomElasticGrid",
    "RandomGamma",
    "RandomGaussianNoise",
    "RandomRot90",
    "Record",
    "Sample",
    "SegmentationFolder",
    "SegmentationTransform",
    "build_transforms",
    "cells",
    "check_dataset",
    "class_presence",
    "compute_fingerprint",
    "default_palette",
    "detect_layout",
    "median_frequency_weights",
    "open_layout",
    "read_fingerprint",
    "read_image",
    "read_image_array",
    "read_instances",
    "read_mask",
    "register_layout",
    "shapes",
    "write_fingerprint",
    "write_synthetic",
]
