"""Inference: tiled prediction with blending and test-time augmentation, BatchNorm folding, streaming TIFFs.

- :class:`Predictor` predicts probabilities or labels for images of any size; its options come in groups:
  :class:`TilingOptions`, :class:`RuntimeOptions`, :class:`NormalizationOptions`.
- :func:`fold_batchnorm` merges BatchNorm into the convolutions before it.
- :func:`predict_tiff` streams a large TIFF through a predictor into a tiled label TIFF.
- :mod:`~pixelwise.inference.tiling`, :mod:`~pixelwise.inference.stitch`, :mod:`~pixelwise.inference.tta`:
  the building blocks (tile geometry, blending, test-time augmentation).
"""

from pixelwise.inference.arrays import predict_arrays
from pixelwise.inference.fuse import fold_batchnorm
from pixelwise.inference.predictor import (
    NormalizationOptions,
    Predictor,
    RuntimeOptions,
    TilingOptions,
    labels_from_scores,
)
from pixelwise.inference.stream import predict_tiff

__all__ = [
    "NormalizationOptions",
    "Predictor",
    "RuntimeOptions",
    "TilingOptions",
    "fold_batchnorm",
    "labels_from_scores",
    "predict_arrays",
    "predict_tiff",
]
