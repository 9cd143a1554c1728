"""Training configuration: defaults, YAML files, command-line overrides, validation.

Precedence, lowest first: the defaults below, a YAML file (``--config run.yaml``), then command-line
flags. The resolved configuration is saved as ``runs/<name>/config.yaml`` and is all that
``--resume`` needs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelwise.errors import ConfigError, unknown_name
from pixelwise.io import atomic_path
from pixelwise.modes import IGNORE_INDEX, MODES

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "poly", "onecycle", "none")
AUGMENT_PRESETS = ("none", "light", "strong")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field can come from YAML or a ``--flag``.

    Sizes are in pixels, learning rates per optimiser step, budgets in epochs or minutes.
    """

    data: str = ""
    """Folder with ``train/`` and ``val/`` splits (or ``images/`` + ``masks/``): see SegmentationFolder."""
    name: str | None = None
    """Run name: the run is written to ``<runs_dir>/<name>/`` (default: model-encoder-timestamp)."""
    runs_dir: str = "runs"
    train_split: str | None = "train"
    val_split: str | None = "val"
    train_files: str | list[str] | None = None
    """Only these training files: a glob over file stems (``"[01]?"``) or a list; default all."""
    val_files: str | list[str] | None = None
    """Only these validation files (e.g. the same split folder as training with ``"2[0-4]"``)."""
    classes: int | None = None
    """Number of classes K (inferred from classes.yaml or the masks when omitted)."""
    ignore_index: int = IGNORE_INDEX
    mode: str = "multiclass"

    model: str = "unet"
    encoder: str | None = "resnet34"
    encoder_weights: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)

    epochs: int = 50
    max_minutes: float | None = None
    """Stop after this much training time, whatever ``epochs`` says (fixed-budget runs)."""
    samples_per_epoch: int | None = None
    """Random crops drawn per epoch (default: one per training image)."""
    batch_size: int = 8
    scale: float = 1.0
    """Resize images (bilinear) and masks (nearest) by this factor before cropping; the model then
    predicts at this scale and evaluation upsamples its scores to the full resolution."""
    crop: int | None = 256
    augment: str | list = "light"
    loss: str | dict[str, float] = "ce+dice"
    loss_options: dict[str, Any] = field(default_factory=dict)
    class_weights: str | list[float] | None = None
    """``None``, ``"median"`` (median-frequency balancing from the training masks) or one weight per class."""
    weight_map: str | None = None
    """Per-pixel loss weights: ``None`` or ``"unet"`` (the U-Net border weight map; needs instance labels)."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    gradient_clip: float | None = None

    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    """``"auto"`` (bf16 mixed precision on GPUs that support it, else 32-bit), or a Lightning precision."""
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = False
    progress: bool = True

    def validate(self) -> TrainConfig:
        """Check choices and ranges; raise ConfigError naming the option and the fix."""
        if not self.data:
            raise ConfigError("no training data given: pass --data DIR (a folder with train/ and val/ splits).")
        checks = [("mode", self.mode, MODES), ("optimizer", self.optimizer, OPTIMIZERS)]
        checks += [("scheduler", self.scheduler, SCHEDULERS)]
        if isinstance(self.augment, str) and self.augment not in AUGMENT_PRESETS:
            checks.append(("augment", self.augment, AUGMENT_PRESETS))
        for option, value, choices in checks:
            if value not in choices:
                raise unknown_name(option, str(value), choices)
        for option in ("epochs", "batch_size"):
            if getattr(self, option) < 1:
                raise ConfigError(f"{option}={getattr(self, option)} must be at least 1.")
        if not 0 < self.scale <= 4:
            raise ConfigError(f"scale={self.scale} must be in (0, 4]; e.g. 0.5 trains at half resolution.")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be positive (e.g. 1e-3 for AdamW).")
        if self.classes is not None and self.classes < 1:
            raise ConfigError(f"classes={self.classes} must be at least 1.")
        if isinstance(self.class_weights, str) and self.class_weights != "median":
            raise ConfigError(f"class_weights={self.class_weights!r}: use 'median' or a list of numbers.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from a mapping; unknown keys are an error naming the closest fields."""
    names = field_names()
    for key in values:
        if key not in names:
            raise unknown_name(f"option in {source}", key, names)
    return TrainConfig(**values)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of training options."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the --config path.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of options, not {type(values).__name__}.")
    return values


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← YAML file ← overrides (``None`` values in overrides mean "not given")."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_yaml(config_file))
        from_dict(values, source=str(config_file))  # report unknown keys against the file's name
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(values).validate()
