"""Plan a study: where its data is, and every run's resolved training configuration.

The data folder comes from ``--data`` or ``$PIXELWISE_DATA``; there is no default location. A run's budget is
its optimiser steps; a wall-clock cap per run is opt-in (``max_minutes_per_run``), because a time limit makes
the results depend on how fast the machine is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError
from pixelwise.training.config import TrainConfig, from_dict
from pixelwise_experiments.base import DEFAULT_SEEDS, Study, Variant

DATA_ENV = "PIXELWISE_DATA"
"""The environment variable naming the folder that holds the data sets (``<dataset>/`` folders)."""


@dataclass
class StudyOptions:
    """Where and how to run a study.

    Args:
        data: the study's data folder (the ``camvid`` or ``isbi2012-em`` folder itself).
        out: folder for the results (small files only).
        runs_dir: parent of the run directories.
        budget: multiplies every run's optimiser steps; 1.0 = the study's ``steps``.
        seeds: runs per variant, with seeds 0 … seeds − 1.
        accelerator: Lightning accelerator for training (``auto``, ``cpu``, ``gpu``); scoring uses the same.
        keep_runs: keep checkpoints and exported weights in the run directories.
        max_minutes_per_run: stop a run's training after this many minutes of wall time (None: no cap, the
            default). A run stopped before its steps are done is marked ``capped`` in the results.
    """

    data: Path
    out: Path
    runs_dir: Path
    budget: float = 1.0
    seeds: int = DEFAULT_SEEDS
    accelerator: str = "auto"
    keep_runs: bool = False
    max_minutes_per_run: float | None = None


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig
    planned_steps: int

    @property
    def name(self) -> str:
        return f"{self.variant.name}-seed{self.seed}"


def data_folder(study: Study, data: str | os.PathLike | None = None) -> Path:
    """The study's data folder: ``data`` itself or ``data/<dataset>``; without ``data``,
    ``$PIXELWISE_DATA/<dataset>``. Raises ConfigError when neither is given, and naming the expected layout
    when the folder is missing or incomplete."""
    if data:
        root = Path(data)
        folder = root / study.dataset if (root / study.dataset).is_dir() else root
    elif os.environ.get(DATA_ENV):
        folder = Path(os.environ[DATA_ENV]) / study.dataset
    else:
        raise ConfigError(
            f"study {study.name!r} needs the {study.dataset} data set: pass --data DIR (the {study.dataset} "
            f"folder or its parent) or set {DATA_ENV} to the folder that holds {study.dataset}/."
        )
    missing = [sub for sub in study.layout if not (folder / sub).is_dir()]
    if missing:
        raise ConfigError(
            f"study {study.name!r} needs the {study.dataset} data set, but {str(folder)!r} "
            f"{'does not exist' if not folder.is_dir() else 'has no ' + ', '.join(missing)}. Expected "
            f"{folder}/{{{','.join(study.layout)}}}. Pass --data DIR (the {study.dataset} folder or its parent) "
            f"or set {DATA_ENV} to the folder that holds {study.dataset}/."
        )
    return folder


def plan(study: Study, options: StudyOptions) -> list[PlannedRun]:
    """Every run of the study, variants × seeds, with its resolved and validated TrainConfig."""
    if options.budget <= 0 or options.seeds < 1:
        raise ConfigError(f"budget={options.budget} must be > 0 and seeds={options.seeds} at least 1.")
    if options.max_minutes_per_run is not None and options.max_minutes_per_run <= 0:
        raise ConfigError(f"max_minutes_per_run={options.max_minutes_per_run} must be > 0 (or None: no cap).")
    steps = max(1, round(study.steps * options.budget))
    epochs = min(study.epochs, steps)
    per_epoch = math.ceil(steps / epochs)
    runs = []
    for variant in study.variants:
        for seed in range(options.seeds):
            values: dict[str, Any] = {**study.base, **variant.overrides}
            values |= {
                "data": str(options.data),
                "runs_dir": str(options.runs_dir),
                "name": f"{variant.name}-seed{seed}",
                "seed": seed,
                "epochs": epochs,
                "samples_per_epoch": per_epoch * values.get("batch_size", TrainConfig.batch_size),
                "max_minutes": options.max_minutes_per_run,
                "accelerator": options.accelerator,
                "progress": False,
            }
            runs.append(
                PlannedRun(
                    variant, seed, from_dict(values, source=f"study {study.name}").validate(), epochs * per_epoch
                )
            )
    return runs
