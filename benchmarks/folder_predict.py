"""Folder prediction, whole processes: ``pixelwise predict`` against a plain segmentation_models_pytorch loop.

A folder of generated RGB PNGs (smooth random blobs with a little noise, so PNG sizes are photo-like) is
predicted by U-Net-r34 with random weights (SMP's, converted with :func:`pixelwise.from_smp`, so both sides
run the same network), each contestant a fresh process timed from start to exit:

- ``plain SMP loop``: for each file, sorted: PIL read → [0, 1] → ImageNet normalisation → model → argmax →
  PNG write (``torch.inference_mode``, eager fp32), one image at a time in one process;
- ``pixelwise predict``: the command with its defaults (decoding workers, equal-size images batched, outputs
  written by a background thread);
- ``pixelwise predict, one at a time``: ``--workers 0 --batch-size 1`` (read, predict, write in turn);
- with ``--devices 1 2 ...``, also ``pixelwise predict --devices N``: the files shared over N processes
  (Lightning Fabric; N GPUs where there are any, else N CPU processes), with each N's scaling efficiency
  (images/s over N times the one-process images/s);
- with ``--precisions bf16 ...``, also ``pixelwise predict --precision P``: faster, not exact, so each such row
  gets the share of pixels whose label equals the fp32 default's.

Repeats run round-robin (each repeat times every contestant once); the table gives the median ms per image,
images/s and the speed relative to the plain loop. The last line says whether the pipelined and the
one-at-a-time outputs are the same bytes.

Usage::

    python benchmarks/folder_predict.py                         # 2,000 × 256² and 200 × 512², 3 repeats
    python benchmarks/folder_predict.py --count 40 --size 256   # a small run
    python benchmarks/folder_predict.py --count 60 --size 256 --devices 1 2   # 1 vs 2 processes
    python benchmarks/folder_predict.py --count 2000 --size 256 --precisions bf16   # and at bf16

Targets (issue 24) on the 2-core CPU: ≥ 2× the plain loop's images/s at 256², ≥ 1.5× at 512²; ≥ 3× on a GPU.
segmentation_models_pytorch is a test extra (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CASES = ((256, 2000), (512, 200))
"""(side, image count) of the issue's two folders."""
DEFAULT_REPEATS = 3
CLASSES = 2
BLOB_CELL = 16
"""Side in pixels of one random colour cell before smoothing: larger cells give smoother, smaller PNGs."""
NOISE_LEVEL = 8
"""Amplitude of the per-pixel noise added to the blobs (in grey levels)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` RGB PNGs of ``size × size``: bilinear-smoothed random cells plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cells = max(size // BLOB_CELL, 1)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.int16)
        noisy = smooth + rng.integers(-NOISE_LEVEL, NOISE_LEVEL + 1, smooth.shape, dtype=np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"image{i:05d}.png")


def make_models(folder: Path) -> tuple[Path, Path]:
    """SMP's Unet-resnet34 (random weights) as a whole pickled module, and the same network as pixelwise's
    ``save_pretrained`` folder (ImageNet normalisation, as the plain loop applies)."""
    import segmentation_models_pytorch as smp
    import torch

    import pixelwise

    reference = smp.Unet("resnet34", encoder_weights=None, classes=CLASSES).eval()
    smp_path = folder / "smp_unet_r34.pt"
    torch.save(reference, smp_path)
    saved = Path(pixelwise.from_smp(reference).eval().save_pretrained(folder / "pixelwise_unet_r34"))
    normalisation = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    (saved / "preprocessing.json").write_text(json.dumps(normalisation))
    return smp_path, saved


def plain_loop(model_path: str, images: str, out: str) -> None:
    """The plain SMP loop (run in its own process by :func:`main`)."""
    import torch

    model = torch.load(model_path, weights_only=False).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    Path(out).mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in sorted(Path(images).glob("*.png")):
            array = np.array(Image.open(path).convert("RGB"))
            x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
            labels = model((x - mean) / std).argmax(1)[0].to(torch.uint8).numpy()
            Image.fromarray(labels).save(Path(out) / f"{path.stem}.png")


def timed(command: list[str]) -> float:
    """Seconds from the start of ``command`` to its exit; raises if it fails."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def label_agreement(reference: Path, other: Path) -> float:
    """The share of pixels whose label in ``other`` equals the label in ``reference`` (same file names)."""
    equal = total = 0
    for path in sorted(reference.glob("*.png")):
        expected = np.asarray(Image.open(path))
        equal += int((np.asarray(Image.open(other / path.name)) == expected).sum())
        total += expected.size
    return equal / total


