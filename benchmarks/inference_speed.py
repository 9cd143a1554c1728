"""CPU inference speed of U-Net (ResNet-34, 2 classes): segmentation_models_pytorch against pixelwise's paths.

Rows: (a) ``smp.Unet("resnet34")`` eager fp32 under ``torch.inference_mode`` (the reference); (b) pixelwise's Unet
with the same weights (copied from the SMP model), eager fp32; (c) exact fp32 paths: BatchNorm folded + channels-
last, the same plus ``torch.compile`` with inductor freezing (compile time reported separately), ONNX Runtime fp32,
and the Predictor's eager path (folded, channels-last, each convolution fused with the activation after it by
:func:`pixelwise.inference.fuse_activation.fuse_conv_activations`); (d) reduced precision: bf16 autocast (folded,
channels-last) and ONNX Runtime int8 (static QDQ, uint8 activations × int8 weights, calibrated on random inputs for
speed); (e) whole ``Predictor.predict`` calls (image in, probabilities out): the default ``backend="auto"``, timed
after its switch to ONNX Runtime (the calls and seconds until the switch are printed), and ``backend="torch"``.

All run in one process on one input, round-robin (each repeat times every contestant once), after warm-up.
Columns: median ms per image, images/s, speed relative to SMP, max abs difference to pixelwise's fp32 eager
output (absolute, and divided by the largest |logit|: untrained weights give logits near 100), and GFLOP/s
(FLOPs counted once with ``FlopCounterMode`` on the eager model).

Accuracy of the reduced-precision paths on a trained model: mIoU of fp32 vs bf16 vs int8, with int8 calibrated on
--calibration-data, else on the first ``*/images`` folder of --data (for isbi2012-em: the unlabelled test/images)::

    python benchmarks/inference_speed.py --run runs/isbi2012 --data ../shared/data/isbi2012-em \\
        --split train --val-files '2[0-4]'

Usage::

    python benchmarks/inference_speed.py                       # 1×3×512×512, 15 repeats, all cores
    python benchmarks/inference_speed.py --size 64 --repeats 2 --skip-compile   # smoke run

segmentation_models_pytorch and onnxruntime are test / export extras (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch._inductor import config as inductor_config
from torch.utils.flop_counter import FlopCounterMode

import pixelwise
from pixelwise.inference.export import export_onnx, quantize_int8
from pixelwise.inference.fuse import fold_batchnorm
from pixelwise.inference.fuse_activation import fuse_conv_activations
from pixelwise.inference.onnx_runtime import OnnxModel
from pixelwise.inference.predictor import NormalizationOptions, Predictor, RuntimeOptions

Forward = Callable[[torch.Tensor], torch.Tensor]
MAX_SWITCH_CALLS = 64
"""Calls allowed for the default Predictor to reach its switch to ONNX Runtime (8 at 512²)."""


def build_models(classes: int = 2) -> tuple[torch.nn.Module, pixelwise.SegmentationModel]:
    """SMP's Unet-resnet34 and pixelwise's, with SMP's (random) weights copied into pixelwise's."""
    import segmentation_models_pytorch as smp

    reference = smp.Unet("resnet34", encoder_weights=None, classes=classes).eval()
    model = pixelwise.create_model("unet", encoder_name="resnet34", classes=classes).eval()
    # Same layers in the same order (timm's and torchvision's ResNet share names; decoder blocks map 1:1).
    source = [(k, v) for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")]
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise SystemExit(f"state dicts differ in length: SMP {len(source)}, pixelwise {len(target)}")
    state = {}
    for (smp_key, value), key in zip(source, target, strict=True):
        if value.shape != model.state_dict()[key].shape:
            raise SystemExit(f"cannot map {smp_key} {list(value.shape)} to {key}")
        state[key] = value
    model.load_state_dict(state, strict=False)
    return reference, model


def median_times(contestants: dict[str, Forward], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call; each repeat calls every contestant once, in turn (round-robin)."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    with torch.inference_mode():
        for _ in range(warmup):
            for forward in contestants.values():
                forward(x)
        for _ in range(repeats):
            for name, forward in contestants.items():
                start = time.perf_counter()
                forward(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def speed(args: argparse.Namespace, folder: Path) -> None:
    reference, model = build_models()
    counts = [sum(p.numel() for p in m.parameters()) for m in (reference, model)]
    print(f"parameters: SMP {counts[0]:,}  pixelwise {counts[1]:,}")
    x = torch.randn(1, 3, args.size, args.size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    flops = counter.get_total_flops()

    folded = fold_batchnorm(model, x).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(folded)
    pairs = fuse_conv_activations(fused, x)
    contestants: dict[str, Forward] = {
        "(a) SMP eager fp32": reference,
        "(b) pixelwise eager fp32": model,
        "(c) pixelwise BN-folded channels-last fp32": folded,
        "(c) + conv/activation fused (the Predictor's eager path)": fused,
    }
    notes = [f"conv + activation pairs fused: {pairs}"]
    if not args.skip_compile:
        # freezing: weights become constants, so inductor folds them and uses oneDNN's prepacked
        # convolutions (measured here: 1.45× SMP with freezing, 1.17× without)
        inductor_config.freezing = True
        compiled = torch.compile(folded)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        notes.append(f"torch.compile (freezing): first call {time.perf_counter() - start:.1f} s")
        contestants["(c) pixelwise folded + torch.compile fp32"] = compiled
    start = time.perf_counter()
    export_onnx(model, folder / "fp32.onnx", sample_size=(args.size, args.size))
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx", synthetic_size=(args.size, args.size))
    notes.append(f"ONNX export + int8 quantization: {time.perf_counter() - start:.1f} s")
    contestants["(c) ONNX Runtime fp32"] = OnnxModel(folder / "fp32.onnx", threads=args.threads)

    def bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return folded(x)

    contestants["(d) pixelwise folded bf16 autocast"] = bf16
    contestants["(d) ONNX Runtime int8 (QDQ)"] = OnnxModel(folder / "int8.onnx", threads=args.threads)

    with torch.inference_mode():
        expected = model(x)
        diffs = {name: (f(x).float() - expected).abs().max().item() for name, f in contestants.items()}
    predictors, note = predictor_contestants(reference, model, x)
    contestants.update(predictors)
    notes.append(note)
    largest = expected.abs().max().item()
    medians = median_times(contestants, x, args.repeats, args.warmup)
    base = medians["(a) SMP eager fp32"]
    rows = []
    for name, t in medians.items():
        diff = diffs.get(name)
        shown = ("-", "-") if diff is None else (f"{diff:.1e}", f"{diff / largest:.1e}")
        rows.append([name, f"{t * 1e3:.1f}", f"{1 / t:.2f}", f"{base / t:.2f}×", *shown])
        rows[-1].append(f"{flops / t / 1e9:.0f}")
    header = ["path", "ms/image", "images/s", "vs SMP", "max |Δ| vs pw fp32", "÷ max |logit|", "GFLOP/s"]
    print(f"\n1×3×{args.size}×{args.size}, {torch.get_num_threads()} threads, {args.repeats} repeats (median); "
          f"{flops / 1e9:.1f} GFLOP per image; torch {torch.__version__}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(table(rows, header))
    print("\n".join(notes))


def predictor_contestants(
    reference: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor
) -> tuple[dict[str, Forward], str]:
    """Whole ``Predictor.predict`` calls (``[H, W, C]`` image in, softmax probabilities out as NumPy: more work
    than the forward rows): the default (``backend="auto"``, timed after its switch to ONNX Runtime) and torch
    only, beside the same work done around SMP's model by hand (image → tensor → model → softmax → NumPy).

    Returns the contestants (each ignores its argument and predicts ``x`` as an ``[H, W, C]`` image) and a
    note with the calls and seconds the switch took and the largest probability difference between the two.
    """
    image = x[0].permute(1, 2, 0).numpy()
    identity = NormalizationOptions(mean=[0.0] * 3, std=[1.0] * 3)
    default = Predictor(copy.deepcopy(model), normalization=identity)
    torch_only = Predictor(copy.deepcopy(model), normalization=identity, runtime=RuntimeOptions(backend="torch"))
    start, calls = time.perf_counter(), 0
    while default.backend != "onnxruntime" and calls < MAX_SWITCH_CALLS:
        default.predict(image)
        calls += 1
    seconds = time.perf_counter() - start
    difference = float(abs(default.predict(image) - torch_only.predict(image)).max())
    note = (
        f"Predictor default: {default.backend_note}; {calls} calls and {seconds:.1f} s until then; "
        f"largest probability difference to backend='torch' {difference:.1e}"
    )

    def smp_predict(_: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
            return reference(tensor).softmax(1)[0].numpy()

    contestants: dict[str, Forward] = {
        "(e) SMP by hand: image → model → softmax → NumPy": smp_predict,
        "(e) Predictor().predict, default (auto → ORT)": lambda _: default.predict(image),
        "(e) Predictor(backend='torch').predict": lambda _: torch_only.predict(image),
    }
    return contestants, note


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def accuracy(args: argparse.Namespace, folder: Path) -> None:
    """mIoU of fp32, bf16 and int8 predictions of a trained model on a data split."""
    import torch.nn.functional as F

    from pixelwise.data import SegmentationFolder
    from pixelwise.evaluate import load_model
    from pixelwise.inference.quantize import calibration_images
    from pixelwise.metrics import ConfusionMatrix

    loaded = load_model(args.run)
    classes = loaded.classes
    data = SegmentationFolder(args.data, split=args.split, num_classes=len(classes.names), files=args.val_files)
    export_onnx(loaded, folder / "fp32.onnx")
    calibration = calibration_images(args.calibration_data or args.data, folder / "fp32.onnx", args.calibration_limit)
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx", calibration)
    folded = fold_batchnorm(loaded.model, torch.rand(1, loaded.model.in_channels, 64, 64))

    def bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return folded(x.contiguous(memory_format=torch.channels_last)).float()

    paths = {"fp32": loaded.model, "bf16": bf16, "int8 (ORT)": OnnxModel(folder / "int8.onnx", threads=args.threads)}
    matrices = {name: ConfusionMatrix(len(classes.names), ignore_index=classes.ignore_index) for name in paths}
    for index in range(len(data)):
        sample = data[index]
        image, size = sample["image"][None], sample["image"].shape[-2:]
        x = (image - loaded.mean) / loaded.std  # the Predictor's whole-image steps, any forward
        if loaded.scale != 1:
            scaled = [max(1, round(n * loaded.scale)) for n in size]
            x = F.interpolate(x, size=scaled, mode="bilinear", antialias=True)
        for name, forward in paths.items():
            with torch.inference_mode():
                logits = forward(x).float()
            if loaded.scale != 1:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            matrices[name].update(logits.argmax(1), sample["mask"][None])
    scores = {name: 100 * float(m.compute()["mean_iou"]) for name, m in matrices.items()}
    rows = [[name, f"{s:.2f}", f"{s - scores['fp32']:+.2f}"] for name, s in scores.items()]
    print(f"\n{args.run} on {args.data} ({args.split}, {len(data)} images)")
    print(table(rows, ["precision", "mIoU (%)", "Δ vs fp32 (points)"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width (default 512)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile row")
    parser.add_argument("--run", default=None, help="trained run directory: measure mIoU per precision instead")
    parser.add_argument("--data", default=None, help="data folder for --run")
    parser.add_argument("--split", default="val", help="split of --data (default val)")
    parser.add_argument("--val-files", default=None, help="glob over file stems of the split, e.g. '2[4-9]'")
    parser.add_argument("--calibration-data", default=None, help="int8 calibration images (default: --data)")
    parser.add_argument("--calibration-limit", type=int, default=16, help="calibration images used (default 16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="pixelwise-bench-") as folder:
        if args.run:
            if not args.data:
                parser.error("--run needs --data")
            accuracy(args, Path(folder))
        else:
            speed(args, Path(folder))


if __name__ == "__main__":
    main()
