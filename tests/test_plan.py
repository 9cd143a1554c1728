"""The training plan's rules on fingerprints built here: each fact moves the option it should, and only that;
user options are kept; the step-time budget picks the crop; plans of real fingerprints when the data are there."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest

from fingerprints import fingerprint
from pixelwise.data.fingerprint import compute_fingerprint
from pixelwise.training.config import TrainConfig
from pixelwise.training.plan import (
    BASE_LR,
    CROP_CANDIDATES,
    MAX_DEFAULT_MINUTES,
    MIN_STEPS,
    SYMMETRY_TOLERANCE,
    TARGET_STEPS,
    THIN_WIDTH,
    TRAIN_SHARE,
    PlanContext,
    make_plan,
)
from pixelwise.training.steptime import measure_step

DATA = Path(os.environ.get("PIXELWISE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def steps_of(seconds: dict) -> PlanContext:
    return PlanContext(budget_minutes=10, step_seconds=lambda options: seconds[options["crop"]])


def test_symmetry_group_follows_the_orientation_scores():
    assert make_plan(fingerprint()).symmetry == "d4"
    road = make_plan(fingerprint(vertical=0.8, transpose=0.5, horizontal=0.05))
    assert road.symmetry == "hflip" and road.tta == "hflip"
    assert road.options()["augment"][0] == {"name": "RandomHorizontalFlip", "p": 0.5}
    assert make_plan(fingerprint(vertical=0.8, horizontal=0.4)).symmetry == "none"
    assert make_plan(fingerprint(transpose=2 * SYMMETRY_TOLERANCE)).symmetry == "hflip"  # no 90° turns
    d4 = make_plan(fingerprint()).options()["augment"]
    assert d4[0] == "light"  # flips and 90° turns


def test_modality_decides_the_intensity_augmentation():
    grey = [t["name"] for t in make_plan(fingerprint(channels=1)).options()["augment"] if isinstance(t, dict)]
    colour = [t["name"] for t in make_plan(fingerprint(channels=3)).options()["augment"] if isinstance(t, dict)]
    assert {"RandomGamma", "RandomContrast"} <= set(grey) and "ColorJitter" not in grey
    assert "ColorJitter" in colour and "RandomGamma" not in colour


def test_thin_classes_get_the_full_resolution_stem_and_large_objects_half_resolution():
    thin = make_plan(fingerprint(widths=(40.0, THIN_WIDTH - 1))).options()
    assert thin["model_options"]["decoder_full_resolution_channels"] > 0
    assert "decoder_full_resolution_channels" not in make_plan(fingerprint()).options().get("model_options", {})
    large = make_plan(fingerprint(side=512, extents=(0.9, 0.8))).options()
    assert large["scale"] == 0.5
    assert make_plan(fingerprint(side=200, extents=(0.9, 0.8))).options()["scale"] == 1.0  # small images
    assert make_plan(fingerprint(side=512, extents=(0.2, 0.2))).options()["scale"] == 1.0  # small objects
    # halving would make class 1 under a pixel wide
    assert make_plan(fingerprint(side=512, extents=(0.9, 0.8), widths=(40.0, 1.5))).options()["scale"] == 1.0


def test_rare_or_thin_rare_classes_change_the_loss():
    assert make_plan(fingerprint()).options()["loss"] == "ce"
    rare = make_plan(fingerprint(shares=(0.9, 0.095, 0.005), widths=(40, 30, 30), extents=(0.3, 0.3, 0.3)))
    assert (rare.options()["loss"], rare.options()["class_weights"]) == ("ce+dice", "sqrt_median")
    thin_rare = make_plan(fingerprint(shares=(0.93, 0.07), widths=(40, 3)))
    assert thin_rare.options()["loss"] == "ce+dice"
    thin_common = make_plan(fingerprint(shares=(0.75, 0.25), widths=(40, 3)))
    assert thin_common.options()["loss"] == "ce" and "class_weights" not in thin_common.options()


def proportional(small_seconds: float, side: int = 512):
    """A step timer whose step time grows with the pixels per step, from ``small_seconds`` at the smallest crop
    (``side``: of the whole images, for ``crop=None``)."""
    small = CROP_CANDIDATES[-1]
    return lambda options: small_seconds * ((options["crop"] or side) / small) ** 2


def test_the_budget_and_measured_step_time_choose_the_crop():
    budget = 10 * 60 * TRAIN_SHARE
    small = CROP_CANDIDATES[-1]

    def ratio(crop):
        return (crop / small) ** 2

    def plan(small_seconds: float, side: int = 512) -> dict:
        context = PlanContext(budget_minutes=10, step_seconds=proportional(small_seconds, side))
        return make_plan(fingerprint(side=side), context).options()

    assert plan(budget / (TARGET_STEPS * ratio(CROP_CANDIDATES[0]) * 1.1))["crop"] == CROP_CANDIDATES[0]
    middle = budget / (TARGET_STEPS * ratio(CROP_CANDIDATES[1]) * 1.01)
    options = plan(middle)
    assert options["crop"] == CROP_CANDIDATES[1]
    steps = int(budget / (middle * ratio(CROP_CANDIDATES[1])))
    assert options["samples_per_epoch"] == steps // 10 * options["batch_size"]  # ten epochs per budget
    assert options["lr"] == pytest.approx(BASE_LR * math.sqrt(options["batch_size"]), rel=1e-2)
    assert options["ema_decay"] > 0 and len(options["augment"]) > 1  # thousands of steps: full augmentation
    # no candidate reaches TARGET_STEPS: the largest reaching MIN_STEPS (context over steps)
    short = plan(budget / (MIN_STEPS * ratio(CROP_CANDIDATES[1]) * 1.01))
    assert short["crop"] == CROP_CANDIDATES[1] and "ema_decay" not in short
    slow = plan(budget / 100)  # not even MIN_STEPS: the smallest crop, flips only
    assert slow["crop"] == small and slow["augment"] == ["light"]
    # whole images when they are no larger than the largest crop and all of one size
    assert plan(1e-4, side=200)["crop"] is None


def test_a_fixed_cost_per_step_is_measured_not_assumed_proportional():
    """Two measured points: a step costing a fixed 0.3 s plus its pixels makes large crops relatively cheaper."""
    small, large = CROP_CANDIDATES[-1], CROP_CANDIDATES[0]
    per_pixel = 0.1 / small**2
    seen = []

    def timer(options):
        seen.append(options["crop"])
        return 0.3 + per_pixel * options["crop"] ** 2

    budget = 10 * 60 * TRAIN_SHARE
    middle = CROP_CANDIDATES[1]
    minutes = 10 * TARGET_STEPS * (0.3 + per_pixel * middle**2) / budget * 1.01  # just enough for the middle crop
    plan = make_plan(fingerprint(side=512), PlanContext(budget_minutes=minutes, step_seconds=timer))
    assert sorted(seen) == [small, large]  # the two ends are measured, the middle interpolated
    assert plan.options()["crop"] == middle
    assert "fixed 0.30 s" in plan.choices[[c.option for c in plan.choices].index("crop")].reason


def test_without_a_budget_the_plan_picks_one_from_the_data_size_and_step_time():
    small, large = CROP_CANDIDATES[-1], CROP_CANDIDATES[0]

    def unbudgeted(images: int, small_seconds: float = 0.05) -> dict:
        fp = dataclasses.replace(fingerprint(side=512), images=images)
        context = PlanContext(budget_minutes=None, step_seconds=proportional(small_seconds))
        return make_plan(fp, context).options()

    large_seconds = 0.05 * (large / small) ** 2  # step time grows with the pixels per step
    few = unbudgeted(20)  # 20 passes over 20 images of 512² are 400 steps of 4 × 256²: the 2,500-step floor
    assert few["max_minutes"] == math.ceil(TARGET_STEPS * large_seconds / TRAIN_SHARE / 60)
    assert few["crop"] == large and few["epochs"] > 1000  # the clock ends training, not an epoch count
    some = unbudgeted(400)  # 8,000 steps
    assert some["max_minutes"] == math.ceil(20 * 400 * 512**2 / (4 * large**2) * large_seconds / TRAIN_SHARE / 60)
    assert unbudgeted(100_000, small_seconds=0.5)["max_minutes"] == MAX_DEFAULT_MINUTES["cpu"]
    given = make_plan(fingerprint(side=512), PlanContext(budget_minutes=7, step_seconds=lambda o: 0.5))
    assert "max_minutes" not in given.options()


def test_user_options_are_kept_and_planned_around():
    seen = []

    def step(options):
        seen.append((options["crop"], options["batch_size"], options["encoder"]))
        return 0.01

    context = PlanContext(budget_minutes=5, fixed={"encoder": "resnet34", "batch_size": 2}, step_seconds=step)
    plan = make_plan(fingerprint(side=512), context)
    assert "encoder" not in plan.options() and "batch_size" not in plan.options()
    assert len(seen) == 2 and all(batch == 2 and encoder == "resnet34" for _, batch, encoder in seen)
    assert plan.options()["lr"] == pytest.approx(BASE_LR * math.sqrt(2), rel=1e-2)


def test_plan_options_make_a_valid_config_and_serialise():
    plan = make_plan(fingerprint(side=512, offset=[-0.5, 0.0]), steps_of({256: 0.1, 192: 0.1, 128: 0.1}))
    config = TrainConfig(data="d", **plan.options())
    config.validate()
    assert config.mask_offset == [-0.5, 0.0]
    loaded = json.loads(plan.to_json())
    assert loaded["symmetry"] == "d4" and loaded["mask_offset"] == [-0.5, 0.0] and loaded["tta"] == "d4"
    assert set(loaded["reasons"]) >= set(loaded["options"])
    assert "| `crop` |" in plan.to_markdown() and "Budget: " in plan.to_markdown()
    assert "optimiser steps in epochs of" in loaded["budget"]


def test_step_time_is_measured_for_the_planned_model():
    options = {
        "model": "unet",
        "encoder": "resnet18",
        "batch_size": 1,
        "crop": 32,
        "model_options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    }
    assert 0 < measure_step(options, in_channels=1, classes=2, image_size=(32, 32), steps=1) < 30


@pytest.mark.skipif(not (DATA / "camvid").is_dir() or not (DATA / "isbi2012-em").is_dir(), reason="no shared data")
def test_real_fingerprints_give_the_recipes_choices():
    isbi = make_plan(compute_fingerprint(DATA / "isbi2012-em", "train", files="[01]?", progress=False))
    camvid = make_plan(compute_fingerprint(DATA / "camvid", "train", progress=False))
    assert (isbi.symmetry, camvid.symmetry) == ("d4", "hflip")
    assert isbi.options()["mask_offset"] == [-0.5, 0.0] and "mask_offset" not in camvid.options()
    assert (isbi.options()["scale"], camvid.options()["scale"]) == (1.0, 0.5)
    assert isbi.options()["loss"] == "ce" and camvid.options()["loss"] == "ce+dice"
    for plan in (isbi, camvid):
        assert plan.options()["model_options"]["decoder_full_resolution_channels"] > 0


def cli(*argv: str) -> int:
    from pixelwise.cli import main

    return main(list(argv))


@pytest.fixture
def cells(tmp_path):
    from pixelwise.data import write_synthetic

    return write_synthetic(tmp_path / "cells", "cells", n_train=4, n_val=2, size=64, seed=0)


def test_plan_command_prints_json_with_every_option(cells, capsys):
    assert cli("plan", "--data", str(cells), "--max-minutes", "2", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["symmetry"] in ("d4", "hflip", "none") and "mask_offset" in printed
    assert {"model", "encoder", "crop", "batch_size", "lr", "loss", "augment"} <= set(printed["options"])
    assert printed["options"]["crop"] is None  # 64² images: whole images
    assert "max_minutes" not in printed["options"]  # the user's budget is not planned
    assert cli("plan", "--data", str(cells), "--json") == 0  # no budget: the plan picks one and says why
    unbudgeted = json.loads(capsys.readouterr().out)
    assert unbudgeted["options"]["max_minutes"] >= 1 and "no --max-minutes" in unbudgeted["reasons"]["max_minutes"]


def test_train_without_recipe_options_follows_the_plan_and_keeps_given_ones(cells, tmp_path):
    runs = tmp_path / "runs"
    common = ["--data", str(cells), "--runs-dir", str(runs), "--max-minutes", "0.3", "--no-progress"]
    assert cli("train", *common, "--name", "planned") == 0
    run = runs / "planned"
    assert {"fingerprint.json", "plan.md", "plan.json", "config.yaml"} <= {p.name for p in run.iterdir()}
    plan = json.loads((run / "plan.json").read_text())
    saved = yaml_load(run / "config.yaml")
    for key in ("encoder", "batch_size", "lr", "loss", "crop"):
        assert saved[key] == plan["options"][key], key
    assert cli("train", *common, "--name", "kept", "--plan", "on", "--batch-size", "2") == 0
    assert yaml_load(runs / "kept" / "config.yaml")["batch_size"] == 2
    assert "batch_size" not in json.loads((runs / "kept" / "plan.json").read_text())["options"]
    assert cli("train", *common, "--name", "off", "--plan", "off", "--epochs", "1", "--crop", "32") == 0
    assert not (runs / "off" / "plan.md").exists()


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_cached_imagenet_weights_are_found_without_downloading(tmp_path):
    from pixelwise.training.plan import imagenet_weights_cached

    assert not imagenet_weights_cached("resnet18", cache_dir=str(tmp_path))
    repo = tmp_path / "models--timm--resnet18.a1_in1k"  # the Hugging Face cache layout timm downloads into
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"weights")
    assert imagenet_weights_cached("resnet18", cache_dir=str(tmp_path))
    assert not imagenet_weights_cached("resnet34", cache_dir=str(tmp_path))
    colour = PlanContext(cached_weights=lambda encoder: encoder == "resnet18")
    assert make_plan(fingerprint(channels=3), colour).options()["encoder_weights"] == "imagenet"
    assert make_plan(fingerprint(channels=1), colour).options()["encoder_weights"] is None
