"""The training plan against a hand-tuned recipe at the same time budget, seed by seed.

For each seed, two runs in subprocesses on the same data and budget:

- ``recipe``: a config file (``--config``, e.g. ``configs/isbi2012.yaml``) or, for the synthetic sets, the demo's
  hand-written recipe from before it used the plan (``HAND_RECIPE``);
- ``plan``: ``pixelwise train --data DIR --max-minutes M`` with only the data split options, so the plan decides
  everything else (its ``plan.md`` is in the run);

then ``pixelwise evaluate`` of both on the validation split, the recipe with ``--recipe-tta`` (as its results were
reported) and the plan with the test-time augmentation it stored. Prints val mIoU and pixel error (1 − accuracy),
mean ± sd over seeds, and each run's optimiser steps::

    python benchmarks/plan_vs_recipe.py --synthetic cells --minutes 3.5 --seeds 0 1 --out /tmp/pvr_cells
    python benchmarks/plan_vs_recipe.py --data ../shared/data/isbi2012-em --config configs/isbi2012.yaml \\
        --train-files '[01]?' --val-split train --val-files '2[0-4]' --recipe-tta d4 --minutes 29 --seeds 0 1 2

Runs finished under ``--out`` are reused, so an interrupted comparison resumes. Run it on an otherwise idle
machine: both sides are time-budgeted, so a busy machine gives each fewer steps. To compare at the same time on the
same machine (as the measurements in docs/RESULTS.md were made), start one process per side with ``--sides recipe``
and ``--sides plan`` and the same ``--out`` (``OMP_NUM_THREADS`` shares the cores between them), then run once more
without ``--sides`` to print the table from the finished runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from pixelwise.data import write_synthetic
from pixelwise.demo import DEMO_DATA

HAND_RECIPE = {
    "model": "unet",
    "encoder": "resnet18",
    "model_options": {"decoder_channels": [128, 64, 32, 16, 16]},
    "epochs": 4,
    "samples_per_epoch": 192,
    "batch_size": 8,
    "crop": 128,
    "augment": "light",
    "loss": "ce+dice",
    "lr": 3e-3,
    "scheduler": "cosine",
    "warmup_epochs": 0.5,
}
"""The demo's hand-written recipe before the demo used the plan (0.977 val mIoU on ``cells`` in 95 s)."""

SYNTHETIC_SIZES = {"cells": 256, "shapes": 256}


def synthetic(kind: str, out: Path) -> tuple[Path, Path]:
    """The demo's data set of ``kind`` and a config file of the demo's recipe for it."""
    data = out / f"data-{kind}"
    if not (data / "classes.yaml").is_file():
        options = {k: v for k, v in DEMO_DATA.items() if k != "kind"}
        write_synthetic(data, kind, **{**options, "size": SYNTHETIC_SIZES[kind]})
    config = out / f"recipe-{kind}.yaml"
    config.write_text(yaml.safe_dump(HAND_RECIPE))
    return data, config


def train_and_evaluate(args: argparse.Namespace, name: str, extra: list[str], tta: str | None) -> dict:
    run = args.out / name
    metrics = run / "eval-val" / "metrics.json"
    if not metrics.is_file():
        command = [
            sys.executable,
            "-m",
            "pixelwise.cli",
            "train",
            "--data",
            str(args.data),
            "--runs-dir",
            str(args.out),
        ]
        command += ["--name", name, "--max-minutes", str(args.minutes), "--no-progress", *split_options(args), *extra]
        subprocess.run(command, check=True)
        evaluate = [
            sys.executable,
            "-m",
            "pixelwise.cli",
            "evaluate",
            "--checkpoint",
            str(run),
            "--data",
            str(args.data),
        ]
        evaluate += ["--split", args.val_split, "--gallery", "0", "--no-progress", "--out", str(run / "eval-val")]
        evaluate += ["--files", args.val_files] if args.val_files else []
        evaluate += ["--tta", tta] if tta else []
        subprocess.run(evaluate, check=True)
    result = json.loads(metrics.read_text())
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    result["steps"] = int(rows[-1]["step"]) if rows else 0
    return result


def split_options(args: argparse.Namespace) -> list[str]:
    options = ["--val-split", args.val_split]
    options += ["--train-files", args.train_files] if args.train_files else []
    options += ["--val-files", args.val_files] if args.val_files else []
    return options


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="data set (or --synthetic)")
    parser.add_argument("--synthetic", choices=sorted(SYNTHETIC_SIZES), help="the demo's data set of this kind")
    parser.add_argument("--config", type=Path, help="the hand-tuned recipe (default with --synthetic: the demo's)")
    parser.add_argument("--minutes", type=float, required=True, help="budget of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-files", default=None)
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--val-files", default=None)
    parser.add_argument("--recipe-tta", default=None, help="TTA the recipe's results were reported with")
    parser.add_argument("--sides", nargs="+", choices=["recipe", "plan"], default=["recipe", "plan"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        args.data, default_config = synthetic(args.synthetic, args.out)
        args.config = args.config or default_config
    if args.data is None or args.config is None:
        parser.error("give --data and --config, or --synthetic")

    results: dict[str, list[dict]] = {"recipe": [], "plan": []}
    for seed in args.seeds:
        if "recipe" in args.sides:
            recipe = ["--config", str(args.config), "--seed", str(seed)]
            recipe_run = train_and_evaluate(args, f"recipe-s{seed}", recipe, args.recipe_tta)
            recipe_run["tta"] = args.recipe_tta
            results["recipe"].append(recipe_run)
        if "plan" not in args.sides:
            continue
        planned = args.out / f"plan-s{seed}"
        plan_run = train_and_evaluate(args, f"plan-s{seed}", ["--seed", str(seed)], None)
        stored = json.loads((planned / "plan.json").read_text()) if (planned / "plan.json").is_file() else {}
        plan_run["tta"] = stored.get("tta")
        results["plan"].append(plan_run)

    print(f"\n{args.data}, {args.minutes} min per run, seeds {args.seeds}: mean ± sd over seeds")
    print("| run | test-time augmentation | val mIoU | pixel error | steps |\n|---|---|---|---|---|")
    for name, runs in results.items():
        if not runs:
            continue
        miou = spread([r["mean_iou"] for r in runs])
        error = spread([1 - r["accuracy"] for r in runs])
        steps = " / ".join(str(r["steps"]) for r in runs)
        print(f"| {name} | {runs[0]['tta'] or 'none'} | {miou} | {error} | {steps} |")


if __name__ == "__main__":
    main()
