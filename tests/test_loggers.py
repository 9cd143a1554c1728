"""``--logger``: Lightning's loggers under the run directory, besides the run's own metrics.csv and curves.png."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pixelwise.cli.train import add_train_arguments, overrides_from
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError
from pixelwise.training.config import TrainConfig, resolve
from pixelwise.training.loggers import build_loggers
from pixelwise.training.run import train
from settings import TINY_TRAIN

CELL_COLOURS = np.array([[0, 0, 0], [128, 0, 0]], dtype=np.uint8)
"""Background and class 1 in the Pascal VOC palette, written out independently of pixelwise."""
ALL_EVENTS = {"scalars": 0, "images": 0}
"""EventAccumulator size guidance that keeps every event (0: no limit)."""


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=8, n_val=4, size=64, seed=0)


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_and_tensorboard_write_scalars_and_prediction_images(cells, tmp_path):
    config = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", logger=["csv", "tensorboard"], **TINY_TRAIN)
    train(config)
    run = tmp_path / "r"
    own = _csv_rows(run / "metrics.csv")  # pixelwise's own records, unchanged by the loggers
    assert [int(r["epoch"]) for r in own] == [0, 1] and (run / "curves.png").is_file()

    events = EventAccumulator(str(run / "tensorboard"), size_guidance=ALL_EVENTS).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val_miou", "val_loss", "train_loss_epoch", "train_miou"} <= scalars
    # the last val_miou TensorBoard holds is the one metrics.csv recorded for the last epoch
    assert events.Scalars("val_miou")[-1].value == pytest.approx(float(own[-1]["val_miou"]), abs=1e-6)
    assert len(events.Scalars("val_miou")) == TINY_TRAIN["epochs"]
    image_tags = [t for t in events.Tags()["images"] if t.startswith("val_predictions/")]
    assert 1 <= len(image_tags) <= 4  # 4 validation images in the data; at most 4 shown
    shown = events.Images(image_tags[0])
    assert len({e.step for e in shown}) == TINY_TRAIN["epochs"]  # one image per validation pass
    # image | truth | prediction | errors side by side: four 64-pixel tiles and three 4-pixel gaps
    assert (shown[0].height, shown[0].width) == (64, 4 * 64 + 3 * 4)
    panel = np.asarray(Image.open(io.BytesIO(shown[-1].encoded_image_string)).convert("RGB"))
    image = np.asarray(Image.open(cells / "val" / "images" / "0000.png"))  # the first validation pair
    mask = np.asarray(Image.open(cells / "val" / "masks" / "0000.png"))
    assert np.array_equal(panel[:, :64], np.repeat(image[..., None], 3, axis=-1))  # gray shown as RGB
    assert np.array_equal(panel[:, 68:132], CELL_COLOURS[mask])  # truth in the class palette
    assert set(map(tuple, panel[:, 136:200].reshape(-1, 3))) <= set(map(tuple, CELL_COLOURS))  # prediction

    lightning_csv = list((run / "csv").glob("version_*/metrics.csv"))
    assert len(lightning_csv) == 1
    logged = [r for r in _csv_rows(lightning_csv[0]) if r.get("val_miou")]
    assert [float(r["val_miou"]) for r in logged] == pytest.approx([float(r["val_miou"]) for r in own], abs=1e-6)


def test_no_logger_writes_only_the_run_records(cells, tmp_path):
    train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", **{**TINY_TRAIN, "epochs": 1}))
    run = tmp_path / "r"
    assert (run / "metrics.csv").is_file() and (run / "curves.png").is_file()
    assert not (run / "tensorboard").exists() and not (run / "csv").exists() and not (run / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("tensorboard", ["tensorboard"]),
        ("csv,tensorboard", ["csv", "tensorboard"]),
        ("[csv, MLflow]", ["csv", "mlflow"]),
    ],
)
def test_logger_flag_parses(flag, expected):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    overrides = overrides_from(parser.parse_args(["--data", "d", "--logger", flag]))
    assert resolve(None, overrides).validate().logger == expected


def test_logger_in_yaml_list(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nlogger:\n  - csv\n  - tensorboard\n")
    assert resolve(str(path)).validate().logger == ["csv", "tensorboard"]


def test_unknown_logger_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"logger.*'tensorbord'.*did you mean 'tensorboard'"):
        TrainConfig(data="d", logger="csv,tensorbord").validate()


@pytest.mark.parametrize(
    ("name", "modules", "package"),
    [
        ("mlflow", ["mlflow"], "pip install mlflow"),
        ("wandb", ["wandb"], "pip install wandb"),
        ("tensorboard", ["tensorboard", "tensorboardX"], "pip install 'pixelwise[loggers]'"),
    ],
)
def test_missing_logger_package_names_the_install(monkeypatch, tmp_path, name, modules, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails, as if not installed
    config = TrainConfig(data="d", logger=["csv", name]).validate()
    with pytest.raises(ConfigError, match=rf"logger='{name}'.*{modules[0]}.*{package}".replace("[", r"\[")):
        build_loggers(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_package_leaves_no_run_directory(cells, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    config = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", logger="mlflow", **TINY_TRAIN)
    with pytest.raises(ConfigError, match="pip install mlflow"):
        train(config)
    assert not (tmp_path / "r").exists()


def test_class_labels_of_logits():
    from pixelwise.training.loggers import class_labels

    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 3.0]]]])  # [1, 2, 1, 2]: class 0 then class 1
    assert class_labels(logits, "multiclass").tolist() == [[[0, 1]]]
    assert class_labels(logits[:, :1], "binary").tolist() == [[[1, 0]]]
