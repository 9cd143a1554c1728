"""Test-time augmentation stored with a model: ``TrainConfig.tta`` → ``preprocessing.json`` → Predictor, evaluate,
predict.

Expected probabilities are computed here from the network's own forward pass and the stored normalisation:
the mean over the four flips of ``softmax(net(flip((x - mean) / std)))``, each flipped back.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise
from fingerprints import fingerprint
from pixelwise.bundle import PREPROCESSING_NAME, ModelBundle
from pixelwise.cli import main
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError, WeightsError
from pixelwise.inference import Predictor
from pixelwise.inference.loaded import load_model
from pixelwise.training.config import TrainConfig
from pixelwise.training.plan import make_plan
from pixelwise.training.run import train
from settings import TINY_TRAIN

FLIPS = [(), (-1,), (-2,), (-2, -1)]
"""The four flips of ``tta="flips"`` as dimensions to flip (each is its own inverse)."""
UINT8_MAX = 255.0
FLOAT16_TOLERANCE = 2e-3
"""``--save-probs`` writes float16: about 3 significant digits."""


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=4, n_val=2, size=48, seed=3)


@pytest.fixture(scope="module")
def run_dir(cells, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train(TrainConfig(data=str(cells), runs_dir=str(runs), name="stored", tta="flips", **TINY_TRAIN)).run_dir


@pytest.fixture(scope="module")
def image(cells) -> np.ndarray:
    return np.asarray(Image.open(sorted((cells / "val" / "images").glob("*.png"))[0]))


def expected_probabilities(model_dir, image: np.ndarray, flips) -> np.ndarray:
    """The mean over ``flips`` of the network's softmax on the normalised, flipped image, flipped back."""
    facts = json.loads((model_dir / PREPROCESSING_NAME).read_text())
    assert facts["mask_offset"] == [0.0, 0.0] and facts["scale"] == 1.0  # no shift or resize to reproduce
    net = pixelwise.from_pretrained(model_dir).eval()
    shape = (1, -1, 1, 1)
    x = torch.from_numpy(image.astype(np.float32) / UINT8_MAX)[None, None]
    x = (x - torch.tensor(facts["mean"]).view(shape)) / torch.tensor(facts["std"]).view(shape)
    outputs = []
    with torch.no_grad():
        for dims in flips:
            probabilities = net(x.flip(dims) if dims else x).softmax(1)
            outputs.append(probabilities.flip(dims) if dims else probabilities)
    return torch.stack(outputs).mean(0)[0].numpy()


def test_the_run_stores_its_tta_and_the_predictor_uses_it(run_dir, image):
    model_dir = run_dir / "model"
    assert json.loads((model_dir / PREPROCESSING_NAME).read_text())["tta"] == "flips"
    assert load_model(run_dir).tta == "flips" and ModelBundle.load(run_dir).preprocessing.tta == "flips"
    flipped, plain = expected_probabilities(model_dir, image, FLIPS), expected_probabilities(model_dir, image, [()])
    assert np.abs(flipped - plain).max() > 1e-4  # the tiny network is not flip-invariant: the test can tell them apart
    stored = Predictor(model_dir)
    assert stored.tta == "flips"
    scores = stored.predict(image)
    np.testing.assert_allclose(scores, flipped, atol=1e-5)
    np.testing.assert_array_equal(Predictor(model_dir, tta="flips").predict(image), scores)
    off = Predictor(model_dir, tta="none")
    assert off.tta is None
    np.testing.assert_allclose(off.predict(image), plain, atol=1e-5)
    np.testing.assert_allclose(
        Predictor(run_dir, tta="hflip").predict(image), expected_probabilities(model_dir, image, FLIPS[:2]), atol=1e-5
    )


def test_old_folders_load_and_bad_values_name_the_file(run_dir, image, tmp_path):
    folder = tmp_path / "old"
    ModelBundle.load(run_dir).save(folder)
    path = folder / PREPROCESSING_NAME
    facts = json.loads(path.read_text())
    del facts["tta"]  # written before the key existed
    path.write_text(json.dumps(facts))
    assert ModelBundle.load(folder).preprocessing.tta is None and load_model(folder).tta is None
    np.testing.assert_allclose(Predictor(folder).predict(image), expected_probabilities(folder, image, [()]), atol=1e-5)
    for bad in ("flipz", 3):
        path.write_text(json.dumps(facts | {"tta": bad}))
        with pytest.raises(
            WeightsError, match=rf"preprocessing\.json.*'tta' must be null or one of .*'d4', got {bad!r}"
        ):
            load_model(folder)


def test_the_config_checks_the_name():
    with pytest.raises(ConfigError, match=r"unknown tta option 'flipz'; did you mean 'hflip', 'flips'\?"):
        TrainConfig(data="d", tta="flipz").validate()
    assert TrainConfig(data="d", tta="d4").validate().tta == "d4"
    with pytest.raises(ConfigError, match="unknown tta mode 'D4'"):
        Predictor(torch.nn.Conv2d(1, 2, 1), tta="D4")


def test_the_plan_passes_its_tta_to_the_config():
    assert make_plan(fingerprint()).options()["tta"] == "d4"
    assert make_plan(fingerprint(vertical=0.8, transpose=0.5, horizontal=0.05)).options()["tta"] == "hflip"


def test_evaluate_and_predict_use_the_stored_tta_unless_told_none(run_dir, cells, image, tmp_path, capsys):
    model_dir = run_dir / "model"
    name = sorted((cells / "val" / "images").glob("*.png"))[0].stem
    for flag, flips, used in (([], FLIPS, "flips"), (["--tta", "none"], [()], "none")):
        out = tmp_path / f"pred-{used}"
        argv = ["predict", str(cells / "val" / "images"), "--model", str(run_dir), "--out", str(out)]
        assert main([*argv, "--save-probs", "--no-progress", *flag]) == 0
        stored_note = "test-time augmentation: flips (stored with the model)" in capsys.readouterr().out
        assert stored_note == (used == "flips")
        saved = np.load(out / f"{name}_probs.npy").astype(np.float32)
        np.testing.assert_allclose(saved, expected_probabilities(model_dir, image, flips), atol=FLOAT16_TOLERANCE)
        evaluated = tmp_path / f"eval-{used}"
        argv = ["evaluate", "--checkpoint", str(run_dir), "--data", str(cells), "--out", str(evaluated), *flag]
        assert main([*argv, "--gallery", "0", "--no-progress"]) == 0
        assert ("test-time augmentation: flips (stored" in capsys.readouterr().out) == (used == "flips")
        assert json.loads((evaluated / "metrics.json").read_text())["tta"] == used
        assert ("test-time augmentation: flips" in (evaluated / "report.html").read_text()) == (used == "flips")
