"""The layout core: detection, --format, split aliases, file selection, check-data --json, class-file value maps."""

import json

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import LAYOUTS, SegmentationFolder, check_dataset, detect_layout, open_layout
from pixelwise.data.layouts.base import Layout, resolve_split
from pixelwise.errors import ConfigError, DataError


def write_pairs(base, masks, prefix="p"):
    """Write ``images/`` + ``masks/`` under ``base``: one RGB image per mask, named ``{prefix}{i}``."""
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir(parents=True)
    for i, mask in enumerate(masks):
        image = np.stack([mask.astype(np.int64) * 40 % 256] * 3, axis=-1).astype(np.uint8)
        Image.fromarray(image).save(base / "images" / f"{prefix}{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(base / "masks" / f"{prefix}{i}.png")


def random_masks(n, k, seed, shape=(12, 16)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, k, size=shape) for _ in range(n)]


def test_every_layout_is_registered_in_detection_order():
    names = list(LAYOUTS)
    assert names.index("folder") == len(names) - 2 and names[-1] == "generic"
    assert {"coco", "voc", "cityscapes", "ade", "cvat", "labelstudio"} <= set(names)


def test_check_data_json_counts_every_split_as_an_independent_bincount(tmp_path, capsys):
    train, val = random_masks(3, 3, 0), random_masks(2, 3, 1)
    train[0][0, :4] = 255  # ignored pixels
    write_pairs(tmp_path / "train", train)
    write_pairs(tmp_path / "val", val)
    assert main(["check-data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = np.bincount(np.concatenate([m.ravel() for m in train + val]), minlength=256)
    assert report["layout"] == "folder"
    assert report["splits"] == {"train": 3, "val": 2}
    assert report["num_pairs"] == 5 and report["num_classes"] == 3
    assert [c["pixels"] for c in report["classes"]] == expected[:3].tolist()
    assert report["ignored_pixels"] == int(expected[255]) == 4
    assert report["ok"] is True and report["problems"] == []


def test_check_data_json_of_one_split_and_its_problems(tmp_path, capsys):
    write_pairs(tmp_path / "train", random_masks(2, 2, 0))
    write_pairs(tmp_path / "val", random_masks(1, 2, 1))
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "train" / "masks" / "stray.png")
    assert main(["check-data", str(tmp_path), "--split", "training", "--json"]) == 1  # an alias of train
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 2}
    assert [(p["file"].endswith("stray.png"), "no image" in p["message"]) for p in report["problems"]] == [(True, True)]


def test_split_aliases_and_their_errors(tmp_path):
    assert resolve_split("train", ["training", "validation"], tmp_path) == "training"
    assert resolve_split("val", ["train2017", "val2017"], tmp_path) == "val2017"
    assert resolve_split("VAL", ["train", "valid"], tmp_path) == "valid"
    with pytest.raises(DataError, match=r"no split 'val' \(it matches several \(val2016, val2017\)\)"):
        resolve_split("val", ["val2016", "val2017"], tmp_path)
    with pytest.raises(DataError, match=r"no split 'test' \(no split has that name\); its splits: train, val\."):
        resolve_split("test", ["train", "val"], tmp_path)


def test_a_forced_format_and_an_unknown_one(tmp_path):
    write_pairs(tmp_path, random_masks(2, 2, 0))
    scan = open_layout(tmp_path, format="folder")
    assert scan.format == "folder" and [r.name for r in scan.records] == ["p0", "p1"]
    with pytest.raises(ConfigError, match="unknown data format 'coc'; did you mean 'coco'"):
        SegmentationFolder(tmp_path, format="coc")
    with pytest.raises(DataError, match="does not exist"):
        open_layout(tmp_path / "nowhere", format="folder")


def test_a_path_no_layout_reads_lists_the_layouts(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    with pytest.raises(DataError, match=r"not a data set layout pixelwise knows(.|\n)*folder: images/ \+ masks/"):
        detect_layout(tmp_path / "photos")


def test_an_unknown_layout_option_names_the_options(tmp_path):
    write_pairs(tmp_path, random_masks(1, 2, 0))
    with pytest.raises(
        ConfigError, match="data option 'overlap' is not one the folder layout takes; it takes no options"
    ):
        SegmentationFolder(tmp_path, layout_options={"overlap": "later"})


def test_files_selection_keeps_only_the_problems_of_selected_files(tmp_path):
    write_pairs(tmp_path, random_masks(3, 2, 0))
    (tmp_path / "masks" / "p2.png").unlink()
    assert len(SegmentationFolder(tmp_path, files=["p0", "p1"])) == 2  # p2's missing mask is not a problem here
    with pytest.raises(DataError, match=r"do not pair up.*images/p2\.png: image has no mask"):
        SegmentationFolder(tmp_path)


def test_a_class_file_map_and_ignore_ranges_remap_the_stored_values(tmp_path):
    stored = np.array([[7, 8, 11, 0], [200, 201, 7, 8]], np.uint8)
    write_pairs(tmp_path, [stored])
    (tmp_path / "classes.yaml").write_text(
        "classes: [road, car, sky]\nmap: {7: 0, 8: 1, 11: 2}\nignore: [0, [200, 254]]\n"
    )
    expected = np.array([[0, 1, 2, 255], [255, 255, 0, 1]])
    item = SegmentationFolder(tmp_path)[0]
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    report = check_dataset(tmp_path)
    assert report.class_pixels.tolist() == [2, 2, 1] and report.void_pixels == 3 and report.ok
    assert report.mask_values_from == "layout"


def test_a_registered_layout_is_detected_and_read(tmp_path, monkeypatch):
    """A new layout is one module: a Layout registered in LAYOUTS is found by detection, with no other change."""
    from pixelwise.data import layouts
    from pixelwise.data.layouts import folder

    def detect(root):
        return (root / "pairs.txt").is_file()

    def scan(root, split, **options):
        base = folder.scan(root / "inner", None)
        base.format = "pairs"
        return base

    write_pairs(tmp_path / "inner", random_masks(2, 2, 0))
    (tmp_path / "pairs.txt").write_text("p0 p1\n")
    monkeypatch.setattr(layouts, "LAYOUTS", {"pairs": Layout("pairs", "a test layout", detect, lambda r: [], scan)})
    assert detect_layout(tmp_path).name == "pairs"
    assert len(SegmentationFolder(tmp_path)) == 2
    with pytest.raises(ValueError, match="already registered"):
        layouts.register_layout(layouts.LAYOUTS["pairs"])


def test_evaluate_reads_the_training_data_with_the_runs_layout_options(tmp_path):
    """Evaluating on the run's own training data reuses its data_format and data_options; other data: none."""
    from pixelwise.inference.scoring_data import training_layout

    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(
        f"data: {tmp_path / 'data'}\ndata_format: coco\ndata_options: {{background: false}}\n"
    )
    assert training_layout(tmp_path / "run", tmp_path / "data") == {
        "format": "coco",
        "layout_options": {"background": False},
    }
    assert training_layout(tmp_path / "run", tmp_path / "other") == {"format": None, "layout_options": None}
    assert training_layout(None, tmp_path / "data") == {"format": None, "layout_options": None}
