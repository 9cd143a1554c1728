"""Fuzz-style tests: randomly corrupted PNG and TIFF bytes through `check-data`, training's data check
and `predict`, and random YAML values through the training configuration. Every failure must be one of
pixelwise's error types naming the file or option; nothing may end in another exception.

The cases are drawn from fixed seeds, so a failure here repeats exactly; the number of cases is
bounded so that the file runs in seconds.
"""

import io
import random
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import DataError, check_dataset, read_image, read_mask
from pixelwise.errors import PixelwiseError
from pixelwise.training.config import TrainConfig, field_names, resolve

CASES = 48
"""Corrupted files per format."""
YAML_CASES = 120
"""Random configurations."""


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib" if array.dtype == np.uint8 else None)
    return buffer.getvalue()


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One random damage: truncation, flipped bytes, an inserted run, a zeroed or shuffled header."""
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip", "insert", "zero_header", "shuffle_header", "flip_header"])
    if kind == "truncate":
        return bytes(data[: rng.randrange(0, len(data))])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "insert":
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "zero_header":
        data[8 : 8 + rng.randint(1, 32)] = bytes(rng.randint(1, 32))
    elif kind == "shuffle_header":
        head = data[:64]
        rng.shuffle(head)
        data[:64] = head
    else:  # header fields such as width, height, bit depth or tag offsets
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    return bytes(data)


def sample_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (24, 32), dtype=np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three good pairs in train/ and val/."""
    root = tmp_path_factory.mktemp("fuzz") / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            image, mask = sample_pair(rng)
            for sub, array in (("images", image), ("masks", mask)):
                path = root / split / sub / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png_bytes(array))
    return root


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("role", ["image", "mask"])
def test_corrupted_files_are_reported_by_name(tmp_path, fmt, role):
    rng, arrays = random.Random(f"{fmt}-{role}"), np.random.default_rng(1)
    encode = png_bytes if fmt == "png" else tiff_bytes
    read = read_image if role == "image" else read_mask
    for case in range(CASES):
        image, mask = sample_pair(arrays)
        path = tmp_path / f"case{case}.{fmt}"
        path.write_bytes(corrupt(encode(image if role == "image" else mask), rng))
        try:
            read(path)
        except DataError as error:
            assert str(path) in str(error), f"case {case}: the message does not name the file: {error}"


@pytest.mark.parametrize("role", ["images", "masks"])
def test_check_data_and_training_report_corrupted_files(folder, tmp_path, role):
    import shutil

    rng = random.Random(role)
    for case in range(CASES // 4):
        root = tmp_path / f"case{case}"
        shutil.copytree(folder, root)
        victim = root / "train" / role / rng.choice(["a", "b", "c"])
        damaged = corrupt(victim.with_suffix(".png").read_bytes(), rng)
        victim.with_suffix(".png").write_bytes(damaged)
        report = check_dataset(root, split="train", progress=False)
        for file, _ in report.problems:
            assert Path(file).is_relative_to(root), f"case {case}: problem not tied to a file: {file}"
        config = TrainConfig(data=str(root), runs_dir=str(tmp_path / "runs"), epochs=1, progress=False)
        from pixelwise.training.run import prepare_run

        try:
            prepare_run(config.validate())
        except DataError as error:
            assert victim.name in str(error) or not report.ok
        else:
            assert report.ok


def test_predict_lists_corrupted_inputs_and_predicts_the_others(tmp_path, capsys):
    from pixelwise.models import create_model

    create_model(
        "unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=[8, 8, 8], classes=2
    ).save_pretrained(tmp_path / "model")
    rng, arrays = random.Random("predict"), np.random.default_rng(2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in range(CASES // 4):
        image, _ = sample_pair(arrays)
        encode, suffix = (png_bytes, "png") if case % 2 else (tiff_bytes, "tif")
        (inputs / f"bad{case}.{suffix}").write_bytes(corrupt(encode(image), rng))
    (inputs / "good.png").write_bytes(png_bytes(sample_pair(arrays)[0]))
    code = main(["predict", "--model", str(tmp_path / "model"), str(inputs), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in captured.err
    assert (tmp_path / "out" / "good.png").is_file()
    for line in captured.err.splitlines()[1:]:
        if line.startswith("  "):
            assert str(inputs) in line, line


RANDOM_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    3,
    10**12,
    0.5,
    -2.5,
    float("nan"),
    float("inf"),
    "",
    "x",
    "1e-3",
    "2",
    "none",
    [],
    [1, 2],
    ["a"],
    [[1]],
    {},
    {"a": 1},
    {1: "b"},
]


def test_random_yaml_values_give_config_errors_naming_the_option(tmp_path):
    rng = random.Random(0)
    names = [n for n in field_names() if n != "data"]
    for case in range(YAML_CASES):
        chosen = rng.sample(names, rng.randint(1, 3))
        values = {"data": "somewhere", **{name: rng.choice(RANDOM_VALUES) for name in chosen}}
        file = tmp_path / f"case{case}.yaml"
        file.write_text(yaml.safe_dump(values))
        try:
            resolve(str(file))
        except PixelwiseError as error:
            assert any(name in str(error) for name in chosen), f"case {case} {values}: {error}"
