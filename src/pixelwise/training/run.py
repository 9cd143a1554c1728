"""``train(config)``: check the data, build the task, fit, and leave a complete run directory.

A run directory ``runs/<name>/`` holds ``config.yaml`` (the resolved configuration), ``last.ckpt``
and ``best.ckpt`` (by validation mIoU), ``metrics.csv``, ``curves.png`` and ``model/`` (the best
weights in ``save_pretrained`` format, plus ``preprocessing.json`` and ``classes.yaml``).
Checkpoints are written under a temporary name and renamed, and read back with
``weights_only=True``; ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from pixelwise.bundle import ModelBundle, Preprocessing
from pixelwise.data import ClassInfo, check_dataset, default_palette
from pixelwise.data.targets import BOUNDARY_CLASSES
from pixelwise.errors import ConfigError
from pixelwise.io import atomic_path, load_checkpoint, load_weights, remove_stale_temporaries
from pixelwise.models import SegmentationModel, get_model_class
from pixelwise.models.base import CONFIG_NAME, WEIGHTS_NAME
from pixelwise.models.registry import read_config, takes_encoder
from pixelwise.training.callbacks import EpochRecords, TimeBudget, TimeSplit, WeightEMA
from pixelwise.training.config import TrainConfig
from pixelwise.training.data import SegmentationDataModule
from pixelwise.training.loggers import build_loggers, logger_callbacks
from pixelwise.training.task import SegmentationTask, training_tile

MONITOR = "val_miou"
RUN_NAME_ENV = "PIXELWISE_RUN_NAME"
"""Carries an auto-generated run name to the DDP worker processes, which re-run the command line."""


def is_worker_process() -> bool:
    """True in the processes a multi-process launcher started besides the first (they must not create
    the run directory: the first process has)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place, and
    loads with ``weights_only=True`` (a checkpoint can never run code)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)


@dataclass
class RunResult:
    """What ``train`` returns: the run directory, the best validation mIoU, epochs, seconds and their split."""

    run_dir: Path
    best_miou: float | None
    epochs: int
    seconds: float
    time_split: TimeSplit | None = None


def default_run_name(config: TrainConfig) -> str:
    parts = [config.model, config.encoder if takes_encoder(config.model) else None]
    return "-".join(p for p in parts if p) + time.strftime("-%Y%m%d-%H%M%S")


