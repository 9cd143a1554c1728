"""Careless and hostile input on the data and training side: mask encodings that would silently train
on nothing, unreadable files, wrong-typed and out-of-range options, text files in other encodings,
interrupted writes. Each test checks the message a user sees."""

import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import ClassInfo, DataError, SegmentationFolder, check_dataset, read_mask
from pixelwise.errors import ConfigError
from pixelwise.io import atomic_path, remove_stale_temporaries
from pixelwise.training.config import TrainConfig, from_dict, resolve
from pixelwise.training.data import MIN_EPOCH_STEPS, SegmentationDataModule
from pixelwise.training.run import train
from settings import TINY_TRAIN

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: never a live process


def disc_pairs(root: Path, n: int = 4, foreground: int = 255, dtype=np.uint8, size: int = 48) -> Path:
    """Gray images with a bright disc and masks holding 0 and ``foreground`` (a binary export)."""
    rng = np.random.default_rng(1)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(size // 4, size - size // 4, 2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 5) ** 2
        Image.fromarray((inside * 180 + 30).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray((inside * foreground).astype(dtype)).save(root / "masks" / f"{i}.png")
    return root


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A PNG whose header declares ``side``² pixels (a decompression bomb) and holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------- binary masks stored as 0/255 and 0/65535


@pytest.mark.parametrize(("foreground", "dtype"), [(255, np.uint8), (65535, np.uint16), (128, np.uint8)])
def test_binary_masks_read_their_one_value_as_the_foreground(tmp_path, foreground, dtype):
    root = disc_pairs(tmp_path, foreground=foreground, dtype=dtype)
    report = check_dataset(root, progress=False)
    assert report.ok and report.num_classes == 2 and report.mask_values == {foreground: 1}
    assert report.class_pixels[1] > 0 and report.void_pixels == 0
    assert f"binary masks stored as 0/{foreground}: value {foreground} is read as class 1" in report.format()
    data = SegmentationFolder(root)
    assert data.num_classes == 2 and data.mask_values == {foreground: 1}
    assert set(np.unique(data[0]["mask"].numpy())) == {0, 1}


def test_an_explicit_ignore_index_wins_over_the_binary_rule(tmp_path):
    root = disc_pairs(tmp_path)
    report = check_dataset(root, ignore_index=255, progress=False)
    assert report.mask_values == {} and report.class_pixels[1] == 0 and report.void_pixels > 0
    assert SegmentationFolder(root, ignore_index=255).mask_values == {}


def test_masks_with_several_classes_are_read_as_stored(tmp_path):
    root = disc_pairs(tmp_path, foreground=1)
    assert check_dataset(root, progress=False).mask_values == {}


def test_all_ignored_masks_are_a_problem_not_a_perfect_score(tmp_path):
    root = disc_pairs(tmp_path)
    for path in (root / "masks").iterdir():
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(path)
    report = check_dataset(root, progress=False)
    assert not report.ok
    assert (
        "every mask pixel equals ignore_index 255" in report.format() and "nothing to train or score" in report.format()
    )


def test_training_on_0_255_masks_learns_the_foreground(tmp_path):
    for split in ("train", "val"):
        disc_pairs(tmp_path / "data" / split, n=4)
    config = TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path), name="binary", **TINY_TRAIN)
    train(config)
    saved = yaml.safe_load((tmp_path / "binary" / "config.yaml").read_text())
    assert saved["mask_values"] == {255: 1} and saved["classes"] == 2 and saved["ignore_index"] == 255
    from pixelwise.evaluate import evaluate

    metrics = evaluate(tmp_path / "binary", tmp_path / "data", split="val", out_dir=tmp_path / "eval", progress=False)
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    assert truth[1] == sum(
        int((np.asarray(Image.open(p)) == 255).sum()) for p in (tmp_path / "data/val/masks").iterdir()
    )


def test_evaluating_all_ignored_masks_is_an_error_not_a_perfect_score(tmp_path):
    from pixelwise.evaluate import evaluate
    from pixelwise.models import create_model

    root = disc_pairs(tmp_path / "data")
    for path in (root / "masks").iterdir():
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(path)
    options = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    create_model("unet", in_channels=1, classes=2, **options).save_pretrained(tmp_path / "model")
    with pytest.raises(DataError, match="equals ignore_index 255: there is nothing to score"):
        evaluate(tmp_path / "model", root, split=None, out_dir=tmp_path / "eval", progress=False)


# ---------------------------------------------------------------- unreadable files


def test_a_decompression_bomb_is_reported_with_pillows_limit(tmp_path):
    root = disc_pairs(tmp_path)
    bomb_png(root / "images" / "0.png")
    report = check_dataset(root, progress=False)
    assert not report.ok
    (file, message), *_ = report.problems
    assert file.endswith("0.png") and "safety limit" in message and str(Image.MAX_IMAGE_PIXELS * 2) in message


