"""The instance targets in training and evaluation: config options and flags, per-crop targets and weight
maps, boundary-target runs, and ``pixelwise evaluate --instances``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import build_parser, main
from pixelwise.data import SegmentationFolder, read_instances
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError
from pixelwise.instances import TargetOptions
from pixelwise.training.config import TrainConfig, resolve
from pixelwise.training.data import InstanceTargets, SegmentationDataModule
from pixelwise.training.run import train
from settings import TINY_TRAIN

TINY = TINY_TRAIN | {"epochs": 1}


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=4, n_val=2, size=64, seed=0)


def test_config_flags_alias_and_validation(tmp_path):
    args = build_parser().parse_args(
        ["train", "--loss-weight-map", "unet", "--target", "boundary", "--boundary-width", "3", "--separation-gap", "2"]
    )
    assert (args.loss_weight_map, args.target, args.boundary_width, args.separation_gap) == ("unet", "boundary", 3, 2)
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nweight_map: unet\n")  # the older key
    assert resolve(str(path)).loss_weight_map == "unet"
    assert resolve(None, {"data": "d", "loss_weight_map": "none"}).loss_weight_map is None
    for override, message in [
        ({"loss_weight_map": "unett"}, "did you mean 'unet'"),
        ({"target": "boundry"}, "did you mean 'boundary'"),
        ({"target": "boundary", "classes": 2}, "predicts 3 classes"),
        ({"target": "boundary", "mode": "binary"}, "mode=multiclass"),
        ({"target": "boundary", "class_weights": "median"}, "three weights"),
        ({"separation_gap": -1}, "separation_gap=-1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve(None, {"data": "d", **override})


def test_weight_map_needs_a_per_pixel_loss(cells, tmp_path):
    config = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", loss="dice", loss_weight_map="unet", **TINY)
    with pytest.raises(ConfigError, match="needs a per-pixel loss"):
        train(config)


@pytest.fixture
def touching(tmp_path) -> Path:
    """One 8×12 image: two touching 6×5 objects (columns 0-4 and 5-9) of class 1; columns 10, 11 background."""
    instances = np.zeros((8, 12), np.uint16)
    instances[1:7, 0:5], instances[1:7, 5:10] = 1, 2
    for folder, array in (("images", np.full((8, 12), 100, np.uint8)), ("masks", (instances > 0).astype(np.uint8))):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "a.png")
    (tmp_path / "instances").mkdir()
    Image.fromarray(instances).save(tmp_path / "instances" / "a.png")
    return tmp_path


def test_unet_targets_cut_the_gap_and_weight_it_by_hand(touching):
    data = InstanceTargets(
        SegmentationFolder(touching, num_classes=2, instances=True), TargetOptions(weight_map="unet")
    )
    item = data[0]
    assert "instances" not in item
    mask, weights = item["mask"].numpy(), item["weight_map"].numpy()
    expected = np.zeros((8, 12), np.int64)
    expected[1:7, 0:4], expected[1:7, 6:10] = 1, 1  # a gap of 1 pixel cut from each side: columns 4 and 5
    np.testing.assert_array_equal(mask, expected)
    fg = 6 * 8
    w_bg, w_fg = 96 / (2 * (96 - fg)), 96 / (2 * fg)
    # column 4: 1 px from object 1 (column 3), 2 px from object 2 (column 6)
    assert weights[3, 4] == pytest.approx(w_bg + 10 * math.exp(-((1 + 2) ** 2) / (2 * 5**2)), rel=1e-6)
    assert weights[3, 2] == pytest.approx(w_fg)


def test_boundary_targets_from_instances_or_from_the_mask(touching):
    options = TargetOptions(target="boundary", boundary_width=1)
    with_instances = InstanceTargets(SegmentationFolder(touching, num_classes=2, instances=True), options)[0]["mask"]
    expected = np.zeros((8, 12), np.int64)
    expected[2:6, 1:4], expected[2:6, 6:9] = 1, 1
    expected[1:7, 0:10][expected[1:7, 0:10] == 0] = 2
    expected[2:6, 0] = 1  # the image edge is no boundary
    np.testing.assert_array_equal(with_instances.numpy(), expected)
    # without instance labels the two touching objects are one component: no boundary between them
    from_mask = InstanceTargets(SegmentationFolder(touching, num_classes=2), options)[0]["mask"].numpy()
    assert from_mask[3, 4] == from_mask[3, 5] == 1


def test_datamodule_batches_carry_weight_maps(cells):
    config = TrainConfig(data=str(cells), loss_weight_map="unet", **TINY).validate().to_dict()
    module = SegmentationDataModule(config, num_classes=2)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch["weight_map"].shape == batch["mask"].shape == (4, 64, 64)
    assert batch["weight_map"].min() > 0 and batch["weight_map"].max() > 3  # gaps between touching cells


def test_train_and_evaluate_instances_end_to_end(cells, tmp_path, capsys):
    runs = tmp_path / "runs"
    train(TrainConfig(data=str(cells), runs_dir=str(runs), name="unet", loss_weight_map="unet", **TINY))
    train(TrainConfig(data=str(cells), runs_dir=str(runs), name="bnd", target="boundary", **TINY))
    facts = json.loads((runs / "bnd" / "model" / "preprocessing.json").read_text())
    assert (facts["target"], facts["separation_gap"]) == ("boundary", 0)
    assert yaml.safe_load((runs / "bnd" / "model" / "classes.yaml").read_text())["classes"][2]["name"] == "boundary"
    assert json.loads((runs / "unet" / "model" / "preprocessing.json").read_text())["separation_gap"] == 1
    for name, method in (("unet", "components"), ("bnd", "watershed")):
        out = tmp_path / f"eval-{name}"
        argv = ["evaluate", "--checkpoint", str(runs / name), "--data", str(cells), "--out", str(out), "--instances"]
        assert main([*argv, "--gallery", "1"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        found = metrics["instances"]
        assert found["method"] == method and found["images"] == 2
        true_objects = sum(int(read_instances(p).max()) for p in (cells / "val" / "instances").glob("*.png"))
        assert found["n_true"] == true_objects > 0  # scored against the instances/ folder
        for key in ("precision", "recall", "f1", "dsb_score", "pq", "sq", "rq"):
            assert found[key] is None or 0 <= found[key] <= 1
        assert metrics["class_names"] == ["background", "cell"]
        assert "Instance metrics" in (out / "report.html").read_text()
        assert f"instances ({method})" in capsys.readouterr().out
    out = tmp_path / "predicted"
    images = str(cells / "val" / "images")
    argv = ["predict", images, "--model", str(runs / "bnd"), "--out", str(out), "--tile", "0", "--no-progress"]
    assert main([*argv, "--instances", "--overlay"]) == 0
    labels = read_instances(out / "0000_instances.png")
    document = json.loads((out / "0000_objects.json").read_text())
    assert [o["id"] for o in document["objects"]] == list(range(1, labels.max() + 1))
    assert all(o["class_name"] == "object" and o["area"] == int((labels == o["id"]).sum()) for o in document["objects"])
    assert np.asarray(Image.open(out / "0000_overlay.png")).shape == (64, 64, 3)
