"""Does the U-Net border weight map separate touching cells? Same U-Net, same budget, four targets.

Generates the synthetic ``cells`` set (clusters of touching cells split only by a faint line), then
trains the same small U-Net with identical seeds, data, augmentation and number of optimiser steps as:

- ``plain``: the semantic mask (touching cells form one blob), loss ``--loss``;
- ``plain+gap``: the mask with a 1-pixel separation gap cut on each side of every contact, same loss
  (isolates the effect of the gaps from that of the weights);
- ``unet-weights``: the same gapped mask with the U-Net weight map (w0 = 10, sigma = 5) on the CE term;
- ``boundary``: three classes background / interior / boundary (2 px), same loss.

Each model is scored on the validation images as instances (``pixelwise.instances``) with connected
components and with watershed (distance-transform markers; interior markers for ``boundary``),
against the true instance labels. The table gives mean ± standard deviation over the seeds of the
DSB 2018 score, panoptic quality, F1 at IoU 0.5, the mean absolute object-count error per image,
and the foreground IoU.

Usage::

    python benchmarks/instances_weightmap.py                        # 4 variants × 2 seeds × 600 steps
    python benchmarks/instances_weightmap.py --steps 20 --seeds 1 --n-train 8 --n-val 4   # smoke run

A benchmark, not a test: it prints a Markdown table (and writes it to ``--out``/results.md).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pixelwise.data import SegmentationFolder
from pixelwise.data.synthetic import write_synthetic
from pixelwise.evaluate import load_model
from pixelwise.inference import Predictor
from pixelwise.instances import InstanceScorer
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train

VARIANTS = {
    "plain": {},
    "plain+gap": {"separation_gap": 1},
    "unet-weights": {"loss_weight_map": "unet", "separation_gap": 1},
    "boundary": {"target": "boundary", "boundary_width": 2},
}
STEPS_PER_EPOCH = 50
"""Optimiser steps between two validations (each run validates after every such epoch)."""
METRICS = ("dsb_score", "pq", "f1", "count_error", "fg_iou")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per run (equal budget)")
    parser.add_argument("--minutes", type=float, default=None, help="instead of --steps: minutes per run")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="image size of the synthetic cells")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--loss", default="ce+dice")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--out", default="outputs/instances_weightmap")
    return parser.parse_args()


def train_variant(args: argparse.Namespace, data: Path, variant: str, seed: int) -> Path:
    epochs = max(1, math.ceil(args.steps / STEPS_PER_EPOCH)) if args.minutes is None else 10_000
    config = TrainConfig(
        data=str(data),
        runs_dir=str(Path(args.out) / "runs"),
        name=f"{variant}-seed{seed}",
        model="unet",
        encoder=args.encoder,
        epochs=epochs,
        max_minutes=args.minutes,
        samples_per_epoch=STEPS_PER_EPOCH * args.batch_size if args.minutes is None else None,
        batch_size=args.batch_size,
        crop=args.crop,
        augment="light",
        loss=args.loss,
        lr=args.lr,
        seed=seed,
        accelerator=args.accelerator,
        progress=False,
        **VARIANTS[variant],
    )
    if args.minutes is None and args.steps < STEPS_PER_EPOCH:
        config.epochs, config.samples_per_epoch = 1, args.steps * args.batch_size
    return train(config).run_dir


def score(run_dir: Path, data: Path, method: str) -> dict[str, float]:
    """Instance metrics and foreground IoU of one run on the validation split."""
    loaded = load_model(run_dir)
    scorer = InstanceScorer(loaded.target, loaded.separation_gap, method)
    predictor = Predictor(loaded)
    dataset = SegmentationFolder(data, split="val", instances=True)
    intersection = union = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        probs = torch.from_numpy(predictor.predict(sample["image"]))
        scorer.update(probs, sample["instances"])
        predicted = probs.argmax(0) != 0
        truth = sample["instances"] > 0
        intersection += int((predicted & truth).sum())
        union += int((predicted | truth).sum())
    results = scorer.compute()
    return {key: results[key] for key in METRICS[:-1]} | {"fg_iou": intersection / max(union, 1)}


def cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    args = parse_args()
    data = write_synthetic(
        Path(args.out) / "cells", "cells", n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.data_seed
    )
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {}
    for variant in args.variants:
        for seed in range(args.seeds):
            start = time.perf_counter()
            run_dir = train_variant(args, data, variant, seed)
            seconds.setdefault(variant, []).append(time.perf_counter() - start)
            for method in ("components", "watershed"):
                rows.setdefault((variant, method), []).append(score(run_dir, data, method))
            print(f"{variant} seed {seed}: {seconds[variant][-1]:.0f} s", flush=True)
    budget = f"{args.minutes} min" if args.minutes else f"{args.steps} steps"
    lines = [
        f"cells {args.size}×{args.size}: {args.n_train} train / {args.n_val} val images (data seed {args.data_seed}); "
        f"U-Net ({args.encoder}), {args.crop} px crops, batch {args.batch_size}, loss {args.loss}, lr {args.lr}, "
        f"{budget} per run, seeds 0..{args.seeds - 1}; {platform.node()}, {torch.get_num_threads()} threads, "
        f"device {'cuda' if torch.cuda.is_available() and args.accelerator != 'cpu' else 'cpu'}.",
        "",
        "| variant | post-processing | DSB score | PQ | F1 @0.5 | count error | foreground IoU | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (variant, method), results in rows.items():
        values = [cell([r[key] for r in results]) for key in METRICS]
        lines.append(f"| {variant} | {method} | " + " | ".join(values) + f" | {np.mean(seconds[variant]):.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    (Path(args.out) / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
