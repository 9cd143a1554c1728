"""Pascal VOC, CVAT "Segmentation mask 1.1" and ADE20K / MMSegmentation trees built from scratch: detection,
check-data counts against an independent bincount, masks and instance labels to the pixel, the errors a
user meets (a split list naming absent files, a CVAT export without images, SBD's .mat files), and training."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import SegmentationFolder, check_dataset, detect_layout
from pixelwise.data.classes import default_palette
from pixelwise.data.layouts import ade, cvat
from pixelwise.errors import ConfigError, DataError
from pixelwise.evaluate import evaluate
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train
from settings import TINY_TRAIN

H, W = 32, 48
BORDER = 255
VOC_PALETTE = [channel for colour in default_palette() for channel in colour]


def class_mask(seed: int, classes: tuple[int, ...]) -> np.ndarray:
    """A mask of rectangles of the given class ids on background 0 (the expected masks of the tests)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    for class_id in classes:
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
        mask[y : y + rng.integers(4, 12), x : x + rng.integers(4, 16)] = class_id
    return mask


def object_mask(mask: np.ndarray) -> np.ndarray:
    """Object ids 1..N: one object per class id present (drawn from the class mask by the test itself)."""
    objects = np.zeros_like(mask)
    for number, class_id in enumerate(sorted(set(np.unique(mask).tolist()) - {0, BORDER}), start=1):
        objects[mask == class_id] = number
    return objects


def save_image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def save_palette(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE)
    image.save(path)


def save_rgb(path, array, colours):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.zeros((256, 3), np.uint8)
    for value, colour in colours.items():
        table[value] = colour
    Image.fromarray(table[array]).save(path)


# ---------------------------------------------------------------- Pascal VOC


