"""Hostile and careless input to ``pixelwise predict`` / ``export`` and :class:`Predictor`: refused up
front with a message naming the option or file and the fix, or listed as a failed input while the
others are predicted; never an overwritten input, a NaN label map, a traceback or a blocked read."""

import contextlib
import os
import signal
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import pixelwise
import pixelwise.inference
from pixelwise.cli import main
from pixelwise.errors import ConfigError, DataError
from pixelwise.inference import Predictor, RuntimeOptions, TilingOptions
from pixelwise.inference.files import predict_file


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = pixelwise.create_model(
        "unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 4], classes=2
    ).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "saved")


@pytest.fixture
def images(tmp_path):
    """A folder with two small RGB PNGs, ``a.png`` and ``b.png``."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in "ab":
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if ``pixelwise predict`` builds its Predictor (the check must come before)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(pixelwise.inference, "Predictor", refuse)


@contextlib.contextmanager
def fails_if_blocked(seconds: int = 20):
    """Turn a read that blocks (a named pipe opened for reading) into a test failure after ``seconds``."""

    def blocked(signum, frame):
        raise AssertionError(f"blocked for {seconds} s: a named pipe was opened for reading")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def predict(model_dir, *args: str) -> int:
    return main(["predict", "--model", str(model_dir), "--no-progress", "--tile", "32", *args])


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# -- 1. never write over an input -------------------------------------------------------------
def test_out_equal_to_the_input_folder_is_refused_before_any_work(model_dir, images, capsys, no_model_load):
    before = snapshot(images)
    assert predict(model_dir, str(images), "--out", str(images)) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "a.png" in err and "Choose another --out folder" in err
    assert snapshot(images) == before


def test_out_spelt_differently_or_through_a_symlink_is_still_the_input_folder(
    model_dir, images, tmp_path, monkeypatch, capsys, no_model_load
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(images)
    before = snapshot(images)
    for inputs, out in (("images/a.png", "./images"), ("link/a.png", "images"), ("images", "link/")):
        assert predict(model_dir, inputs, "--out", out) == 2
        assert "would write over input images" in capsys.readouterr().err
    assert snapshot(images) == before


def test_out_holding_one_input_file_is_refused(model_dir, images, tmp_path, capsys, no_model_load):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "c.png")
    assert predict(model_dir, str(images), str(other / "c.png"), "--out", str(other)) == 2
    assert f"holds the input {str(other / 'c.png')!r}" in capsys.readouterr().err


def test_predict_file_refuses_to_write_beside_its_input(model_dir, images):
    before = snapshot(images)
    with pytest.raises(ConfigError, match=r"holds the input .*a\.png.*choose another output folder"):
        predict_file(Predictor(model_dir, tiling=TilingOptions(tile_size=32)), images / "a.png", images)
    assert snapshot(images) == before


# -- 2. NaN and infinity ----------------------------------------------------------------------
def test_a_float_tiff_with_nan_fails_by_name_and_the_others_go_on(model_dir, images, tmp_path, capsys):
    image = np.random.default_rng(1).random((24, 32, 3), dtype=np.float32)
    image[0, :3, 0], image[5, 5] = np.nan, np.inf  # 4 pixels
    tifffile.imwrite(images / "c.tif", image, photometric="rgb")
    out = tmp_path / "out"
    assert predict(model_dir, str(images), "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert "c.tif" in captured.err and "has 4 NaN or infinite pixels" in captured.err
    assert "nan_to_num" in captured.err
    assert "predicted 2 of 3 images" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_a_streamed_float_tiff_with_nan_fails_by_name(model_dir, tmp_path, monkeypatch, capsys):
    import pixelwise.inference.files

    monkeypatch.setattr(pixelwise.inference.files, "LARGE_IMAGE_PIXELS", 100)
    image = np.random.default_rng(2).random((40, 48, 3), dtype=np.float32)
    image[30, 7] = np.nan
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(16, 16), photometric="rgb")
    out = tmp_path / "out"
    assert predict(model_dir, str(tmp_path / "big.tif"), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "big.tif" in err and "has 1 NaN or infinite pixel," in err
    assert list(out.iterdir()) == []  # no partial label TIFF, no temporary file


@pytest.mark.parametrize("as_tensor", [False, True])
def test_predictor_refuses_nan_and_inf_arrays(model_dir, as_tensor):
    image = np.full((20, 20, 3), 0.5, np.float32)
    image[0, 0, 1], image[1, 1] = -np.inf, np.nan
    given = torch.from_numpy(np.moveaxis(image, -1, 0).copy()) if as_tensor else image
    with pytest.raises(ConfigError, match=r"the image has 2 NaN or infinite pixels.*nan_to_num"):
        Predictor(model_dir, tiling=TilingOptions(tile_size=32)).predict(given)


# -- 3. inputs that cannot be read ------------------------------------------------------------
def test_every_unreadable_input_is_listed_as_failed(model_dir, images, tmp_path, capsys):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    bad = {
        "missing.png": "does not exist",
        "dangling.png": "broken symbolic link (its target does not exist)",
        "loop.png": "broken symbolic link (a loop of links)",
        "pipe.png": "not a regular file (a named pipe (FIFO))",
        "nomatch*.png": "matched no files",
        "empty": "folder holds no images",
    }
    out = tmp_path / "out"
    with fails_if_blocked():
        rc = predict(model_dir, str(images / "a.png"), *(str(tmp_path / n) for n in bad), "--out", str(out))
    assert rc == 1
    captured = capsys.readouterr()
    assert "predicted 1 of 7 images" in captured.out
    assert "6 inputs failed:" in captured.err
    for name, reason in bad.items():
        assert f"{tmp_path / name}: {reason}" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


def test_predict_file_refuses_a_named_pipe_without_opening_it(model_dir, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block until a writer comes
    predictor = Predictor(model_dir, tiling=TilingOptions(tile_size=32))
    with fails_if_blocked(), pytest.raises(DataError, match=r"pipe\.png.*not a regular file"):
        predict_file(predictor, tmp_path / "pipe.png", tmp_path / "out")


def test_nothing_readable_at_all_is_an_error_listing_each_reason(model_dir, tmp_path, capsys):
    assert predict(model_dir, str(tmp_path / "missing.png"), str(tmp_path / "*.jpg"), "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "no input images matched" in err
    assert "missing.png': does not exist" in err and "*.jpg': matched no files" in err


# -- 4. decompression bombs -------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width × height`` RGB pixels but holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_a_failed_file_not_a_crash(model_dir, images, tmp_path, capsys):
    (images / "bomb.png").write_bytes(png_header(100_000, 100_000))
    out = tmp_path / "out"
    assert predict(model_dir, str(images), "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert "bomb.png" in captured.err and "Pillow's safety limit" in captured.err
    assert "predicted 2 of 3 images" in captured.out


# -- 5. devices -------------------------------------------------------------------------------
def test_cuda_without_a_gpu_is_refused_up_front(model_dir, images, tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert predict(model_dir, str(images), "--out", str(tmp_path / "out"), "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device 'cuda', but no CUDA GPU is visible" in err and "pass --device 'cpu'" in err


def test_mps_without_mps_and_an_unparsable_device(model_dir, images, tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert predict(model_dir, str(images), "--out", str(tmp_path / "out"), "--device", "mps") == 2
    assert "--device 'mps', but no MPS GPU is visible" in capsys.readouterr().err
    assert predict(model_dir, str(images), "--out", str(tmp_path / "out"), "--device", "gpux") == 2
    assert "--device 'gpux' is not a torch device" in capsys.readouterr().err


def test_predictor_refuses_a_missing_gpu(model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device='cuda:1', but no CUDA GPU is visible"):
        Predictor(model_dir, runtime=RuntimeOptions(device="cuda:1"))
    with pytest.raises(ConfigError, match=r"device='gpux' is not a torch device"):
        Predictor(model_dir, runtime=RuntimeOptions(device="gpux"))


# -- 6. output paths --------------------------------------------------------------------------
def test_predict_out_that_is_a_file_or_cannot_be_created(model_dir, images, tmp_path, capsys, no_model_load):
    (tmp_path / "file").write_text("x")
    assert predict(model_dir, str(images), "--out", str(tmp_path / "file")) == 2
    assert f"--out {str(tmp_path / 'file')!r} is an existing file" in capsys.readouterr().err
    assert predict(model_dir, str(images), "--out", str(tmp_path / "file" / "sub")) == 2
    assert "cannot be created (Not a directory)" in capsys.readouterr().err


def test_export_out_that_is_a_folder_is_refused_before_exporting(model_dir, tmp_path, monkeypatch, capsys):
    import pixelwise.inference.export

    def refuse(*args, **kwargs):
        raise AssertionError("exported before checking --out")

    monkeypatch.setattr(pixelwise.inference.export, "export_onnx", refuse)
    (tmp_path / "file").write_text("x")
    for out, message in (
        (tmp_path, "is an existing folder; give the file to write, e.g. "),
        (tmp_path / "file" / "model.onnx", "cannot be created"),
    ):
        assert main(["export", "--model", str(model_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {str(out)!r}" in err and message in err


def test_export_functions_refuse_a_folder_as_path(model_dir, tmp_path):
    from pixelwise.inference.export import export_onnx, export_torchscript

    for export in (export_onnx, export_torchscript):
        with pytest.raises(ConfigError, match=r"is an existing folder; give the file to write"):
            export(model_dir, tmp_path)


# -- 7. sizes and choices ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile", "-1"], "--tile -1 is out of range; give an int ≥ 0 (0: whole images)"),
        (["--overlap", "1"], "--overlap 1.0 is out of range; give a fraction of the tile in [0, 1)"),
        (["--overlap", "-0.1"], "--overlap -0.1 is out of range"),
        (["--overlap", "nan"], "--overlap nan is out of range"),
        (["--batch-size", "0"], "--batch-size 0 is out of range; give an int ≥ 1"),
        (["--blend", "gausian"], "unknown --blend option 'gausian'; did you mean 'gaussian'?"),
        (["--backend", "onnx"], "unknown --backend option 'onnx'; did you mean 'onnxruntime'?"),
        (["--precision", "fp33"], "unknown --precision option 'fp33'; did you mean 'fp32'"),
    ],
)
def test_out_of_range_options_name_the_option(model_dir, images, tmp_path, capsys, no_model_load, args, message):
    assert predict(model_dir, str(images), "--out", str(tmp_path / "out"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


OPTION_GROUPS = {"tiling": TilingOptions, "runtime": RuntimeOptions}


@pytest.mark.parametrize(
    ("group", "options", "message"),
    [
        ("tiling", {"tile_size": 0}, "tile_size=0 is out of range; give an int ≥ 1, or None for whole images"),
        ("tiling", {"tile_size": 2.5}, "tile_size=2.5 is out of range"),
        ("tiling", {"overlap": 1.5}, "overlap=1.5 is out of range; give a fraction of the tile in [0, 1)"),
        ("tiling", {"batch_size": 0}, "batch_size=0 is out of range; give an int ≥ 1"),
        ("runtime", {"precision": "fp16"}, "unknown precision option 'fp16'"),
    ],
)
def test_predictor_option_ranges(model_dir, group, options, message):
    with pytest.raises(ConfigError) as caught:
        Predictor(model_dir, **{group: OPTION_GROUPS[group](**options)})
    assert message in str(caught.value)


def test_tile_zero_still_means_whole_images(model_dir, images, tmp_path):
    assert (
        main(["predict", "--model", str(model_dir), str(images / "a.png"), "--out", str(tmp_path), "--tile", "0"]) == 0
    )
    assert (tmp_path / "a.png").is_file()


# -- 8. stale temporary files -----------------------------------------------------------------
def test_stale_temporaries_of_dead_processes_are_removed(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.png.999999999-0123abcd.tmp"
    stale.write_bytes(b"half a file")
    assert predict(model_dir, str(images / "a.png"), "--out", str(out)) == 0
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
