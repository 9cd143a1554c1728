"""Score one finished run of a study: full-resolution metrics, parameter count and inference speed.

Every run is scored from its *last* checkpoint (the end of its step budget), not the best one by the
in-training monitor, so no run is selected on the images it is scored on.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.data import SegmentationFolder
from pixelwise.evaluate import load_model
from pixelwise.inference import Predictor, RuntimeOptions, labels_from_scores
from pixelwise.metrics import BoundaryScores, ConfusionMatrix
from pixelwise.modes import IGNORE_INDEX


def column_name(class_name: str) -> str:
    """``"SignSymbol"`` → ``"signsymbol"``: class names as CSV column suffixes."""
    return "".join(c for c in class_name.lower() if c.isalnum() or c == "_")


def _device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def score_run(
    checkpoint: str | Path,
    data: str | Path,
    split: str | None,
    files: str | list[str] | None,
    class_names: tuple[str, ...],
    ignore_index: int = IGNORE_INDEX,
    accelerator: str = "cpu",
    keep_prediction: int | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Predict every image of ``data``/``split`` (``files``) at full resolution and score the predictions.

    Args:
        checkpoint: a run's ``last.ckpt`` (or run directory: its exported best model).
        class_names: K names; per-class results are stored as ``iou_<name>``, ``f1_<name>``,
            ``boundary_f1_<name>`` (see :func:`column_name`).
        accelerator: ``cpu``, ``gpu``/``cuda``, ``mps`` or ``auto``.
        keep_prediction: index of an image whose predicted labels are returned (for the sample panel).

    Returns:
        ``(row, labels)``: ``row`` holds ``miou``, ``mean_f1``, ``pixel_accuracy``, ``pixel_error``
        (1 − accuracy), ``boundary_f1`` and ``boundary_iou`` (means over classes, 2-pixel tolerance),
        the per-class scores, ``params``, ``ms_per_image`` (median wall time of one whole-image prediction,
        after one warm-up) and ``images``; ``labels`` is uint8 ``[H, W]`` or None.
    """
    loaded = load_model(checkpoint)
    predictor = Predictor(loaded, runtime=RuntimeOptions(device=_device(accelerator)))
    k = len(class_names)
    dataset = SegmentationFolder(data, split=split, num_classes=k, ignore_index=ignore_index, files=files)
    confusion = ConfusionMatrix(k, ignore_index=ignore_index, sync_dist=False)
    boundary = BoundaryScores(k, ignore_index=ignore_index, sync_dist=False)
    times, kept = [], None
    for index in range(len(dataset)):
        sample = dataset[index]
        if index == 0:
            predictor.predict(sample["image"])  # warm-up: first-call allocations are not inference speed
        start = time.perf_counter()
        scores = predictor.predict(sample["image"])  # NumPy on the CPU: synchronised
        labels = torch.from_numpy(labels_from_scores(scores)).long()[None]
        times.append(time.perf_counter() - start)
        target = sample["mask"][None]
        confusion.update(labels, target)
        boundary.update(labels, target)
        if index == keep_prediction:
            kept = labels[0].numpy().astype(np.uint8)
    scores, edges = confusion.compute(), boundary.compute()
    row: dict[str, Any] = {
        "miou": float(scores["mean_iou"]),
        "mean_f1": float(scores["mean_f1"]),
        "pixel_accuracy": float(scores["accuracy"]),
        "pixel_error": 1.0 - float(scores["accuracy"]),
        "boundary_f1": float(edges["mean_boundary_f1"]),
        "boundary_iou": float(edges["mean_boundary_iou"]),
    }
    for i, name in enumerate(class_names):
        suffix = column_name(name)
        row[f"iou_{suffix}"] = float(scores["iou"][i])
        row[f"f1_{suffix}"] = float(scores["f1"][i])
        row[f"boundary_f1_{suffix}"] = float(edges["boundary_f1"][i])
    row["params"] = sum(p.numel() for p in loaded.model.parameters())
    row["ms_per_image"] = 1000 * float(np.median(times)) if times else math.nan
    row["images"] = len(dataset)
    return row, kept
