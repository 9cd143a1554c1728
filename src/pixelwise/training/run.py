"""``train(config)``: check the data, build the task, fit, and leave a complete run directory.

A run directory ``runs/<name>/`` holds ``config.yaml`` (the resolved configuration), ``last.ckpt``
and ``best.ckpt`` (by validation mIoU), ``metrics.csv``, ``curves.png`` and ``model/`` (the best
weights in ``save_pretrained`` format, plus ``preprocessing.json`` and ``classes.yaml``).
Checkpoints are written under a temporary name and renamed, and read back with
``weights_only=True``; ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from pixelwise.data import ClassInfo, check_dataset, default_palette
from pixelwise.errors import ConfigError
from pixelwise.instances import BOUNDARY_CLASSES
from pixelwise.io import atomic_path, load_checkpoint
from pixelwise.training.callbacks import EpochRecords, WeightEMA
from pixelwise.training.config import TrainConfig
from pixelwise.training.data import SegmentationDataModule
from pixelwise.training.task import SegmentationTask, training_tile

MONITOR = "val_miou"
# the run directory holds config.yaml before the first checkpoint: that is expected, not a problem
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning, not ours
# Lightning advertises a cloud logger on every fit; a training log is not the place for it
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith("💡 Tip")
)
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
    run_dir: Path
    best_miou: float | None
    epochs: int
    seconds: float


def default_run_name(config: TrainConfig) -> str:
    parts = [config.model, config.encoder if config.model.lower() != "unet2015" else None]
    return "-".join(p for p in parts if p) + time.strftime("-%Y%m%d-%H%M%S")


def precision_for(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported() and config.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed"
    return "32-true"


def prepare_run(config: TrainConfig, resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Check the data; return the run directory and the data facts
    (classes, channels, normalisation, class weights) the task is built from."""
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
    )
    train_report.raise_if_bad()
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
    return run_dir, facts


def save_config(config: TrainConfig, run_dir: Path) -> None:
    """Write ``config.yaml`` (rank 0 only), once the model and the data pipeline have been built from it:
    a config that cannot build its model leaves no run directory behind to block its ``--name``."""
    if not is_worker_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.yaml")


def train(config: TrainConfig, resume: bool = False) -> RunResult:
    """Fit a model as ``config`` says; with ``resume``, continue the run in ``config.runs_dir/config.name``."""
    config.validate()
    L.seed_everything(config.seed, workers=True, verbose=False)
    run_dir, facts = prepare_run(config, resume=resume)
    task = SegmentationTask(config.to_dict(), **facts)
    crop, mirror_border = training_tile(task.model, config.crop)
    if mirror_border:
        rank_zero_info(
            f"{type(task.model).__name__}: {crop}×{crop} input tiles (--crop {config.crop}) of the images "
            f"mirror-padded by {mirror_border} px; the loss sees the {crop - 2 * mirror_border}×"
            f"{crop - 2 * mirror_border} output tiles."
        )
    datamodule = SegmentationDataModule(
        {**config.to_dict(), "crop": crop}, num_classes=facts["classes"], mirror_border=mirror_border
    )
    save_config(config, run_dir)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [checkpoints, EpochRecords(run_dir)]
    if config.ema_decay is not None:
        # swaps the averaged weights in for validation and puts them in every checkpoint
        callbacks.append(WeightEMA(decay=config.ema_decay))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=config.epochs,
        max_time={"minutes": config.max_minutes} if config.max_minutes else None,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=precision_for(config),
        gradient_clip_val=config.gradient_clip,
        deterministic=config.deterministic,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    last = run_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no last.ckpt (the run never finished an epoch).")
    start = time.perf_counter()
    os.environ[RUN_NAME_ENV] = run_dir.name
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=last if resume else None, weights_only=True)
    finally:
        os.environ.pop(RUN_NAME_ENV, None)
    seconds = time.perf_counter() - start
    best = checkpoints.best_model_score
    if trainer.is_global_zero:
        export_model(run_dir, Path(checkpoints.best_model_path or last), facts, config)
    return RunResult(run_dir, float(best) if best is not None else None, trainer.current_epoch, seconds)


def export_model(run_dir: Path, checkpoint: Path, facts: dict[str, Any], config: TrainConfig) -> Path:
    """Write ``run_dir/model/``: the checkpoint's model in save_pretrained format, its input
    normalisation (``preprocessing.json``) and the class list (``classes.yaml``)."""
    state = load_checkpoint(checkpoint)["state_dict"]
    task = SegmentationTask(config.to_dict(), **facts)
    task.load_state_dict(state)
    model_dir = run_dir / "model"
    task.model.save_pretrained(model_dir)
    preprocessing = {
        "mean": facts["mean"],
        "std": facts["std"],
        "input_range": "unit",  # images are scaled to [0, 1] (8-bit / 255, 16-bit / 65535) before mean/std
        "scale": config.scale,  # the model predicts on images resized by this factor
        "mask_offset": config.mask_offset,  # [dy, dx]: images are shifted by this before the network
        "ignore_index": config.ignore_index,
        # how the outputs become instances: the target's classes, and the gaps cut between touching objects
        "target": config.target,
        "separation_gap": config.target_options().effective_gap,
    }
    with atomic_path(model_dir / "preprocessing.json") as tmp:
        tmp.write_text(json.dumps(preprocessing, indent=2) + "\n")
    if config.target == "boundary":
        classes = ClassInfo(list(BOUNDARY_CLASSES), list(range(len(BOUNDARY_CLASSES))), default_palette(3))
    else:
        classes = ClassInfo.find(config.data) or ClassInfo.default(facts["classes"])
    classes.save(model_dir / "classes.yaml")
    return model_dir
