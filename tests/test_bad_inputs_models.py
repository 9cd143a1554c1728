"""Hostile and careless input to models, saved model folders and ``pixelwise evaluate``: every one is
refused with a typed error whose message names the problem and the fix, never with torch's or json's."""

import inspect
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise
from pixelwise.cli import main
from pixelwise.errors import ConfigError, InputSizeError, InputTypeError, WeightsError
from pixelwise.evaluate import evaluate, load_model, read_preprocessing
from pixelwise.instances import model_instance_settings
from pixelwise.models import SegmentationModel, UNet2015, base, create_model

TINY = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4], "classes": 2}
PREPROCESSING = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "input_range": "unit",
    "scale": 1.0,
    "mask_offset": [0.0, 0.0],
    "ignore_index": 255,
    "target": "semantic",
    "separation_gap": 0,
}


def tiny(**options) -> pixelwise.SegmentationModel:
    return create_model("unet", **(TINY | options)).eval()


def model_folder(directory: Path, preprocessing: dict | None = PREPROCESSING, **options) -> Path:
    """A ``runs/<name>/model``-like folder: save_pretrained files plus the preprocessing.json training writes."""
    tiny(**options).save_pretrained(directory)
    if preprocessing is not None:
        (directory / "preprocessing.json").write_text(json.dumps(preprocessing))
    return directory


def run_folder(root: Path) -> Path:
    """``root/{last.ckpt, model/}`` as ``pixelwise train`` leaves a run."""
    model_folder(root / "model")
    state = {f"model.{k}": v for k, v in tiny().state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1}, root / "last.ckpt")
    return root


def data_folder(root: Path, stems: list[str], size: int = 32) -> Path:
    """``root/val/{images,masks}`` with one RGB image and one two-class mask per stem."""
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / "val" / folder).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = (rng.random((size, size)) > 0.5).astype(np.uint8)
        Image.fromarray(image).save(root / "val" / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "val" / "masks" / f"{stem}.png")
    return root


# -- 1. inputs a model cannot take -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (
            torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
            InputTypeError,
            "got uint8 [1, 3, 64, 64]: convert with x.float() / 255",
        ),
        (
            torch.zeros(1, 3, 64, 64, dtype=torch.float64),
            InputTypeError,
            "got float64 [1, 3, 64, 64]: the model computes in float32; use x.float()",
        ),
        (torch.zeros(1, 3, 0, 64), InputSizeError, "got float32 [1, 3, 0, 64]: the image is empty"),
        (torch.zeros(1, 3, 64, 0), InputSizeError, "got float32 [1, 3, 64, 0]: the image is empty"),
        (
            np.zeros((1, 3, 64, 64), np.uint8),
            InputTypeError,
            "got a numpy.ndarray [1, 3, 64, 64]: convert with torch.from_numpy(x).float() / 255",
        ),
        (
            torch.zeros(1, 1, 64, 64),
            InputSizeError,
            "got float32 [1, 1, 64, 64]: give 3-channel images, or build the model with in_channels=1",
        ),
        (torch.zeros(3, 64, 64), InputSizeError, "got float32 [3, 64, 64]: add the batch dimension with x[None]"),
        (torch.zeros(1, 64, 64, 3), InputSizeError, "the channels come last; use x.permute(0, 3, 1, 2)"),
    ],
    ids=["uint8", "float64", "zero-height", "zero-width", "numpy", "one-channel", "no-batch", "channels-last"],
)
def test_model_refuses_input_it_cannot_take(x, error, message):
    model = tiny()
    with pytest.raises(error, match=r"^Unet expects input \[N, 3, H, W\] of floats; .*" + re.escape(message)):
        model(x)


def test_input_check_covers_the_valid_convolution_unet_and_fcn():
    with pytest.raises(InputTypeError, match=r"UNet2015 expects input \[N, 1, H, W\] of floats; got uint8"):
        UNet2015(base_channels=4, depth=2)(torch.zeros(1, 1, 44, 44, dtype=torch.uint8))
    fcn = create_model("fcn8s", encoder_name="resnet18", classes=2)
    with pytest.raises(InputSizeError, match=r"FCN8s expects .* got float32 \[3, 64, 64\]: add the batch dimension"):
        fcn(torch.zeros(3, 64, 64))


