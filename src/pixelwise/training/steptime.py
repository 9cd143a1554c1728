"""Measured seconds per optimiser step of a candidate model and sample size, for the training plan.

The plan (:mod:`pixelwise.training.plan`) chooses the crop that lets a time budget buy enough steps; a
step's time depends on the machine, its load, the model and the pixels per step, so it is measured, not
guessed: a few forward + backward + AdamW steps on random data, in the memory layout training uses.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from pixelwise.training.task import build_model

WARMUP_STEPS = 1
"""Untimed steps first (kernel selection, allocator warm-up)."""
TIMED_STEPS = 3
"""Steps timed; the median is reported."""


def measure_step(
    options: Mapping[str, Any],
    in_channels: int,
    classes: int,
    image_size: tuple[int, int],
    device: str = "cpu",
    steps: int = TIMED_STEPS,
) -> float:
    """Median seconds of one training step of the model ``options`` describe.

    Args:
        options: TrainConfig fields: ``model``, ``encoder``, ``model_options``, ``batch_size``, ``crop`` (None:
            whole images of ``image_size``), ``channels_last`` (default True).
        in_channels, classes: the data's.
        image_size: ``(H, W)`` of a whole training image at the training scale (used when ``crop`` is None).
        device: ``"cpu"`` or ``"cuda"``.
        steps: steps timed after ``WARMUP_STEPS`` untimed ones.

    Returns:
        Seconds per step (forward, cross-entropy, backward, AdamW update).
    """
    crop = options.get("crop")
    height, width = (crop, crop) if crop else image_size
    model = build_model({**options, "encoder_weights": None}, in_channels, classes).to(device)
    memory = torch.channels_last if options.get("channels_last", True) else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = int(options.get("batch_size", 4))
    images = torch.randn(batch, in_channels, height, width, device=device).to(memory_format=memory)
    masks = torch.randint(0, classes, (batch, height, width), device=device)
    seconds = []
    for index in range(WARMUP_STEPS + steps):
        start = time.perf_counter()
        logits = model(images)
        loss = F.cross_entropy(logits, masks[:, : logits.shape[-2], : logits.shape[-1]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()
        if index >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)
