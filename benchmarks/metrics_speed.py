"""Confusion-matrix update speed: pixelwise ``ConfusionMatrix`` against torchmetrics' ``MulticlassJaccardIndex``.

Both metrics get the same tensors in the same process, in interleaved rounds (the order alternates every repeat,
so neither always runs on a warm cache); each round times ``--updates`` calls of ``update``. The table gives the
median over ``--repeats`` rounds of the time per update, the pixel throughput, and torchmetrics' time divided by
pixelwise's. torchmetrics runs with its defaults (``validate_args=True``, what users get) and, as a second
column, with ``validate_args=False``. At the end both IoUs are compared (max abs difference).

Usage::

    python benchmarks/metrics_speed.py         # 8×512×512, 11 classes, 100 updates, 3 repeats (~10 min, 2 cores)
    python benchmarks/metrics_speed.py --updates 10 --repeats 2 --ignore-index none

torchmetrics is a test-only dependency (``pip install -e ".[test]"``). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchmetrics
from torchmetrics.classification import MulticlassJaccardIndex

from pixelwise.metrics import ConfusionMatrix


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_round(update: Callable[[], None], updates: int) -> float:
    """Seconds per update, averaged over one round of ``updates`` calls."""
    start = time.perf_counter()
    for _ in range(updates):
        update()
    return (time.perf_counter() - start) / updates


def bench(preds: torch.Tensor, target: torch.Tensor, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """Median seconds per update for each contender, and the max |IoU difference| between them at the end."""
    contenders = {
        "pixelwise": ConfusionMatrix(args.classes, ignore_index=args.ignore_index),
        "torchmetrics": MulticlassJaccardIndex(args.classes, average=None, ignore_index=args.ignore_index),
        "torchmetrics (no validation)": MulticlassJaccardIndex(
            args.classes, average=None, ignore_index=args.ignore_index, validate_args=False
        ),
    }
    for metric in contenders.values():  # warm-up: first-call allocations and dispatch caches
        metric.update(preds, target)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(time_round(lambda m=contenders[name]: m.update(preds, target), args.updates))
    ours = contenders["pixelwise"].compute()["iou"]
    diff = max(
        float((ours - metric.compute().double()).abs().max())
        for name, metric in contenders.items()
        if name != "pixelwise"
    )
    return {name: statistics.median(t) for name, t in times.items()}, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per update (default 8)")
    parser.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    parser.add_argument("--classes", type=int, default=11, help="number of classes (default 11)")
    parser.add_argument("--updates", type=int, default=100, help="updates per timed round (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per contender (default 3)")
    parser.add_argument(
        "--ignore-index",
        type=lambda v: None if v.lower() == "none" else int(v),
        default=255,
        help="ignore_index for both metrics, or 'none' (default 255)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    n, s, k = args.batch, args.size, args.classes
    target = torch.randint(0, k, (n, s, s), generator=g)
    inputs = {
        f"labels int64 [{n}, {s}, {s}]": torch.randint(0, k, (n, s, s), generator=g),
        f"logits float32 [{n}, {k}, {s}, {s}]": torch.randn(n, k, s, s, generator=g),
    }
    print(
        f"CPU: {cpu_model()}; {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"torchmetrics {torchmetrics.__version__}; {k} classes, ignore_index={args.ignore_index}, "
        f"{args.updates} updates x {args.repeats} interleaved repeats (median)"
    )
    header = f"{'input':<32} {'metric':<29} {'ms/update':>10} {'Mpix/s':>8} {'time / pixelwise':>17}"
    print(header)
    print("-" * len(header))
    pixels = n * s * s
    for label, preds in inputs.items():
        seconds, diff = bench(preds, target, args)
        for name, sec in seconds.items():
            ratio = sec / seconds["pixelwise"]
            print(f"{label:<32} {name:<29} {sec * 1e3:>10.2f} {pixels / sec / 1e6:>8.1f} {ratio:>16.1f}x")
        print(f"{'':<32} max |IoU pixelwise - torchmetrics| = {diff:.2e}")


if __name__ == "__main__":
    main()