def run_case(
    size: int, count: int, repeats: int, work: Path, devices: tuple[int, ...] = (), precisions: tuple[str, ...] = ()
) -> list[str]:
    """Table rows for one folder: each contestant's median whole-process ms per image; the last rows say
    whether outputs agree, how ``--devices`` scales and how far other precisions' labels are from fp32's."""
    images = work / f"images_{size}"
    make_images(images, count, size)
    smp_path, saved = make_models(work)
    predict = [sys.executable, "-m", "pixelwise.cli", "predict", str(images), "--model", str(saved), "--no-progress"]
    contestants = {
        "plain SMP loop": lambda out: [sys.executable, __file__, "--plain-loop", str(smp_path), str(images), out],
        "pixelwise predict": lambda out: [*predict, "--out", out],
        "pixelwise predict, one at a time": lambda out: [*predict, "--out", out, "--workers", "0", "--batch-size", "1"],
    }
    for n in devices:
        contestants[f"pixelwise predict --devices {n}"] = lambda out, n=n: [*predict, "--out", out, "--devices", str(n)]
    for precision in precisions:
        name = f"pixelwise predict --precision {precision}"
        contestants[name] = lambda out, p=precision: [*predict, "--out", out, "--precision", p]
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for repeat in range(repeats):
        for index, (name, command) in enumerate(contestants.items()):
            seconds[name].append(timed(command(str(work / f"out_{size}_{index}_{repeat}"))))
    baseline = statistics.median(seconds["plain SMP loop"])
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        rows.append(
            f"| {size}² × {count} | {name} | {1000 * median / count:.1f} | {count / median:.2f} | "
            f"{baseline / median:.2f}× |"
        )
    same = filecmp.dircmp(work / f"out_{size}_1_0", work / f"out_{size}_2_0")
    notes = [f"pipelined vs one-at-a-time outputs at {size}²: {len(same.diff_files)} of {count} label files differ"]
    first_extra = 3 + len(devices)  # the contestants' order: plain, default, one at a time, devices, precisions
    for offset, precision in enumerate(precisions):
        agreement = label_agreement(work / f"out_{size}_1_0", work / f"out_{size}_{first_extra + offset}_0")
        notes.append(f"--precision {precision} at {size}²: {agreement:.4%} of pixels get the fp32 default's label")
    return rows + notes + scaling_notes(size, seconds, devices)


def scaling_notes(size: int, seconds: dict[str, list[float]], devices: tuple[int, ...]) -> list[str]:
    """One line per process count: speed-up and scaling efficiency over ``--devices 1`` (or the default command)."""
    one = "pixelwise predict --devices 1" if 1 in devices else "pixelwise predict"
    base = statistics.median(seconds[one])
    notes = []
    for n in devices:
        speedup = base / statistics.median(seconds[f"pixelwise predict --devices {n}"])
        notes.append(f"--devices {n} at {size}²: {speedup:.2f}× one process, scaling efficiency {speedup / n:.0%}")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="images in the folder (with --size)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (with --count)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs of each contestant")
    parser.add_argument(
        "--devices", type=int, nargs="+", default=(), help="also time `pixelwise predict --devices N` for each N"
    )
    parser.add_argument(
        "--precisions", nargs="+", default=(), help="also time `pixelwise predict --precision P` for each P (e.g. bf16)"
    )
    parser.add_argument("--plain-loop", nargs=3, metavar=("MODEL", "IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        plain_loop(*args.plain_loop)
        return
    if (args.count is None) != (args.size is None):
        parser.error("give --count and --size together (or neither, for the issue's two folders)")
    cases = DEFAULT_CASES if args.size is None else ((args.size, args.count),)
    lines = ["| folder | contestant | ms / image | images/s | vs plain loop |", "|---|---|---|---|---|"]
    notes = []
    with tempfile.TemporaryDirectory(prefix="pixelwise-folder-") as tmp:
        for size, count in cases:
            rows = run_case(size, count, args.repeats, Path(tmp), tuple(args.devices), tuple(args.precisions))
            split = len(rows) - 1 - len(args.devices) - len(args.precisions)
            lines += rows[:split]
            notes += rows[split:]
    print("\n".join([*lines, "", *notes]))


if __name__ == "__main__":
    main()
