"""Tiled inference: pixelwise's Predictor against MONAI's sliding_window_inference, and streaming.

Part 1 predicts a ``--big``² RGB image with Unet-resnet34 (random weights, BatchNorm statistics
calibrated on random data so the logits are of a realistic size) in 512 tiles, overlap 0.25,
Gaussian blending, with both libraries, interleaving the runs; it prints the median times, the
speed ratio and the largest difference between the two probability maps (both blend softmax
probabilities; pixelwise's paths are fp32 with ``padding_mode="constant"`` and MONAI's tile layout,
``fit_tiles=False``): the default backend (``auto``: PyTorch, then ONNX Runtime after 2 Mpx), torch only,
and ONNX Runtime from the start. Each runs once untimed first (its time is the "first s" column).

Part 2 streams TIFFs of ``--sizes`` megapixels (1 Mpx = 1024²) through ``predict_tiff``, each in a
fresh subprocess, with the Predictor's defaults (fitted tiles), and prints seconds per megapixel and
the subprocess's peak resident memory.

Usage::

    python benchmarks/tiling.py                                   # the full tables (slow on a CPU)
    python benchmarks/tiling.py --big 1024 --sizes 0.25 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import pixelwise
from pixelwise.inference import Predictor, RuntimeOptions, TilingOptions, predict_tiff
from pixelwise.inference.predictor import DEFAULT_BACKEND

TOLERANCE = 1e-4
SEED = 0


def build_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = pixelwise.create_model("unet", encoder_name="resnet34", classes=2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 256, 256))
    return model.eval()


def predictor(
    model: torch.nn.Module | Path, args: argparse.Namespace, backend: str = DEFAULT_BACKEND, fit_tiles: bool = True
) -> Predictor:
    tiling = TilingOptions(
        tile_size=args.tile,
        overlap=0.25,
        blend="gaussian",
        batch_size=args.batch_size,
        padding_mode="constant",
        fit_tiles=fit_tiles,
    )
    runtime = RuntimeOptions(backend=backend, device="cpu", channels_last=not args.no_channels_last)
    return Predictor(model, tiling=tiling, runtime=runtime)


def compare_with_monai(args: argparse.Namespace) -> None:
    from monai.inferers import sliding_window_inference

    model = build_model()
    # MONAI's tile layout, so the results are comparable
    ours = predictor(copy.deepcopy(model), args, backend="auto", fit_tiles=False)
    ours_torch = predictor(copy.deepcopy(model), args, backend="torch", fit_tiles=False)
    contenders = {"pixelwise": lambda: ours.predict(image), "pixelwise-torch": lambda: ours_torch.predict(image)}
    if not args.skip_onnxruntime:  # the same fp32 graph, BatchNorm folded, exported to ONNX Runtime
        ours_ort = predictor(copy.deepcopy(model), args, backend="onnxruntime", fit_tiles=False)
        contenders["pixelwise-ort"] = lambda: ours_ort.predict(image)
    image = torch.rand(3, args.big, args.big, generator=torch.Generator().manual_seed(SEED))

    def monai() -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(
                image[None], (args.tile, args.tile), args.batch_size, lambda x: model(x).softmax(1),
                overlap=0.25, mode="gaussian",
            )[0]  # fmt: skip

    contenders["monai"] = monai
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results, first = {}, {}
    for name, run in contenders.items():  # warm-up: the default backend switches to ONNX Runtime here
        start = time.perf_counter()
        run()
        first[name] = time.perf_counter() - start
    for _ in range(args.repeats):  # interleaved, so drifts in machine speed hit all alike
        for name, run in contenders.items():
            start = time.perf_counter()
            results[name] = np.asarray(run())
            times[name].append(time.perf_counter() - start)
    differences = {
        name: float(np.abs(result - results["monai"]).max()) for name, result in results.items() if name != "monai"
    }
    medians = {name: statistics.median(values) for name, values in times.items()}
    setup = f"tile {args.tile}, overlap 0.25, gaussian, batch {args.batch_size}"
    print(f"\n{args.big}×{args.big} RGB, Unet-resnet34, {setup}")
    print(f"threads {torch.get_num_threads()}, repeats {args.repeats}, channels_last {ours.channels_last}")
    print(f"pixelwise (the default, backend auto): {ours.backend_note}")
    print(f"{'library':<16} {'first s':>8} {'median s':>9} {'Mpx/s':>7} {'vs monai':>9} {'max |Δp| vs monai':>18}")
    for name, median in medians.items():
        ratio = medians["monai"] / median
        difference = f"{differences[name]:.2e}" if name in differences else "-"
        speed = args.big**2 / 2**20 / median
        print(f"{name:<16} {first[name]:8.2f} {median:9.2f} {speed:7.2f} {ratio:8.2f}× {difference:>18}")
    worst = max(differences.values())
    if worst > TOLERANCE:
        raise SystemExit(f"pixelwise and MONAI disagree by {worst:.2e} > {TOLERANCE:g}")


def write_input(path: Path, side: int) -> None:
    """A smooth synthetic RGB TIFF, tiled 256², written tile row by tile row (never whole in memory)."""
    tile = 256

    def tiles():
        x = np.arange(math.ceil(side / tile) * tile, dtype=np.float32)
        for top in range(0, side, tile):
            y = np.arange(top, top + tile, dtype=np.float32)[:, None]
            band = np.stack([np.sin(x / 37 + y / 53), np.cos(x / 71 - y / 29), np.sin((x + y) / 97)], -1)
            band = ((band + 1) * 127.5).astype(np.uint8)
            yield from (band[:, left : left + tile] for left in range(0, band.shape[1], tile))

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")


def peak_mb() -> float:
    """This process's peak resident memory in MB.

    Linux's ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``getrusage``'s
    ``ru_maxrss`` would also count the parent's resident size at ``fork`` (gigabytes after part 1).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux, bytes on macOS


