"""A training plan derived from the data, the time budget and a measured step time (nnU-Net's idea, for 2-D images).

A :class:`~pixelwise.data.fingerprint.Fingerprint` says what the data are like; each rule below turns one
fact of it into one or a few training options, and says which fact decided::

    fingerprint ─┬─ symmetry_rule      up/down and left/right of the labels → flips and 90° turns (d4 | hflip | none)
                 ├─ intensity_rule     channels (grey microscopy vs colour photographs) → intensity augmentation
                 ├─ offset_rule        the measured half-pixel mask offset → mask_offset
                 ├─ resolution_rule    the thinnest class's width vs the image size → scale, full-resolution stem
                 ├─ loss_rule          class shares, thin rare classes → loss and class weights
                 └─ model_rule         device, cached weights → architecture, encoder, batch, precision
    + budget and measured step time ─── size_rule → crop (or whole images), epoch length, lr, EMA

The rules are plain functions of the fingerprint and a :class:`PlanContext`; none looks at a data set's name.
Options the user set are fixed inputs: their rules are skipped and the rest plan around them (the step time is
measured with the user's model and batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache

from pixelwise.data.fingerprint import Fingerprint, compute_fingerprint
from pixelwise.training.config import TrainConfig, field_names
from pixelwise.training.steptime import measure_step

RECIPE_OPTIONS = frozenset(
    {
        "model",
        "encoder",
        "encoder_weights",
        "model_options",
        "batch_size",
        "scale",
        "crop",
        "augment",
        "loss",
        "class_weights",
        "lr",
        "optimizer",
        "scheduler",
        "warmup_epochs",
        "weight_decay",
        "ema_decay",
        "mask_offset",
        "samples_per_epoch",
        "epochs",
        "precision",
    }
)
"""The TrainConfig options a plan decides: ``pixelwise train --plan auto`` plans when none of them is given."""
SYMMETRY_TOLERANCE = 0.1
"""Largest total-variation distance between the class distributions of two image halves (top/bottom,
left/right; row bands/column bands for 90° turns) for the labels to count as symmetric under that flip: a
tenth of the labelled pixels would have to change class. A score within ``CHANCE_FACTOR`` times its chance
level (the same score over random flips of a symmetric set) counts as symmetric too: small sets scatter."""
CHANCE_FACTOR = 3.0
THIN_WIDTH = 8.0
"""A class whose objects are at most this wide (pixels at the training scale, the area-weighted median of
area / skeleton length) is thin: it gets the decoder's full-resolution stem (a stride-1 skip). 8 px are four
cells of the finest skip the decoder has without it (stride 2)."""
MIN_WIDTH_AFTER_SCALING = 1.0
"""Training at half resolution is ruled out when a class's objects would become narrower than one pixel (they
would vanish from the nearest-neighbour resized masks)."""
LARGE_OBJECTS = 0.5
"""Half resolution when the typical labelled pixel (pixel-share-weighted over classes) belongs to an object
spanning at least this share of the image side: context then matters more than the finest detail."""
LARGE_IMAGE_SIDE = 320
"""Only images whose shorter side reaches this train at half resolution (smaller ones keep every pixel)."""
MIN_CLASS_SHARE = 0.001
"""Classes below this share of the pixels are too rare to decide a width on their own."""
RARE_SHARE = 0.10
"""A thin class under this share of the pixels, or any class under ``RARE_SHARE / 5`` of them, makes the loss
``ce+dice`` with square-root median-frequency weights (Dice scores each class by its own overlap)."""
CROP_CANDIDATES = (256, 192, 128)
"""Training crop sides tried, largest (most context) first."""
TARGET_STEPS = 2500
"""Optimiser steps a budget should buy: the largest candidate crop that reaches it is chosen."""
MIN_STEPS = 500
"""When no candidate reaches ``TARGET_STEPS``, the largest that still buys this many steps is chosen (else the
smallest): context beats steps once there are a few hundred. Measured at equal time on a loaded 2-core CPU
(docs/RESULTS.md): ISBI's 192² crops with 933 steps beat 128² crops with 1,533 (pixel error 0.0741 vs 0.0763),
CamVid's whole half-resolution images with 380 steps beat 128² crops with 1,359 (mIoU 0.367 vs 0.337)."""
STEPS_FOR_AUGMENTATION = 1000
"""Fewer planned steps get only the symmetry group's flips: at 40 × batch-4 steps on ISBI no augmentation beat
light and strong augmentation (docs/RESULTS.md, the ``augmentation`` experiment); the recipes that gain from
elastic, intensity and scale changes train for thousands of steps."""
STEPS_FOR_EMA = 1000
"""Weight EMA (decay ``EMA_DECAY``, horizon about 500 steps) only when the budget buys this many steps."""
EMA_DECAY = 0.998
EPOCHS_PER_BUDGET = 10
"""Epochs a budget is cut into; validation runs at most every epoch and takes at most a tenth of the training
time (TimeBudget). Each epoch also writes ``last.ckpt`` (and ``best.ckpt`` when it improves): 200 MB for the CPU
U-Net with its AdamW and EMA states, about 1 s on an idle 2-core CPU and several on a loaded one. With 20
epochs the planned runs on ISBI and CamVid spent 140–240 s more outside training than the configs' 8–11 epochs
(docs/RESULTS.md)."""
WARMUP_SHARE = 0.05
"""Share of the budget the learning rate warms up over (half an epoch of ten)."""
BASE_LR = 1e-3
"""AdamW learning rate at batch size 1; scaled by ``sqrt(batch)`` (2e-3 at 4, 2.8e-3 at 8)."""
TRAIN_SHARE = 0.85
"""Share of the budget expected for optimiser steps (the rest: data check, validation, export)."""
DATA_PASSES = 20
"""Without ``--max-minutes`` the budget buys this many passes over the training pixels (at the planned scale and
crop), but at least ``TARGET_STEPS`` and at most ``MAX_DEFAULT_STEPS`` steps: a larger data set trains longer."""
MAX_DEFAULT_STEPS = 20_000
MAX_DEFAULT_MINUTES = {"cpu": 120.0, "gpu": 480.0}
"""The longest default budget: a CPU day is not a default; a user who wants more says ``--max-minutes``."""
CPU_MODEL = {
    "model": "unet",
    "encoder": "resnet18",
    "batch_size": 4,
    "model_options": {"decoder_channels": [128, 64, 32, 16, 16]},
}
GPU_MODEL = {
    "model": "unet",
    "encoder": "resnet34",
    "batch_size": 16,
    "precision": "bf16-mixed",
    "model_options": {"decoder_channels": [256, 128, 64, 32, 16]},
}
STEM_CHANNELS = 16
GREY_INTENSITY = [
    {"name": "RandomBrightness", "delta": 0.1},
    {"name": "RandomContrast", "amount": 0.2},
    {"name": "RandomGamma", "gamma": [0.7, 1.5]},
    {"name": "RandomGaussianNoise", "sigma": 0.03, "p": 0.5},
]
"""Grey-value variation for single-channel images (microscopy, EM, X-ray): the U-Net paper's kind."""
COLOUR_INTENSITY = [{"name": "ColorJitter", "brightness": 0.25, "contrast": 0.25, "saturation": 0.25}]
"""Photometric variation for colour photographs."""
SYMMETRY_FLIPS = {
    "d4": ["light"],
    "hflip": [{"name": "RandomHorizontalFlip", "p": 0.5}],
    "none": [],
}
SYMMETRY_TTA = {"d4": "d4", "hflip": "hflip", "none": None}