def test_jpeg_data_in_a_png_mask_is_refused(tmp_path):
    root = disc_pairs(tmp_path)
    Image.open(root / "masks" / "1.png").convert("L").save(root / "masks" / "1.png", format="JPEG")
    with pytest.raises(DataError, match="JPEG-compressed"):
        read_mask(root / "masks" / "1.png")
    assert any("JPEG-compressed" in message for _, message in check_dataset(root, progress=False).problems)


def test_check_data_prints_undecodable_file_names_on_a_strict_terminal(tmp_path):
    root = disc_pairs(tmp_path, n=2)
    name = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: not UTF-8
    for folder in ("images", "masks"):
        os.rename(root / folder / "0.png", root / folder / f"{name}.png")
    (root / "masks" / f"{name}.png").write_bytes(b"not a png")
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    done = subprocess.run(
        [sys.executable, "-m", "pixelwise.cli", "check-data", str(root)], capture_output=True, env=env, check=False
    )
    assert done.returncode == 1, done.stderr.decode(errors="replace")
    assert b"caf\\udce9.png" in done.stdout and b"Traceback" not in done.stderr


def test_train_without_progress_draws_no_data_check_bar(tmp_path, capsys):
    from pixelwise.data.check import PROGRESS_MIN_PAIRS

    for split in ("train", "val"):
        disc_pairs(tmp_path / "data" / split, n=PROGRESS_MIN_PAIRS if split == "train" else 2, size=16)
    config = TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path), **(TINY_TRAIN | {"crop": 16}))
    from pixelwise.training.run import prepare_run

    prepare_run(config.validate())
    assert "checking" not in capsys.readouterr().err


# ---------------------------------------------------------------- options: types, ranges, devices


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"lr": "fast"}, "option lr: 'fast' is text; expected a number"),
        ({"epochs": "2"}, "option epochs: '2' is text; expected a whole number"),
        ({"class_weights": "heavy"}, "class_weights='heavy': use 'median' or 'sqrt_median'"),
        ({"model_options": [1, 2]}, "option model_options: [1, 2] is list; expected a mapping"),
        ({"ignore_index": "x"}, "option ignore_index: 'x' is text; expected a whole number or null"),
        ({"progress": "yes"}, "option progress: 'yes' is text; expected true/false"),
        ({"mask_offset": "half"}, "option mask_offset: 'half' is text; expected a list of numbers"),
        ({"crop": -16}, "crop=-16 is out of range: it must be at least 8"),
        ({"batch_size": 0}, "batch_size=0 is out of range: it must be at least 1"),
        ({"max_minutes": 0}, "max_minutes=0 is out of range: it must be greater than 0"),
        ({"ema_decay": 1.5}, "ema_decay=1.5 is out of range: it must be greater than 0 and less than 1"),
        ({"num_workers": -1}, "num_workers=-1 is out of range: it must be at least 0"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"accelerator": "tpux"}, "unknown accelerator 'tpux'"),
    ],
)
def test_wrong_option_values_name_the_option_and_what_is_expected(values, expected):
    with pytest.raises(ConfigError, match=None) as caught:
        from_dict({"data": "somewhere", **values}).validate()
    assert expected in str(caught.value)


def test_every_field_type_is_checked():
    """A value of a foreign type is refused for every field, not only the ones listed above."""
    import dataclasses

    for field in dataclasses.fields(TrainConfig):
        with pytest.raises(ConfigError, match=f"option {field.name}: "):
            from_dict({"data": "somewhere", field.name: object()}).validate()


