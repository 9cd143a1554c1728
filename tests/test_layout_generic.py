"""The generic-folders layout (image and mask folders of any name, suffix rules, split lists) and class-file maps."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import SegmentationFolder
from pixelwise.data.classes import ClassInfo, _ignore_ranges, _value_map
from pixelwise.data.layouts import LAYOUTS, detect_layout, open_layout
from pixelwise.errors import ConfigError, DataError
from settings import TINY_TRAIN

HEIGHT, WIDTH = 32, 48
N_CLASSES = 3


def write_pair(image_dir, mask_dir, stem, mask_name=None, seed=0, image_ext=".png", values=(0, 1, 2)):
    """Write an RGB image (brighter where the mask has higher values) and its mask; return the mask."""
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    index = np.zeros((HEIGHT, WIDTH), np.int64)
    for k in range(1, len(values)):
        cy, cx, r = rng.uniform((6, 6, 4), (HEIGHT - 6, WIDTH - 6, 10))
        index[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = k
    mask = np.asarray(values, np.uint8)[index]
    image = np.stack([index * 100 + 20] * 3, -1).astype(np.uint8)
    Image.fromarray(image).save(image_dir / f"{stem}{image_ext}", quality=100)
    Image.fromarray(mask).save(mask_dir / (mask_name or f"{stem}.png"))
    return mask


def dataset_masks(data):
    return {data.records[i].name: data.read_mask(i) for i in range(len(data))}


# ---------------------------------------------------------------- detection and pairing rules


def test_sibling_img_and_gt_folders_pair_by_stem(tmp_path):
    expected = {f"{i:02d}": write_pair(tmp_path / "img", tmp_path / "gt", f"{i:02d}", seed=i) for i in range(3)}
    assert detect_layout(tmp_path).name == "generic"
    data = SegmentationFolder(tmp_path)
    assert data.layout.format == "generic" and data.layout.pairing == "img/NAME.png ↔ gt/NAME.png (same file stem)"
    masks = dataset_masks(data)
    assert masks.keys() == expected.keys()
    for name, mask in expected.items():
        np.testing.assert_array_equal(masks[name], mask)


def test_masks_beside_their_images_by_suffix(tmp_path):
    expected = {s: write_pair(tmp_path, tmp_path, s, f"{s}_mask.png", seed=i) for i, s in enumerate(("a", "b"))}
    assert detect_layout(tmp_path).name == "generic"
    scan = open_layout(tmp_path)
    assert [r.name for r in scan.records] == ["a", "b"] and not scan.problems
    assert scan.pairing == "NAME.png ↔ NAME_mask.png (suffix _mask)"
    masks = dataset_masks(SegmentationFolder(tmp_path))
    for name, mask in expected.items():
        np.testing.assert_array_equal(masks[name], mask)


@pytest.mark.parametrize("mask_name", ["{}-mask.png", "{}.mask.png", "{}_labels.png"])
def test_other_suffixes_are_found(tmp_path, mask_name):
    for i in range(2):
        write_pair(tmp_path, tmp_path, str(i), mask_name.format(i), seed=i, image_ext=".jpg")
    scan = open_layout(tmp_path)
    assert [r.mask.path.name for r in scan.records] == [mask_name.format(i) for i in range(2)]


def test_named_folders_with_options_and_gt_suffix(tmp_path):
    expected = {
        s: write_pair(tmp_path / "images_x", tmp_path / "labels_y", s, f"{s}_gt.png", seed=i, image_ext=".jpg")
        for i, s in enumerate(("p", "q", "r"))
    }
    options = {"images": "images_x", "masks": "labels_y", "mask_suffix": "_gt"}
    data = SegmentationFolder(tmp_path, format="generic", layout_options=options)
    assert data.layout.pairing == "images_x/NAME.jpg ↔ labels_y/NAME_gt.png (suffix _gt)"
    masks = dataset_masks(data)
    for name, mask in expected.items():
        np.testing.assert_array_equal(masks[name], mask)
    # the folder names' words and the suffix are found without the options too
    assert open_layout(tmp_path).pairing == data.layout.pairing
    with pytest.raises(ConfigError, match="'mask_sufix' is not one the generic layout takes"):
        open_layout(tmp_path, options={"mask_sufix": "_gt"})
    with pytest.raises(DataError, match=r"nope' \(images option\) is not a folder; fix the path"):
        open_layout(tmp_path, options={"images": "nope"})


def test_unnamed_folders_jpg_images_and_png_masks(tmp_path):
    for i in range(2):
        write_pair(tmp_path / "photos", tmp_path / "drawn", str(i), seed=i, image_ext=".jpg")
    scan = open_layout(tmp_path)
    assert scan.format == "generic" and scan.pairing == "photos/NAME.jpg ↔ drawn/NAME.png (same file stem)"


def test_unnamed_png_folders_are_told_apart_by_content(tmp_path):
    expected = {str(i): write_pair(tmp_path / "aaa", tmp_path / "bbb", str(i), seed=i) for i in range(2)}
    # aaa holds the images, bbb the masks; swap them so that alphabetical order is wrong
    (tmp_path / "aaa").rename(tmp_path / "tmp")
    (tmp_path / "bbb").rename(tmp_path / "aaa")
    (tmp_path / "tmp").rename(tmp_path / "bbb")
    data = SegmentationFolder(tmp_path)
    assert data.layout.pairing.startswith("bbb/NAME.png ↔ aaa/NAME.png")
    for name, mask in dataset_masks(data).items():
        np.testing.assert_array_equal(mask, expected[name])


def test_detection_order_keeps_pixelwise_folder_layout(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "0")
    assert detect_layout(tmp_path).name == "folder"
    assert list(LAYOUTS)[-1] == "generic"


def test_a_folder_of_images_only_is_not_a_data_set(tmp_path):
    for i in range(3):
        write_pair(tmp_path / "img", tmp_path / "elsewhere", str(i))
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "elsewhere" / "0.png").unlink()
    for p in (tmp_path / "elsewhere").iterdir():
        p.rename(tmp_path / "elsewhere" / f"x{p.name}")  # no stem pairs any more
    assert not LAYOUTS["generic"].detect(tmp_path)
    assert not LAYOUTS["generic"].detect(tmp_path / "img")
    with pytest.raises(DataError, match="not a data set layout pixelwise knows"):
        detect_layout(tmp_path / "img")
    # two folders of JPEG photos with equal stems are not images + masks either
    for i in range(2):
        for folder in ("left", "right"):
            (tmp_path / "stereo" / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "stereo" / folder / f"{i}.jpg")
    assert not LAYOUTS["generic"].detect(tmp_path / "stereo")


def test_two_candidate_mask_folders_are_an_error_naming_the_option(tmp_path):
    for i in range(2):
        write_pair(tmp_path / "img", tmp_path / "gt", str(i))
        write_pair(tmp_path / "img", tmp_path / "labels", str(i))
    assert detect_layout(tmp_path).name == "generic"
    with pytest.raises(DataError, match=r"2 candidate image/mask folder pairs \(img ↔ gt, img ↔ labels\).*masks: gt"):
        open_layout(tmp_path)
    assert open_layout(tmp_path, options={"masks": "labels"}).pairing.startswith("img/NAME.png ↔ labels/")


def test_masks_pairing_by_two_suffixes_are_an_error(tmp_path):
    write_pair(tmp_path, tmp_path, "a", "a_mask.png")
    write_pair(tmp_path, tmp_path, "b", "b_gt.png")
    with pytest.raises(DataError, match=r"several suffixes \(NAME_mask, NAME_gt\).*mask_suffix"):
        open_layout(tmp_path)
    scan = open_layout(tmp_path, options={"mask_suffix": "_gt"})
    assert [r.name for r in scan.records] == ["b"]
    # with _gt chosen, a_mask.png is an image without a mask
    assert {p.split("/")[-1] for p, _ in scan.problems} == {"a.png", "a_mask.png"}


# ---------------------------------------------------------------- splits


def test_split_lists_select_stems_and_report_absent_ones(tmp_path):
    expected = {
        f"{i}": write_pair(tmp_path / "img", tmp_path / "gt", f"{i}", f"{i}_mask.png", seed=i) for i in range(5)
    }
    (tmp_path / "train.txt").write_text("# training stems\n0\n1\n\nimg/2.png\n")
    (tmp_path / "val.txt").write_text("3\n4\nmissing\n")
    assert LAYOUTS["generic"].splits(tmp_path) == ["train", "val"]
    train = open_layout(tmp_path, "training")
    assert [r.name for r in train.records] == ["0", "1", "2"] and not train.problems
    assert train.pairing == "img/NAME.png ↔ gt/NAME_mask.png (suffix _mask), splits from train.txt, val.txt"
    val = open_layout(tmp_path, "val")
    assert [r.name for r in val.records] == ["3", "4"]
    ((file, message),) = val.problems
    assert file.endswith("val.txt") and "val.txt line 3 names 'missing'" in message and "remove the line" in message
    with pytest.raises(DataError, match=r"val.txt line 3 names 'missing'"):
        SegmentationFolder(tmp_path, "val")
    with pytest.raises(DataError, match="holds splits"):
        open_layout(tmp_path)
    np.testing.assert_array_equal(SegmentationFolder(tmp_path, "train").read_mask(2), expected["2"])


def test_split_files_option_and_missing_list(tmp_path):
    for i in range(3):
        write_pair(tmp_path / "img", tmp_path / "gt", str(i))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text("0\n2\n")
    scan = LAYOUTS["generic"].scan(tmp_path, "a", split_files={"a": "lists/a.txt", "b": "lists/b.txt"})
    assert [r.name for r in scan.records] == ["0", "2"]
    with pytest.raises(DataError, match=r"split list .*b\.txt' does not exist; fix the path in split_files"):
        LAYOUTS["generic"].scan(tmp_path, "b", split_files={"a": "lists/a.txt", "b": "lists/b.txt"})


def test_split_sub_folders_each_with_image_and_mask_folders(tmp_path):
    for split in ("train", "val"):
        for i in range(2):
            write_pair(tmp_path / split / "img", tmp_path / split / "gt", f"{split}{i}", seed=i)
    assert detect_layout(tmp_path).name == "generic"
    assert LAYOUTS["generic"].splits(tmp_path) == ["train", "val"]
    assert [r.name for r in open_layout(tmp_path, "val").records] == ["val0", "val1"]


# ---------------------------------------------------------------- classes.yaml value maps


def test_class_file_map_and_ignore_ranges_remap_masks(tmp_path):
    stored_values = (7, 8, 9, 0, 210, 254)
    written = {
        str(i): write_pair(tmp_path / "img", tmp_path / "gt", str(i), seed=i, values=stored_values) for i in range(2)
    }
    (tmp_path / "classes.yaml").write_text(
        "classes: [road, car, sky]\nmap: {7: 0, 8: 1, 9: 2}\nignore: [0, [200, 254]]\n", encoding="utf-8"
    )
    data = SegmentationFolder(tmp_path)
    assert data.layout.mask_values[7] == 0 and data.layout.mask_values[230] == 255
    for name, mask in dataset_masks(data).items():
        own = np.full(mask.shape, 255, np.int64)  # the test's own remapping: 7, 8, 9 -> 0, 1, 2; others ignored
        for stored, class_id in ((7, 0), (8, 1), (9, 2)):
            own[written[name] == stored] = class_id
        np.testing.assert_array_equal(mask, own)
    assert data.classes.names == ["road", "car", "sky"]


def test_check_data_json_counts_match_bincount(tmp_path, capsys):
    stored_values = (7, 8, 9, 220)
    written = [write_pair(tmp_path / "img", tmp_path / "gt", str(i), seed=i, values=stored_values) for i in range(3)]
    (tmp_path / "classes.yaml").write_text("classes: [a, b, c]\nmap: {7: 0, 8: 1, 9: 2}\nignore: [[200, 250]]\n")
    main(["check-data", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "generic" and report["pairing"] == "img/NAME.png ↔ gt/NAME.png (same file stem)"
    stored = np.concatenate([m.ravel() for m in written]).astype(np.int64)
    counts = np.bincount(stored, minlength=256)
    assert [c["pixels"] for c in report["classes"]] == [int(counts[7]), int(counts[8]), int(counts[9])]
    assert report["ignored_pixels"] == int(counts[220]) and report["ok"]


def test_train_and_evaluate_on_generic_folders(tmp_path):
    from pixelwise.evaluate import evaluate
    from pixelwise.training.config import TrainConfig
    from pixelwise.training.run import train

    data = tmp_path / "data"
    for i in range(6):
        write_pair(data / "img", data / "gt", f"{i}", f"{i}_mask.png", seed=i, values=(0, 1))
    (data / "train.txt").write_text("0\n1\n2\n3\n")
    (data / "val.txt").write_text("4\n5\n")
    config = TrainConfig(data=str(data), data_format="generic", runs_dir=str(tmp_path), name="g", **TINY_TRAIN)
    train(config)
    metrics = evaluate(tmp_path / "g", data, split="val", format="generic", out_dir=tmp_path / "eval", progress=False)
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    expected = sum(int((np.asarray(Image.open(data / "gt" / f"{i}_mask.png")) == 1).sum()) for i in (4, 5))
    assert truth[1] == expected


# ---------------------------------------------------------------- class-file parsing (map / ignore)


def test_value_map_parsing_and_errors():
    assert _value_map(None) is None
    assert _value_map({7: 0, 8: 1}) == {7: 0, 8: 1}
    with pytest.raises(ConfigError, match=r"`map` is \[7, 0\]; give stored value -> class id"):
        _value_map([7, 0])
    with pytest.raises(ConfigError, match="a stored value in `map` is 'seven'"):
        _value_map({"seven": 0})
    with pytest.raises(ConfigError, match=r"the class id of map entry 7 is 1\.5"):
        _value_map({7: 1.5})


def test_ignore_ranges_parsing_and_errors():
    assert _ignore_ranges(None) is None
    assert _ignore_ranges(0) == [(0, 0)]
    assert _ignore_ranges([0, [200, 254]]) == [(0, 0), (200, 254)]
    with pytest.raises(ConfigError, match=r"`ignore` entry 'x' is not a value or a \[low, high\] range"):
        _ignore_ranges(["x"])
    with pytest.raises(ConfigError, match="is not a value or a"):
        _ignore_ranges([[1, 2, 3]])
    with pytest.raises(ConfigError, match="is not a value or a"):
        _ignore_ranges([True])


def test_mask_values_table_and_its_errors():
    info = ClassInfo(["a", "b"], [0, 1], value_map={7: 0, 8: 1, 9: 255}, ignore_values=[(0, 0), (200, 202)])
    assert info.mask_values() == {0: 255, 200: 255, 201: 255, 202: 255, 7: 0, 8: 1, 9: 255}
    assert ClassInfo(["a"], [0]).mask_values() is None
    # a map entry overrides an ignore range that covers the same stored value
    assert ClassInfo(["a"], [0], value_map={5: 0}, ignore_values=[(0, 10)]).mask_values()[5] == 0
    with pytest.raises(ConfigError, match="map entry 7: 2 is out of range"):
        ClassInfo(["a", "b"], [0, 1], value_map={7: 2}).mask_values()
    with pytest.raises(ConfigError, match="map entry -1: 0 is out of range"):
        ClassInfo(["a", "b"], [0, 1], value_map={-1: 0}).mask_values()
    with pytest.raises(ConfigError, match=r"ignore range \[5, 3\] must satisfy"):
        ClassInfo(["a"], [0], ignore_values=[(5, 3)]).mask_values()
    with pytest.raises(ConfigError, match=r"ignore range \[0, 70000\]"):
        ClassInfo(["a"], [0], ignore_values=[(0, 70000)]).mask_values()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_class_file_with_map_round_trips(tmp_path, suffix):
    info = ClassInfo(
        ["road", "car"],
        [0, 1],
        [(10, 20, 30), (40, 50, 60)],
        value_map={7: 0, 26: 1},
        ignore_values=[(0, 0), (200, 254)],
    )
    path = info.save(tmp_path / f"classes{suffix}")
    loaded = ClassInfo.load(path)
    assert loaded == info and loaded.to_dict() == info.to_dict()
    assert loaded.mask_values() == info.mask_values()
    if suffix == ".yaml":
        raw = yaml.safe_load(path.read_text())
        assert raw["map"] == {7: 0, 26: 1} and raw["ignore"] == [[0, 0], [200, 254]]


def test_class_file_map_errors_name_the_file(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("classes: [a, b]\nmap: [7, 0]\n")
    with pytest.raises(ConfigError, match=r"classes.yaml.*`map` is \[7, 0\]"):
        ClassInfo.load(path)
    path.write_text("classes: [a, b]\nignore: [[1, 'x']]\n")
    with pytest.raises(ConfigError, match=r"classes.yaml.*`ignore` entry \[1, 'x'\]"):
        ClassInfo.load(path)
