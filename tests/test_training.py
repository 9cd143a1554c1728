"""Training end to end on tiny synthetic data: run directory, resume after kill -9, repeatability,
DDP on two CPU processes, and errors for bad input."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import pixelwise
from pixelwise.data.synthetic import write_synthetic
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.evaluate import evaluate
from pixelwise.io import load_checkpoint
from pixelwise.training.config import TrainConfig, resolve
from pixelwise.training.run import train
from settings import TINY_TRAIN, edge_pairs

TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "cells", "cells", n_train=8, n_val=4, size=64, seed=0)


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "pixelwise.cli", *args], env=env, **kwargs)


def test_config_precedence_defaults_yaml_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": "d", "epochs": 7, "lr": 0.01, "loss": "ce"}))
    config = resolve(str(path), {"epochs": 3, "batch_size": None})
    assert (config.epochs, config.lr, config.loss, config.batch_size) == (3, 0.01, "ce", TrainConfig.batch_size)


@pytest.mark.parametrize("name", ["isbi2012", "camvid"])
def test_shipped_configs_resolve_and_build_their_augmentation(name):
    from pixelwise.data.transforms import build_transforms

    config = resolve(str(Path(__file__).parents[1] / "configs" / f"{name}.yaml"))
    augment = build_transforms(config.augment, crop_size=32)
    image, mask = augment(torch.rand(3, 40, 40), torch.zeros(40, 40, dtype=torch.int64))
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_config_unknown_key_names_the_closest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown option in .*run\.yaml 'epoch'; did you mean 'epochs'"):
        resolve(str(path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"optimizer": "adamm"}, "did you mean 'adamw'"),
        ({"epochs": 0}, "epochs=0"),
        ({"data": ""}, "--data DIR"),
        ({"mask_offset": [0.5]}, r"mask_offset=\[0.5\]: give \[dy, dx\]"),
        ({"mask_offset": [0, 9]}, "within ±8"),
    ],
)
def test_config_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(None, {"data": "d", **override})


def test_binary_mode_trains_one_sigmoid_channel_that_evaluate_scores(cells, tmp_path):
    """--mode binary on 0/1 masks: a one-channel model (it used to get 2 channels and fail in the loss), whose
    thresholded sigmoid evaluate scores as background / foreground, as validation did."""
    config = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="b", mode="binary", loss="bce+dice", **TINY)
    result = train(config)
    model = pixelwise.from_pretrained(tmp_path / "b" / "model")
    assert model.classes == 1
    metrics = evaluate(tmp_path / "b", cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert len(metrics.iou) == 2 and metrics.iou[1] > 0  # the foreground is found, not argmax over one channel
    assert metrics.mean_iou == pytest.approx(result.best_miou, abs=1e-5)


def test_train_writes_a_complete_run(cells, tmp_path):
    result = train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", **TINY))
    run = tmp_path / "r"
    for name in ("config.yaml", "last.ckpt", "best.ckpt", "metrics.csv", "curves.png", "model/config.json"):
        assert (run / name).is_file(), name
    assert [int(r["epoch"]) for r in _rows(run)] == [0, 1]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["classes"] == 2 and saved["name"] == "r"
    model = pixelwise.from_pretrained(run / "model")
    assert model.classes == 2 and result.best_miou is not None
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))
    # evaluating the exported model reproduces the best validation mIoU Lightning logged
    metrics = evaluate(run, cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert metrics.mean_iou == pytest.approx(result.best_miou, abs=1e-5)
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "confusion.png").is_file()


def test_same_seed_same_run(cells, tmp_path):
    for name in ("a", "b"):
        train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name=name, seed=3, **TINY))
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]


@pytest.mark.parametrize(("updates", "kept"), [(0, 0.1), (1000, 1001 / 1010), (10**6, 0.998)])
def test_ema_decay_warms_up_to_the_given_decay(updates, kept):
    from pixelwise.training.callbacks import ema_update

    average, current = torch.zeros(3), torch.ones(3)
    new = ema_update(average, current, torch.tensor(updates), decay=0.998)
    assert torch.allclose(new, torch.full((3,), 1 - kept))


def test_weight_averaging_validates_saves_and_resumes_the_averaged_weights(cells, tmp_path):
    first = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="ema", ema_decay=0.9, **(TINY | {"epochs": 1}))
    train(first)
    result = train(TrainConfig(**(first.to_dict() | {"epochs": 2})), resume=True)
    run = tmp_path / "ema"
    last = load_checkpoint(run / "last.ckpt")
    averaged, current = last["state_dict"], last["current_model_state"]
    weights = [k for k in averaged if k.startswith("model.") and averaged[k].is_floating_point()]
    assert any(not torch.equal(averaged[k], current[k]) for k in weights), "the average must differ from the weights"
    # the average went on over the resumed epoch instead of starting again: one update per optimiser step
    assert int(last["averaging_state"]["n_averaged"]) == last["global_step"] == 4
    # validation scored the averaged weights, and model/ holds them: evaluating it gives the logged best mIoU
    metrics = evaluate(run, cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert metrics.mean_iou == pytest.approx(result.best_miou, abs=1e-5)


@pytest.mark.parametrize("tta", ["hflip", "flips", "d4"])
def test_evaluate_with_tta_scores_the_mean_of_the_transformed_predictions(cells, tmp_path, tta):
    import numpy as np
    from PIL import Image

    from pixelwise.models import create_model

    torch.manual_seed(0)
    options = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    model = create_model("unet", in_channels=1, classes=2, **options).eval()  # random weights: not symmetric
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # scores that vary over the image, so that both classes are predicted
        head.weight.mul_(100)
        head.bias.zero_()
    model.save_pretrained(tmp_path / "m")  # a bare saved model sees the [0, 1] image unchanged
    views = {
        "hflip": [(0, False), (0, True)],
        "flips": [(0, False), (0, True), (2, True), (2, False)],
        "d4": [(k, f) for f in (0, 1) for k in range(4)],
    }[tta]
    matrix = np.zeros((2, 2), np.int64)
    for path in sorted((cells / "val" / "images").glob("*.png")):
        image = torch.from_numpy(np.asarray(Image.open(path), np.float32) / 255)[None, None]
        mean = 0
        for k, flip in views:  # the oracle: transform, predict, transform back, average probabilities
            view = torch.rot90(image.flip(-1) if flip else image, k, (-2, -1))
            with torch.no_grad():
                probs = torch.rot90(model(view).softmax(1), -k, (-2, -1))
            mean = mean + (probs.flip(-1) if flip else probs) / len(views)
        truth = np.asarray(Image.open(cells / "val" / "masks" / path.name)).astype(np.int64)
        np.add.at(matrix, (truth.ravel(), mean.argmax(1)[0].numpy().ravel()), 1)
    iou = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
    with_tta = evaluate(tmp_path / "m", cells, split="val", out_dir=tmp_path / "e1", progress=False, tta=tta)
    plain = evaluate(tmp_path / "m", cells, split="val", out_dir=tmp_path / "e2", progress=False)
    assert with_tta.mean_iou == pytest.approx(iou.mean(), abs=1e-6)
    assert with_tta.mean_iou != pytest.approx(plain.mean_iou, abs=1e-4)
    with pytest.raises(ConfigError, match="did you mean 'd4'"):
        evaluate(tmp_path / "m", cells, split="val", out_dir=tmp_path / "e3", progress=False, tta="d8")


def test_existing_run_is_not_overwritten(cells, tmp_path):
    train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", **(TINY | {"epochs": 1})))
    before = (tmp_path / "r" / "last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; continue it with --resume"):
        train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", **TINY))
    assert (tmp_path / "r" / "last.ckpt").read_bytes() == before


def test_a_config_that_cannot_build_its_model_leaves_no_run_behind(cells, tmp_path):
    bad = TINY | {"model_options": {"decoder_chanels": [8]}}
    with pytest.raises(ConfigError, match="decoder_channels"):
        train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", **bad))
    assert not (tmp_path / "r").exists()
    train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="r", **(TINY | {"epochs": 1})))  # the name is free
    assert (tmp_path / "r" / "last.ckpt").is_file()


def test_bad_data_stops_before_training_with_the_report(cells, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cells, broken)
    (broken / "train" / "masks" / "0003.png").unlink()
    (broken / "train" / "images" / "0005.png").write_bytes(b"not a png")
    with pytest.raises(PixelwiseError) as info:
        train(TrainConfig(data=str(broken), runs_dir=str(tmp_path / "runs"), name="x", **TINY))
    assert "0003" in str(info.value) and "0005" in str(info.value)
    assert not (tmp_path / "runs" / "x" / "last.ckpt").exists()


def test_classes_inconsistent_with_masks(cells, tmp_path):
    import shutil

    data = tmp_path / "no-class-file"
    shutil.copytree(cells, data)
    (data / "classes.yaml").unlink()
    with pytest.raises(PixelwiseError, match=r"0000\.png") as info:  # names a file with the bad id
        train(TrainConfig(data=str(data), runs_dir=str(tmp_path / "runs"), classes=1, **TINY))
    assert "1" in str(info.value)


def test_classes_inconsistent_with_class_file(cells, tmp_path):
    with pytest.raises(PixelwiseError, match="num_classes=1 but the class list has 2 classes"):
        train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), classes=1, **TINY))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("model", "unett", "did you mean 'unet'"), ("loss", "dicee", "did you mean 'dice'")],
)
def test_unknown_names_are_short_cli_errors(cells, tmp_path, option, value, message):
    process = _cli(
        "train",
        "--data",
        str(cells),
        "--runs-dir",
        str(tmp_path),
        f"--{option}",
        value,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    assert message in err and "Traceback" not in err


def test_resume_after_kill_9(cells, tmp_path):
    args = [
        "train",
        "--data",
        str(cells),
        "--runs-dir",
        str(tmp_path),
        "--name",
        "k",
        "--epochs",
        "6",
        "--batch-size",
        "4",
        "--crop",
        "64",
        "--encoder",
        "resnet18",
        "--no-progress",
        "--model-options",
        "{encoder_depth: 3, decoder_channels: [32, 16, 8]}",
        "--samples-per-epoch",
        "16",
    ]
    process = _cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "k"
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / "last.ckpt").is_file(), "the first epoch's checkpoint must be on disk"
    done = len(_rows(run))
    assert done < 6, "the run was meant to be killed before it finished"
    resumed = _cli("train", "--resume", str(run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    epochs = [int(r["epoch"]) for r in _rows(run)]
    assert epochs == list(range(6)), epochs
    assert (run / "model" / "model.safetensors").is_file()


def test_ddp_two_cpu_processes_reduce_metrics(cells, tmp_path):
    process = _cli(
        "train",
        "--data",
        str(cells),
        "--runs-dir",
        str(tmp_path),
        "--name",
        "ddp",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--crop",
        "64",
        "--encoder",
        "resnet18",
        "--no-progress",
        "--model-options",
        "{encoder_depth: 3, decoder_channels: [32, 16, 8]}",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    run = tmp_path / "ddp"
    logged = float(_rows(run)[-1]["val_miou"])
    # each process validated half of the 4 images; the logged value must cover all of them
    metrics = evaluate(run, cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert metrics.mean_iou == pytest.approx(logged, abs=1e-5)


def test_clock_progress_anneals_the_schedule():
    from pixelwise.training.task import LRFactor

    factor = LRFactor("cosine", warmup_steps=0, total_steps=10_000)
    assert factor(1) > 0.99
    factor.clock_progress = 0.5  # half the time available for training is used: half-way down the cosine
    assert factor(1) == pytest.approx(0.5, abs=1e-3)
    factor.clock_progress = 1.0
    assert factor(1) == pytest.approx(0.0, abs=1e-9), "the budget is spent: the schedule must have ended"


def test_rescale_resizes_image_and_masks_consistently():
    import torch

    from pixelwise.training.data import rescale

    mask = torch.zeros(40, 60, dtype=torch.int64)
    mask[10:30, 20:40] = 1
    sample = rescale({"image": mask[None].float(), "mask": mask}, 0.5)
    assert sample["image"].shape == (1, 20, 30) and sample["mask"].shape == (20, 30)
    assert sample["mask"].dtype == torch.int64 and set(sample["mask"].unique().tolist()) == {0, 1}
    assert int(sample["mask"].sum()) == 10 * 10


def test_reduced_scale_training_is_evaluated_at_full_resolution(cells, tmp_path):
    import json

    train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="half", scale=0.5, **(TINY | {"crop": 32})))
    assert json.loads((tmp_path / "half" / "model" / "preprocessing.json").read_text())["scale"] == 0.5
    metrics = evaluate(tmp_path / "half", cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert sum(metrics.support) == 4 * 64 * 64  # every full-resolution pixel was scored


def test_mask_offset_shifts_the_images_onto_their_masks_in_training_and_prediction(cells, tmp_path):
    import dataclasses

    import numpy as np
    from scipy import ndimage

    from pixelwise.data import SegmentationFolder
    from pixelwise.evaluate import load_model
    from pixelwise.training.data import SegmentationDataModule

    offset = (-0.5, 0.25)
    config = TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="s", mask_offset=list(offset), **TINY)
    result = train(config)

    def shifted(image):  # the independent oracle: scipy's linear shift, edges repeated
        return torch.from_numpy(ndimage.shift(image.numpy(), (0,) * (image.ndim - 2) + offset, order=1, mode="nearest"))

    raw = SegmentationFolder(cells, split="val")[0]["image"]
    data = SegmentationDataModule(config, num_classes=2)
    data.setup()
    torch.testing.assert_close(data.val_set[0]["image"], shifted(raw))
    # the saved model shifts what it is given the same way, before the flips of test-time augmentation
    loaded = load_model(tmp_path / "s")
    assert loaded.mask_offset == offset
    unshifted = dataclasses.replace(loaded, mask_offset=(0.0, 0.0))
    for tta in (None, "d4"):
        expected = pixelwise.Predictor(unshifted, tta=tta).predict(shifted(raw[None])[0])
        np.testing.assert_allclose(pixelwise.Predictor(loaded, tta=tta).predict(raw), expected, atol=1e-6)
        probabilities = pixelwise.Predictor.from_pretrained(tmp_path / "s", tta=tta).predict(raw[0].numpy())
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # so validation during training and evaluate afterwards score the same predictions
    metrics = evaluate(tmp_path / "s", cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert metrics.mean_iou == pytest.approx(result.best_miou, abs=1e-5)


def test_train_notes_masks_drawn_off_the_image_edges(cells, tmp_path, caplog):
    data = tmp_path / "off"
    for split in ("train", "val"):
        edge_pairs(data / split, (-0.5, 0.0))  # masks half a pixel above the image's edges
    with caplog.at_level("INFO"):
        train(TrainConfig(data=str(data), runs_dir=str(tmp_path), name="off", **TINY))
    assert '--mask-offset "[-0.5, 0.0]"' in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):  # given the offset, or for data without one, there is nothing to say
        train(TrainConfig(data=str(data), runs_dir=str(tmp_path), name="given", mask_offset=[-0.5, 0], **TINY))
        train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="cells", **TINY))
    assert "--mask-offset" not in caplog.text


def test_unet2015_trains_on_mirrored_tiles_and_is_scored_on_whole_images(cells, tmp_path, caplog):
    """The paper's network through the training loop: valid-size input tiles with mirrored context,
    the loss on the smaller output tile, whole validation images predicted mirror-padded."""
    from pixelwise.data import SegmentationFolder
    from pixelwise.inference import Predictor, RuntimeOptions, TilingOptions
    from pixelwise.metrics import ConfusionMatrix
    from pixelwise.training.task import training_tile

    paper = pixelwise.UNet2015()
    assert training_tile(paper, 570) == (572, 92)  # the input tile rounds up to a valid size
    with pytest.raises(ConfigError, match="--crop"):
        training_tile(paper, None)
    options = {"model": "unet2015", "model_options": {"base_channels": 8, "depth": 2, "batchnorm": True}}
    result = train(TrainConfig(data=str(cells), runs_dir=str(tmp_path), name="u", **(TINY | options | {"crop": 40})))
    assert yaml.safe_load((tmp_path / "u" / "config.yaml").read_text())["crop"] == 40  # as the user gave it
    tile, border = training_tile(pixelwise.UNet2015(base_channels=1, depth=2), 40)
    assert f"{tile}×{tile} input tiles (--crop 40)" in caplog.text and f"padded by {border} px" in caplog.text
    metrics = evaluate(tmp_path / "u", cells, split="val", out_dir=tmp_path / "eval", progress=False)
    assert sum(metrics.support) == 4 * 64 * 64  # every pixel of the 64×64 images, none lost to the border
    assert metrics.mean_iou == pytest.approx(result.best_miou, abs=1e-5)
    # an independent path: the tiled predictor (small tiles, mirror-padded windows) gives the same labels
    predictor = Predictor(tmp_path / "u", tiling=TilingOptions(tile_size=36), runtime=RuntimeOptions(fold_bn=False))
    confusion = ConfusionMatrix(2)
    val = SegmentationFolder(cells, split="val")
    for item in (val[i] for i in range(len(val))):
        labels = torch.from_numpy(predictor.predict_labels(item["image"]).astype("int64"))
        confusion.update(labels[None], item["mask"][None])
    assert confusion.compute()["mean_iou"].item() == pytest.approx(metrics.mean_iou, abs=1e-4)


def test_demo_command_plumbing(tmp_path):
    """The demo end to end with a tiny budget: the files it promises exist (the IoU target needs the full budget)."""
    import json

    from pixelwise.demo import run_demo

    metrics = run_demo(tmp_path / "demo", max_minutes=0.05, progress=False)
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for key in ("iou", "mean_iou", "f1", "mean_f1", "accuracy"):
        assert key in saved
    assert saved["mean_iou"] == pytest.approx(metrics.mean_iou)
    assert (tmp_path / "demo" / "report.html").is_file()
    predictions = tmp_path / "demo" / "predictions"  # as `pixelwise predict --overlay` names them
    assert len(list(predictions.glob("*_overlay.png"))) == 4 and len(list(predictions.glob("00??.png"))) == 4


def test_class_weightings_are_validated():
    assert TrainConfig(data="d", class_weights="sqrt_median").validate().class_weights == "sqrt_median"
    with pytest.raises(ConfigError, match="'median' or 'sqrt_median' or a list"):
        TrainConfig(data="d", class_weights="mean").validate()


def test_train_help_comes_from_the_config_docstrings():
    from pixelwise.cli.train import field_help

    helps = field_help()
    assert "median-frequency" in helps["class_weights"]
    assert helps["channels_last"].startswith("Train in the channels-last")


def test_list_options_parse_from_the_command_line():
    import argparse

    from pixelwise.cli.train import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--mask-offset", "[-0.5, 0.25]", "--class-weights", "[1, 2.5]", "--epochs", "3"])
    config = resolve(None, {"data": "d", **{k: v for k, v in vars(args).items() if v is not None}})
    assert (config.mask_offset, config.class_weights, config.epochs) == ([-0.5, 0.25], [1, 2.5], 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[01]?", "[01]?"), ("2[0-4]", "2[0-4]"), ("[00, 01, 19]", ["00", "01", "19"]), ("slice_*", "slice_*")],
)
def test_file_selections_parse_from_the_command_line(text, expected):
    import argparse

    from pixelwise.cli.train import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--train-files", text, "--val-files", text])
    assert args.train_files == expected
    assert args.val_files == expected


def test_adamw_runs_fused_and_matches_the_loop_implementation():
    from pixelwise.training.task import make_optimizer

    torch.manual_seed(0)
    model = pixelwise.create_model("unet", encoder_name="resnet18", classes=2, decoder_channels=[16, 8, 8, 8, 8])
    reference = pixelwise.create_model("unet", encoder_name="resnet18", classes=2, decoder_channels=[16, 8, 8, 8, 8])
    reference.load_state_dict(model.state_dict())
    config = TrainConfig(data="-", lr=1e-2, weight_decay=1e-2)
    fused = make_optimizer(list(model.parameters()), config)
    assert fused.defaults["fused"]
    loop = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    for _ in range(3):
        for net, optimizer in ((model, fused), (reference, loop)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert not make_optimizer(list(model.parameters()), TrainConfig(data="-", optimizer="sgd")).defaults.get("fused")