def test_a_wrong_input_is_also_a_type_error_and_a_value_error():
    with pytest.raises(TypeError):
        tiny()(torch.zeros(1, 3, 64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"convert with x\.float\(\) \(scaled as the training images were\)"):
        tiny()(torch.zeros(1, 3, 64, 64, dtype=torch.int64))


def test_autocast_may_feed_another_float_precision():
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert tiny()(torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 2, 32, 32)


def test_input_check_keeps_tracing_quiet_and_right():
    model = tiny()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x))
    lines, start = inspect.getsourcelines(SegmentationModel.check_input)
    inside = range(start, start + len(lines))
    from_check = [w for w in record if w.filename == base.__file__ and w.lineno in inside]
    from_torch = [
        w for w in record if issubclass(w.category, torch.jit.TracerWarning) and "pixelwise" not in w.filename
    ]
    assert not from_check and not from_torch  # the check neither branches on traced sizes nor formats them


# -- 2. impossible constructor values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"classes": 0}, "Unet: classes=0 is not valid; give positive integers"),
        ({"classes": -3}, "Unet: classes=-3 is not valid"),
        ({"in_channels": 0}, "Unet: in_channels=0 is not valid"),
        ({"classes": 2.5}, "Unet: classes=2.5 is not valid; give an integer"),
        ({"classes": "2"}, "Unet: classes='2' is not valid; give an integer"),
        ({"in_channels": True}, "Unet: in_channels=True is not valid; give an integer"),
        ({"encoder_depth": 3.0}, "Unet: encoder_depth=3.0 is not valid; give an integer"),
        ({"encoder_depth": 7}, "encoder_depth=7 is out of range; use 1 to 5"),
        ({"decoder_channels": [16, 8]}, "decoder_channels has 2 entries but encoder_depth=3"),
        ({"decoder_channels": [16, 0, 4]}, "Unet: decoder_channels=[16, 0, 4] is not valid; give positive integers"),
        ({"decoder_channels": "abc"}, "Unet: decoder_channels='abc' is not valid; give a list of integers or None"),
        (
            {"decoder_full_resolution_channels": -1},
            "decoder_full_resolution_channels=-1 is not valid; give integers >= 0",
        ),
    ],
)
def test_impossible_constructor_values_are_refused(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_model("unet", **(TINY | options))


def test_constructor_checks_cover_every_architecture():
    with pytest.raises(ConfigError, match=re.escape("UNet2015: classes=0 is not valid")):
        UNet2015(classes=0)
    with pytest.raises(ConfigError, match=re.escape("FCN8s: in_channels=-1 is not valid")):
        create_model("fcn8s", in_channels=-1)
    with pytest.raises(
        ConfigError, match=re.escape("DeepLabV3Plus: decoder_aspp_dropout='high' is not valid; give a number")
    ):
        create_model("deeplabv3plus", decoder_aspp_dropout="high")
    assert tiny(decoder_full_resolution_channels=0).classes == 2  # 0 means "off" where it is the default


# -- 3. damaged model folders and checkpoints ---------------------------------------------------------------------


def test_checkpoint_without_state_dict(tmp_path):
    run = run_folder(tmp_path / "run")
    torch.save({"epoch": 3, "weights": {}}, run / "broken.ckpt")
    with pytest.raises(
        WeightsError, match=r"broken\.ckpt' is not a pixelwise training checkpoint: it has no 'state_dict'"
    ):
        load_model(run / "broken.ckpt")
    torch.save(torch.zeros(3), run / "tensor.ckpt")
    with pytest.raises(WeightsError, match=r"no 'state_dict' \(it holds a Tensor\)"):
        load_model(run / "tensor.ckpt")
    torch.save({"state_dict": {"loss.weight": torch.zeros(1)}}, run / "lossonly.ckpt")
    with pytest.raises(WeightsError, match=r"its 'state_dict' has no 'model\.\*' weights"):
        load_model(run / "lossonly.ckpt")


def test_checkpoint_outside_a_run_directory(tmp_path):
    run = run_folder(tmp_path / "run")
    (run / "last.ckpt").replace(tmp_path / "stray.ckpt")
    with pytest.raises(ConfigError, match=r"a \.ckpt is read with '.*model/config\.json', which is missing"):
        load_model(tmp_path / "stray.ckpt")


def test_checkpoint_of_another_class_count_names_the_shapes(tmp_path):
    run = run_folder(tmp_path / "run")
    state = {f"model.{k}": v for k, v in tiny(classes=5).state_dict().items()}
    torch.save({"state_dict": state}, run / "other.ckpt")
    with pytest.raises(WeightsError) as info:
        load_model(run / "other.ckpt")
    message = str(info.value)
    assert "other.ckpt' does not match the model in" in message and "model/config.json" in message
    assert "wrongly shaped tensors (2): head.0.weight [5, 4, 3, 3] (the model has [2, 4, 3, 3])" in message
    assert "another architecture or class count" in message


def test_weights_of_another_architecture_name_missing_and_unexpected_keys(tmp_path):
    model_folder(tmp_path / "unet")
    create_model("fpn", encoder_name="resnet18", encoder_depth=3, classes=2).save_pretrained(tmp_path / "fpn")
    (tmp_path / "fpn" / "model.safetensors").replace(tmp_path / "unet" / "model.safetensors")
    with pytest.raises(WeightsError) as info:
        load_model(tmp_path / "unet")
    message = str(info.value)
    assert "model.safetensors' does not match the model in config.json: missing keys (" in message
    assert re.search(r"unexpected keys \(\d+\): decoder\.\S+, .*, \.\.\.", message)
    assert "another architecture or class count" in message


def test_safetensors_with_a_wrongly_shaped_tensor(tmp_path):
    from safetensors.torch import save_file

    folder = model_folder(tmp_path / "m")
    state = tiny().state_dict()
    state["head.0.bias"] = torch.zeros(7)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        WeightsError, match=re.escape("wrongly shaped tensors (1): head.0.bias [7] (the model has [2])")
    ):
        pixelwise.from_pretrained(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "preprocessing.json' is damaged: it is not valid JSON"),
        ("[1, 2]", "preprocessing.json' is damaged: it holds a JSON list, not an object"),
        (json.dumps(PREPROCESSING | {"mean": "0.5"}), "'mean' must be a list of numbers, got '0.5'"),
        (json.dumps(PREPROCESSING | {"std": [0.2, 0, 0.2]}), "'std' must be positive"),
        (json.dumps(PREPROCESSING | {"scale": "half"}), "'scale' must be a number, got 'half'"),
        (json.dumps(PREPROCESSING | {"scale": 0}), "'scale' must be positive"),
        (json.dumps(PREPROCESSING | {"target": "instances"}), "'target' must be one of 'semantic', 'boundary'"),
        (json.dumps(PREPROCESSING | {"separation_gap": 1.5}), "'separation_gap' must be an integer >= 0, got 1.5"),
        (json.dumps(PREPROCESSING | {"mask_offset": [1.0]}), "'mask_offset' must be [dy, dx], got [1.0]"),
        ('{"mean": [NaN], "std": [1]}', "'mean' must be finite"),
    ],
)
def test_damaged_preprocessing_json_names_the_file_and_the_key(tmp_path, text, message):
    folder = model_folder(tmp_path / "m")
    (folder / "preprocessing.json").write_text(text)
    for read in (load_model, model_instance_settings):
        with pytest.raises(WeightsError, match=re.escape(message)) as info:
            read(folder)
        assert str(folder / "preprocessing.json") in str(info.value)