def precision_for(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported() and config.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed"
    return "32-true"


def prepare_run(config: TrainConfig, resume: bool = False) -> tuple[Path, dict[str, Any], ClassInfo | None]:
    """Check the data; return the run directory, the data facts (classes, channels, normalisation,
    class weights) the task is built from, and the data set's class list (None: inferred from the masks)."""
    worker = is_worker_process()
    name = config.name or os.environ.get(RUN_NAME_ENV) or default_run_name(config)
    run_dir = Path(config.runs_dir) / name
    if not resume and not worker and (run_dir / "config.yaml").exists():
        raise ConfigError(
            f"run directory {str(run_dir)!r} already holds a run; continue it with --resume {run_dir} "
            "or choose another --name."
        )
    targets = config.target_options()
    # a boundary-target run predicts 3 classes of its own: the data are checked against their own classes
    data_classes = None if targets.num_classes else config.classes
    train_report = check_dataset(
        config.data,
        split=config.train_split,
        num_classes=data_classes,
        ignore_index=config.ignore_index,
        files=config.train_files,
        mask_values=config.mask_values,
        progress=None if config.progress else False,
        format=config.data_format,
        layout_options=config.data_options,
    )
    train_report.raise_if_bad()
    config.ignore_index, config.mask_values = train_report.ignore_index, train_report.mask_values
    binary = train_report.mask_values_from == "binary"  # a layout's own value table needs no note
    for stored, class_id in config.mask_values.items() if binary else ():
        rank_zero_info(
            f"note: the masks hold only 0 and {stored}: {stored} is read as class {class_id} (binary masks); "
            f"pass --ignore-index {stored} if it marks pixels to ignore instead."
        )
    if train_report.suggested_mask_offset and not any(config.mask_offset):
        dy, dx = train_report.mask_offset
        rank_zero_info(
            f"note: the masks' edges sit dy {dy:+.2f}, dx {dx:+.2f} px from the images' edges; if the labels "
            f'were drawn that way, --mask-offset "{train_report.suggested_mask_offset}" trains on images '
            "shifted onto them (see `pixelwise check-data`)."
        )
    val_report = check_dataset(
        config.data,
        split=config.val_split,
        num_classes=data_classes or train_report.num_classes,
        ignore_index=config.ignore_index,
        files=config.val_files,
        mask_values=config.mask_values,
        progress=None if config.progress else False,
        format=config.data_format,
        layout_options=config.data_options,
    )
    val_report.raise_if_bad()
    if val_report.in_channels != train_report.in_channels:
        raise ConfigError(
            f"the {config.train_split} images have {train_report.in_channels} channels but the "
            f"{config.val_split} images have {val_report.in_channels}; all images must have the same channels."
        )
    classes = targets.num_classes or config.classes or train_report.num_classes
    if config.class_weights in ("median", "sqrt_median"):
        power = 0.5 if config.class_weights == "sqrt_median" else 1.0
        weights = [float(w) ** power for w in train_report.median_frequency_weights]
    elif isinstance(config.class_weights, list | tuple):
        if len(config.class_weights) != classes:
            raise ConfigError(f"class_weights has {len(config.class_weights)} entries for {classes} classes.")
        weights = [float(w) for w in config.class_weights]
    else:
        weights = None
    facts = {
        "in_channels": train_report.in_channels,
        "classes": classes,
        "mean": [float(m) for m in train_report.mean],
        "std": [max(float(s), 1e-3) for s in train_report.std],
        "class_weights": weights,
    }
    config.name = run_dir.name
    config.classes = classes
    return run_dir, facts, train_report.classes


def process_start() -> float:
    """When this process started, on the ``time.perf_counter()`` clock (Linux; elsewhere: now)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.perf_counter()
    age = max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    return time.perf_counter() - age


def save_config(config: TrainConfig, run_dir: Path) -> None:
    """Write ``config.yaml`` (rank 0 only), once the model and the data pipeline have been built from it:
    a config that cannot build its model leaves no run directory behind to block its ``--name``."""
    if not is_worker_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.yaml")


def train(
    config: TrainConfig,
    resume: bool = False,
    start: float | None = None,
    callbacks: Sequence[L.Callback] = (),
    artifacts: Mapping[str, str] | None = None,
) -> RunResult:
    """Fit a model as ``config`` says; with ``resume``, continue the run in ``config.runs_dir/config.name``.

    ``start`` (a ``time.perf_counter()`` value) is when the budget ``max_minutes`` began: by default
    now; the command line passes the start of its process (:func:`process_start`), so that the whole
    command keeps the budget. ``callbacks``: Lightning callbacks added to the run's own (e.g. the
    Keras metrics of :func:`pixelwise.fit`). ``artifacts``: text files written (atomically) into the run
    directory beside ``config.yaml``, e.g. the training plan's ``fingerprint.json`` and ``plan.md``.

    Raises:
        ConfigError, DataError: a bad option or data folder, before any run directory is written; a run
            that fails before its first checkpoint leaves no run directory behind either.
    """
    start = time.perf_counter() if start is None else start
    config.validate()
    L.seed_everything(config.seed, workers=True, verbose=False)
    run_dir, facts, class_list = prepare_run(config, resume=resume)
    last = run_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no last.ckpt (the run never finished an epoch).")
    if resume and config.init != _saved_init(run_dir):
        raise ConfigError("--resume and --init exclude each other: a resumed run continues from its last.ckpt.")
    task = SegmentationTask(config, **facts)
    if config.init and not resume:  # a resumed run's checkpoint holds its weights
        initialise_from(task.model, config.init)
    crop, mirror_border = training_tile(task.model, config.crop)
    if mirror_border:
        rank_zero_info(
            f"{type(task.model).__name__}: {crop}×{crop} input tiles (--crop {config.crop}) of the images "
            f"mirror-padded by {mirror_border} px; the loss sees the {crop - 2 * mirror_border}×"
            f"{crop - 2 * mirror_border} output tiles."
        )
    datamodule = SegmentationDataModule(
        dataclasses.replace(config, crop=crop), num_classes=facts["classes"], mirror_border=mirror_border
    )
    budget = TimeBudget(config.max_minutes * 60 if config.max_minutes else None, start, last)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=False,  # after validation; TimeBudget writes last.ckpt after the other epochs
    )
    run_callbacks: list[L.Callback] = [budget, checkpoints, EpochRecords(run_dir, budget)]
    if config.ema_decay is not None:
        # swaps the averaged weights in for validation and puts them in every checkpoint
        run_callbacks.append(WeightEMA(decay=config.ema_decay))
    with _without_lightning_tips():
        trainer = build_trainer(config, run_dir, [*run_callbacks, *callbacks])
    created = not run_dir.exists()
    save_config(config, run_dir)
    if trainer.is_global_zero:
        for name, text in (artifacts or {}).items():
            with atomic_path(run_dir / name) as tmp:
                tmp.write_text(text)
    removed = remove_stale_temporaries(run_dir) if trainer.is_global_zero else []
    if removed:
        rank_zero_info(f"removed {len(removed)} temporary files left by an interrupted run in {run_dir}")
    os.environ[RUN_NAME_ENV] = run_dir.name
    try:
        with warnings.catch_warnings(), _without_lightning_tips():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning
            trainer.fit(task, datamodule=datamodule, ckpt_path=last if resume else None, weights_only=True)
    except BaseException:
        if created and trainer.is_global_zero and not last.exists():  # nothing to resume: leave no trace
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        os.environ.pop(RUN_NAME_ENV, None)
    best = checkpoints.best_model_score
    if trainer.is_global_zero:
        export_model(run_dir, Path(checkpoints.best_model_path or last), facts, config, class_list)
    seconds = time.perf_counter() - start
    rank_zero_info(budget.split.format(seconds))
    return RunResult(run_dir, float(best) if best is not None else None, trainer.current_epoch, seconds, budget.split)


def _saved_init(run_dir: Path) -> str | None:
    """The ``init`` a run directory's ``config.yaml`` recorded (None: none, or no readable file)."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return saved.get("init") if isinstance(saved, dict) else None


