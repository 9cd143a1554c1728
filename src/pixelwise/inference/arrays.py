"""Prediction on stacks of arrays, as a Keras user calls ``model.predict(x)``.

:func:`predict_arrays` takes a batch of images as NumPy arrays or tensors (``[N, H, W, C]`` or
``[N, C, H, W]``, uint8 / uint16 / float, any size) and returns NumPy arrays, one image at a time
through a :class:`~pixelwise.inference.Predictor`, so that the saved model's normalisation, scale,
tiling and test-time augmentation apply exactly as in ``pixelwise predict``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pixelwise.inference.predictor import Predictor
from pixelwise.training.arrays import as_images


def predict_arrays(
    model: Predictor | str | os.PathLike | Any,
    x: Any,
    *,
    labels: bool = False,
    channels_last: bool | None = None,
    **predictor_options: Any,
) -> np.ndarray:
    """Class probabilities (or labels) of every image of ``x``.

    Args:
        model: a :class:`Predictor`, a saved model folder or run directory (``pixelwise.fit``'s
            ``result.model_dir``), or anything ``Predictor`` accepts.
        x: images ``[N, H, W, C]`` or ``[N, C, H, W]`` (``[N, H, W]`` for one channel), uint8 / uint16
            scaled to [0, 1], floats taken as they are; the channel axis is found from the model's
            input channels unless ``channels_last`` says.
        labels: return label maps instead of probabilities.
        predictor_options: ``tiling=``, ``runtime=``, ``tta=``, ... for a new ``Predictor``.

    Returns:
        ``float32 [N, K, H, W]`` probabilities, or ``[N, H, W]`` labels (uint8, int32 beyond 256 classes).

    Raises:
        ConfigError, ShapeError: an ambiguous channel axis or arrays that are not images.

    Example:
        >>> result = pixelwise.fit(model, x_train, y_train, epochs=5)  # doctest: +SKIP
        >>> predict_arrays(result.model_dir, x_test, labels=True).shape  # doctest: +SKIP
        (12, 256, 256)
    """
    predictor = model if isinstance(model, Predictor) else Predictor(model, **predictor_options)
    images = as_images(x, predictor.in_channels or 1, channels_last)  # [N, C, H, W] as stored
    predict = predictor.predict_labels if labels else predictor.predict
    return np.stack([predict(np.moveaxis(image, 0, -1)) for image in images])