def test_preprocessing_that_does_not_fit_the_model(tmp_path):
    folder = model_folder(tmp_path / "m", preprocessing=PREPROCESSING | {"mean": [0.5, 0.5]})
    with pytest.raises(WeightsError, match=re.escape("'mean' has 2 values and 'std' 3 but the model takes 3 channels")):
        load_model(folder)


def test_model_folder_without_normalisation(tmp_path):
    folder = model_folder(tmp_path / "m", preprocessing={"std": [1, 1, 1], "target": "boundary"})
    message = "preprocessing.json' is damaged: the required key 'mean' is missing"
    with pytest.raises(WeightsError, match=re.escape(message)):
        load_model(folder)
    assert model_instance_settings(folder)["target"] == "boundary"  # which needs no normalisation


def test_preprocessing_defaults(tmp_path):
    bare = model_folder(tmp_path / "bare", preprocessing=None)
    assert read_preprocessing(bare, in_channels=3)["mean"] == [0.0, 0.0, 0.0]
    old = model_folder(tmp_path / "old", preprocessing={"mean": [0.5], "std": [0.25]})  # one value for all
    facts = read_preprocessing(old, in_channels=3)
    assert facts["scale"] == 1.0 and facts["target"] == "semantic" and facts["mask_offset"] == (0.0, 0.0)
    assert load_model(old).std.flatten().tolist() == [0.25]
    assert model_instance_settings(old) == {"target": "semantic", "separation_gap": 0}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{oops", "config.json' is damaged: it is not valid JSON"),
        ('"unet"', "config.json' is damaged: it holds a JSON str"),
        ({"arch": "unet", "options": [1, 2]}, "'options' must map option names to values, got list [1, 2]"),
        ({"arch": 3, "options": {}}, "'arch' must be an architecture name, got 3"),
        ({"arch": "unett", "options": {}}, "describes a model pixelwise cannot build: unknown architecture 'unett'"),
        ({"arch": "unet", "options": {"classes": "two"}}, "cannot build: Unet: classes='two' is not valid"),
    ],
)
def test_damaged_config_json_names_the_file(tmp_path, config, message):
    folder = model_folder(tmp_path / "m")
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(WeightsError, match=re.escape(message)) as info:
        load_model(folder)
    assert str(folder / "config.json") in str(info.value)


