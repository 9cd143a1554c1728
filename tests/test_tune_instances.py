"""``pixelwise tune-instances``: the tuned post-processing scores at least the default's, equals the metric recomputed
independently, is stored with the model, and is what ``predict --instances`` / ``evaluate --instances`` use unless
explicit options are given; bad inputs give clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.bundle import save_instance_options
from pixelwise.cli import main
from pixelwise.data import read_instances
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError, DataError, WeightsError
from pixelwise.evaluate import evaluate
from pixelwise.inference import Predictor
from pixelwise.instances import average_precision_dataset, instance_metrics, to_instances, tune_instances
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train
from settings import TINY_TRAIN

HUGE = 10**6
"""A minimum object size no 64 × 64 image can reach: every object vanishes."""


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=4, n_val=2, size=64, seed=0)


@pytest.fixture(scope="module")
def run(cells, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    train(TrainConfig(data=str(cells), runs_dir=str(runs), name="cells", **TINY_TRAIN))
    return runs / "cells"


def _val_probs_and_truths(run: Path, cells: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The validation probabilities, predicted here by the Predictor, and the true instance files, read here."""
    predictor = Predictor(run)
    names = sorted((cells / "val" / "images").glob("*.png"))
    # tensors are [C, H, W]; 8-bit gray scaled to [0, 1] as the data reader does
    probs = [predictor.predict(torch.from_numpy(np.asarray(Image.open(p), np.float32) / 255)[None]) for p in names]
    return probs, [read_instances(cells / "val" / "instances" / path.name) for path in names]


def _preprocessing(run: Path) -> dict:
    return json.loads((run / "model" / "preprocessing.json").read_text())


def test_tuned_score_beats_the_default_and_equals_the_metric_recomputed(run, cells):
    result = tune_instances(run, cells, "val", save=False, progress=False)
    assert result.best_score >= result.default_score
    assert result.best_score == max(row["score"] for row in result.table) == result.table[0]["score"]
    assert len(result.table) > 100 and result.images == 2 and result.saved is None
    assert _preprocessing(run).get("instance_options") is None  # save=False stores nothing
    probs, trues = _val_probs_and_truths(run, cells)
    for options, score in ((result.best, result.best_score), (result.default, result.default_score)):
        preds = [to_instances(p, **options) for p in probs]
        expected = float(np.mean(average_precision_dataset(trues, preds)["ap"]))  # mean AP over IoU 0.5:0.95
        assert score == pytest.approx(expected, abs=1e-12)
    assert result.default == {
        "method": "components",
        "markers": "auto",
        "threshold": None,
        "marker_threshold": 0.5,
        "h": 2.0,
        "min_size": 10,
    }


def test_f1_objective_equals_the_mean_f1_per_image(run, cells):
    result = tune_instances(run, cells, "val", objective="f1", refine=False, save=False, progress=False)
    probs, trues = _val_probs_and_truths(run, cells)
    f1 = [instance_metrics(to_instances(p, **result.best), t)["f1"] for p, t in zip(probs, trues, strict=True)]
    assert result.best_score == pytest.approx(np.mean([v for v in f1 if not math.isnan(v)]), abs=1e-12)
    assert result.best_score >= result.default_score


def test_stored_options_are_used_by_predict_and_evaluate_unless_given(run, cells, tmp_path, capsys):
    assert main(["tune-instances", str(run), "--data", str(cells), "--no-progress", "--no-refine"]) == 0
    printed = capsys.readouterr().out
    assert "default" in printed and "best" in printed and "mAP@0.5:0.95" in printed
    stored = _preprocessing(run)
    assert stored["instance_tuning"]["objective"] == "ap" and stored["instance_tuning"]["split"] == "val"
    assert stored["mean"] and set(stored["instance_options"]) == {
        "method",
        "markers",
        "threshold",
        "marker_threshold",
        "h",
        "min_size",
    }

    save_instance_options(run, {"method": "components", "threshold": 0.3, "min_size": HUGE})
    images = str(cells / "val" / "images")

    def objects(*options: str) -> int:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        argv = ["predict", images, "--model", str(run), "--out", str(out), "--tile", "0", "--no-progress"]
        assert main([*argv, "--instances", *options]) == 0
        return sum(len(json.loads(p.read_text())["objects"]) for p in out.glob("*_objects.json"))

    assert objects() == 0  # the stored minimum size removes everything
    assert objects("--min-size", "0") > 0  # an explicit option wins
    probs, _ = _val_probs_and_truths(run, cells)
    expected = sum(int(to_instances(p, threshold=0.3, min_size=0).max()) for p in probs)  # stored threshold kept
    assert objects("--min-size", "0") == expected

    kept = evaluate(run, cells, "val", out_dir=tmp_path / "e1", instances=True, progress=False, gallery_size=0)
    assert kept.instances["n_pred"] == 0 and kept.instances["options"]["min_size"] == HUGE
    given = evaluate(
        run, cells, "val", out_dir=tmp_path / "e2", instances=True, progress=False, gallery_size=0,
        instance_options={"min_size": 0},
    )  # fmt: skip
    assert given.instances["n_pred"] == expected and given.instances["options"]["threshold"] == 0.3
    save_instance_options(run, None)  # removed again: the defaults
    assert _preprocessing(run)["instance_options"] is None


def test_bad_inputs_are_named(run, cells, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"objective option 'apx'; did you mean 'ap'"):
        tune_instances(run, cells, objective="apx")
    with pytest.raises(ConfigError, match=r"not '.*model\.onnx'"):
        tune_instances(tmp_path / "model.onnx", cells)
    with pytest.raises(DataError, match="no split 'nope'"):
        tune_instances(run, cells, "nope", progress=False)
    empty = write_synthetic(tmp_path / "empty", "cells", n_train=1, n_val=1, size=64, seed=1)
    for folder in ("masks", "instances"):
        for path in (empty / "val" / folder).glob("*.png"):
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with pytest.raises(ConfigError, match="has no objects"):
        tune_instances(run, empty, "val", progress=False)
    with pytest.raises(WeightsError, match="unknown key 'min_siz'"):
        save_instance_options(run, {"min_siz": 3})
    with pytest.raises(WeightsError, match=r"'instance_options.threshold' must be a probability in \[0, 1\], got 2"):
        save_instance_options(run, {"threshold": 2})
    model = run / "model" / "preprocessing.json"
    model.write_text(json.dumps(_preprocessing(run) | {"instance_options": {"min_size": -1}}))
    argv = ["predict", str(cells / "val" / "images"), "--model", str(run), "--out", str(tmp_path / "p"), "--tile", "0"]
    assert main([*argv, "--instances", "--no-progress"]) == 2
    assert "'instance_options.min_size' must be an integer >= 0, got -1" in capsys.readouterr().err
    model.write_text(json.dumps(_preprocessing(run) | {"instance_options": None}))
    assert main([*argv, "--instances", "--instance-threshold", "1.5"]) == 2
    assert "--instance-threshold 1.5 is not a probability" in capsys.readouterr().err
    assert main(["tune-instances", str(tmp_path / "model.onnx"), "--data", str(cells), "--no-progress"]) == 2
    assert "needs a run directory or model folder" in capsys.readouterr().err
