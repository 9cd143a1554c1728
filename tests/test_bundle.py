"""The trained-model bundle: today's folders load, older folders get the defaults, and both
round trips (folder, ONNX metadata) give back what went in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixelwise._version import __version__
from pixelwise.bundle import PREPROCESSING_DEFAULTS, ModelBundle, Preprocessing
from pixelwise.data import ClassInfo
from pixelwise.errors import WeightsError
from pixelwise.models import create_model

TINY = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4], "classes": 2}
TODAY = {  # the keys training.run.export_model writes, in its order
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.25, 0.3],
    "input_range": "unit",
    "scale": 0.5,
    "mask_offset": [0.5, -1.0],
    "ignore_index": 255,
    "mask_values": {"255": 1},
    "target": "boundary",
    "separation_gap": 2,
}
CLASSES_YAML = "ignore_index: 255\nclasses:\n  - {name: sky, id: 0}\n  - {name: cell, id: 1}\n"


def tiny():
    return create_model("unet", **TINY).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_folder_in_todays_format_loads(tmp_path: Path):
    model = tiny()
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessing.json").write_text(json.dumps(TODAY, indent=2) + "\n")
    (tmp_path / "classes.yaml").write_text(CLASSES_YAML)
    bundle = ModelBundle.load(tmp_path)
    pre = bundle.preprocessing
    assert (pre.mean, pre.std, pre.scale, pre.mask_offset) == (TODAY["mean"], TODAY["std"], 0.5, (0.5, -1.0))
    assert (pre.input_range, pre.ignore_index, pre.mask_values) == ("unit", 255, {255: 1})
    assert (pre.target, pre.separation_gap, pre.extra) == ("boundary", 2, {})
    assert bundle.classes.names == ["sky", "cell"] and bundle.classes.ignore_index == 255
    assert bundle.version == __version__ and bundle.in_channels == 3
    assert same_weights(bundle.model, model)


def test_a_run_directory_loads_its_model_folder(tmp_path: Path):
    tiny().save_pretrained(tmp_path / "model")
    assert ModelBundle.load(tmp_path).classes.names == ["class_0", "class_1"]


def test_an_older_folder_gets_the_documented_defaults(tmp_path: Path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "preprocessing.json").write_text(json.dumps({"mean": [0.5], "std": [0.25], "note": "kept"}))
    bundle = ModelBundle.load(tmp_path)
    pre = bundle.preprocessing
    for key, default in PREPROCESSING_DEFAULTS.items():
        assert getattr(pre, key) == default, key
    assert (pre.mean, pre.std, pre.extra) == ([0.5], [0.25], {"note": "kept"})
    assert bundle.classes == ClassInfo.default(2)


def test_a_bare_save_pretrained_folder_gets_neutral_normalisation(tmp_path: Path):
    tiny().save_pretrained(tmp_path)
    pre = ModelBundle.load(tmp_path).preprocessing
    assert (pre.mean, pre.std, pre.scale) == ([0.0] * 3, [1.0] * 3, 1.0)


def test_a_damaged_preprocessing_file_names_file_and_key(tmp_path: Path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "preprocessing.json").write_text(json.dumps(TODAY | {"scale": 0}))
    with pytest.raises(WeightsError, match=r"preprocessing\.json.*'scale' must be positive"):
        ModelBundle.load(tmp_path)


def test_save_then_load_gives_the_same_bundle(tmp_path: Path):
    pre = Preprocessing(
        [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], "unit", 0.5, (0.5, -1.0), 255, {255: 1}, "boundary", 2, {"note": 1}
    )
    classes = ClassInfo(["sky", "cell"], [0, 1], [(0, 0, 0), (255, 0, 0)], 255)
    bundle = ModelBundle(tiny(), pre, classes)
    folder = bundle.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "classes.yaml",
        "config.json",
        "model.safetensors",
        "preprocessing.json",
    ]
    assert list(json.loads((folder / "preprocessing.json").read_text()))[:9] == list(TODAY)
    loaded = ModelBundle.load(folder)
    assert loaded.preprocessing == bundle.preprocessing
    assert loaded.classes == bundle.classes
    assert (loaded.version, loaded.architecture, loaded.in_channels) == (
        bundle.version,
        bundle.architecture,
        bundle.in_channels,
    )
    assert same_weights(loaded.model, bundle.model)


@pytest.mark.parametrize("raw", [False, True])
def test_onnx_metadata_round_trip(raw: bool):
    pre = Preprocessing([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], scale=0.5, mask_offset=(0.5, -1.0))
    bundle = ModelBundle(tiny(), pre, ClassInfo(["sky", "cell"], [0, 1]))
    meta = bundle.to_onnx_metadata(raw)
    assert all(isinstance(value, str) for value in meta.values())
    back = ModelBundle.from_onnx_metadata(meta)
    assert back.model is None
    assert back.preprocessing == pre
    assert back.classes == bundle.classes
    assert (back.version, back.architecture, back.in_channels) == (__version__, json.loads(meta["architecture"]), 3)
    assert back.graph["input_format"] == ("uint8-raw" if raw else "float-normalised")
    assert back.to_onnx_metadata() == meta  # the graph facts survive without the model


def test_onnx_metadata_with_a_bad_value_names_the_key():
    meta = ModelBundle(tiny()).to_onnx_metadata() | {"std": "[0.0]"}
    with pytest.raises(WeightsError, match=r"model\.onnx.*'std' must be positive"):
        ModelBundle.from_onnx_metadata(meta, source="the metadata of 'model.onnx'")