def test_cli_message_for_a_damaged_model_folder(tmp_path, capsys):
    run = run_folder(tmp_path / "run")
    (run / "model" / "preprocessing.json").write_text("{")
    data = data_folder(tmp_path / "data", ["a"])
    rc = main(["evaluate", "--checkpoint", str(run / "last.ckpt"), "--data", str(data), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("pixelwise evaluate: error: ")
    assert "preprocessing.json' is damaged: it is not valid JSON" in err


# -- 4. file names that are not UTF-8 ----------------------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="Windows file names are Unicode")
def test_evaluate_with_a_non_utf8_file_name(tmp_path):
    stem = os.fsdecode(b"img\xff")
    data = data_folder(tmp_path / os.fsdecode(b"data\xfe"), [stem])
    out = tmp_path / "eval"
    metrics = evaluate(model_folder(tmp_path / "m"), data, "val", out_dir=out, progress=False)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<title>pixelwise evaluation: data\\xfe/val</title>" in page
    assert "<strong>img\\xff</strong>" in page
    assert 'src="gallery/img%FF.png"' in page  # the file's own bytes, so that browsers find it
    assert (out / "gallery" / f"{stem}.png").is_file()
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["images"] == metrics.images == 1


# -- 5. the gallery shows what was asked ---------------------------------------------------------------------------


@pytest.mark.parametrize(("images", "asked", "shown"), [(3, 8, 3), (5, 4, 4), (12, 8, 8), (1, 8, 1)])
def test_gallery_shows_all_images_or_exactly_the_number_asked(tmp_path, images, asked, shown):
    data = data_folder(tmp_path / "data", [f"{i:02d}" for i in range(images)])
    out = tmp_path / "eval"
    evaluate(model_folder(tmp_path / "m"), data, "val", out_dir=out, gallery_size=asked, progress=False)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert len(list((out / "gallery").glob("*.png"))) == shown
    assert page.count('<figure><div class="columns"') == shown
    assert f'<p id="gallery-count">{shown} of {images} images, from the worst to the best mean IoU.</p>' in page
