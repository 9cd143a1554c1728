"""Rare-class crop sampling on CamVid: per-class val IoU with and without it, at the same budget.

Trains ``configs/camvid.yaml`` on random crops (default 128² at full resolution: small crops of large
images, where a crop is cut matters) instead of whole half-resolution images, once per crop
sampling mode (uniform, class_balanced, rare_class) and seed, for the same number of optimiser steps
(``--epochs`` × ``--samples`` / batch; the config's time budget is lifted so every mode gets exactly
the same steps), then scores every val image at full resolution with ``pixelwise evaluate`` and prints
the IoU of the rarest classes (by training pixel frequency) and the mean IoU, mean ± sd over seeds;
then how often a training crop holds each rare class and the class's share of the crops' pixels::

    python benchmarks/camvid_crop_sampling.py --data ../shared/data/camvid --out /tmp/camvid_sampling \
        --epochs 16 --seeds 0 1

Each run is a subprocess (``pixelwise train`` then ``pixelwise evaluate``); runs already finished
under ``--out`` are reused, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from pixelwise.data import build_transforms, class_presence
from pixelwise.data.transforms import DATA_SET_SAMPLINGS

MODES = ("uniform", "class_balanced", "rare_class")
NUM_CLASSES = 11
PRESENCE_DRAWS = 4000


def class_frequencies(masks: Path, classes: int) -> np.ndarray:
    """Pixel share of each class over the training masks (void excluded)."""
    counts = np.zeros(classes, dtype=np.int64)
    for path in sorted(masks.glob("*.png")):
        values = np.asarray(Image.open(path)).ravel()
        counts += np.bincount(values[values < classes], minlength=classes)
    return counts / counts.sum()


def crop_statistics(
    masks: Path, classes: list[int], mode: str, crop: int, scale: float, ratio: float
) -> tuple[list[float], list[float]]:
    """Share of training crops holding a pixel of each class, and the class's share of the labelled crop pixels,
    for crops drawn as training draws them: images by the sampler's weights (uniform, or
    ``ClassPresence.image_weights``), then the training's crop transform."""
    torch.manual_seed(0)
    resized = []
    for path in sorted(masks.glob("*.png")):
        mask = Image.open(path)
        mask = mask.resize((round(mask.width * scale), round(mask.height * scale)), Image.NEAREST)
        resized.append(torch.from_numpy(np.asarray(mask).astype(np.int64)))
    presence = class_presence(resized, NUM_CLASSES, mode) if mode in DATA_SET_SAMPLINGS else None
    cut = build_transforms(
        "none", crop_size=crop, crop_sampling=mode, crop_sampling_ratio=ratio, class_presence=presence
    )
    weights = presence.image_weights(ratio) if presence is not None else None
    drawn = np.random.default_rng(0).choice(len(resized), size=PRESENCE_DRAWS, p=weights)
    hits, pixels, labelled = np.zeros(len(classes)), np.zeros(len(classes)), 0
    for index in drawn:
        window = cut(torch.zeros(1, *resized[index].shape), resized[index])[1]
        counts = torch.bincount(window[window < NUM_CLASSES], minlength=NUM_CLASSES).numpy()[classes]
        hits += counts > 0
        pixels += counts
        labelled += int((window < NUM_CLASSES).sum())
    return list(hits / len(drawn)), list(pixels / labelled)


def run(args: argparse.Namespace, mode: str, seed: int) -> dict:
    name = f"{mode}-s{seed}"
    run_dir = args.out / name
    metrics = run_dir / "eval-val" / "metrics.json"
    if not metrics.is_file():
        train = [sys.executable, "-m", "pixelwise.cli", "train", "--config", str(args.config), "--data", str(args.data)]
        train += ["--runs-dir", str(args.out), "--name", name, "--seed", str(seed), "--no-progress"]
        train += [
            "--scale",
            str(args.scale),
            "--crop",
            str(args.crop),
            "--crop-sampling",
            mode,
            "--crop-sampling-ratio",
            str(args.ratio),
        ]
        train += ["--epochs", str(args.epochs), "--samples-per-epoch", str(args.samples), "--max-minutes", "100000"]
        subprocess.run(train, check=True)
        evaluate = [sys.executable, "-m", "pixelwise.cli", "evaluate", "--checkpoint", str(run_dir)]
        evaluate += ["--data", str(args.data), "--split", "val", "--gallery", "0", "--no-progress"]
        subprocess.run(evaluate, check=True)
    return json.loads(metrics.read_text())


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "configs" / "camvid.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/camvid_sampling"))
    parser.add_argument("--scale", type=float, default=1.0, help="training scale (default 1: full resolution)")
    parser.add_argument("--crop", type=int, default=128, help="crop side at that scale (default 128)")
    parser.add_argument("--ratio", type=float, default=0.5, help="crop_sampling_ratio (default 0.5)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=367, help="crops per epoch (default 367: the train images)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="crop samplings to train")
    parser.add_argument("--rarest", type=int, default=5, help="how many of the rarest classes to show (default 5)")
    parser.add_argument("--statistics-only", action="store_true", help="only the crop statistics, no training")
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    masks = args.data / "train" / "masks"
    frequency = class_frequencies(masks, config["classes"])
    rare = [int(c) for c in np.argsort(frequency)[: args.rarest]]
    labels = [f"{c}" for c in rare]
    if not args.statistics_only:  # seed-major, so every mode has a result early
        runs = [(mode, seed, run(args, mode, seed)) for seed in args.seeds for mode in args.modes]
        results = {mode: [r for m, _, r in runs if m == mode] for mode in args.modes}
        labels = [results[args.modes[0]][0]["class_names"][c] for c in rare]
        print(
            f"\nCamVid val (101 images, full resolution), {args.epochs} epochs × {args.samples} crops of "
            f"{args.crop}² at scale {args.scale}, ratio {args.ratio}, seeds {args.seeds}: mean ± sd over seeds"
        )
        header = ["crop sampling"] + [f"{name} IoU" for name in labels] + ["mIoU"]
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for mode in args.modes:
            cells = [mode] + [spread([r["iou"][c] or 0.0 for r in results[mode]]) for c in rare]
            print("| " + " | ".join([*cells, spread([r["mean_iou"] for r in results[mode]])]) + " |")

    print(f"\nTraining crops ({PRESENCE_DRAWS} drawn): share holding the class / the class's share of labelled pixels")
    header = ["crop sampling"] + [
        f"{name} ({frequency[c]:.3f} of all pixels)" for name, c in zip(labels, rare, strict=True)
    ]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for mode in MODES:
        holding, share = crop_statistics(masks, rare, mode, args.crop, args.scale, args.ratio)
        print("| " + " | ".join([mode] + [f"{h:.2f} / {p:.3f}" for h, p in zip(holding, share, strict=True)]) + " |")


if __name__ == "__main__":
    main()
