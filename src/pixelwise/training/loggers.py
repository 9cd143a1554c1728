"""Lightning loggers of a run (``--logger csv,tensorboard``), written under its run directory.

They come in addition to the run's own ``metrics.csv`` and ``curves.png`` (:class:`EpochRecords`),
which every run writes whatever ``logger`` says::

    runs/<name>/
      metrics.csv  curves.png     always (pixelwise's own)
      csv/version_<n>/            --logger csv          Lightning's CSVLogger (a new version per resume)
      tensorboard/                --logger tensorboard  scalars + images of validation predictions
      mlruns/                     --logger mlflow       MLflow file store (``file:`` URI, no server)
      wandb/                      --logger wandb        Weights & Biases, offline (``wandb sync`` uploads it)

TensorBoard, MLflow and W&B are optional packages; a missing one is a ConfigError naming what to install,
raised before training starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from pixelwise.errors import ConfigError
from pixelwise.models.base import segmentation_output
from pixelwise.models.geometry import forward_mirrored
from pixelwise.modes import IGNORE_INDEX
from pixelwise.training.config import TrainConfig, logger_names
from pixelwise.viz import default_palette, panel

PROJECT = "pixelwise"
"""The MLflow experiment and W&B project the runs are filed under."""
PREDICTION_IMAGES = 4
"""Validation images shown in TensorBoard after each validation pass (image | truth | prediction | errors)."""
IMAGE_TAG = "val_predictions"
"""TensorBoard tag prefix of those images (``val_predictions/0`` ...)."""
BINARY_THRESHOLD = 0.0
"""A binary model's logit above which a pixel is foreground (probability 0.5)."""
PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'pixelwise[loggers]' (or pip install tensorboard)"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "wandb": (("wandb",), "pip install wandb"),
}
"""Per logger: the modules of which one must be importable, and the command that installs one."""


def require_package(name: str) -> None:
    """Raise unless the package the logger ``name`` writes with is installed.

    Raises:
        ConfigError: names the logger, the missing package and the pip command.
    """
    modules, command = PACKAGES.get(name, ((), ""))
    if modules and not any(_importable(module) for module in modules):
        raise ConfigError(f"logger={name!r} needs the {modules[0]} package, which is not installed: {command}.")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None  # None also where sys.modules[module] is None
    except (ImportError, ValueError):
        return False


def build_loggers(config: TrainConfig, run_dir: str | Path) -> list[Logger]:
    """The Lightning loggers ``config.logger`` names, writing under ``run_dir`` (see the module docstring).

    Returns:
        One logger per name, in the order given; an empty list for ``logger=None``.

    Raises:
        ConfigError: an unknown logger name ("did you mean ..."), or a logger whose package is missing.
    """
    run_dir = Path(run_dir)
    names = logger_names(config.logger)
    for name in names:
        require_package(name)
    loggers: list[Logger] = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(save_dir=run_dir, name="csv"))
        elif name == "tensorboard":
            # version "": the events of a resumed run go to the same folder, so TensorBoard shows one curve
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False))
        elif name == "mlflow":
            uri = (run_dir / "mlruns").resolve().as_uri()  # a file store: no tracking server
            loggers.append(MLFlowLogger(experiment_name=PROJECT, run_name=run_dir.name, tracking_uri=uri))
        elif name == "wandb":
            loggers.append(WandbLogger(name=run_dir.name, save_dir=str(run_dir), project=PROJECT, offline=True))
    return loggers


def logger_callbacks(config: TrainConfig) -> list[L.Callback]:
    """Callbacks the chosen loggers need: :class:`PredictionImages` with TensorBoard."""
    return [PredictionImages()] if "tensorboard" in logger_names(config.logger) else []


class PredictionImages(L.Callback):
    """Show the first ``count`` validation images, their truth and the model's prediction (and errors) in
    TensorBoard after every validation pass, coloured with the class palette (``val_predictions/<i>``).

    Args:
        count: images per validation pass (the first ones of the validation set, so that the same images
            show how the predictions change from epoch to epoch).
    """

    def __init__(self, count: int = PREDICTION_IMAGES) -> None:
        self.count = count
        self.panels: list[np.ndarray] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.panels = []

    def on_validation_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: object, batch: dict, batch_idx: int, *args: int
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self.panels) >= self.count:
            return
        images = batch["image"][: self.count - len(self.panels)]
        with torch.no_grad():
            model = getattr(module, "model", module)
            logits = forward_mirrored(module, images, model) if getattr(module, "valid_conv", False) else module(images)
        mode = getattr(getattr(module, "config", None), "mode", "multiclass")
        predictions = class_labels(segmentation_output(logits), mode).cpu().numpy()
        truths = batch["mask"][: len(images)]
        truths = (truths.argmax(1) if mode == "multilabel" else truths.squeeze(1) if truths.ndim == 4 else truths).cpu()
        ignore = getattr(getattr(module, "config", None), "ignore_index", None)
        palette = default_palette(max(int(getattr(module, "classes", logits.shape[1])), 2))
        for image, truth, prediction in zip(images.float().cpu().numpy(), truths.numpy(), predictions, strict=True):
            # the ignored pixels are drawn as the palette's ignore colour in the truth tile
            truth = np.where(truth == (IGNORE_INDEX if ignore is None else ignore), IGNORE_INDEX, truth)
            self.panels.append(panel(image, truth, prediction, palette))

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for index, image in enumerate(self.panels):
                    logger.experiment.add_image(f"{IMAGE_TAG}/{index}", image, trainer.global_step, dataformats="HWC")


def class_labels(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """``[N, K, H, W]`` logits → ``[N, H, W]`` class ids: argmax (multiclass, and multilabel shown as its
    strongest class), or logit above :data:`BINARY_THRESHOLD` (binary)."""
    if mode == "binary" or logits.shape[1] == 1:
        return (logits[:, 0] > BINARY_THRESHOLD).long()
    return logits.argmax(1)