def make_voc(root, names=("a", "b", "c", "d", "e", "f"), val=("e", "f")):
    """root/VOCdevkit/VOC2012 with palette masks (a 255 border round every object) and SegmentationObject."""
    tree = root / "VOCdevkit" / "VOC2012"
    masks, objects = {}, {}
    for i, name in enumerate(names):
        mask = class_mask(i, (1 + i % 20, 15, 7))
        objects[name] = object_mask(mask)
        edge = (mask != np.roll(mask, 1, axis=1)) & (np.arange(W) > 0)  # VOC outlines objects with 255
        mask[edge], objects[name][edge] = BORDER, BORDER
        masks[name] = mask
        save_image(tree / "JPEGImages" / f"{name}.jpg", i)
        save_palette(tree / "SegmentationClass" / f"{name}.png", mask)
        save_palette(tree / "SegmentationObject" / f"{name}.png", objects[name])
    save_image(tree / "JPEGImages" / "unsegmented.jpg", 99)  # VOC holds many more images than masks
    lists = tree / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{n}\n" for n in names if n not in val))
    (lists / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return tree, masks, objects


def test_voc_is_detected_and_check_data_counts_match_a_bincount(tmp_path, capsys):
    tree, masks, _objects = make_voc(tmp_path)
    assert detect_layout(tmp_path).name == detect_layout(tree).name == "voc"
    assert main(["check-data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = np.bincount(np.concatenate([m.ravel() for m in masks.values()]), minlength=256)
    assert report["layout"] == "voc" and report["splits"] == {"train": 4, "val": 2}
    assert report["num_classes"] == 21 and report["classes"][15]["name"] == "person"
    assert [c["pixels"] for c in report["classes"]] == expected[:21].tolist()
    assert report["ignored_pixels"] == int(expected[BORDER]) > 0
    assert report["ok"] is True


def test_voc_masks_and_instances_to_the_pixel(tmp_path):
    _tree, masks, objects = make_voc(tmp_path)
    data = SegmentationFolder(tmp_path, split="train", instances=True)
    assert [item["name"] for item in data] == ["a", "b", "c", "d"]
    assert data.classes.colors[1] == (128, 0, 0) and data.classes.ignore_color == (224, 224, 192)
    for item in data:
        expected = masks[item["name"]]
        assert np.array_equal(item["mask"].numpy(), expected)  # border stays 255 = ignore
        expected_objects = np.where(objects[item["name"]] == BORDER, 0, objects[item["name"]])
        assert np.array_equal(item["instances"].numpy(), expected_objects)  # no ignore in instances: border is 0


def test_voc_without_split_lists_reads_every_mask(tmp_path):
    tree, masks, _objects = make_voc(tmp_path)
    for path in (tree / "ImageSets" / "Segmentation").iterdir():
        path.unlink()
    data = SegmentationFolder(tree)
    assert sorted(r.name for r in data.records) == sorted(masks) and not data.layout.problems


def test_voc_split_list_naming_absent_files_names_the_list_line_and_fix(tmp_path):
    tree, _, _ = make_voc(tmp_path)
    listed = tree / "ImageSets" / "Segmentation" / "train.txt"
    listed.write_text("a\nb\nghost\nunsegmented\n")
    report = check_dataset(tmp_path, split="train")
    messages = {p[1] for p in report.problems if p[0] == str(listed)}
    assert any("line 3: 'ghost' has no image JPEGImages/ghost.jpg" in m and "remove the line" in m for m in messages)
    assert any("line 4" in m and "no mask SegmentationClass/unsegmented.png" in m for m in messages)
    with pytest.raises(DataError, match=r"train\.txt: line 3: 'ghost' has no image"):
        SegmentationFolder(tmp_path, split="train")


def test_sbd_mat_files_are_refused_with_the_fix(tmp_path):
    (tmp_path / "dataset" / "cls").mkdir(parents=True)
    (tmp_path / "dataset" / "cls" / "2008_000002.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    assert detect_layout(tmp_path).name == "voc"
    with pytest.raises(DataError, match=r"cls.*Semantic Boundaries Dataset.*Convert them to palette PNGs"):
        SegmentationFolder(tmp_path)


def test_voc_trains_two_epochs_and_evaluates(tmp_path):
    _, masks, _ = make_voc(tmp_path / "data")
    config = TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path), name="run", **TINY_TRAIN)
    train(config)
    metrics = evaluate(tmp_path / "run", tmp_path / "data", split="val", out_dir=tmp_path / "eval", progress=False)
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    expected = np.bincount(np.concatenate([masks["e"].ravel(), masks["f"].ravel()]), minlength=256)
    assert truth.tolist() == expected[:21].tolist()  # every labelled val pixel scored, the border not


# ---------------------------------------------------------------- CVAT Segmentation mask 1.1

CVAT_LABELS = {"background": (0, 0, 0), "car": (250, 50, 83), "road": (128, 64, 128), "person": (255, 204, 51)}
CVAT_LABELS_BY_ID = {0: (0, 0, 0), 1: (128, 64, 128), 2: (250, 50, 83)}


def make_cvat(root, n=4, images=True, labelmap=None):
    """A CVAT export: labelmap.txt, RGB class masks, RGB object masks (VOC colours), default.txt, JPEGImages."""
    lines = ["# label:color_rgb:parts:actions"] + [f"{k}:{r},{g},{b}::" for k, (r, g, b) in CVAT_LABELS.items()]
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "labelmap.txt").write_text("\n".join(labelmap or lines) + "\n")
    masks, objects = {}, {}
    colours = dict(enumerate(CVAT_LABELS.values()))
    for i in range(n):
        name = f"frame_{i:06d}"
        masks[name] = class_mask(10 + i, (1, 2, 3))
        objects[name] = object_mask(masks[name])
        save_rgb(root / "SegmentationClass" / f"{name}.png", masks[name], colours)
        save_rgb(root / "SegmentationObject" / f"{name}.png", objects[name], dict(enumerate(default_palette())))
        if images:
            save_image(root / "JPEGImages" / f"{name}.jpg", i)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{k}\n" for k in masks))
    return masks, objects


def test_cvat_is_detected_and_check_data_counts_match_a_bincount(tmp_path, capsys):
    masks, _ = make_cvat(tmp_path)
    assert detect_layout(tmp_path).name == "cvat"  # before voc: the tree is VOC-like
    assert main(["check-data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = np.bincount(np.concatenate([m.ravel() for m in masks.values()]), minlength=4)
    assert report["layout"] == "cvat" and report["splits"] == {"": 4}
    assert [c["name"] for c in report["classes"]] == list(CVAT_LABELS)
    assert [c["pixels"] for c in report["classes"]] == expected.tolist()


def test_cvat_masks_and_objects_to_the_pixel(tmp_path):
    masks, objects = make_cvat(tmp_path)
    data = SegmentationFolder(tmp_path, instances=True)
    assert len(data) == 4 and data.classes.colors == list(CVAT_LABELS.values())
    for item in data:
        assert np.array_equal(item["mask"].numpy(), masks[item["name"]])
        assert np.array_equal(item["instances"].numpy(), objects[item["name"]])


def test_cvat_label_map_without_background_and_objects_in_other_colours(tmp_path):
    masks, objects = make_cvat(tmp_path, n=1, labelmap=["road:128,64,128::", "car:250,50,83::"])
    name = next(iter(masks))
    save_rgb(tmp_path / "SegmentationClass" / f"{name}.png", np.minimum(masks[name], 2), CVAT_LABELS_BY_ID)
    odd = {0: (0, 0, 0), 1: (200, 1, 1), 2: (5, 5, 250), 3: (9, 9, 9)}  # no VOC colours: ids 1..N by colour
    save_rgb(tmp_path / "SegmentationObject" / f"{name}.png", objects[name], odd)
    data = SegmentationFolder(tmp_path, instances=True)
    assert data.classes.names == ["background", "road", "car"]
    item = data[0]
    assert np.array_equal(item["mask"].numpy(), np.minimum(masks[name], 2))
    order = sorted((odd[k], k) for k in range(1, 4) if (objects[name] == k).any())
    expected = np.zeros_like(objects[name])
    for rank, (_, k) in enumerate(order, start=1):
        expected[objects[name] == k] = rank
    assert np.array_equal(item["instances"].numpy(), expected)


def test_cvat_export_without_images_says_where_it_looked(tmp_path):
    make_cvat(tmp_path, images=False)
    with pytest.raises(DataError, match=r"holds no images: looked .* in JPEGImages/, images/ .*'Save images'"):
        SegmentationFolder(tmp_path)
    for i in range(4):  # images put in a sibling images/ folder are found
        save_image(tmp_path / "images" / f"frame_{i:06d}.png", i)
    assert len(SegmentationFolder(tmp_path)) == 4


def test_cvat_colour_outside_the_label_map_is_listed_by_check_data(tmp_path):
    masks, _ = make_cvat(tmp_path)
    bad = tmp_path / "SegmentationClass" / "frame_000001.png"
    save_rgb(bad, masks["frame_000001"], {0: (0, 0, 0), 1: (1, 2, 3), 2: (128, 64, 128), 3: (255, 204, 51)})
    report = check_dataset(tmp_path)
    assert any(file.endswith("frame_000001.png") and "[1, 2, 3]" in message for file, message in report.problems)


def test_cvat_malformed_label_map_names_the_line(tmp_path):
    make_cvat(tmp_path, labelmap=["background:0,0,0::", "car:red::"])
    with pytest.raises(DataError, match=r"labelmap\.txt' line 2: colour 'red' is not `r,g,b`"):
        cvat.read_labelmap(tmp_path / "labelmap.txt")


def test_cvat_trains_one_epoch_with_the_label_map_classes(tmp_path):
    make_cvat(tmp_path / "data", n=4)
    split = {"train_split": None, "val_split": None, "train_files": "frame_00000[0-2]", "val_files": "frame_000003"}
    config = TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path), name="run", **split, **TINY_TRAIN)
    train(config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["classes"] == 4


# ---------------------------------------------------------------- ADE20K / MMSegmentation


def make_ade(root, stored=(1, 2, 3, 150)):
    """ADEChallengeData2016: index PNGs storing 0 (other) and ADE ids 1..150."""
    base = root / "ADEChallengeData2016"
    masks = {}
    for split, names in (("training", ("t0", "t1", "t2", "t3")), ("validation", ("v0", "v1"))):
        for i, name in enumerate(names):
            masks[name] = class_mask(20 + len(masks), stored)
            save_image(base / "images" / split / f"ADE_{name}.jpg", i)
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks[name]).save(base / "annotations" / split / f"ADE_{name}.png")
    return base, masks


def reduced(mask):
    """MMSegmentation's reduce_zero_label, written out: 0 -> 255, v -> v - 1."""
    return np.where(mask == 0, BORDER, mask.astype(np.int64) - 1)


def test_ade_is_detected_and_check_data_counts_the_reduced_labels(tmp_path, capsys):
    base, masks = make_ade(tmp_path)
    assert detect_layout(tmp_path).name == detect_layout(base).name == "ade"
    assert main(["check-data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = np.bincount(np.concatenate([reduced(m).ravel() for m in masks.values()]), minlength=256)
    assert report["layout"] == "ade" and report["splits"] == {"training": 4, "validation": 2}
    assert report["num_classes"] == 150 and report["classes"][0]["name"] == "wall"
    assert report["classes"][149]["name"] == "flag"
    assert [c["pixels"] for c in report["classes"]] == expected[:150].tolist()
    assert report["ignored_pixels"] == int(expected[BORDER]) > 0


def test_ade_masks_to_the_pixel_with_and_without_reduce_zero_label(tmp_path):
    _base, masks = make_ade(tmp_path)
    data = SegmentationFolder(tmp_path, split="train")  # an alias of training
    assert len(data) == 4
    for item in data:
        assert np.array_equal(item["mask"].numpy(), reduced(masks[item["name"].removeprefix("ADE_")]))
    kept = SegmentationFolder(tmp_path, split="val", layout_options={"reduce_zero_label": False})
    assert kept.classes.names[:2] == ["other", "wall"] and kept.num_classes == 151
    for item in kept:
        assert np.array_equal(item["mask"].numpy(), masks[item["name"].removeprefix("ADE_")])
    with pytest.raises(ConfigError, match="reduce_zero_label is 'yes'; give true or false"):
        SegmentationFolder(tmp_path, split="val", layout_options={"reduce_zero_label": "yes"})
    with pytest.raises(ConfigError, match="takes reduce_zero_label"):
        SegmentationFolder(tmp_path, split="val", layout_options={"reduce": True})


def test_mmseg_img_dir_ann_dir_and_a_coco_tree_is_not_taken_for_ade(tmp_path):
    root = tmp_path / "mmseg"
    masks = {}
    for split, names in (("train", ("a", "b")), ("val", ("c",))):
        for i, name in enumerate(names):
            masks[name] = class_mask(30 + i, (1, 2, 3))
            save_image(root / "img_dir" / split / f"{name}.jpg", i)
            (root / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks[name]).save(root / "ann_dir" / split / f"{name}.png")
    Image.fromarray(masks["a"]).save(root / "ann_dir" / "train" / "stray.png")
    assert detect_layout(root).name == "ade"
    report = check_dataset(root, split="train")
    assert (
        report.num_classes == 4
        and report.class_pixels.tolist()
        == np.bincount(np.concatenate([masks["a"].ravel(), masks["b"].ravel()]), minlength=4).tolist()
    )
    assert [(p[0].endswith("stray.png"), "no image" in p[1]) for p in report.problems] == [(True, True)]
    coco = tmp_path / "coco"
    (coco / "images" / "train2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_train2017.json").write_text("{}")
    assert not ade.detect(coco)


def test_ade_trains_two_epochs_and_evaluates_with_reduce_zero_label(tmp_path):
    _, masks = make_ade(tmp_path / "data", stored=(1, 2, 3))
    # a class file beside the tree names 3 classes (150 would make the run's confusion plot slow)
    (tmp_path / "data" / "classes.yaml").write_text("classes: [wall, building, sky]\n")
    config = TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path), name="run", **TINY_TRAIN)
    train(config)
    metrics = evaluate(tmp_path / "run", tmp_path / "data", split="val", out_dir=tmp_path / "eval", progress=False)
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    expected = np.bincount(np.concatenate([reduced(masks[n]).ravel() for n in ("v0", "v1")]), minlength=256)
    assert truth.tolist() == expected[:3].tolist()  # stored 0 ignored, 1..3 scored as classes 0..2
