"""How a fixed time budget is spent on small data sets: steps made, validation share, score.

Generates three synthetic data sets of the sizes where the old defaults (one crop per training
image per epoch, a validation pass after every epoch) spent most of a short budget validating:
about 20 images, about 60 large images, about 250 images. Then runs, in a subprocess each,

    pixelwise train --data DIR --max-minutes M --name ... --runs-dir ...

with every other option at its default, and prints one row per data set: whole-command wall time,
optimiser steps, epochs, validation passes and their share of the time (from the run's own
time-split line when the version prints one, else estimated as passes × the seconds per pass the
other version measured, marked ``~``), and the best validation mIoU.

Run it once per version of the code (the other version through ``PYTHONPATH=/other/src``) on an
otherwise idle machine::

    python benchmarks/small_data_budget.py --minutes 4 --out /tmp/budget
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pixelwise.data import write_synthetic

DATA_SETS = {
    # name: (generator, training images, validation images, side in pixels)
    "cells-20": ("cells", 20, 10, 256),
    "shapes-60-large": ("shapes", 60, 15, 768),
    "cells-250": ("cells", 250, 30, 256),
}
SPLIT = re.compile(
    r"time (?P<total>\d+) s: training (?P<train>\d+) s \((?P<steps>\d+) steps.*?validation (?P<val>\d+) s "
    r"\((?P<passes>\d+) passes"
)


def make_data(root: Path) -> dict[str, Path]:
    folders = {}
    for name, (kind, n_train, n_val, size) in DATA_SETS.items():
        folder = root / name
        if not (folder / "classes.yaml").is_file():
            write_synthetic(folder, kind, n_train=n_train, n_val=n_val, size=size, seed=1)
        folders[name] = folder
    return folders


def run_one(data: Path, runs: Path, name: str, minutes: float) -> dict:
    command = [sys.executable, "-m", "pixelwise.cli", "train", "--data", str(data), "--max-minutes", str(minutes)]
    command += ["--runs-dir", str(runs), "--name", name, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    with (runs / name / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    scores = [float(r["val_miou"]) for r in rows if r.get("val_miou")]
    found = SPLIT.search(done.stdout + done.stderr)
    return {
        "wall": wall,
        "steps": int(rows[-1]["step"]),
        "epochs": len(rows),
        "passes": int(found["passes"]) if found else len(scores),
        "validation_seconds": float(found["val"]) if found else None,
        "best_miou": max(scores) if scores else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per run (default 4)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pixelwise-budget"), help="data and runs folder")
    parser.add_argument("--label", default="", help="label of this version in the table and the JSON file")
    parser.add_argument(
        "--per-pass",
        type=Path,
        default=None,
        help="JSON of another version's results, whose "
        "seconds per validation pass estimate this version's validation share",
    )
    args = parser.parse_args()
    folders = make_data(args.out / "data")
    other = json.loads(args.per_pass.read_text() or "{}") if args.per_pass else {}
    results = {}
    stamp = time.strftime("%H%M%S")
    print(f"budget {args.minutes} min, {os.cpu_count()} cores, label {args.label!r}")
    header = ("data set", "wall s", "steps", "epochs", "val passes", "val share", "best mIoU")
    print(f"{header[0]:<18} " + " ".join(f"{h:>{max(len(h), 6)}}" for h in header[1:]))
    for name, folder in folders.items():
        result = run_one(folder, args.out / "runs", f"{name}-{args.label or 'run'}-{stamp}", args.minutes)
        results[name] = result
        if result["validation_seconds"] is not None:
            share = f"{result['validation_seconds'] / result['wall']:.0%}"
        elif name in other and other[name]["validation_seconds"]:
            per_pass = other[name]["validation_seconds"] / other[name]["passes"]
            share = f"~{result['passes'] * per_pass / result['wall']:.0%}"
        else:
            share = "n/a"
        print(
            f"{name:<18} {result['wall']:>7.0f} {result['steps']:>6} {result['epochs']:>6} {result['passes']:>10} "
            f"{share:>9} {result['best_miou']:>9.4f}",
            flush=True,
        )
    (args.out / f"results-{args.label or 'run'}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