def initialise_from(model: SegmentationModel, folder: str | os.PathLike) -> None:
    """Load the weights of the model folder ``folder`` (or of a run directory's ``model/``) into ``model``.

    Weights of another shape (a head for another number of classes) keep their fresh initialisation, with
    a warning naming them (:meth:`SegmentationModel.load_state_dict` with ``strict=False``).

    Raises:
        ConfigError: no model folder there, or one of another architecture or encoder (naming both).
    """
    path = Path(folder)
    model_dir = path / "model" if (path / "model" / CONFIG_NAME).is_file() else path
    if not (model_dir / CONFIG_NAME).is_file():
        raise ConfigError(f"--init {str(folder)!r}: no {CONFIG_NAME} there; give a model folder or a run directory.")
    arch, options = read_config(model_dir / CONFIG_NAME)
    found = (get_model_class(arch).arch_name, str(options.get("encoder_name", "")).removeprefix("tu-"))
    wanted = (model.arch_name, str(model.config.get("encoder_name", "")).removeprefix("tu-"))
    if found != wanted:
        describe = " with encoder ".join
        raise ConfigError(
            f"--init {str(folder)!r} holds a {describe(p for p in found if p)} but the run builds a "
            f"{describe(p for p in wanted if p)}; set --model and --encoder to the folder's."
        )
    result = model.load_state_dict(load_weights(model_dir / WEIGHTS_NAME), strict=False)
    skipped = len(result.missing_keys) + len(result.unexpected_keys)
    rank_zero_info(f"initialised the model from {model_dir}" + (f" ({skipped} keys not in both)" if skipped else ""))


@contextlib.contextmanager
def _without_lightning_tips() -> Iterator[None]:
    """Lightning advertises a cloud logger on every fit; a training log is not the place for it."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def no_tips(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")

    logger.addFilter(no_tips)
    try:
        yield
    finally:
        logger.removeFilter(no_tips)


def build_trainer(config: TrainConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    """The Lightning Trainer of a run (no time limit of its own: :class:`TimeBudget` keeps the budget).

    Raises:
        ConfigError: Lightning refuses the devices, strategy or precision (names the options); an unknown
            ``logger``, or one whose package is missing (names the pip command).
    """
    loggers = build_loggers(config, run_dir)
    try:
        return L.Trainer(
            default_root_dir=run_dir,
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=precision_for(config),
            gradient_clip_val=config.gradient_clip,
            deterministic=config.deterministic,
            callbacks=[*callbacks, *logger_callbacks(config)],
            plugins=[AtomicCheckpointIO()],
            logger=loggers or False,  # metrics.csv and curves.png come from EpochRecords
            enable_progress_bar=config.progress,
            enable_model_summary=False,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"cannot set up training with accelerator={config.accelerator!r}, devices={config.devices!r}, "
            f"strategy={config.strategy!r}, precision={config.precision!r}: {str(error).splitlines()[0]}"
        ) from error


def export_model(
    run_dir: Path, checkpoint: Path, facts: dict[str, Any], config: TrainConfig, class_list: ClassInfo | None = None
) -> Path:
    """Write ``run_dir/model/``: the checkpoint's model in save_pretrained format, its input
    normalisation (``preprocessing.json``) and the class list (``classes.yaml``: ``class_list``, the
    data set's, else ``class_0 .. class_{K-1}``)."""
    state = load_checkpoint(checkpoint)["state_dict"]
    task = SegmentationTask(config, **facts)
    task.load_state_dict(state)
    preprocessing = Preprocessing(
        mean=facts["mean"],
        std=facts["std"],
        input_range="unit",  # images are scaled to [0, 1] (8-bit / 255, 16-bit / 65535) before mean/std
        scale=config.scale,  # the model predicts on images resized by this factor
        mask_offset=config.mask_offset,  # [dy, dx]: images are shifted by this before the network
        ignore_index=config.ignore_index,
        mask_values=dict(config.mask_values or {}),  # {stored value: class id}
        # how the outputs become instances: the target's classes, and the gaps cut between touching objects
        target=config.target,
        separation_gap=config.target_options().effective_gap,
        tta=config.tta,  # test-time augmentation evaluate, predict and Predictor use unless given another
    )
    if config.target == "boundary":
        classes = ClassInfo(list(BOUNDARY_CLASSES), list(range(len(BOUNDARY_CLASSES))), default_palette(3))
    else:
        classes = class_list or ClassInfo.default(facts["classes"])
    return ModelBundle(task.model, preprocessing, classes).save(run_dir / "model")
