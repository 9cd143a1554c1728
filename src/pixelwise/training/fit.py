"""``fit(model, x, y)``: Keras-style training on arrays, through the command line's engine.

::

    fit(model, x, y, validation_data=(x_val, y_val), loss="dice", metrics=[IOUScore()])
      │  arrays / tensors / Dataset ──► runs/<name>/data/{train,val}/{images,masks}/  (training.arrays)
      │  the model instance ──────────► runs/<name>/initial/ (its weights; TrainConfig.init) + its options
      ▼
    train(TrainConfig)  (training.run: the Lightning task, checkpoints, metrics.csv, curves.png, model/, resume)
      │  KerasMetrics callback: the metric objects on every training and validation batch's outputs
      ▼
    FitResult(run_dir, history={"loss": [...], "val_loss": [...], "iou_score": [...], "val_iou_score": [...]})

The arrays are written once as files that :class:`~pixelwise.data.SegmentationFolder` reads back exactly
(uint8 PNGs, else TIFFs of the stored dtype; disk cost about the arrays' size, less for PNGs), so the run
directory is the CLI's and is self-contained: ``pixelwise train --resume``, ``pixelwise evaluate`` work on it.
After fitting, the best weights (by validation mIoU, as the CLI keeps them) are loaded into ``model``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pixelwise.errors import ConfigError
from pixelwise.io import load_weights
from pixelwise.models import SegmentationModel
from pixelwise.models.base import AUX_HEADS, WEIGHTS_NAME
from pixelwise.models.geometry import center_crop
from pixelwise.modes import IGNORE_INDEX
from pixelwise.training import run as run_module
from pixelwise.training.arrays import ArrayDataset, write_split
from pixelwise.training.config import TrainConfig, field_names
from pixelwise.training.run import RunResult, default_run_name

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A metric object (``IOUScore(threshold=0.5)``) or function ``(probabilities, one-hot target) → scalar``."""
DATA_FOLDER = "data"
"""Where in the run directory the arrays are written (``train/`` and ``val/`` splits)."""
INITIAL_FOLDER = "initial"
"""Where in the run directory the model's weights at the start of the fit are kept (``save_pretrained``)."""
FIT_DEFAULTS: dict[str, Any] = {"augment": "none", "scheduler": "none", "crop": None, "weight_decay": 0.0}
"""Keras' ``fit`` behaviour: no augmentation, a constant learning rate, whole images, plain Adam."""
OPTIMIZER_ALIASES = {"adam": "adamw"}
"""Keras optimizer names and pixelwise's (AdamW with ``weight_decay=0`` is Adam)."""
DEFAULT_LOSS = {"multiclass": "ce+dice", "binary": "bce+dice"}
"""The loss when none is named, per mode."""
HISTORY_NAMES = {"train_loss_epoch": "loss"}
"""``metrics.csv`` columns whose history key is not the column without its ``train_`` prefix."""


@dataclass
class FitResult:
    """What :func:`fit` returns: the run directory and the per-epoch history (Keras' ``History.history``)."""

    run_dir: Path
    history: dict[str, list[float]] = field(default_factory=dict)
    run: RunResult | None = None

    @property
    def model_dir(self) -> Path:
        """The trained model folder (``pixelwise.from_pretrained`` / ``Predictor`` read it)."""
        return self.run_dir / "model"


