"""``pixelwise bench``: build a model and time forward passes on random input."""

from __future__ import annotations

import argparse
import time
from typing import Any

BENCH_SIZE = 512
"""Side of the random input (``--size``), in pixels."""
BENCH_RUNS = 5
"""Timed forward passes (``--runs``) after one warm-up pass."""


def parse_size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` as ``(height, width)``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: give N or HxW, e.g. 512 or 384x512")
    return (parts[0], parts[-1])


def add_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help="time forward passes of a model on random input")
    bench.add_argument("--model", default="unet", help="architecture name (see `pixelwise models`)")
    bench.add_argument("--encoder", default=None, help="timm encoder name (default: the architecture's)")
    bench.add_argument(
        "--size",
        type=parse_size,
        default=(BENCH_SIZE, BENCH_SIZE),
        help=f"input size N or HxW (default {BENCH_SIZE})",
    )
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--in-channels", type=int, default=3)
    bench.add_argument("--classes", type=int, default=2)
    bench.add_argument("--runs", type=int, default=BENCH_RUNS)
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build a model and time forward passes on random input."""
    import torch

    from pixelwise.models import create_model

    options = {"classes": args.classes, "in_channels": args.in_channels}
    if args.encoder:
        options["encoder_name"] = args.encoder
    model = create_model(args.model, **options).eval()
    height, width = args.size
    x = torch.randn(args.batch_size, args.in_channels, height, width)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(args.runs):
            start = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    times.sort()
    median = times[len(times) // 2]
    print(
        f"{type(model).__name__}({model.config.get('encoder_name', '')}) params={params / 1e6:.2f}M "
        f"input={list(x.shape)} output={list(y.shape)} "
        f"forward median={median * 1e3:.1f} ms over {args.runs} runs ({torch.get_num_threads()} threads)"
    )
    return 0
