"""Surface distances and the confusion-derived set on real masks: ISBI 2012 slices 20-24, membranes.

The "predictions" are the ground truth eroded or dilated by one pixel (scipy), so the expected numbers are easy
to reason about: an erosion moves every membrane edge inwards by one pixel (HD95 about 1) and wipes out the
thinnest membranes (a large Hausdorff distance). Every surface metric is computed by pixelwise and by MONAI on
the same masks; the time is the median of 3 runs over the 5 slices.

Usage::

    python benchmarks/surface_metrics_isbi.py --data ../shared/data/isbi2012-em
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pixelwise.data import read_mask
from pixelwise.metrics import ConfusionMatrix, surface_distances

SLICES = ("20", "21", "22", "23", "24")
MEMBRANE = 1
RUNS = 3
TOLERANCES = (1.0, 0.0)


def membrane_masks(data: Path) -> torch.Tensor:
    """``[5, H, W]`` class ids of the ISBI masks: 0 cell interior, 1 membrane."""
    return torch.from_numpy(np.stack([read_mask(data / "train" / "masks" / f"{name}.png") for name in SLICES]))


def moved(truth: torch.Tensor, operation) -> torch.Tensor:
    return torch.from_numpy(np.stack([operation(m.numpy() == MEMBRANE) for m in truth]).astype(np.int64))


def monai_scores(preds: torch.Tensor, target: torch.Tensor, tolerance: float) -> dict[str, float]:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    one_hot = lambda x: torch.nn.functional.one_hot(x, 2).permute(0, 3, 1, 2).float()  # noqa: E731
    p, t = one_hot(preds), one_hot(target)
    return {
        "hausdorff": float(compute_hausdorff_distance(p, t).mean()),
        "hd95": float(compute_hausdorff_distance(p, t, percentile=95).mean()),
        "assd": float(compute_average_surface_distance(p, t, symmetric=True).mean()),
        "nsd": float(compute_surface_dice(p, t, class_thresholds=[tolerance]).mean()),
    }


def median_seconds(fn) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the ISBI 2012 folder (train/images, train/masks)")
    args = parser.parse_args()
    truth = membrane_masks(args.data)
    print("| prediction | tolerance | library | Hausdorff | HD95 | ASSD | NSD | seconds (5 slices) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, operation in (("eroded by 1 px", ndimage.binary_erosion), ("dilated by 1 px", ndimage.binary_dilation)):
        preds = moved(truth, operation)
        for tolerance in TOLERANCES:
            ours = surface_distances(preds, truth, num_classes=2, tolerance=tolerance)
            row = {k: float(ours[k][MEMBRANE]) for k in ("hausdorff", "hd95", "assd", "nsd")}
            ours_call = functools.partial(surface_distances, preds, truth, num_classes=2, tolerance=tolerance)
            seconds = median_seconds(ours_call)
            theirs = monai_scores(preds, truth, tolerance)
            monai_seconds = median_seconds(functools.partial(monai_scores, preds, truth, tolerance))
            for name, scores, spent in (("pixelwise", row, seconds), ("MONAI", theirs, monai_seconds)):
                values = " | ".join(f"{scores[k]:.4f}" for k in ("hausdorff", "hd95", "assd", "nsd"))
                print(f"| {label} | {tolerance:g} | {name} | {values} | {spent:.2f} |")
        matrix = ConfusionMatrix(2)
        matrix.update(preds, truth)
        found = matrix.confusion_metrics(reduction="none")
        keys = ("sensitivity", "specificity", "balanced_accuracy", "positive_predictive_value")
        print(f"  {label}, membrane: " + ", ".join(f"{k} {float(found[k][MEMBRANE]):.4f}" for k in keys))


if __name__ == "__main__":
    main()
