"""pixelwise.fit on arrays (Keras' model.fit), its array conversion, the Keras Precision/Recall, and the example."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pixelwise
from pixelwise.errors import ConfigError, ShapeError
from pixelwise.metrics.keras import Precision, Recall
from pixelwise.training.arrays import ArrayDataset, as_images, as_masks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "keras_style.py"
TINY = ["--train", "4", "--val", "2", "--size", "48", "--epochs", "2", "--batch-size", "2", "--encoder-depth", "3"]


def load_example():
    spec = importlib.util.spec_from_file_location("keras_style", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_and_leaves_a_cli_run_directory(tmp_path, capsys):
    result = load_example().main([*TINY, "--runs-dir", str(tmp_path), "--name", "keras"])
    history = result.history
    for key in ("loss", "val_loss", "iou_score", "val_iou_score", "f1-score", "val_f1-score", "val_miou"):
        assert len(history[key]) == 2, key
        assert all(np.isfinite(history[key])), key
    assert 0 <= min(history["val_iou_score"]) <= max(history["val_iou_score"]) <= 1
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "last.ckpt", "best.ckpt", "metrics.csv", "curves.png", "model", "data"} <= names
    loaded = pixelwise.from_pretrained(result.model_dir)
    assert (loaded.in_channels, loaded.classes) == (1, 3)
    probabilities = pixelwise.Predictor(result.model_dir).predict(np.zeros((37, 53, 1), np.uint8))
    assert probabilities.shape == (3, 37, 53)
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-5)
    assert "probabilities (2, 48, 48, 3)" in capsys.readouterr().out


def test_fit_loads_the_best_weights_into_the_model_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (4, 32, 32))
    model = pixelwise.Unet("resnet18", classes=1, encoder_weights=None, encoder_depth=3, decoder_channels=[16, 8, 8])
    result = pixelwise.fit(model, x, y, epochs=1, batch_size=2, runs_dir=str(tmp_path), name="b", progress=False)
    saved = load_file(result.model_dir / "model.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    assert set(result.history) >= {"loss", "val_loss"} and len(result.history["loss"]) == 1
    with pytest.raises(ConfigError, match="already holds a run"):
        pixelwise.fit(model, x, y, epochs=1, runs_dir=str(tmp_path), name="b", progress=False)
    again = pixelwise.fit(model, x, y, epochs=2, batch_size=2, runs_dir=str(tmp_path), name="b", resume=True)
    assert len(again.history["loss"]) == 2


def test_layouts_and_one_hot_give_the_same_items():
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    ids = rng.integers(0, 4, (3, 10, 12))
    one_hot = np.eye(4, dtype=np.float32)[ids]
    a = ArrayDataset.from_arrays(nhwc, ids, in_channels=3, classes=4)
    b = ArrayDataset.from_arrays(torch.from_numpy(nhwc).permute(0, 3, 1, 2), one_hot, in_channels=3, classes=4)
    expected = torch.from_numpy(nhwc[1].transpose(2, 0, 1).astype(np.float32) / 255)
    for dataset in (a, b):
        torch.testing.assert_close(dataset[1]["image"], expected)
        assert torch.equal(dataset[1]["mask"], torch.from_numpy(ids[1]).long())
    empty = one_hot.copy()
    empty[0, 0, 0] = 0
    assert as_masks(empty, 4, 3, (10, 12), ignore_index=255)[0, 0, 0] == 255
    gray = as_images(np.ones((2, 5, 6), np.float64), in_channels=1)
    assert gray.shape == (2, 1, 5, 6) and gray.dtype == np.float32


def test_bad_arrays_are_named():
    x = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ShapeError, match=r"y has shape \[2, 8, 8\] but the 3 images"):
        ArrayDataset.from_arrays(x, np.zeros((2, 8, 8), int), in_channels=3, classes=2)
    with pytest.raises(ConfigError, match=r"values \[5\] outside the class ids 0..2"):
        ArrayDataset.from_arrays(x, np.full((3, 8, 8), 5), in_channels=3, classes=3)
    with pytest.raises(ConfigError, match="channels_last=True"):
        as_images(np.zeros((2, 3, 8, 3), np.uint8), in_channels=3)
    assert as_images(np.zeros((2, 3, 8, 3), np.uint8), in_channels=3, channels_last=False).shape == (2, 3, 8, 3)
    with pytest.raises(ShapeError, match="neither axis 1 nor axis 3"):
        as_images(np.zeros((2, 4, 8, 4), np.uint8), in_channels=3)
    with pytest.raises(ConfigError, match="several classes"):
        as_masks(np.ones((1, 2, 2, 3)), 3, 1, (2, 2))
    with pytest.raises(ConfigError, match="masks"):
        pixelwise.fit(pixelwise.Unet("resnet18", encoder_weights=None), x, None, runs_dir="/nonexistent", name="n")


def test_precision_and_recall_follow_the_keras_formulas():
    rng = np.random.default_rng(2)
    preds = rng.random((2, 3, 6, 6)).astype(np.float32)
    target = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (2, 6, 6))].transpose(0, 3, 1, 2)
    binary = (preds > 0.5).astype(np.float32)
    tp = (binary * target).sum((0, 2, 3))
    smooth = 1e-5
    precision = np.mean((tp + smooth) / (binary.sum((0, 2, 3)) + smooth))
    recall = np.mean((tp + smooth) / (target.sum((0, 2, 3)) + smooth))
    p, t = torch.from_numpy(preds), torch.from_numpy(target)
    assert Precision()(p, t).item() == pytest.approx(precision, rel=1e-6)
    assert Recall()(p, t).item() == pytest.approx(recall, rel=1e-6)
    assert (Precision().name, Recall().name) == ("precision", "recall")


def test_predict_arrays_gives_the_predictors_result_for_every_image_of_a_stack(tmp_path):
    """``pixelwise.predict_arrays`` on NHWC uint8 and on NCHW float stacks equals the Predictor image by image."""
    model = pixelwise.create_model(
        "unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 8], classes=3
    )
    saved = model.eval().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    probs = pixelwise.predict_arrays(saved, nhwc)
    predictor = pixelwise.Predictor(saved)
    assert probs.shape == (2, 3, 40, 56)
    for image, got in zip(nhwc, probs, strict=True):
        np.testing.assert_allclose(got, predictor.predict(image), atol=1e-6)
    nchw = torch.from_numpy(np.moveaxis(nhwc, -1, 1).astype(np.float32) / 255)
    np.testing.assert_allclose(pixelwise.predict_arrays(predictor, nchw), probs, atol=1e-5)
    labels = pixelwise.predict_arrays(predictor, nhwc, labels=True)
    np.testing.assert_array_equal(labels, probs.argmax(1))
