"""Keras' model workflow on a pixelwise model: ``compile``, ``fit``, ``predict`` on arrays.

::

    model = KerasModel(pixelwise.Unet("resnet18", classes=3, activation="softmax", encoder_weights=None))
    model.compile(loss="categorical_crossentropy", optimizer="adam", lr=1e-3, metrics=[IOUScore(threshold=0.5)])
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=20, batch_size=8).history
    probabilities = model.predict(x_test)               # [N, H, W, K], as Keras returns them
    labels = model.predict(x_test, labels=True)         # [N, H, W]

``fit`` is :func:`pixelwise.fit` (the CLI's engine, the same run directory); ``predict`` goes through a
:class:`~pixelwise.inference.Predictor` over the trained model folder, so the saved normalisation, scale,
tiling and test-time augmentation apply exactly as in ``pixelwise predict``, at any image size. The class
sits above training and inference because it uses both; the model itself stays a plain ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pixelwise.inference import Predictor, predict_arrays
from pixelwise.training.fit import FitResult, Metric, fit


class KerasModel:
    """A pixelwise model with Keras' ``compile`` / ``fit`` / ``predict``.

    Args:
        model: a pixelwise model (``pixelwise.Unet(...)``, ``pixelwise.create_model(...)``); ``fit`` trains
            it in place (the best weights are loaded back), and calling the wrapper calls it.

    Attributes:
        model: the wrapped ``nn.Module``.
        result: the last :class:`~pixelwise.training.fit.FitResult` (None before ``fit``).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.result: FitResult | None = None
        self._compiled: dict[str, Any] = {}
        self._predictor: Predictor | None = None

    def compile(
        self,
        loss: str | dict[str, float] | None = None,
        optimizer: str = "adam",
        metrics: Sequence[Metric] = (),
        lr: float = 1e-3,
        **options: Any,
    ) -> None:
        """Remember the loss, optimizer, metrics and any other :func:`pixelwise.fit` option for ``fit``.

        Args:
            loss: a loss name, Keras' included (``categorical_crossentropy``, ``dice_loss``, ...; see
                :func:`pixelwise.losses.get_loss`); None: ``ce+dice`` (``bce+dice`` for one class).
            optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
            metrics: Keras metric objects (``IOUScore``, ``FScore``, ``Precision``, ``Recall``).
            lr: learning rate (Keras' ``Adam(learning_rate=...)``).
            **options: any other keyword of :func:`pixelwise.fit` (checked when ``fit`` runs).
        """
        self._compiled = {"loss": loss, "optimizer": optimizer, "metrics": tuple(metrics), "lr": lr, **options}

    def fit(self, x: Any, y: Any = None, **options: Any) -> FitResult:
        """Train on ``x`` / ``y`` with the compiled settings; keywords here win over ``compile``'s.

        Takes what :func:`pixelwise.fit` takes (``validation_data``, ``epochs``, ``batch_size``, ...) and
        returns its :class:`~pixelwise.training.fit.FitResult`; ``.history`` is Keras' ``History.history``.

        Raises:
            ConfigError, ShapeError: as :func:`pixelwise.fit`.
        """
        self.result = fit(self.model, x, y, **{**self._compiled, **options})
        self._predictor = None
        return self.result

    @property
    def history(self) -> dict[str, list[float]]:
        """Per-epoch lists of the last ``fit`` (``loss``, ``val_loss``, one per metric); empty before ``fit``."""
        return self.result.history if self.result is not None else {}

    def predict(self, x: Any, *, labels: bool = False, channels_last: bool | None = None) -> np.ndarray:
        """Class probabilities (or labels) of a stack of images of any size, in Keras' layout.

        After ``fit`` the trained model folder is used (its normalisation applies); before, the model as it is.

        Args:
            x: images ``[N, H, W, C]`` or ``[N, C, H, W]`` (uint8 / uint16 scaled to [0, 1], float as is).
            labels: return class ids instead of probabilities.
            channels_last: the layout of ``x``; None: found from the model's input channels.

        Returns:
            ``float32 [N, H, W, K]`` probabilities (softmax; sigmoid for one class), or ``[N, H, W]`` labels.

        Raises:
            ConfigError, ShapeError: an ambiguous channel axis or arrays that are not images.
        """
        if self._predictor is None:
            self._predictor = Predictor(self.result.model_dir if self.result is not None else self.model)
        out = predict_arrays(self._predictor, x, labels=labels, channels_last=channels_last)
        return out if labels else np.moveaxis(out, 1, -1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's forward: ``[N, C, H, W]`` images → ``[N, K, H, W]`` scores."""
        return self.model(x)
