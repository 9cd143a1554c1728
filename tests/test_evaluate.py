"""``evaluate`` runs on the Predictor: tiled like ``predict``, scoring exactly what ``predict`` writes.

The confusion matrices here are counted independently of pixelwise's metrics (``np.bincount`` over the
label PNGs ``pixelwise predict`` writes and the data's masks).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise
from pixelwise.cli import main
from pixelwise.data.synthetic import write_synthetic
from pixelwise.evaluate import EvaluationResult, evaluate
from pixelwise.inference import TilingOptions
from pixelwise.models import UNet2015

PREPROCESSING = {"mean": [0.5], "std": [0.25], "scale": 1.0}


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=1, n_val=3, size=80, seed=1)


def saved(model: pixelwise.SegmentationModel, directory: Path) -> Path:
    """``model`` saved with its last convolution sharpened: an untrained network's nearly equal scores would
    give one class everywhere, which every tiling reproduces; large weights make the labels follow the input."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(100)
        last.bias.zero_()
    model.eval().save_pretrained(directory)
    (directory / "preprocessing.json").write_text(json.dumps(PREPROCESSING))
    return directory


def unet(directory: Path) -> Path:
    options = {"encoder_depth": 3, "decoder_channels": [16, 8, 4], "in_channels": 1, "classes": 2}
    return saved(pixelwise.Unet("resnet18", **options), directory)


def confusion(pred_dir: Path, masks: Path, classes: int = 2) -> np.ndarray:
    total = np.zeros((classes, classes), dtype=np.int64)
    for mask_path in sorted(masks.glob("*.png")):
        truth = np.asarray(Image.open(mask_path)).astype(np.int64)
        pred = np.asarray(Image.open(pred_dir / mask_path.name)).astype(np.int64)
        total += np.bincount(truth.ravel() * classes + pred.ravel(), minlength=classes**2).reshape(classes, classes)
    return total


@pytest.mark.parametrize("tile", [0, 32])
def test_evaluate_scores_the_labels_predict_writes(cells, tmp_path, tile):
    model = unet(tmp_path / "m")
    predicted = tmp_path / "pred"
    images = str(cells / "val" / "images")
    assert (
        main(["predict", images, "--model", str(model), "--out", str(predicted), "--tile", str(tile), "--no-progress"])
        == 0
    )
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(model), "--data", str(cells), "--out", str(out), "--tile", str(tile)]
    assert main([*argv, "--gallery", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_array_equal(metrics["confusion_matrix"], confusion(predicted, cells / "val" / "masks"))
    assert ("tiles of 32 px" in (out / "report.html").read_text()) == bool(tile)


def test_tiles_change_a_padded_cnn_but_not_the_exact_tiles_of_unet2015(cells, tmp_path):
    """A padded CNN sees zeros at tile edges, so tiling moves some pixels; UNet2015's output tiles abut
    exactly (overlap-tile), so its tiled and whole-image metrics are the same."""
    padded = unet(tmp_path / "padded")
    valid = saved(UNet2015(in_channels=1, classes=2, base_channels=4, depth=2), tmp_path / "valid")
    for model, equal in ((padded, False), (valid, True)):
        whole, tiled = (
            evaluate(model, cells, out_dir=tmp_path / f"e{i}", progress=False, gallery_size=0, tiling=tiling)
            for i, tiling in enumerate((None, TilingOptions(tile_size=24)))
        )
        assert sum(whole.support) == sum(tiled.support) == 3 * 80 * 80
        assert len({whole.confusion_matrix[0][0], whole.confusion_matrix[1][1]} - {0}) == 2  # both classes found
        assert (whole.confusion_matrix == tiled.confusion_matrix) == equal


def test_evaluate_returns_a_typed_result(cells, tmp_path):
    result = evaluate(unet(tmp_path / "m"), cells, out_dir=tmp_path / "e", progress=False, gallery_size=0)
    assert isinstance(result, EvaluationResult)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text()) == result.to_dict()
    assert result.report == tmp_path / "e" / "report.html" and result.report.is_file()
    assert result.images == 3 and len(result.iou) == len(result.class_names) == 2
    with pytest.warns(DeprecationWarning, match=r"result\.mean_iou"):
        assert result["mean_iou"] == result.mean_iou
    assert "instances" not in result and "mean_iou" in result


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--tile", "-1"], "--tile -1"), (["--overlap", "1.5"], "--overlap 1.5"), (["--blend", "cubic"], "--blend")],
)
def test_evaluate_checks_its_tiling_options(cells, tmp_path, capsys, flags, message):
    argv = ["evaluate", "--checkpoint", str(unet(tmp_path / "m")), "--data", str(cells), "--out", str(tmp_path / "e")]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_evaluate_surface_distances_equal_monais_on_the_labels_predict_writes(cells, tmp_path):
    """``evaluate(surface_tolerance=...)`` against MONAI's functions on the label PNGs ``pixelwise predict`` writes."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    model = unet(tmp_path / "m")
    main(["predict", str(cells / "val" / "images"), "--model", str(model), "--out", str(tmp_path / "pred")])
    result = evaluate(model, cells, split="val", out_dir=tmp_path / "e", progress=False, surface_tolerance=1.0)
    masks = sorted((cells / "val" / "masks").glob("*.png"))
    one_hot = lambda paths: torch.nn.functional.one_hot(  # noqa: E731
        torch.stack([torch.from_numpy(np.asarray(Image.open(p)).astype(np.int64)) for p in paths]), 2
    ).permute(0, 3, 1, 2)
    truth, pred = one_hot(masks), one_hot([tmp_path / "pred" / m.name for m in masks])
    expected = {
        "hausdorff": compute_hausdorff_distance(pred, truth),
        "hd95": compute_hausdorff_distance(pred, truth, percentile=95),
        "assd": compute_average_surface_distance(pred, truth, symmetric=True),
        "nsd": compute_surface_dice(pred, truth, class_thresholds=[1.0]),
    }
    for key, values in expected.items():  # [N, 1]: the foreground class, background excluded on both sides
        assert result.surface[key][0] is None  # background is not scored
        assert result.surface[key][1] == pytest.approx(float(values[:, 0].mean()), abs=1e-4), key
    assert result.to_dict()["surface"]["tolerance"] == 1.0
