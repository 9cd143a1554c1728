"""Multi-scale test-time augmentation (``tta_scales``) in the Predictor, ``predict`` and ``evaluate``.

Expected probabilities are computed here independently, with ``torch.nn.functional.interpolate`` and the
network itself: for each scale ``s`` and flip, resize the flipped image to ``round(s·H) × round(s·W)``,
run the network, resize the logits back, softmax, un-flip, and average over scales × flips.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import pixelwise
from pixelwise.cli import main
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError
from pixelwise.evaluate import evaluate
from pixelwise.inference import NormalizationOptions, Predictor, TilingOptions

SCALES = (0.5, 0.75, 1.0, 1.5)
HEIGHT, WIDTH = 21, 34  # odd and not square: rounding and transposition mistakes show


def small_net(in_channels: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1, bias=False)
    ).eval()


def expected_scores(net: nn.Module, image: torch.Tensor, scales, flips) -> np.ndarray:
    """The mean over ``scales`` × ``flips`` of the probabilities of ``image`` ``[C, H, W]``, computed here."""
    x = image[None]
    size = x.shape[-2:]
    outputs = []
    with torch.no_grad():
        for scale in scales:
            for dims in flips:
                flipped = x.flip(dims) if dims else x
                if scale != 1:
                    scaled = (round(size[0] * scale), round(size[1] * scale))
                    flipped = F.interpolate(flipped, size=scaled, mode="bilinear", antialias=scale < 1)
                logits = net(flipped)
                if scale != 1:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                probabilities = logits.softmax(1)
                outputs.append(probabilities.flip(dims) if dims else probabilities)
    return torch.stack(outputs).mean(0)[0].numpy()


class Counting:
    """A callable model that records the shape of every batch it is given."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.shapes = net, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.net(x)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


# -- the Predictor -----------------------------------------------------------------------------
@pytest.mark.parametrize("tta", [None, "hflip", "d4"])
@pytest.mark.parametrize("tile", [None, 16])
def test_scale_one_alone_is_bit_identical_to_no_scales(image, tta, tile):
    net, tiling = small_net(), TilingOptions(tile_size=tile)
    plain = Predictor(net, tiling=tiling, tta=tta).predict(image)
    for scales in ((1,), [1.0], "1"):
        np.testing.assert_array_equal(Predictor(net, tiling=tiling, tta=tta, tta_scales=scales).predict(image), plain)


@pytest.mark.parametrize("tta", [None, "hflip", "flips"])
def test_scales_times_flips_equal_the_independent_average(image, tta):
    flips = {None: [()], "hflip": [(), (-1,)], "flips": [(), (-1,), (-2,), (-2, -1)]}[tta]
    net = small_net()
    expected = expected_scores(net, image, SCALES, flips)
    actual = Predictor(net, tta=tta, tta_scales=SCALES).predict(image)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    # and it is not the single-scale result: the scales matter
    assert np.abs(actual - Predictor(net, tta=tta).predict(image)).max() > 1e-3


@pytest.mark.parametrize(("tta", "transforms"), [(None, 1), ("hflip", 2), ("d4", 8)])
def test_one_forward_pass_per_scale_and_transform(image, tta, transforms):
    model = Counting(small_net())
    Predictor(model, tta=tta, tta_scales=(0.75, 1, 1.25)).predict(image)
    assert len(model.shapes) == 3 * transforms
    sides = {tuple(sorted(shape[-2:])) for shape in model.shapes}  # rotations swap H and W
    assert sides == {tuple(sorted((round(HEIGHT * s), round(WIDTH * s)))) for s in (0.75, 1, 1.25)}


def test_tiles_are_resized_one_by_one(image):
    """Scales apply per tile: no forward pass sees more than the scaled tile, so memory follows the tile size."""
    tile, scales = 16, (0.5, 2.0)
    plain, scaled = Counting(small_net()), Counting(small_net())
    tiling = TilingOptions(tile_size=tile, batch_size=64)
    Predictor(plain, tiling=tiling, tta="hflip").predict(image)
    Predictor(scaled, tiling=tiling, tta="hflip", tta_scales=scales).predict(image)
    assert len(scaled.shapes) == len(scales) * len(plain.shapes)
    assert max(max(shape[-2:]) for shape in scaled.shapes) == round(max(scales) * tile)
    assert all(shape[0] == plain.shapes[0][0] for shape in scaled.shapes)  # the same tiles, batched as before


def test_tta_scales_compose_with_the_model_input_scale(image):
    """total scale = model scale × TTA scale: 0.5 × (1, 2) predicts at 0.5 and at 1 (no resize at all)."""
    net = small_net()
    normalization = NormalizationOptions(scale=0.5)
    actual = Predictor(net, normalization=normalization, tta="hflip", tta_scales=(1, 2)).predict(image)
    np.testing.assert_allclose(actual, expected_scores(net, image, (0.5, 1.0), [(), (-1,)]), atol=1e-5)


