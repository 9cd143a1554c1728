"""``pixelwise demo``: the whole job, offline, in a few minutes on a laptop CPU.

Generates the synthetic ``cells`` data set, trains a small U-Net, evaluates it on the validation
split (metrics, confusion matrix, gallery, ``report.html``), predicts a few unseen images and
prints where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pixelwise.data.synthetic import write_synthetic
from pixelwise.evaluate import EvaluationResult, evaluate
from pixelwise.inference import Predictor
from pixelwise.inference.files import predict_file
from pixelwise.training.config import TrainConfig, resolve

DEMO_OUT = "outputs/demo"
"""Where :func:`run_demo` (and ``pixelwise demo``) writes its data, run, report and predictions."""
DEMO_DATA = {"kind": "cells", "n_train": 48, "n_val": 12, "n_test": 4, "size": 256, "seed": 0}
DEMO_MINUTES = 3.0
"""The demo's training budget: the plan (:func:`pixelwise.training.plan.plan_config`) decides everything else."""


def run_demo(out: str | Path = DEMO_OUT, max_minutes: float | None = None, progress: bool = True) -> EvaluationResult:
    """Run the demo into ``out``; return the validation metrics (also in ``out/metrics.json``)."""
    # Lightning and timm take seconds to import: `pixelwise --help` skips them
    from pixelwise.training.plan import plan_config
    from pixelwise.training.run import train

    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(DEMO_DATA["seed"])
    print(f"[1/4] generating the synthetic 'cells' data set in {out / 'data'}")
    data = write_synthetic(out / "data", **DEMO_DATA)
    run_dir = out / "runs" / "demo"
    resume = (run_dir / "last.ckpt").is_file()
    minutes = DEMO_MINUTES if max_minutes is None else max_minutes
    if resume:  # the interrupted run's own options, not a new plan
        config = resolve(str(run_dir / "config.yaml"), {"runs_dir": str(run_dir.parent), "progress": progress})
        print(f"[2/4] resuming the previous demo run in {run_dir}")
    else:
        given = {"data": str(data), "runs_dir": str(out / "runs"), "name": "demo", "progress": progress}
        config, plan, artifacts = plan_config(TrainConfig(**given, max_minutes=minutes))
        print(
            f"[2/4] training a {config.model} ({config.encoder} encoder) for at most {minutes:g} minutes, as the plan "
            f"from the data says ({run_dir / 'plan.md'}): {plan.summary()}"
        )
    result = train(config, resume=resume, artifacts=None if resume else artifacts)
    print("[3/4] evaluating on the validation split")
    metrics = evaluate(result.run_dir, data, split="val", out_dir=out, progress=progress)
    print("[4/4] predicting unseen images")
    predictions = _predict_test_images(result.run_dir, data / "test" / "images", out / "predictions")

    print(f"\nvalidation ({metrics.images} images):")
    for name, iou, f1 in zip(metrics.class_names, metrics.iou, metrics.f1, strict=True):
        print(f"  {name:<12} IoU {_fmt(iou)}   F1 {_fmt(f1)}")
    print(f"  mean IoU {metrics.mean_iou:.4f}   pixel accuracy {metrics.accuracy:.4f}")
    print(f"\npredictions: {predictions}")
    print(f"report:      {(out / 'report.html').resolve()}")
    print(f"total time:  {time.perf_counter() - start:.0f} s")
    return metrics


def _predict_test_images(run_dir: Path, images_dir: Path, out_dir: Path) -> Path:
    """Palette PNG masks and colour overlays, through the Predictor of ``pixelwise predict``, for ``images_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_pretrained(run_dir)
    for path in sorted(images_dir.glob("*.png")):
        predict_file(predictor, path, out_dir, overlay=True)
    return out_dir


def _fmt(value: float | None) -> str:
    return "   —  " if value is None else f"{value:.4f}"