@dataclasses.dataclass(frozen=True)
class Choice:
    """One planned option: its value and the fact that decided it."""

    option: str
    value: Any
    reason: str


@dataclasses.dataclass
class PlanContext:
    """What the rules know besides the fingerprint.

    Attributes:
        budget_minutes: the training budget (``max_minutes``); None: no budget (``TARGET_STEPS`` steps planned).
        accelerator: ``"cpu"`` or ``"gpu"``.
        fixed: options the user set (TrainConfig field names): never planned, used as given.
        step_seconds: measures one optimiser step of ``options`` (a dict of TrainConfig fields with ``crop``
            and ``batch_size``), in seconds; see :func:`pixelwise.training.steptime.measure_step`.
        cached_weights: the encoder has ImageNet weights available offline.
        spent_seconds: budget seconds already used by the fingerprint and the measurement.
    """

    budget_minutes: float | None = None
    accelerator: str = "cpu"
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    step_seconds: Callable[[dict[str, Any]], float] | None = None
    cached_weights: Callable[[str], bool] = lambda encoder: False
    spent_seconds: float = 0.0
    """Seconds of the budget already spent (fingerprint, step measurement) when the plan is made."""


@dataclasses.dataclass
class Plan:
    """The planned options, each with its reason, and the facts later steps need."""

    choices: list[Choice]
    symmetry: str
    """``d4``, ``hflip`` or ``none``: the flips the labels allow (augmentation and test-time augmentation)."""
    mask_offset: list[float] | None
    budget: str = ""
    """How the time budget is expected to be spent (set-up, steps, epochs, validation), for ``plan.md``."""
    steps: int | None = None
    """The optimiser steps the budget is expected to buy."""

    def options(self) -> dict[str, Any]:
        """The TrainConfig values of the plan (later choices of an option win)."""
        return {c.option: c.value for c in self.choices if c.option in set(field_names())}

    @property
    def tta(self) -> str | None:
        """The test-time augmentation matching the symmetry group (``evaluate --tta``)."""
        return SYMMETRY_TTA[self.symmetry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options(),
            "symmetry": self.symmetry,
            "mask_offset": self.mask_offset,
            "tta": self.tta,
            "reasons": {c.option: c.reason for c in self.choices},
            "budget": self.budget,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        """The main choices in one line, e.g. ``crop 192, batch 4, loss ce, flips d4, EMA, about 2500 steps``."""
        options = self.options()
        crop = options.get("crop", "given")
        parts = [f"crop {crop if crop else 'whole images'}", f"batch {options.get('batch_size', 'given')}"]
        parts += [f"loss {options.get('loss', 'given')}", f"flips {self.symmetry}"]
        parts += ["EMA"] if options.get("ema_decay") else []
        return ", ".join(parts) + (f", about {self.steps} steps" if self.steps else "")

    def to_text(self) -> str:
        """The plan for a terminal: ``option: value`` and, indented below, why."""
        lines = [f"training plan (symmetry {self.symmetry}):"]
        for choice in self.choices:
            lines += [f"  {choice.option}: {json.dumps(choice.value, default=str)}", f"      {choice.reason}"]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """``plan.md``: one line per option, with the fact that decided it."""
        lines = ["# Training plan", ""] + ([f"Budget: {self.budget}", ""] if self.budget else [])
        lines += ["| option | value | why |", "|---|---|---|"]
        lines += [f"| `{c.option}` | `{json.dumps(c.value, default=str)}` | {c.reason} |" for c in self.choices]
        return "\n".join(lines) + "\n"


# -- the rules -----------------------------------------------------------------------------------------------
def _symmetric(orientation: Mapping[str, float], axis: str) -> bool:
    score, chance = orientation[f"{axis}_asymmetry"], orientation.get(f"{axis}_chance", 0.0)
    return score <= SYMMETRY_TOLERANCE or score <= CHANCE_FACTOR * chance


def symmetry_group(fp: Fingerprint) -> tuple[str, str]:
    """``(group, reason)``: ``d4`` when the labels look the same under vertical and horizontal flips and under
    a transposition (90° turns), ``hflip`` when only left/right is free, else ``none``."""
    orientation = fp.orientation
    facts = (
        f"class distributions differ by {orientation['vertical_asymmetry']:.3f} top/bottom, "
        f"{orientation['horizontal_asymmetry']:.3f} left/right, {orientation['transpose_asymmetry']:.3f} "
        f"rows/columns (symmetric: ≤ {SYMMETRY_TOLERANCE} or ≤ {CHANCE_FACTOR:g}× chance)"
    )
    free = {axis: _symmetric(orientation, axis) for axis in ("vertical", "horizontal", "transpose")}
    if all(free.values()):
        return "d4", f"{facts}: flips and 90° turns"
    if free["horizontal"]:
        return "hflip", f"{facts}: the labels have an up and a down; horizontal flips only"
    return "none", f"{facts}: no flip keeps the labels' layout"


def symmetry_rule(fp: Fingerprint, context: PlanContext) -> list[Choice]:
    group, reason = symmetry_group(fp)
    return [Choice("symmetry", group, reason)]


def intensity_rule(fp: Fingerprint, context: PlanContext, group: str, steps: int) -> list[Choice]:
    """Augmentation: the flips of the symmetry group, and with enough steps scale jitter and intensity changes
    by modality (a short budget learns faster from the images as they are)."""
    flips = SYMMETRY_FLIPS[group]
    if steps < STEPS_FOR_AUGMENTATION:
        return [
            Choice(
                "augment",
                flips,
                f"about {steps} steps (< {STEPS_FOR_AUGMENTATION}): only the flips of group {group}, which change "
                "no pixel value; stronger augmentation slows a short training down",
            )
        ]
    if fp.channels == 3:
        affine = {"name": "RandomAffine", "degrees": 0, "scale": [0.8, 1.25]}
        augment = [*flips, affine, *COLOUR_INTENSITY]
        why = "3 channels (colour photographs): scale jitter and colour jitter"
    else:
        rotate = {"name": "RandomApply", "transforms": [{"name": "RandomAffine", "degrees": 20}], "p": 0.5}
        geometric = [rotate, {"name": "RandomElasticGrid", "p": 0.5}] if group == "d4" else []
        augment = [*flips, *geometric, *GREY_INTENSITY]
        why = f"{fp.channels} channel(s) (grey-value images): brightness, contrast, gamma and noise"
        why += "; free orientation: small rotations and elastic deformation" if group == "d4" else ""
    return [Choice("augment", augment, f"{why}; flips of group {group}")]


def offset_rule(fp: Fingerprint, context: PlanContext) -> list[Choice]:
    if not fp.mask_offset or not any(fp.mask_offset):
        return []
    dy, dx = fp.mask_offset
    return [
        Choice(
            "mask_offset",
            list(fp.mask_offset),
            f"the masks' edges sit {dy:+.2f} px (rows), {dx:+.2f} px (columns) from the image's edges",
        )
    ]


def thinnest_class(fp: Fingerprint) -> tuple[int, float] | None:
    """``(class, width in pixels)`` of the thinnest class with at least ``MIN_CLASS_SHARE`` of the pixels (width:
    the area-weighted median of its objects' area / skeleton length)."""
    widths = [
        (c, float(obj["weighted_width"]))
        for c, obj in enumerate(fp.objects)
        if fp.class_pixels[c] >= MIN_CLASS_SHARE and obj.get("weighted_width")
    ]
    return min(widths, key=lambda item: item[1]) if widths else None


def typical_extent(fp: Fingerprint) -> float:
    """The pixel-share-weighted mean over classes of the area-weighted object extent (object side / image side)."""
    return float(
        sum(share * (obj.get("weighted_extent") or 0.0) for share, obj in zip(fp.class_pixels, fp.objects, strict=True))
    )


def resolution_rule(fp: Fingerprint, context: PlanContext) -> list[Choice]:
    """Half resolution for large images of large objects whose thinnest class stays a pixel wide; the
    full-resolution stem when a class is thin at the training scale."""
    thinnest, extent = thinnest_class(fp), typical_extent(fp)
    short_side = min(fp.sizes["height"]["median"], fp.sizes["width"]["median"])
    half = short_side >= LARGE_IMAGE_SIDE and extent >= LARGE_OBJECTS
    if thinnest is not None and thinnest[1] / 2 < MIN_WIDTH_AFTER_SCALING:
        half = False
    size_fact = f"images {short_side:.0f} px on the short side, objects spanning {extent:.2f} of it (pixel-weighted)"
    if half:
        reason = (
            f"{size_fact} (≥ {LARGE_OBJECTS}): half resolution quarters the pixels per step and doubles the context"
        )
    else:
        reason = f"{size_fact}: full resolution"
        if thinnest is not None and thinnest[1] / 2 < MIN_WIDTH_AFTER_SCALING:
            reason += f" ({fp.class_names[thinnest[0]]} would be under a pixel wide at half resolution)"
    choices = [] if "scale" in context.fixed else [Choice("scale", 0.5 if half else 1.0, reason)]
    scale = float(context.fixed.get("scale", 0.5 if half else 1.0))
    if thinnest is not None and thinnest[1] * scale <= THIN_WIDTH:
        width = thinnest[1] * scale
        choices.append(
            Choice(
                "model_options",
                {"decoder_full_resolution_channels": STEM_CHANNELS},
                f"{fp.class_names[thinnest[0]]} is {width:.1f} px wide at the training scale "
                f"(≤ {THIN_WIDTH:g}): a stride-1 skip keeps thin structures",
            )
        )
    return choices


def loss_rule(fp: Fingerprint, context: PlanContext) -> list[Choice]:
    """``ce+dice`` with square-root median-frequency weights for rare or thin-and-uncommon classes, else ``ce``."""
    shares = [(share, c) for c, share in enumerate(fp.class_pixels) if share > 0]
    rarest_share, rarest = min(shares)
    thinnest = thinnest_class(fp)
    thin_rare = thinnest is not None and fp.class_pixels[thinnest[0]] < RARE_SHARE and thinnest[1] <= THIN_WIDTH
    if rarest_share < RARE_SHARE / 5 or thin_rare:
        fact = (
            f"{fp.class_names[thinnest[0]]} is thin ({thinnest[1]:.1f} px) and {fp.class_pixels[thinnest[0]]:.1%} "
            "of the pixels"
            if thin_rare
            else f"{fp.class_names[rarest]} is {rarest_share:.2%} of the pixels"
        )
        return [
            Choice("loss", "ce+dice", f"{fact}: Dice scores each class by its own overlap, whatever its share"),
            Choice(
                "class_weights",
                "sqrt_median",
                f"{fact}: square roots of median-frequency weights "
                "(full weights on top of Dice over-predict rare classes)",
            ),
        ]
    return [
        Choice(
            "loss",
            "ce",
            f"the rarest class ({fp.class_names[rarest]}) is {rarest_share:.1%} of the pixels "
            "and none is thin and rare: plain cross-entropy",
        )
    ]


def model_rule(fp: Fingerprint, context: PlanContext) -> list[Choice]:
    base = GPU_MODEL if context.accelerator == "gpu" else CPU_MODEL
    device = (
        "a GPU: a larger encoder, batch and bf16"
        if context.accelerator == "gpu"
        else "the CPU: a small encoder and batch, so the budget buys enough steps"
    )
    choices = [Choice(key, value, f"training on {device}") for key, value in base.items()]
    encoder = context.fixed.get("encoder", base["encoder"])
    if context.cached_weights(str(encoder)) and fp.channels == 3:
        choices.append(Choice("encoder_weights", "imagenet", f"ImageNet weights of {encoder} are in the local cache"))
    else:
        why = "no ImageNet weights in the local cache" if fp.channels == 3 else f"{fp.channels}-channel images"
        choices.append(Choice("encoder_weights", None, f"{why}: trained from scratch"))
    return choices


def size_rule(fp: Fingerprint, context: PlanContext, options: dict[str, Any]) -> tuple[list[Choice], int]:
    """Crop (or whole images), epoch length, learning rate and EMA from the measured step time and the budget;
    also returns the steps the budget is expected to buy.

    Steps of the smallest and the largest candidate are measured, and the others' times interpolated: a step
    costs a fixed part (the optimiser's pass over the weights, the framework) plus a part that grows with the
    pixels (the convolutions). The largest candidate whose estimated steps reach ``TARGET_STEPS`` is chosen,
    else the largest that reaches ``MIN_STEPS``, else the smallest.
    """
    scale = float(options.get("scale", 1.0))
    batch = int(options["batch_size"])
    height, width = fp.sizes["height"]["median"] * scale, fp.sizes["width"]["median"] * scale
    same_size = all(fp.sizes[axis]["min"] == fp.sizes[axis]["max"] for axis in ("height", "width"))
    candidates: list[int | None] = [c for c in CROP_CANDIDATES if c < max(height, width)]
    if same_size and height * width <= CROP_CANDIDATES[0] ** 2:
        candidates = [None, *candidates]  # whole images when they are no larger than the largest crop
    candidates = candidates or [None]

    def pixels(crop: int | None) -> float:
        return float(crop * crop if crop else height * width)

    reference = candidates[-1]
    estimate, model = step_model(context, options, candidates, pixels)
    minutes, budget_choices = context.budget_minutes, []
    if minutes is None and estimate:
        minutes, reason = default_budget(
            fp, context, scale * scale, batch, pixels(candidates[0]), estimate[candidates[0]]
        )
        budget_choices = [Choice("max_minutes", minutes, reason)]
    budget = None  # after the measurement: its seconds are spent too
    if minutes is not None:
        budget = max(minutes * 60 - context.spent_seconds, 0.0) * TRAIN_SHARE
    chosen = candidates[0] if budget is None or not estimate else reference
    if budget is not None and estimate:
        reaching = [c for floor in (TARGET_STEPS, MIN_STEPS) for c in candidates if budget / estimate[c] >= floor]
        chosen = reaching[0] if reaching else reference
    steps = TARGET_STEPS if budget is None or not estimate else int(budget / estimate[chosen])
    what = "whole images" if chosen is None else f"{chosen}² crops"
    if estimate:
        crop_reason = (
            f"{model}; {budget:.0f} s of training in the {minutes:g} min budget: {what} buy about "
            f"{steps} steps (the largest input reaching {TARGET_STEPS} steps, else {MIN_STEPS})"
            if budget is not None
            else f"no budget: {what}, {TARGET_STEPS} steps"
        )
    else:
        crop_reason = f"{what}: no step time measured"
    epoch_samples = max(batch, steps // EPOCHS_PER_BUDGET * batch)
    lr = float(f"{BASE_LR * math.sqrt(batch):.3g}")  # three significant digits, as a person writes it
    choices = [
        Choice("crop", chosen, crop_reason),
        Choice(
            "samples_per_epoch",
            epoch_samples,
            f"about {steps} steps cut into {EPOCHS_PER_BUDGET} epochs; "
            "validation takes at most a tenth of the training time",
        ),
        Choice("lr", lr, f"AdamW at {BASE_LR} × sqrt(batch {batch})"),
        Choice("optimizer", "adamw", "AdamW with a cosine schedule after a short warm-up"),
        Choice("scheduler", "cosine", "anneals towards the end of the budget"),
        Choice(
            "warmup_epochs",
            WARMUP_SHARE * EPOCHS_PER_BUDGET,
            f"{WARMUP_SHARE * EPOCHS_PER_BUDGET:g} epoch: {WARMUP_SHARE:.0%} of the budget",
        ),
        Choice("weight_decay", 1e-4, "the library default"),
    ]
    if steps >= STEPS_FOR_EMA:
        choices.append(
            Choice(
                "ema_decay",
                EMA_DECAY,
                f"{steps} steps (≥ {STEPS_FOR_EMA}): a weight average over "
                "the last ~500 steps gives a smoother, better final model",
            )
        )
    if minutes is not None:
        choices.append(Choice("epochs", 10_000, "the time budget ends training; the schedule follows the clock"))
    else:
        choices.append(Choice("epochs", EPOCHS_PER_BUDGET, f"no budget: {EPOCHS_PER_BUDGET} epochs"))
    return budget_choices + choices, steps


def step_model(
    context: PlanContext,
    options: dict[str, Any],
    candidates: list[int | None],
    pixels: Callable[[int | None], float],
) -> tuple[dict[int | None, float], str]:
    """Estimated seconds per step of each candidate crop (None: whole images), and how they were found.

    The smallest and the largest candidate are timed; a step is ``fixed + per_pixel × pixels`` through both
    points (a single candidate: its own time). Empty without a step timer.
    """
    if context.step_seconds is None:
        return {}, ""
    small, large = candidates[-1], candidates[0]
    t_small = context.step_seconds({**options, "crop": small})
    if large == small:
        return {small: t_small}, f"measured {t_small:.2f} s per step at {small or 'whole images'}"
    t_large = context.step_seconds({**options, "crop": large})
    per_pixel = max(t_large - t_small, 0.0) / (pixels(large) - pixels(small))
    fixed = max(t_small - per_pixel * pixels(small), 0.0)
    estimate = {c: fixed + per_pixel * pixels(c) for c in candidates}
    estimate[small], estimate[large] = t_small, t_large
    between = ", ".join(f"{c}: {estimate[c]:.2f} s" for c in candidates if c not in (small, large))
    text = (
        f"measured {t_small:.2f} s per step at {small or 'whole images'} and {t_large:.2f} s at "
        f"{large or 'whole images'} (a fixed {fixed:.2f} s plus {per_pixel * 1e6:.2f} µs per pixel"
        + (f"; {between}" if between else "")
        + ")"
    )
    return estimate, text


def default_budget(
    fp: Fingerprint, context: PlanContext, area_scale: float, batch: int, step_pixels: float, step_seconds: float
) -> tuple[float, str]:
    """The budget in whole minutes when none is given, and why: ``DATA_PASSES`` passes over the training pixels
    (``area_scale``: the training scale squared) at ``step_pixels`` per image and ``step_seconds`` per step of
    the largest candidate crop, within ``[TARGET_STEPS, MAX_DEFAULT_STEPS]`` steps and ``MAX_DEFAULT_MINUTES``."""
    image_pixels = fp.sizes["height"]["median"] * fp.sizes["width"]["median"] * area_scale
    passes = DATA_PASSES * fp.images * image_pixels / (batch * step_pixels)
    steps = int(min(max(passes, TARGET_STEPS), MAX_DEFAULT_STEPS))
    seconds = steps * step_seconds / TRAIN_SHARE + context.spent_seconds
    cap = MAX_DEFAULT_MINUTES.get(context.accelerator, MAX_DEFAULT_MINUTES["cpu"])
    minutes = float(min(max(math.ceil(seconds / 60), 1), cap))
    why = (
        f"no --max-minutes: {steps} steps ({DATA_PASSES} passes over {fp.images} images, at least {TARGET_STEPS}, "
        f"at most {MAX_DEFAULT_STEPS}) at {step_seconds:.2f} s each on the {context.accelerator.upper()}"
    )
    return minutes, why + (f", capped at {cap:g} min" if minutes == cap else "")


# -- the plan --------------------------------------------------------------------------------------------------
def make_plan(fp: Fingerprint, context: PlanContext | None = None) -> Plan:
    """Apply every rule to ``fp``; options in ``context.fixed`` are not planned (their values are used as given).

    Returns:
        The :class:`Plan`: its ``options()`` are TrainConfig values, each choice with the fact that decided it.
    """
    context = context or PlanContext()
    group = symmetry_group(fp)[0]
    choices: list[Choice] = []
    for rule in (symmetry_rule, offset_rule, resolution_rule, loss_rule, model_rule):
        choices += rule(fp, context)
    choices = _merge_model_options(choices)
    chosen = {c.option: c.value for c in choices}
    sizes, steps = size_rule(fp, context, {**chosen, **context.fixed})
    choices += intensity_rule(fp, context, group, steps) + sizes
    choices += [Choice("tta", SYMMETRY_TTA[group], f"test-time augmentation of the symmetry group {group}")]
    kept = [c for c in choices if c.option not in context.fixed]
    summary = budget_summary(context, {**chosen, **context.fixed}, sizes, steps)
    return Plan(kept, group, fp.mask_offset, summary, steps)


def budget_summary(context: PlanContext, options: Mapping[str, Any], sizes: list[Choice], steps: int) -> str:
    """One sentence on where the budget goes: planning, optimiser steps, epochs and validation."""
    planned = {c.option: c.value for c in sizes}
    batch = int(options["batch_size"])
    epoch_steps = max(1, int(planned["samples_per_epoch"]) // batch)
    split = (
        f"about {steps} optimiser steps in epochs of {epoch_steps} steps (batch {batch}); an epoch ends with a "
        "validation pass only while validation stays under a tenth of the training time (always after the first "
        "and the last), and the last seconds go to the final validation and the export"
    )
    minutes = planned.get("max_minutes", context.budget_minutes)
    if minutes is None:
        return f"no time limit: {split}"
    return (
        f"{minutes:g} min, of which {context.spent_seconds:.0f} s went to the fingerprint and the "
        f"step measurement; {split}"
    )


def _merge_model_options(choices: list[Choice]) -> list[Choice]:
    """One ``model_options`` choice: the model rule's decoder widths plus the resolution rule's stem."""
    parts = [c for c in choices if c.option == "model_options"]
    if len(parts) < 2:
        return choices
    merged = Choice(
        "model_options", {k: v for c in parts for k, v in c.value.items()}, "; ".join(c.reason for c in parts)
    )
    return [c for c in choices if c.option != "model_options"] + [merged]


def plan_for_data(
    data: str,
    *,
    split: str | None = "train",
    files: str | list[str] | None = None,
    data_format: str | None = None,
    data_options: Mapping[str, Any] | None = None,
    max_minutes: float | None = None,
    accelerator: str = "auto",
    fixed: Mapping[str, Any] | None = None,
    measure: bool = True,
    progress: bool | None = None,
) -> tuple[Fingerprint, Plan]:
    """Fingerprint a data set's training split, measure step times on this machine, and plan.

    Args:
        data, split, files, data_format, data_options: the training data, as TrainConfig names them.
        max_minutes: the training budget (None: plan ``TARGET_STEPS`` steps).
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"`` (a GPU when torch sees one).
        fixed: options the user set (kept, not planned; the step time is measured with them).
        measure: time candidate steps (a few seconds each); False: plan without timings (the largest crop).
        progress: progress bar while fingerprinting (None: for large data sets).

    Returns:
        ``(fingerprint, plan)``.
    """
    start = time.perf_counter()
    fp = compute_fingerprint(
        data, split, files=files, format=data_format, layout_options=data_options, progress=progress
    )
    gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    height, width = fp.sizes["height"]["median"], fp.sizes["width"]["median"]

    def step_seconds(options: dict[str, Any]) -> float:
        scale = float(options.get("scale", 1.0))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        began = time.perf_counter()
        seconds = measure_step(options, fp.channels, fp.num_classes, size, "cuda" if gpu else "cpu")
        context.spent_seconds += time.perf_counter() - began  # the measurement's own cost leaves the budget
        return seconds

    context = PlanContext(
        budget_minutes=max_minutes,
        accelerator="gpu" if gpu else "cpu",
        fixed=dict(fixed or {}),
        step_seconds=step_seconds if measure else None,
        cached_weights=imagenet_weights_cached,
        spent_seconds=time.perf_counter() - start,
    )
    return fp, make_plan(fp, context)


def plan_config(config: TrainConfig, given: Collection[str] = ()) -> tuple[TrainConfig, Plan, dict[str, str]]:
    """``config`` with the plan's options for its data, except the ``given`` ones (the user's: kept as they are).

    Plans for ``config``'s training split and budget (``max_minutes``; None: the plan picks one) on the device
    ``config.accelerator`` selects. Every process of a distributed run plans for itself, so there the step time
    is not measured (only a plan without timings is the same in all of them).

    Returns:
        ``(config, plan, artifacts)``: the planned config (validated), the :class:`Plan`, and the run's
        ``fingerprint.json``, ``plan.md`` and ``plan.json`` texts (for :func:`~pixelwise.training.run.train`).
    """
    fixed = {key: getattr(config, key) for key in given if hasattr(config, key)}
    gpu = config.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    distributed = config.devices not in (1, "1") or config.num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    fingerprint, plan = plan_for_data(
        config.data,
        split=config.train_split,
        files=config.train_files,
        data_format=config.data_format,
        data_options=config.data_options,
        max_minutes=config.max_minutes,
        accelerator="gpu" if gpu else "cpu",
        fixed=fixed,
        measure=not distributed,
        progress=config.progress,
    )
    artifacts = {
        "fingerprint.json": json.dumps(fingerprint.to_dict(), indent=2) + "\n",
        "plan.md": plan.to_markdown(),
        "plan.json": plan.to_json() + "\n",
    }
    # replace, not resolve: a planned None (crop: whole images) must not fall back to the default
    planned = dataclasses.replace(config, **{k: v for k, v in plan.options().items() if k not in fixed})
    return planned.validate(), plan, artifacts


def imagenet_weights_cached(encoder: str, cache_dir: str | None = None) -> bool:
    """True when timm's ImageNet weights of ``encoder`` are in the local Hugging Face cache (nothing is downloaded;
    ``cache_dir``: another cache than the default one)."""
    config = timm.models.get_pretrained_cfg(str(encoder).removeprefix("tu-"))
    hub = getattr(config, "hf_hub_id", None) if config is not None else None
    if not hub:
        return False
    names = ("model.safetensors", "pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(hub, name, cache_dir=cache_dir), str) for name in names)
