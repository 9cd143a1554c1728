"""Training speed on the CPU: one optimiser step, and the whole loop, pixelwise against segmentation_models_pytorch.

Part 1, one step (forward + cross-entropy + backward + AdamW) of U-Net-ResNet18 on 4×3×256² random crops, all
contestants in one process, round-robin (each repeat times every contestant once), after warm-up:

- ``SMP eager``: ``smp.Unet("resnet18")``, contiguous tensors, ``torch.optim.AdamW`` as a user writes it;
- ``SMP channels-last``: the same in the channels-last memory layout;
- ``pixelwise``: pixelwise's Unet as ``pixelwise train`` runs it: channels-last, the optimiser of
  :func:`pixelwise.training.task.make_optimizer` (fused AdamW).

Part 2, the whole loop, each a fresh process on the same generated data (RGB ``shapes``, 256², ``--images``
training images), the same model, batch and number of steps (``--steps``):

- ``plain SMP loop``: a PIL-reading Dataset (image and mask, [0, 1] → ImageNet normalisation, random
  horizontal flip), a ``DataLoader(batch_size=4, shuffle=True)``, SMP's Unet, AdamW, cross-entropy;
- ``pixelwise train``: ``--plan off`` with the same model, crop, batch, flips and step count, one epoch
  (its data check, validation pass and export come on top of the loop, and are in its process time).

Columns: median seconds per step of the loop (from its first batch to its last step, data loading included, as
pixelwise's own time split counts its training), steps/s and the speed relative to the plain loop; process wall
time (start-up, and for pixelwise the data check, validation and export, on top of the loop).

Usage::

    python benchmarks/train_step.py                      # 10 repeats of the step; 3 × 120 steps of each loop
    python benchmarks/train_step.py --repeats 3 --steps 20 --loop-repeats 1   # a smoke run

Targets (issue 24): the whole loop ≥ 1.2× the plain loop's steps/s on the CPU; ≥ 1.5× on a GPU with bf16.
segmentation_models_pytorch is a test extra (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import pixelwise
from pixelwise.data import write_synthetic
from pixelwise.training.config import TrainConfig
from pixelwise.training.task import make_optimizer

BATCH, SIZE, CLASSES = 4, 256, 4
PLAIN_LOOP = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np, torch, torch.nn.functional as F
    import segmentation_models_pytorch as smp
    from PIL import Image

    root, steps, classes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, root):
            self.images = sorted((root / "images").glob("*.png"))
        def __len__(self):
            return len(self.images)
        def __getitem__(self, i):
            image = np.asarray(Image.open(self.images[i]).convert("RGB"), dtype=np.float32) / 255
            mask = np.asarray(Image.open(self.images[i].parent.parent / "masks" / self.images[i].name))
            x = (torch.from_numpy(image).permute(2, 0, 1) - MEAN) / STD
            y = torch.from_numpy(mask.astype(np.int64))
            if torch.rand(()) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            return x, y

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(Pairs(root / "train"), batch_size=4, shuffle=True, drop_last=True)
    model = smp.Unet("resnet18", encoder_weights=None, classes=classes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    done, began = 0, time.perf_counter()  # the loop's time, data loading included, as pixelwise's split counts it
    while done < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    print(json.dumps({"seconds_per_step": (time.perf_counter() - began) / steps}))
    """
)


def step_contestants() -> dict[str, Callable[[], None]]:
    """The three one-step closures, each with its own model, optimiser and batch."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE))

    def closure(model: torch.nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool) -> Callable[[], None]:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model.train().to(memory_format=layout)
        inputs = x.contiguous(memory_format=layout)

        def step() -> None:
            loss = F.cross_entropy(model(inputs), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    smp_eager = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    smp_last = smp.Unet("resnet18", encoder_weights=None, classes=CLASSES)
    ours = pixelwise.create_model("unet", encoder_name="resnet18", classes=CLASSES)
    config = TrainConfig(data="-", lr=1e-3, weight_decay=1e-4)
    return {
        "SMP eager": closure(smp_eager, torch.optim.AdamW(smp_eager.parameters(), lr=1e-3, weight_decay=1e-4), False),
        "SMP channels-last": closure(
            smp_last, torch.optim.AdamW(smp_last.parameters(), lr=1e-3, weight_decay=1e-4), True
        ),
        "pixelwise (channels-last, fused AdamW)": closure(ours, make_optimizer(list(ours.parameters()), config), True),
    }


def time_steps(repeats: int) -> dict[str, list[float]]:
    contestants = step_contestants()
    for step in contestants.values():  # warm-up: allocator, oneDNN primitives
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, step in contestants.items():
            began = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - began)
    return times


def run_plain(data: Path, steps: int) -> tuple[float, float]:
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_LOOP, str(data), str(steps), str(CLASSES)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_per_step"], time.perf_counter() - began


def run_pixelwise(data: Path, steps: int, runs: Path, name: str) -> tuple[float, float]:
    command = [sys.executable, "-m", "pixelwise.cli", "train", "--data", str(data), "--plan", "off"]
    command += ["--model", "unet", "--encoder", "resnet18", "--crop", str(SIZE), "--batch-size", str(BATCH)]
    command += ["--samples-per-epoch", str(steps * BATCH), "--epochs", "1", "--lr", "1e-3", "--scheduler", "none"]
    command += ["--augment", json.dumps([{"name": "RandomHorizontalFlip", "p": 0.5}]), "--warmup-epochs", "0"]
    command += ["--runs-dir", str(runs), "--name", name, "--no-progress"]
    began = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - began
    # the run's own split of its time: "training 209 s (180 steps, 1.16 s/step)"
    found = re.search(r"training [\d.]+ s \((\d+) steps, ([\d.]+) s/step\)", out.stdout + out.stderr)
    if not found:
        raise SystemExit(f"no time split in pixelwise's output:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(found.group(2)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each contestant in part 1")
    parser.add_argument("--steps", type=int, default=120, help="optimiser steps of each loop in part 2")
    parser.add_argument("--images", type=int, default=64, help="training images of the generated data")
    parser.add_argument("--loop-repeats", type=int, default=3, help="runs of each loop in part 2 (round-robin)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    times = time_steps(args.repeats)
    reference = statistics.median(times["SMP eager"])
    print(f"\none step, U-Net-ResNet18, {BATCH}×3×{SIZE}², median of {args.repeats}")
    print("| contestant | ms/step | vs SMP eager |\n|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.0f} | {reference / median:.2f}× |")

    with tempfile.TemporaryDirectory(prefix="pixelwise-train-bench-") as tmp:
        data = write_synthetic(Path(tmp) / "shapes", "shapes", n_train=args.images, n_val=4, size=SIZE, seed=0)
        loops: dict[str, list[tuple[float, float]]] = {"plain SMP loop": [], "pixelwise train": []}
        for repeat in range(args.loop_repeats):
            loops["plain SMP loop"].append(run_plain(data, args.steps))
            loops["pixelwise train"].append(run_pixelwise(data, args.steps, Path(tmp) / "runs", f"r{repeat}"))
    plain = statistics.median(per_step for per_step, _ in loops["plain SMP loop"])
    print(f"\nwhole loop, {args.steps} steps of {BATCH}×3×{SIZE}² (RGB shapes), median of {args.loop_repeats} runs")
    print("| loop | s/step | steps/s | vs plain loop | process wall s |\n|---|---|---|---|---|")
    for name, runs in loops.items():
        per_step = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"| {name} | {per_step:.3f} | {1 / per_step:.2f} | {plain / per_step:.2f}× | {wall:.0f} |")


if __name__ == "__main__":
    main()
