"""Every architecture side by side with segmentation_models_pytorch: parameters, GFLOPs, CPU latency.

For each pixelwise architecture at ``1×3×SIZE×SIZE`` (default 512) with a ResNet-34 encoder (plus
MiT-B2 for Segformer and ViT-Small for DPT) it prints the parameter count, the GFLOPs of one forward
pass (``torch.utils.flop_counter``: multiply-adds count 2) and the median CPU latency of ``--repeats``
forward passes after a warm-up, in three settings measured in the same process, interleaved:

- ``SMP``: segmentation_models_pytorch's model (random weights), eval mode, ``torch.inference_mode``;
- ``pixelwise eager``: the same network converted with :func:`pixelwise.from_smp` (identical weights:
  its output is checked against SMP's), eval mode, ``torch.inference_mode``;
- ``pixelwise inference``: that model as the :class:`~pixelwise.inference.Predictor` runs it: BatchNorm
  folded into the convolutions, channels-last memory layout.

Architectures SMP lacks (FCN-32s/16s/8s, SegNet, UNet2015) are built by pixelwise alone. Nothing is
downloaded: every encoder starts from random weights.

Usage::

    python benchmarks/architectures.py                 # the full table (about 15 minutes on 2 CPU cores)
    python benchmarks/architectures.py --size 256 --repeats 2 --only unet fpn   # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import pixelwise
from pixelwise.inference import fold_batchnorm
from pixelwise.models.base import segmentation_output

SMP_CASES = [
    ("unet", "Unet", "resnet34"),
    ("unetplusplus", "UnetPlusPlus", "resnet34"),
    ("manet", "MAnet", "resnet34"),
    ("linknet", "Linknet", "resnet34"),
    ("fpn", "FPN", "resnet34"),
    ("pspnet", "PSPNet", "resnet34"),
    ("pan", "PAN", "resnet34"),
    ("deeplabv3", "DeepLabV3", "resnet34"),
    ("deeplabv3plus", "DeepLabV3Plus", "resnet34"),
    ("upernet", "UPerNet", "resnet34"),
    ("segformer", "Segformer", "resnet34"),
    ("segformer", "Segformer", "mit_b2"),
    ("dpt", "DPT", "tu-vit_small_patch16_224"),
]
"""(pixelwise name, SMP class, SMP encoder name)."""
OWN_CASES = [
    ("fcn32s", {"encoder_name": "resnet34"}),
    ("fcn16s", {"encoder_name": "resnet34"}),
    ("fcn8s", {"encoder_name": "resnet34"}),
    ("segnet", {"encoder_name": "resnet34"}),
    ("unet2015", {"in_channels": 3}),
]
"""Architectures only pixelwise has: (name, options)."""


def median_seconds(forward: Callable[[], object], repeats: int) -> float:
    forward()  # warm-up: first-call allocations are not the steady state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def inference_path(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The model as the Predictor runs it: BatchNorm folded, channels-last."""
    return fold_batchnorm(model, x).to(memory_format=torch.channels_last)


def run_smp_case(name: str, smp_class: str, encoder: str, size: int, repeats: int) -> list[str]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    extra = {"dynamic_img_size": True} if smp_class == "DPT" else {}  # SMP's ViT otherwise takes only 224²
    reference = getattr(smp, smp_class)(encoder_name=encoder, encoder_weights=None, classes=2, **extra).eval()
    ours = pixelwise.from_smp(reference).eval()
    x = torch.rand(1, 3, size, size)
    fast = inference_path(ours, x)
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        difference = (segmentation_output(ours(x)) - reference(x)).abs().max().item()
        times = {key: [] for key in ("smp", "eager", "fast")}
        for _ in range(repeats):  # interleaved, so that machine noise hits all three alike
            times["smp"].append(median_seconds(lambda: reference(x), 1))
            times["eager"].append(median_seconds(lambda: ours(x), 1))
            times["fast"].append(median_seconds(lambda: fast(x_last), 1))
    smp_ms, eager_ms, fast_ms = (1000 * statistics.median(times[key]) for key in ("smp", "eager", "fast"))
    params = sum(p.numel() for p in ours.parameters())
    smp_params = sum(p.numel() for p in reference.parameters())
    return [
        name,
        encoder.removeprefix("tu-"),
        f"{params / 1e6:.2f}",
        "yes" if params == smp_params else f"no ({smp_params / 1e6:.2f})",
        f"{gflops(ours, x):.1f}",
        f"{smp_ms:.0f}",
        f"{eager_ms:.0f}",
        f"{fast_ms:.0f}",
        f"{smp_ms / fast_ms:.2f}×",
        f"{difference:.1e}",
    ]


def run_own_case(name: str, options: dict, size: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    model = pixelwise.create_model(name, classes=2, **options).eval()
    if hasattr(model, "valid_input_size"):  # UNet2015 takes valid sizes only: the smallest ≥ ``size``
        size = model.valid_input_size(size)
    x = torch.rand(1, 3, size, size)
    fast = inference_path(model, x)
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager_ms = 1000 * median_seconds(lambda: model(x), repeats)
        fast_ms = 1000 * median_seconds(lambda: fast(x_last), repeats)
    params = sum(p.numel() for p in model.parameters())
    encoder = options.get("encoder_name", "—")
    flops = gflops(model, x)
    return [
        name,
        encoder,
        f"{params / 1e6:.2f}",
        "—",
        f"{flops:.1f}",
        "—",
        f"{eager_ms:.0f}",
        f"{fast_ms:.0f}",
        "—",
        "—",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per setting (default 5)")
    parser.add_argument("--only", nargs="*", default=None, help="only these pixelwise architecture names")
    args = parser.parse_args()
    keep = (lambda name: name in args.only) if args.only else (lambda name: True)
    header = [
        "architecture",
        "encoder",
        "params (M)",
        "= SMP",
        "GFLOPs",
        "SMP ms",
        "pixelwise eager ms",
        "pixelwise inference ms",
        "SMP / inference",
        "max abs Δ vs SMP",
    ]
    print(
        f"1×3×{args.size}×{args.size}, median of {args.repeats}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for case in SMP_CASES:  # each row as soon as it is measured
        if keep(case[0]):
            print("| " + " | ".join(run_smp_case(*case, args.size, args.repeats)) + " |", flush=True)
    for case in OWN_CASES:
        if keep(case[0]):
            print("| " + " | ".join(run_own_case(*case, args.size, args.repeats)) + " |", flush=True)


if __name__ == "__main__":
    main()
