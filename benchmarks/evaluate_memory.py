"""Peak memory of ``evaluate`` on one large image: whole-image prediction against ``--tile`` tiles.

For each ``--sizes`` side it writes a data folder with one RGB image of that side (smooth noise) and a
two-class mask, and a saved Unet-resnet34 (random weights, BatchNorm calibrated on random data so the
activations are of a realistic size). Each evaluation runs in a fresh subprocess, which prints its
seconds and peak resident memory; the table also gives the mean IoU, to show that tiles score the image
as the whole-image pass does (the model is untrained: the point is memory, not accuracy).

Usage::

    python benchmarks/evaluate_memory.py                      # sides 2048 and 4096, tiles of 512
    python benchmarks/evaluate_memory.py --sizes 1024 --tile 256   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pixelwise
from pixelwise.evaluate import evaluate
from pixelwise.inference import TilingOptions

SEED = 0
PREPROCESSING = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1.0}


def save_model(directory: Path) -> None:
    torch.manual_seed(SEED)
    model = pixelwise.create_model("unet", encoder_name="resnet34", classes=2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 256, 256))
    model.eval().save_pretrained(directory)
    (directory / "preprocessing.json").write_text(json.dumps(PREPROCESSING))


def write_data(root: Path, side: int) -> None:
    rng = np.random.default_rng(SEED)
    coarse = rng.random((side // 64 + 1, side // 64 + 1, 3))
    image = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR))
    mask = (image.mean(-1) > 127).astype(np.uint8)
    for folder, array in (("images", image), ("masks", mask)):
        (root / "val" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / "val" / folder / "big.png")


def child(args: argparse.Namespace) -> None:
    """One evaluation; prints seconds, peak RSS (MB) and mean IoU as JSON."""
    tiling = TilingOptions(tile_size=args.child_tile) if args.child_tile else None
    start = time.perf_counter()
    result = evaluate(args.model, args.data, out_dir=args.out, progress=False, gallery_size=0, tiling=tiling)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "mean_iou": result.mean_iou}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="image sides in pixels")
    parser.add_argument("--tile", type=int, default=512, help="tile side of the tiled runs (default 512)")
    parser.add_argument("--child-tile", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_tile is not None:
        return child(args)
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        save_model(Path(temp) / "model")
        for side in args.sizes:
            write_data(Path(temp) / f"data{side}", side)
            for tile in (0, args.tile):
                command = [sys.executable, __file__, "--child-tile", str(tile), "--model", str(Path(temp) / "model")]
                command += ["--data", str(Path(temp) / f"data{side}"), "--out", str(Path(temp) / f"eval{side}-{tile}")]
                report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                rows.append((side, tile or "whole", report["seconds"], report["peak_mb"], report["mean_iou"]))
    print(f"evaluate, Unet-resnet34, one RGB image; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'side':>6} {'tiles':>6} {'seconds':>8} {'peak RSS MB':>12} {'mean IoU':>9}")
    for side, tile, seconds, peak, miou in rows:
        print(f"{side:>6} {tile!s:>6} {seconds:8.1f} {peak:12.0f} {miou:9.4f}")


if __name__ == "__main__":
    main()