def test_yaml_11_scientific_notation_is_the_number_meant(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("data: somewhere\nlr: 1e-3\nweight_decay: 5e-5\n")
    config = resolve(str(file))
    assert config.lr == 0.001 and config.weight_decay == 5e-5


def test_a_gpu_accelerator_without_a_gpu_leaves_no_run_folder(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root = tmp_path / "data"
    for split in ("train", "val"):
        disc_pairs(root / split, n=2)
    code = main(["train", "--data", str(root), "--runs-dir", str(tmp_path / "runs"), "--accelerator", "gpu"])
    error = capsys.readouterr().err
    assert code == 2 and "no CUDA GPU is visible" in error and "pass --accelerator cpu" in error
    assert not (tmp_path / "runs").exists()


def test_an_out_of_range_crop_on_the_command_line_leaves_no_run_folder(tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "val"):
        disc_pairs(root / split, n=2)
    assert main(["train", "--data", str(root), "--runs-dir", str(tmp_path / "runs"), "--crop", "-16"]) == 2
    assert "crop=-16 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_run_folder(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for split in ("train", "val"):
        disc_pairs(root / split, n=2)
    config = TrainConfig(data=str(root), runs_dir=str(tmp_path / "runs"), name="x", **TINY_TRAIN)

    def unreadable(self, index):  # a file that breaks after the data check, before the first checkpoint
        raise DataError("cannot read image 0.png: truncated")

    monkeypatch.setattr(SegmentationFolder, "__getitem__", unreadable)
    with pytest.raises(DataError, match="truncated"):
        train(config)
    assert not (tmp_path / "runs" / "x").exists()


# ---------------------------------------------------------------- text files in other encodings, class files


def test_a_utf16_config_file_names_the_encoding(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("data: somewhere\nlr: 0.001\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(it is UTF-16 \(little-endian\) text\)"):
        resolve(str(file))


def test_class_ids_written_as_words_name_the_class(tmp_path):
    file = tmp_path / "classes.yaml"
    file.write_text("classes:\n  - {name: background, id: zero}\n  - {name: cell, id: 1}\n")
    with pytest.raises(ConfigError, match="the id of class 'background' is 'zero'; class ids are whole numbers"):
        ClassInfo.load(file)


def test_a_utf16_class_file_names_the_encoding(tmp_path):
    file = tmp_path / "classes.yaml"
    file.write_text("classes: [a, b]\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"class file .* is not UTF-8 text"):
        ClassInfo.load(file)


# ---------------------------------------------------------------- interrupted writes


def test_atomic_path_removes_its_temporary_file_when_interrupted(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(SystemExit), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise SystemExit(143)
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_gives_the_permissions_of_a_plain_open(tmp_path):
    from pixelwise.io import save_weights

    torch = pytest.importorskip("torch")
    save_weights({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_sigterm_unwinds_the_command_line_and_removes_the_temporary_file(tmp_path):
    script = (
        "import os, signal, sys\n"
        "from pixelwise import cli\n"
        "from pixelwise.io import atomic_path\n"
        "signal.signal(signal.SIGTERM, cli._terminate)\n"
        f"with atomic_path({str(tmp_path / 'big.ckpt')!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert done.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    stale = tmp_path / f".best.ckpt.{DEAD_PID}-0123abcd.tmp"
    live = tmp_path / f".last.ckpt.{os.getpid()}-0123abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_resume_removes_the_temporary_files_a_killed_run_left(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        disc_pairs(root / split, n=4)
    config = TrainConfig(data=str(root), runs_dir=str(tmp_path), name="r", **(TINY_TRAIN | {"epochs": 1}))
    train(config)
    stale = tmp_path / "r" / f".best.ckpt.{DEAD_PID}-89abcdef.tmp"
    stale.write_bytes(b"x" * 1000)
    train(TrainConfig(**(config.to_dict() | {"epochs": 2})), resume=True)
    assert not stale.exists()


# ---------------------------------------------------------------- an epoch's length and the time budget


def test_a_small_data_sets_epoch_has_at_least_min_epoch_steps(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        disc_pairs(root / split, n=4)
    config = TrainConfig(data=str(root), batch_size=2).validate().to_dict() | {"ignore_index": 255}
    module = SegmentationDataModule(config, num_classes=2)
    module.setup()
    assert module.samples_per_epoch() == MIN_EPOCH_STEPS * 2
    assert len(module.train_dataloader()) == MIN_EPOCH_STEPS


def test_validation_is_skipped_while_it_would_take_more_than_its_share(tmp_path, monkeypatch):
    """With a share of (almost) zero, only the first and the last epoch validate; the others still write last.ckpt."""
    import csv

    from pixelwise.training import callbacks

    root = tmp_path / "data"
    for split in ("train", "val"):
        disc_pairs(root / split, n=4)
    monkeypatch.setattr(callbacks, "VALIDATION_SHARE", 1e-9)
    config = TrainConfig(data=str(root), runs_dir=str(tmp_path), name="v", **(TINY_TRAIN | {"epochs": 4}))
    train(config)
    with (tmp_path / "v" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [bool(r.get("val_miou")) for r in rows] == [True, False, False, True]
    assert (tmp_path / "v" / "last.ckpt").is_file()


def test_a_checkpoint_that_would_run_code_is_refused_in_our_words(tmp_path):
    import torch

    from pixelwise.errors import WeightsError
    from pixelwise.io import load_checkpoint, load_weights

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo never",))

    path = tmp_path / "tampered.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    for load in (load_checkpoint, load_weights):
        with pytest.raises(WeightsError) as caught:
            load(path)
        message = str(caught.value)
        assert "is not a weights-only checkpoint (it asks for posix.system)" in message
        assert "\x1b[" not in message and "weights_only` set to `False`" not in message and "trusted" not in message