def child(args: argparse.Namespace) -> None:
    """Run one streaming prediction and print its time and this process's peak RSS as JSON.

    The model comes from a saved directory, as with `pixelwise predict`, so the predictor owns it
    and folds BatchNorm in place (no second copy).
    """
    run = predictor(Path(args.model_dir), args, backend=args.backend)
    baseline = peak_mb()
    start = time.perf_counter()
    predict_tiff(run, args.child[0], args.child[1])
    seconds = time.perf_counter() - start
    plan_y, plan_x = run.plans(*tifffile.TiffFile(args.child[0]).pages[0].shape[:2])
    tiles, side = len(plan_y.starts) * len(plan_x.starts), plan_x.tile_in
    report = {"seconds": seconds, "baseline_mb": baseline, "peak_mb": peak_mb(), "tiles": tiles, "tile": side}
    print(json.dumps({**report, "engine": run.backend_note}))


def streaming_table(args: argparse.Namespace) -> None:
    rows, layouts, engines = [], [], []
    with tempfile.TemporaryDirectory(prefix="pixelwise-bench-") as folder:
        model_dir = build_model().save_pretrained(Path(folder) / "model")
        for megapixels in args.sizes:
            side = round(math.sqrt(megapixels) * 1024)
            source, target = Path(folder) / f"in-{side}.tif", Path(folder) / f"out-{side}.tif"
            write_input(source, side)
            command = [sys.executable, __file__, "--child", str(source), str(target), "--tile", str(args.tile)]
            command += ["--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads())]
            command += ["--model-dir", str(model_dir), "--backend", args.backend]
            command += ["--no-channels-last"] if args.no_channels_last else []
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            report = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append((side, side * side / 2**20, report["seconds"], report["baseline_mb"], report["peak_mb"]))
            layouts.append(f"{report['tiles']} × {report['tile']}²")
            engines.append(report["engine"])
            source.unlink()
            target.unlink()
    print(f"\nstreaming TIFF → TIFF, Unet-resnet34, tile {args.tile}, batch {args.batch_size}, backend {args.backend}")
    print("(baseline: peak RSS after imports, model loading and BatchNorm folding, before predicting)")
    print(f"{'size':>11} {'Mpx':>6} {'tiles':>11} {'seconds':>8} {'s/Mpx':>7} {'baseline MB':>12} {'peak RSS MB':>12}")
    for (side, megapixels, seconds, baseline, peak), layout in zip(rows, layouts, strict=True):
        per = seconds / megapixels
        size = f"{side}×{side}"
        print(f"{size:>11} {megapixels:6.2f} {layout:>11} {seconds:8.2f} {per:7.2f} {baseline:12.0f} {peak:12.0f}")
    print("\n".join(f"engine at {row[0]}²: {engine}" for row, engine in zip(rows, engines, strict=True)))
    per_mpx = [row[2] / row[1] for row in rows]
    median = statistics.median(per_mpx)
    low, high = min(per_mpx) / median - 1, max(per_mpx) / median - 1
    print(f"s/Mpx relative to the median over sizes: {100 * low:+.1f} % … {100 * high:+.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=4096, help="side of the image compared with MONAI (default 4096)")
    parser.add_argument("--tile", type=int, default=512, help="tile side (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass, both libraries (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per library (default 3)")
    parser.add_argument("--sizes", type=float, nargs="*", default=[1, 4, 16, 64], help="streaming sizes in Mpx")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-channels-last", action="store_true", help="NCHW layout for pixelwise's model")
    parser.add_argument("--skip-monai", action="store_true", help="only the streaming table")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, help=f"streaming backend (default {DEFAULT_BACKEND})")
    parser.add_argument("--skip-onnxruntime", action="store_true", help="leave out the ONNX Runtime row")
    parser.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    if not args.skip_monai:
        compare_with_monai(args)
    if args.sizes:
        streaming_table(args)


if __name__ == "__main__":
    main()
