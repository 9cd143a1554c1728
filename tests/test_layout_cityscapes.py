"""The Cityscapes layout: a small leftImg8bit/ + gtFine/ tree built here from chosen labelIds, read to the
pixel as trainIds, with instances, check-data counts, bad trees, and one short training run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import DataError, SegmentationFolder, check_dataset
from pixelwise.data.layouts import detect_layout, open_layout
from pixelwise.errors import ConfigError
from pixelwise.evaluate import evaluate
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train
from settings import TINY_TRAIN

HEIGHT, WIDTH = 32, 64
NUM_CLASSES = 19
VOID = 255
CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}
IMAGES_PER_CITY = 2
# the labelIds this test draws and their trainIds, written out from cityscapesScripts' labels.py
UNLABELED, ROAD, SIDEWALK, PARKING, BUILDING, VEGETATION, SKY, PERSON, CAR, BICYCLE = 0, 7, 8, 9, 11, 21, 23, 24, 26, 33
TRAIN_ID = {UNLABELED: VOID, ROAD: 0, SIDEWALK: 1, PARKING: VOID, BUILDING: 2, VEGETATION: 8, SKY: 10}
TRAIN_ID |= {PERSON: 11, CAR: 13, BICYCLE: 18}
COLOR = {0: (128, 64, 128), 2: (70, 70, 70), 10: (70, 130, 180), 13: (0, 0, 142)}  # a few official colours


def draw(index: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """labelIds, instanceIds (labelId * 1000 + k on objects, labelId elsewhere) and the object masks of
    image ``index``."""
    label = np.full((HEIGHT, WIDTH), ROAD, np.uint8)
    label[:8] = SKY
    label[8:14] = BUILDING
    label[8:14, 40:] = VEGETATION
    label[14:, :6] = SIDEWALK
    label[28:, 50:] = UNLABELED
    label[20:26, 56:62] = PARKING
    instances = label.astype(np.uint16)
    objects = []
    shift = index % 4
    for label_id, k, rows, cols in (
        (CAR, 0, (16, 24), (2 + 3 * shift, 12 + 3 * shift)),
        (CAR, 1, (16, 22), (22, 30)),
        (PERSON, 0, (22, 30), (34 + shift, 38 + shift)),
        (BICYCLE, 0, (26, 30), (42, 48)),
    ):
        region = np.zeros_like(label, bool)
        region[rows[0] : rows[1], cols[0] : cols[1]] = True
        label[region] = label_id
        instances[region] = label_id * 1000 + k
        objects.append(region)
    label[24:28, 8:16] = CAR  # a crowd region ("cargroup"): car pixels, no instance id
    instances[24:28, 8:16] = CAR
    return label, instances, objects


def train_ids(label: np.ndarray) -> np.ndarray:
    out = np.full(label.shape, -1, np.int64)
    for label_id, train_id in TRAIN_ID.items():
        out[label == label_id] = train_id
    assert (out >= 0).all()  # every drawn labelId has a trainId in the table above
    return out


def image_of(train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colours follow the classes (so training has something to learn), plus noise."""
    rgb = np.zeros((*train.shape, 3), np.float64)
    for train_id, color in COLOR.items():
        rgb[train == train_id] = color
    return np.clip(rgb + rng.normal(0, 10, rgb.shape), 0, 255).astype(np.uint8)


def cityscapes_tree(root: Path, kind: str = "labelIds", tree: str = "gtFine") -> dict[str, dict[str, np.ndarray]]:
    """Write leftImg8bit/ and ``tree``/ for CITIES; return the expected trainIds per split and name."""
    rng = np.random.default_rng(0)
    expected: dict[str, dict[str, np.ndarray]] = {}
    index = 0
    for split, cities in CITIES.items():
        expected[split] = {}
        for city in cities:
            for folder in ("leftImg8bit", tree):
                (root / folder / split / city).mkdir(parents=True, exist_ok=True)
            for seq in range(IMAGES_PER_CITY):
                name = f"{city}_{seq:06d}_000019"
                label, instances, _ = draw(index)
                index += 1
                train = train_ids(label)
                expected[split][name] = train
                Image.fromarray(image_of(train, rng)).save(
                    root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
                )
                stored = label if kind == "labelIds" else train.astype(np.uint8)
                labels = root / tree / split / city
                Image.fromarray(stored).save(labels / f"{name}_{tree}_{kind}.png")
                Image.fromarray(instances).save(labels / f"{name}_{tree}_instanceIds.png")
    return expected


