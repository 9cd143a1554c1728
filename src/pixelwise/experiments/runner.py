"""Run a study: plan its runs, train and score each one, and write the results folder.

``out`` (default ``outputs/experiments/NAME``) receives only small files: ``results.csv`` (one row per run),
``results.md``, ``bars.png``, ``samples.png``, ``predictions/<variant>.png`` (the sample image's labels from
the first seed) and ``configs/<run>.yaml`` (each run's resolved training configuration). The run directories
go to ``runs_dir`` (default ``runs/experiments/NAME``); their checkpoints are deleted once a run is scored
unless ``keep_runs``. A study that was interrupted continues where it stopped: runs already in
``results.csv`` are skipped, and a run that did not finish is started again from scratch.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError
from pixelwise.experiments.base import CAP_FACTOR, DEFAULT_SEEDS, Study, Variant
from pixelwise.experiments.results import number, read_rows, write_outputs, write_rows
from pixelwise.experiments.scoring import score_run
from pixelwise.training.config import TrainConfig, from_dict

DATA_ENV = "PIXELWISE_DATA"
DEFAULT_DATA_ROOT = "../shared/data"


@dataclass
class StudyOptions:
    """Where and how to run a study.

    Args:
        data: the study's data folder (e.g. ``../shared/data/camvid``).
        out: folder for the results (small files only).
        runs_dir: parent of the run directories.
        budget: multiplies every run's optimiser steps (and its time cap); 1.0 = the default (about 20 minutes
            for the whole study on 2 CPU cores).
        seeds: runs per variant, with seeds 0 … seeds − 1.
        accelerator: Lightning accelerator for training (``auto``, ``cpu``, ``gpu``); scoring uses the same.
        keep_runs: keep checkpoints and exported weights in the run directories.
    """

    data: Path
    out: Path
    runs_dir: Path
    budget: float = 1.0
    seeds: int = DEFAULT_SEEDS
    accelerator: str = "auto"
    keep_runs: bool = False


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
    ``$PIXELWISE_DATA/<dataset>`` (default ``../shared/data/<dataset>``). Raises ConfigError naming the
    expected layout when it is missing."""
    root = Path(data) if data else Path(os.environ.get(DATA_ENV, DEFAULT_DATA_ROOT))
    folder = root / study.dataset if (root / study.dataset).is_dir() or not data else root
    missing = [sub for sub in study.layout if not (folder / sub).is_dir()]
    if missing:
        raise ConfigError(
            f"study {study.name!r} needs the {study.dataset} data set, but {str(folder)!r} "
            f"{'does not exist' if not folder.is_dir() else 'has no ' + ', '.join(missing)}. Expected "
            f"{folder}/{{{','.join(study.layout)}}}. Pass --data DIR (the {study.dataset} folder or its parent) "
            f"or set {DATA_ENV} to the folder that holds {study.dataset}/ (default {DEFAULT_DATA_ROOT})."
        )
    return folder


def plan(study: Study, options: StudyOptions) -> list[PlannedRun]:
    """Every run of the study, variants × seeds, with its resolved and validated TrainConfig."""
    if options.budget <= 0 or options.seeds < 1:
        raise ConfigError(f"budget={options.budget} must be > 0 and seeds={options.seeds} at least 1.")
    steps = max(1, round(study.steps * options.budget))
    epochs = min(study.epochs, steps)
    per_epoch = math.ceil(steps / epochs)
    # each run's share of the study's minutes, as planned for the default number of seeds
    cap = CAP_FACTOR * options.budget * study.minutes / (len(study.variants) * DEFAULT_SEEDS)
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
                "max_minutes": round(cap, 3),
                "accelerator": options.accelerator,
                "progress": False,
            }
            runs.append(
                PlannedRun(
                    variant, seed, from_dict(values, source=f"study {study.name}").validate(), epochs * per_epoch
                )
            )
    return runs


def run_study(study: Study, options: StudyOptions, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and score every run not yet in ``out/results.csv``; write the results folder after each run.

    Returns the rows of this study's results.csv.
    """
    from pixelwise.training.run import train

    runs = plan(study, options)
    out = Path(options.out)
    csv_path = out / "results.csv"
    rows = read_rows(csv_path)
    others = {str(r.get("study")) for r in rows} - {study.name}
    if others:
        raise ConfigError(f"{csv_path} holds results of study {', '.join(sorted(others))}; use another --out.")
    budgets = {number(r.get("budget")) for r in rows}
    if rows and budgets != {options.budget}:
        raise ConfigError(
            f"{csv_path} holds runs made with --budget {', '.join(map(str, sorted(budgets)))}, not {options.budget}; "
            "use the same --budget to continue that study, or another --out for a new one."
        )
    done = {(r["variant"], int(r["seed"])) for r in rows}
    (out / "configs").mkdir(parents=True, exist_ok=True)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # one line per run, not Lightning's banner per run
    try:
        for index, run in enumerate(runs, 1):
            prefix = f"[{index}/{len(runs)}] {run.variant.name} seed {run.seed}"
            if (run.variant.name, run.seed) in done:
                log(f"{prefix}: already in {csv_path}, skipped")
                continue
            run_dir = Path(options.runs_dir) / run.name
            if run_dir.exists():  # left by an interrupted run: start it again
                shutil.rmtree(run_dir)
            log(f"{prefix}: training for {run.planned_steps} steps …")
            start = time.perf_counter()
            result = train(run.config)
            row = _score(study, run, result.run_dir, options)
            row["train_seconds"] = round(result.seconds, 1)
            row["run_seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            write_rows(csv_path, rows)
            shutil.copyfile(run_dir / "config.yaml", out / "configs" / f"{run.name}.yaml")
            if not options.keep_runs:
                for path in [*run_dir.glob("*.ckpt"), run_dir / "model"]:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            headline = "  ".join(f"{m.label} {number(row[m.key]):.{m.digits}f}" for m in study.metrics)
            log(
                f"{prefix}: {headline}  ({row['steps']} steps in {row['train_seconds']:.0f} s"
                f"{', capped by the clock' if row['capped'] else ''}; scored {row['images']} images in "
                f"{row['eval_seconds']:.0f} s)"
            )
            write_outputs(study, options, rows)
    finally:
        lightning_log.setLevel(level)
    write_outputs(study, options, rows)
    log(f"results: {(out / 'results.md').resolve()}")
    return rows


def _score(study: Study, run: PlannedRun, run_dir: Path, options: StudyOptions) -> dict[str, Any]:
    """Score a finished run and keep the sample prediction of the first seed."""
    from PIL import Image

    metrics_rows = read_rows(run_dir / "metrics.csv")
    steps = int(number(metrics_rows[-1]["step"])) if metrics_rows else 0
    checkpoint = run_dir / "last.ckpt" if (run_dir / "last.ckpt").is_file() else run_dir
    start = time.perf_counter()
    metrics, labels = score_run(
        checkpoint,
        options.data,
        study.eval_split,
        study.eval_files,
        study.class_names,
        ignore_index=run.config.ignore_index,
        accelerator=options.accelerator,
        keep_prediction=study.panel_image if run.seed == 0 else None,
    )
    if labels is not None:
        (Path(options.out) / "predictions").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(Path(options.out) / "predictions" / f"{run.variant.name}.png")
    row: dict[str, Any] = {
        "study": study.name,
        "variant": run.variant.name,
        "group": run.variant.group or "",
        "seed": run.seed,
        "budget": options.budget,
        "steps": steps,
        "planned_steps": run.planned_steps,
        "capped": steps < run.planned_steps,
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    return row | metrics
