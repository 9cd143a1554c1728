"""``pixelwise experiment NAME``: run one of the studies; ``--list`` shows them and their claims.

A ``pixelwise`` command from outside the library: ``pixelwise.cli`` finds :func:`add_parser` through the
``pixelwise.commands`` entry point of this distribution and calls it with its subparsers.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from pixelwise_experiments import STUDIES, data_folder, get_study, plan, run_study
from pixelwise_experiments.base import DEFAULT_SEEDS
from pixelwise_experiments.planning import DATA_ENV, StudyOptions


def describe_studies(width: int = 100) -> str:
    """One paragraph per study: name, data set, runs, and the claim it tests (and how long it once took)."""
    blocks = []
    for study in STUDIES.values():
        runs = len(study.variants) * DEFAULT_SEEDS
        head = (
            f"{study.name}  ({study.dataset}; {len(study.variants)} variants × {DEFAULT_SEEDS} seeds = {runs} runs "
            f"of {study.steps} steps)"
        )
        measured = f" Measured: {study.measured}." if study.measured else ""
        variants = "variants: " + ", ".join(v.title + (f" [{v.group}]" if v.group else "") for v in study.variants)
        body = textwrap.fill(
            f"claim: {study.claim} {variants}.{measured}", width, initial_indent="  ", subsequent_indent="  "
        )
        blocks.append(f"{head}\n{body}")
    return "\n\n".join(blocks)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "experiment",
        help="run a fixed-step study of an FCN / U-Net / SegNet claim (--list shows them)",
        description="Train every variant of a study with several seeds for equal steps, score each run on "
        "full-resolution validation images, and write results.csv, results.md (mean ± s.d. and a verdict "
        "per claim), bar charts and sample predictions.",
        epilog="studies:\n\n" + describe_studies(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="the study to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the studies and the claims they test")
    parser.add_argument(
        "--data",
        default=None,
        help=f"the study's data folder or its parent (default ${DATA_ENV}/<dataset>; one of the two is needed)",
    )
    parser.add_argument("--out", default=None, help="results folder (default outputs/experiments/NAME)")
    parser.add_argument(
        "--runs-dir", default=None, help="parent of the run directories (default runs/experiments/NAME)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=StudyOptions.budget,
        help=f"multiplies the steps of every run (default {StudyOptions.budget}: the study's own step counts)",
    )
    parser.add_argument(
        "--max-minutes-per-run",
        type=float,
        default=StudyOptions.max_minutes_per_run,
        metavar="MINUTES",
        help="stop a run's training after this many minutes; a run stopped before its steps is marked capped "
        "(default: no cap, every run trains all its steps)",
    )
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds per variant (default {DEFAULT_SEEDS})")
    parser.add_argument(
        "--accelerator",
        "--device",
        default="auto",
        choices=("auto", "cpu", "gpu", "cuda", "mps"),
        help="where to train and score (default auto)",
    )
    parser.add_argument("--keep-runs", action="store_true", help="keep checkpoints and weights of every run")
    parser.add_argument("--dry-run", action="store_true", help="check the data and print the planned runs only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the studies, or plan and run one."""
    if args.list or not args.name:
        print(describe_studies())
        if not args.list:
            print("\nrun one with `pixelwise experiment NAME`")
        return 0
    study = get_study(args.name)
    options = StudyOptions(
        data=data_folder(study, args.data),
        out=Path(args.out or Path("outputs/experiments") / study.name),
        runs_dir=Path(args.runs_dir or Path("runs/experiments") / study.name),
        budget=args.budget,
        seeds=args.seeds,
        accelerator="gpu" if args.accelerator == "cuda" else args.accelerator,
        keep_runs=args.keep_runs,
        max_minutes_per_run=args.max_minutes_per_run,
    )
    runs = plan(study, options)
    print(
        f"study {study.name}: {len(runs)} runs ({len(study.variants)} variants × {options.seeds} seeds), "
        f"{runs[0].planned_steps} steps each"
        f"{f', at most {options.max_minutes_per_run:g} min each' if options.max_minutes_per_run else ''}; "
        f"data {options.data}; results in {options.out}"
    )
    if args.dry_run:
        for run in runs:
            config = run.config
            print(f"  {run.name}: model {config.model}, augment {config.augment}, train_files {config.train_files}")
        return 0
    run_study(study, options)
    return 0