def test_the_tree_is_detected_and_split_aliases_find_its_splits(tmp_path):
    cityscapes_tree(tmp_path)
    layout = detect_layout(tmp_path)
    assert layout.name == "cityscapes"
    assert layout.splits(tmp_path) == ["train", "val"]
    assert open_layout(tmp_path, "training").split == "train"
    assert open_layout(tmp_path, "validation").split == "val"
    with pytest.raises(DataError, match="choose one with split='train'"):
        open_layout(tmp_path)
    scan = open_layout(tmp_path, "train")
    assert [r.name for r in scan.records] == [f"{c}_{s:06d}_000019" for c in CITIES["train"] for s in range(2)]
    assert scan.classes.num_classes == NUM_CLASSES and scan.classes.names[13] == "car"
    assert scan.classes.colors[0] == (128, 64, 128) and scan.classes.source_ids[18] == BICYCLE


def test_masks_are_the_train_ids_of_the_stored_label_ids(tmp_path):
    expected = cityscapes_tree(tmp_path)
    for split in CITIES:
        data = SegmentationFolder(tmp_path, split=split)
        assert data.num_classes == NUM_CLASSES and len(data) == len(expected[split])
        for i in range(len(data)):
            item = data[i]
            np.testing.assert_array_equal(item["mask"].numpy(), expected[split][item["name"]])
            assert item["image"].shape == (3, HEIGHT, WIDTH)


