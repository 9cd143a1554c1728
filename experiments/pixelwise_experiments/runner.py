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
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from pixelwise.errors import ConfigError
from pixelwise.viz import number
from pixelwise_experiments.base import Study
from pixelwise_experiments.planning import PlannedRun, StudyOptions, plan
from pixelwise_experiments.results import read_rows, write_outputs, write_rows
from pixelwise_experiments.scoring import score_run


def run_study(study: Study, options: StudyOptions, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and score every run not yet in ``out/results.csv``; write the results folder after each run.

    Returns the rows of this study's results.csv.
    """
    # deferred: pixelwise.training.run imports Lightning, which `pixelwise experiment --list` does not need
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


__all__ = ["run_study"]