def test_valid_convolution_models_refuse_scales_but_take_scale_one():
    model = pixelwise.UNet2015(in_channels=1, classes=2, base_channels=4, depth=2).eval()
    with pytest.raises(ConfigError, match=r"tta_scales=\(0\.5, 1\.0\).*UNet2015.*tta_scales=None"):
        Predictor(model, tta_scales=(0.5, 1))
    image = torch.rand(1, 30, 40)
    plain = Predictor(model, tta="hflip").predict(image)
    np.testing.assert_array_equal(Predictor(model, tta="hflip", tta_scales=(1,)).predict(image), plain)


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ((0, 1), "0 is not a valid scale"),
        ((-0.5,), "-0.5 is not a valid scale"),
        ((1, 4.5), "4.5 is not a valid scale"),
        ((math.nan,), "nan is not a valid scale"),
        ((math.inf,), "inf is not a valid scale"),
        ((True,), "True is not a valid scale"),
        ("0.75,x", "'x' is not a valid scale"),
        ((), "gives 0 scales"),
        (tuple(0.25 * i for i in range(1, 10)), "gives 9 scales"),
        ((1, 1.0), "repeats a scale"),
    ],
)
def test_bad_scales_are_refused_naming_the_option(scales, message):
    with pytest.raises(ConfigError, match="tta_scales=") as error:
        Predictor(small_net(), tta_scales=scales)
    assert message in str(error.value)


def test_the_limits_themselves_are_accepted(image):
    eight = tuple(0.5 * i for i in range(1, 9))  # 0.5 … 4: eight scales, the largest 4
    Predictor(small_net(), tta_scales=eight)


# -- the command line ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=1, n_val=2, size=48, seed=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = pixelwise.Unet("resnet18", encoder_depth=3, decoder_channels=[16, 8, 4], in_channels=1, classes=2)
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():  # sharpened, so that the labels follow the input instead of one class everywhere
        last.weight.mul_(100)
    return model.eval().save_pretrained(tmp_path_factory.mktemp("model") / "saved")


def test_predict_and_evaluate_take_tta_scales(cells, model_dir, tmp_path):
    images = cells / "val" / "images"
    out = tmp_path / "pred"
    flags = ["--tta", "hflip", "--tta-scales", "0.5,1", "--tile", "32"]
    assert main(["predict", str(images), "--model", str(model_dir), "--out", str(out), *flags, "--no-progress"]) == 0
    predictor = Predictor(model_dir, tiling=TilingOptions(tile_size=32), tta="hflip", tta_scales=(0.5, 1))
    for path in sorted(images.glob("*.png")):
        expected = predictor.predict_labels(np.asarray(Image.open(path)))
        np.testing.assert_array_equal(np.asarray(Image.open(out / path.name)), expected)
    evaluated = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(model_dir), "--data", str(cells), "--out", str(evaluated), *flags]
    assert main([*argv, "--gallery", "0", "--no-progress"]) == 0
    matrix = np.zeros((2, 2), dtype=np.int64)  # what predict wrote, scored here
    for mask_path in sorted((cells / "val" / "masks").glob("*.png")):
        truth = np.asarray(Image.open(mask_path)).astype(np.int64).ravel()
        pred = np.asarray(Image.open(out / mask_path.name)).astype(np.int64).ravel()
        matrix += np.bincount(truth * 2 + pred, minlength=4).reshape(2, 2)
    metrics = json.loads((evaluated / "metrics.json").read_text())
    np.testing.assert_array_equal(metrics["confusion_matrix"], matrix)
    assert "test-time scales: 0.5, 1" in (evaluated / "report.html").read_text()


def test_evaluate_in_python_names_the_scales_in_the_report(cells, model_dir, tmp_path):
    result = evaluate(model_dir, cells, out_dir=tmp_path / "e", progress=False, gallery_size=0, tta_scales=[0.75, 1.25])
    assert "test-time scales: 0.75, 1.25" in result.report.read_text()
    with pytest.raises(ConfigError, match="tta_scales="):
        evaluate(model_dir, cells, out_dir=tmp_path / "bad", progress=False, tta_scales=(9,))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "value", ["0,1", "1,x", "", "5", ",".join(["1.5"] * 2), ",".join(str(0.25 * i) for i in range(1, 10))]
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_bad_tta_scales_on_the_command_line(cells, model_dir, tmp_path, capsys, command, value):
    out = tmp_path / "out"
    if command == "predict":
        argv = ["predict", str(cells / "val" / "images"), "--model", str(model_dir), "--out", str(out)]
    else:
        argv = ["evaluate", "--checkpoint", str(model_dir), "--data", str(cells), "--out", str(out)]
    assert main([*argv, "--tta-scales", value]) == 2
    assert f"--tta-scales {value}" in capsys.readouterr().err
    assert not out.exists()