class KerasMetrics(L.Callback):
    """Evaluate metric objects on the outputs of every training and validation batch; log the epoch means as
    ``train_<name>`` / ``val_<name>`` (``metrics.csv``), which the history names ``<name>`` / ``val_<name>``.

    The task's forward output is captured by a hook (no second forward pass). Probabilities are the
    softmax (sigmoid for one channel) of the logits; pixels whose mask is ``ignore_index`` count for
    neither predictions nor targets. Each epoch value is the mean of the batch values, as in Keras.
    """

    def __init__(self, metrics: Sequence[Metric], ignore_index: int = IGNORE_INDEX) -> None:
        self.metrics = {metric_name(m): m for m in metrics}
        if len(self.metrics) != len(metrics):
            raise ConfigError(f"metrics have repeated names {[metric_name(m) for m in metrics]}; give each a name=.")
        self.ignore_index = ignore_index
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.logits: torch.Tensor | None = None
        self.handle: Any = None

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.handle = module.register_forward_hook(self._capture)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.handle is not None:
            self.handle.remove()

    def _capture(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.logits = output.detach()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, i: int):
        self._update("train", batch)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("val", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._log(module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._log(module, "val")

    def _update(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        if self.logits is None or not self.metrics:
            return
        preds, target = keras_inputs(self.logits.float(), batch["mask"], self.ignore_index)
        for name, metric in self.metrics.items():
            key = f"{stage}_{name}"
            self.sums[key] = self.sums.get(key, 0.0) + float(metric(preds, target))
            self.counts[key] = self.counts.get(key, 0) + 1
        self.logits = None

    def _log(self, module: L.LightningModule, stage: str) -> None:
        for key in [k for k in self.sums if k.startswith(f"{stage}_")]:
            module.log(key, self.sums.pop(key) / self.counts.pop(key))


def metric_name(metric: Metric) -> str:
    """A metric's ``name`` (Keras metric objects), else its ``__name__``."""
    return str(getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__))


def keras_inputs(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, one-hot target)``, both ``[N, K, H, W]``, zero where ``mask == ignore_index``.

    Shape: logits ``[N, K, H, W]`` (one sigmoid channel: ``K == 1``), mask ``[N, H', W']`` (center-cropped to
    ``H, W`` for a valid-convolution model's smaller output).
    """
    if mask.shape[-2:] != logits.shape[-2:]:
        mask = center_crop(mask, logits.shape[-2:])
    valid = (mask != ignore_index).unsqueeze(1)
    ids = mask.masked_fill(~valid[:, 0], 0).long()
    if logits.shape[1] == 1:
        probs, target = logits.sigmoid(), ids.unsqueeze(1).float()
    else:
        probs, target = logits.softmax(1), F.one_hot(ids, logits.shape[1]).permute(0, 3, 1, 2).float()
    return probs * valid, target * valid


def fit(
    model: SegmentationModel,
    x: Any,
    y: Any = None,
    *,
    validation_data: tuple[Any, Any] | Dataset | None = None,
    validation_split: float = 0.0,
    epochs: int = 1,
    batch_size: int = 8,
    loss: str | dict[str, float] | None = None,
    optimizer: str = "adam",
    lr: float = 1e-3,
    metrics: Sequence[Metric] = (),
    augment: str | list = "none",
    callbacks: Sequence[L.Callback] = (),
    channels_last: bool | None = None,
    runs_dir: str = "runs",
    name: str | None = None,
    resume: bool = False,
    **options: Any,
) -> FitResult:
    """Train ``model`` on arrays, a Dataset or a data folder, as ``model.fit`` does in Keras, with the CLI's engine.

    Args:
        model: a pixelwise model instance (e.g. ``Unet('resnet18', classes=3, activation='softmax')``); its
            options and current weights are the start; the best weights are loaded back into it at the end.
            One output class means binary (masks 0/1); the output activation is not used in training.
        x: images: NumPy array or tensor ``[N, H, W, C]`` / ``[N, C, H, W]`` (uint8 ÷ 255, uint16 ÷ 65535,
            float as is); a torch ``Dataset`` of ``{"image": float [C, H, W], "mask": int [H, W]}``; or a
            data folder path (any layout the CLI reads; its ``train``/``val`` splits).
        y: masks ``[N, H, W]`` class ids or one-hot ``[N, H, W, K]`` (for arrays only).
        validation_data: ``(x_val, y_val)`` or a Dataset. Neither this nor ``validation_split``: the
            training images are validated (``val_*`` then measure the fit, not generalisation).
        validation_split: take this last fraction of the arrays for validation (as Keras does).
        epochs, batch_size, lr: as in Keras; one epoch is one pass over the training images.
        loss: a loss name or sum of names for :func:`pixelwise.losses.get_loss` (``"dice"``; default
            ``"ce+dice"``, ``"bce+dice"`` for a one-class model).
        optimizer: ``"adam"`` (AdamW without weight decay), ``"adamw"`` or ``"sgd"``.
        metrics: Keras metric objects (:class:`~pixelwise.metrics.keras.IOUScore`, ``FScore``,
            ``Precision``, ``Recall``) or functions ``(preds, target) → scalar``.
        augment: ``"none"`` (default, as Keras), ``"light"``, ``"strong"`` or a list (see TrainConfig).
        callbacks: extra Lightning callbacks.
        channels_last: image layout; None: found from ``model.in_channels`` (see :mod:`~pixelwise.training.arrays`).
        runs_dir, name: the run directory is ``runs_dir/name`` (name default: model-encoder-time).
        resume: continue the run ``runs_dir/name`` from its ``last.ckpt`` (pass the same data again).
        **options: any other :class:`~pixelwise.training.config.TrainConfig` field (``scheduler``, ``crop``,
            ``accelerator``, ``seed``, ``max_minutes``, ``class_weights``, ``aux_loss_weight``, ...). With
            ``aux_loss_weight > 0`` the run trains auxiliary heads (deep supervision, auxiliary FCN head);
            ``model`` gets them back only if it was built with them (``deep_supervision=True`` /
            ``aux_head=True``); its ``forward`` is the same either way.

    Returns:
        :class:`FitResult` with ``history`` (``loss``, ``val_loss``, ``miou``, ``val_miou``, ``accuracy``,
        ``mf1``, ``lr``, and ``<metric>`` / ``val_<metric>`` per metric object, one entry per epoch; a
        resumed run's earlier epochs included) and ``run_dir``.

    Raises:
        ConfigError: a bad option, ambiguous image layout, bad mask values, or an existing run without ``resume``.
        ShapeError: arrays whose counts, sizes or channels do not fit each other or the model.

    Example:
        >>> model = Unet("resnet18", classes=3, activation="softmax", encoder_weights=None)  # doctest: +SKIP
        >>> result = fit(model, x, y, validation_data=(xv, yv), loss="dice", metrics=[IOUScore()])  # doctest: +SKIP
        >>> result.history["val_iou_score"]  # doctest: +SKIP
    """
    unknown = set(options) - set(field_names())
    if unknown:
        raise ConfigError(f"fit() got unknown option(s) {sorted(unknown)}; options are TrainConfig's fields.")
    config = model_config(model, runs_dir=runs_dir, name=name, epochs=epochs, batch_size=batch_size, lr=lr)
    config.loss = loss or DEFAULT_LOSS[config.mode]
    config.optimizer = OPTIMIZER_ALIASES.get(str(optimizer).lower(), str(optimizer).lower())
    config.augment = augment
    for key, value in {**FIT_DEFAULTS, **options}.items():
        setattr(config, key, value)
    run_dir = Path(config.runs_dir) / str(config.name)
    config.data = str(x) if _is_folder(x) else str(run_dir / DATA_FOLDER)
    config.validate()
    if not resume and (run_dir / "config.yaml").exists():
        raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; pass resume=True or another name=.")
    created = not run_dir.exists()
    ignore_index = IGNORE_INDEX if config.ignore_index is None else config.ignore_index
    try:
        data = (x, y, validation_data, validation_split, channels_last)
        train_size = _prepare_data(config, model, data, run_dir) if not _is_folder(x) else None
        if config.samples_per_epoch is None and train_size:
            config.samples_per_epoch = train_size  # one epoch: one pass over the data, as in Keras
        config.init = str(run_dir / INITIAL_FOLDER)  # recorded as the run's start; resume compares it
        if not resume:
            model.save_pretrained(config.init)
        result = run_module.train(config, resume=resume, callbacks=[KerasMetrics(metrics, ignore_index), *callbacks])
    except BaseException:
        if created and not (run_dir / "last.ckpt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume: leave no trace, as train() does
        raise
    weights = load_weights(result.run_dir / "model" / WEIGHTS_NAME)
    if not model.has_aux_outputs:  # aux_loss_weight trained auxiliary heads this model was built without
        weights = {key: value for key, value in weights.items() if not key.startswith(f"{AUX_HEADS}.")}
    model.load_state_dict(weights)
    return FitResult(result.run_dir, read_history(result.run_dir / "metrics.csv"), result)


def model_config(model: SegmentationModel, **values: Any) -> TrainConfig:
    """A TrainConfig that rebuilds ``model``'s architecture and options (logits: no output activation)."""
    if not isinstance(model, SegmentationModel) or not model.arch_name:
        raise ConfigError(
            f"fit() trains a pixelwise model (e.g. pixelwise.Unet('resnet18', classes=3)); got {type(model).__name__}."
        )
    options = {k: v for k, v in model.config.items() if k not in ("in_channels", "classes")}
    options |= {"activation": None, "encoder_weights": None}  # the loss takes logits; weights come from init
    options = json.loads(json.dumps(options, default=list))  # tuples → lists: config.yaml holds plain values
    binary = model.classes == 1
    encoder = options.get("encoder_name")
    config = TrainConfig(model=model.arch_name, encoder=encoder, model_options=options, **values)
    config.mode, config.classes = ("binary", 2) if binary else ("multiclass", model.classes)
    config.mask_values = {}  # array masks hold class ids as they are
    config.name = config.name or default_run_name(config)
    return config


def _is_folder(x: Any) -> bool:
    return isinstance(x, str | Path)


def _prepare_data(config: TrainConfig, model: SegmentationModel, data: tuple, run_dir: Path) -> int:
    """Write the training and validation data under ``run_dir/data``; point ``config`` at it; return N train."""
    x, y, validation_data, validation_split, channels_last = data
    ignore = IGNORE_INDEX if config.ignore_index is None else config.ignore_index
    classes = int(config.classes or 2)

    def dataset(images: Any, masks: Any, names: tuple[str, str]) -> Dataset:
        if isinstance(images, Dataset):
            return images
        return ArrayDataset.from_arrays(images, masks, model.in_channels, classes, channels_last, ignore, names)

    train_set = dataset(x, y, ("x", "y"))
    if isinstance(validation_data, tuple | list) and len(validation_data) == 2:
        val_set = dataset(*validation_data, ("validation_data[0]", "validation_data[1]"))
    elif isinstance(validation_data, Dataset) or validation_data is None:
        val_set = validation_data
    else:
        raise ConfigError("validation_data must be (x_val, y_val) or a Dataset; got " + type(validation_data).__name__)
    if validation_split and val_set is None:
        train_set, val_set = _split(train_set, validation_split)
    root = run_dir / DATA_FOLDER
    shutil.rmtree(root, ignore_errors=True)  # a resumed fit writes its data again
    write_split(train_set, root / "train")
    if val_set is not None:
        write_split(val_set, root / "val")
    config.train_split = "train"
    config.val_split = "val" if val_set is not None else "train"
    return len(train_set)


def _split(dataset: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """The first and the last ``fraction`` of an ArrayDataset (Keras' ``validation_split``)."""
    if not isinstance(dataset, ArrayDataset) or not 0 < fraction < 1:
        raise ConfigError(f"validation_split={fraction!r} needs arrays and a fraction between 0 and 1.")
    cut = len(dataset) - max(1, math.floor(len(dataset) * fraction))
    if cut < 1:
        raise ConfigError(f"validation_split={fraction} leaves no training images of {len(dataset)}.")
    images, masks = dataset.images, dataset.masks
    return ArrayDataset(images[:cut], masks[:cut]), ArrayDataset(images[cut:], masks[cut:])


def read_history(path: Path) -> dict[str, list[float]]:
    """Keras-style history from a run's ``metrics.csv``: ``train_x`` → ``x``, ``val_x`` kept; NaN where empty."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    history: dict[str, list[float]] = {}
    for column in rows[0] if rows else []:
        if column in ("epoch", "step"):
            continue
        key = HISTORY_NAMES.get(column, column.removeprefix("train_"))
        history[key] = [float(row[column]) if row.get(column) else math.nan for row in rows]
    return history