def test_check_data_json_counts_every_train_class(tmp_path, capsys):
    expected = cityscapes_tree(tmp_path)
    main(["check-data", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "cityscapes" and report["splits"] == {"train": 4, "val": 4}
    everything = np.concatenate([m.ravel() for split in expected.values() for m in split.values()])
    counts = np.bincount(everything[everything != VOID], minlength=NUM_CLASSES)
    assert [c["pixels"] for c in report["classes"]] == counts.tolist()
    assert report["ignored_pixels"] == int((everything == VOID).sum())
    assert report["classes"][13]["name"] == "car" and report["problems"] == []


def test_instance_ids_become_consecutive_objects(tmp_path):
    cityscapes_tree(tmp_path)
    data = SegmentationFolder(tmp_path, split="val", instances=True)
    for i in range(len(data)):
        instances = data[i]["instances"].numpy()
        _, _, objects = draw(len(CITIES["train"]) * IMAGES_PER_CITY + i)
        assert instances.dtype == np.int32
        ids = []
        for region in objects:
            values = np.unique(instances[region])
            assert len(values) == 1 and values[0] > 0  # one object, one id
            ids.append(int(values[0]))
        assert sorted(ids) == list(range(1, len(objects) + 1))
        assert (instances[~np.logical_or.reduce(objects)] == 0).all()  # stuff, void and the crowd region


def test_a_tree_without_gtfine_says_what_to_download(tmp_path):
    cityscapes_tree(tmp_path)
    shutil.rmtree(tmp_path / "gtFine")
    assert detect_layout(tmp_path).name == "cityscapes"
    with pytest.raises(DataError, match=r"no gtFine/ folder.*gtFine_trainvaltest\.zip.*beside leftImg8bit/"):
        SegmentationFolder(tmp_path, split="train")
    with pytest.raises(DataError, match=r"gtFine_trainvaltest\.zip"):
        check_dataset(tmp_path, progress=False)


def test_an_image_without_labels_is_a_problem(tmp_path):
    cityscapes_tree(tmp_path)
    missing = tmp_path / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    report = check_dataset(tmp_path, split="train", progress=False)
    image = tmp_path / "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png"
    assert report.splits == {"train": 3}
    assert [(file, message) for file, message in report.problems] == [
        (str(image), f"image has no labels: {missing.relative_to(tmp_path)} is missing")
    ]
    stray = tmp_path / "gtFine/train/bremen/bremen_000009_000019_gtFine_labelIds.png"
    shutil.copy(tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png", stray)
    report = check_dataset(tmp_path, split="train", progress=False)
    assert (
        len(report.problems) == 2
        and (
            str(stray),
            "labels have no image: leftImg8bit/train/bremen/bremen_000009_000019_leftImg8bit.png is missing",
        )
        in report.problems
    )
    with pytest.raises(DataError, match=r"bremen_000001_000019_leftImg8bit\.png: image has no labels"):
        SegmentationFolder(tmp_path, split="train")


def test_mmseg_label_train_ids_are_read_as_stored(tmp_path):
    expected = cityscapes_tree(tmp_path, kind="labelTrainIds")
    data = SegmentationFolder(tmp_path, split="train")
    assert data.mask_values == {}
    for i in range(len(data)):
        np.testing.assert_array_equal(data[i]["mask"].numpy(), expected["train"][data.records[i].name])


def test_coarse_annotations_and_options(tmp_path):
    expected = cityscapes_tree(tmp_path, tree="gtCoarse")
    with pytest.raises(DataError, match=r"no gtFine/ folder.*annotations: coarse"):
        SegmentationFolder(tmp_path, split="val")
    data = SegmentationFolder(tmp_path, split="val", layout_options={"annotations": "coarse"})
    np.testing.assert_array_equal(data[0]["mask"].numpy(), expected["val"][data.records[0].name])
    with pytest.raises(ConfigError, match="did you mean 'coarse'"):
        SegmentationFolder(tmp_path, split="val", layout_options={"annotations": "coarser"})
    with pytest.raises(ConfigError, match="'mode' is not one the cityscapes layout takes"):
        SegmentationFolder(tmp_path, split="val", layout_options={"mode": "fine"})


def test_the_splits_follow_the_annotation_tree(tmp_path):
    cityscapes_tree(tmp_path)
    cityscapes_tree(tmp_path, tree="gtCoarse")
    for folder in ("leftImg8bit", "gtCoarse"):  # coarse labels also cover the extra images
        shutil.copytree(tmp_path / folder / "train", tmp_path / folder / "train_extra")
    layout = detect_layout(tmp_path)
    assert layout.splits(tmp_path) == ["train", "val"]
    assert layout.splits(tmp_path, annotations="coarse") == ["train", "train_extra", "val"]
    report = check_dataset(tmp_path, layout_options={"annotations": "coarse"}, progress=False)
    assert report.ok and report.splits == {"train": 4, "train_extra": 4, "val": 4}
    assert check_dataset(tmp_path, progress=False).splits == {"train": 4, "val": 4}


def test_a_label_id_beyond_33_is_reported_not_hidden(tmp_path):
    cityscapes_tree(tmp_path)
    path = tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    damaged = np.asarray(Image.open(path)).copy()
    damaged[0, 0] = 40
    Image.fromarray(damaged).save(path)
    data = SegmentationFolder(tmp_path, split="val")
    index = [r.name for r in data.records].index("lindau_000000_000019")
    with pytest.raises(DataError, match=r"lindau_000000_000019_gtFine_labelIds\.png' holds class ids \[40\]"):
        data[index]


def test_train_and_evaluate_on_the_tree(tmp_path):
    expected = cityscapes_tree(tmp_path / "data")
    config = TrainConfig(data=str(tmp_path / "data"), runs_dir=str(tmp_path), name="cs", **TINY_TRAIN)
    train(config)
    metrics = evaluate(
        tmp_path / "cs" / "model", tmp_path / "data", split="val", out_dir=tmp_path / "ev", progress=False
    )
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    val = np.concatenate([m.ravel() for m in expected["val"].values()])
    assert len(metrics.class_names) == NUM_CLASSES and metrics.class_names[10] == "sky"
    assert truth.tolist() == np.bincount(val[val != VOID], minlength=NUM_CLASSES).tolist()
    assert metrics.images == len(expected["val"])
