"""``pixelwise predict`` end to end on a tiny untrained model: outputs, labels, failures, errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelwise.cli import main
from pixelwise.inference import Predictor, TilingOptions


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, size in (("a", (50, 70)), ("b", (90, 100))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def test_predict_folder_writes_palette_masks_and_reports_the_broken_file(tiny_model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", "--model", str(tiny_model_dir), str(images), "--out", str(out), "--tile", "64", "--no-progress"]
    assert main([*args, "--save-probs", "--overlay"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "cannot read image" in captured.err
    assert "predicted 2 of 3 images" in captured.out
    # two small images are far from the 2 Mpx after which the default backend moves to ONNX Runtime
    assert "engine: torch until 2,097,152 pixels have been predicted" in captured.out
    predictor = Predictor(tiny_model_dir, tiling=TilingOptions(tile_size=64))
    for name, size in (("a", (50, 70)), ("b", (90, 100))):
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == (size[1], size[0])
        expected = predictor.predict_labels(np.asarray(Image.open(images / f"{name}.png")))
        assert np.array_equal(np.asarray(mask), expected)
        probabilities = np.load(out / f"{name}_probs.npy")
        assert probabilities.dtype == np.float16 and probabilities.shape == (3, *size)
        assert Image.open(out / f"{name}_overlay.png").size == (size[1], size[0])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{s}" for n in "ab" for s in (".png", "_probs.npy", "_overlay.png")
    )  # nothing for the broken file, no temporary files left


def test_large_tiff_is_streamed_to_a_tiled_tiff(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import pixelwise.inference.files

    monkeypatch.setattr(pixelwise.inference.files, "LARGE_IMAGE_PIXELS", 1000)
    image = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(32, 32))
    out = tmp_path / "out"
    assert (
        main(["predict", "--model", str(tiny_model_dir), str(tmp_path / "*.tif"), "--out", str(out), "--tile", "48"])
        == 0
    )
    expected = Predictor(tiny_model_dir, tiling=TilingOptions(tile_size=48)).predict_labels(image)
    assert np.array_equal(tifffile.imread(out / "big.tif"), expected)


def test_clear_errors(tiny_model_dir, images, tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "nope"), str(images), "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["predict", "--model", str(tiny_model_dir), str(tmp_path / "*.jpg"), "--out", str(tmp_path)]) == 2
    assert "no input images matched" in capsys.readouterr().err
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(gray)
    assert (
        main(["predict", "--model", str(tiny_model_dir), str(gray), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    )
    assert "gray.png: the image has 1 channels" in capsys.readouterr().err
