"""Folder datasets, file formats, class files, check-data and its command, and a smoke test on real data."""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import (
    ClassInfo,
    DataError,
    SegmentationFolder,
    check_dataset,
    median_frequency_weights,
    read_image,
    read_mask,
)
from pixelwise.errors import ConfigError
from settings import edge_pairs

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PIXELWISE_DATA", REPO.parent / "shared" / "data"))


def save(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="minisblack" if array.ndim == 2 or array.shape[-1] != 3 else None)
        return path
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)
    return path


def make_folder(root: Path, names=("a", "b", "c"), size=(12, 16), k=3, rgb=True) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        shape = (*size, 3) if rgb else size
        save(root / "images" / f"{name}.png", rng.integers(0, 256, shape, dtype=np.uint8))
        save(root / "masks" / f"{name}.png", rng.integers(0, k, size, dtype=np.uint8))
    return root


# ---------------------------------------------------------------- folders and pairing


def test_pairs_by_stem_across_suffixes(tmp_path):
    save(tmp_path / "images" / "x1.jpg", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "masks" / "x1.png", np.ones((8, 8), np.uint8))
    save(tmp_path / "images" / "x0.png", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "masks" / "x0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "images" / ".x2.png.tmp").write_bytes(b"half-written")  # hidden files are skipped
    data = SegmentationFolder(tmp_path, num_classes=2)
    assert [(i.name, m.name) for i, m in data.pairs] == [("x0.png", "x0.png"), ("x1.jpg", "x1.png")]
    item = data[1]
    assert item["name"] == "x1" and item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (8, 8) and int(item["mask"].max()) == 1
    assert data.in_channels == 3 and data.num_classes == 2 and len(data) == 2


def test_split_folders_and_errors(tmp_path):
    make_folder(tmp_path / "train", names=("a", "b"))
    make_folder(tmp_path / "val", names=("c",))
    assert len(SegmentationFolder(tmp_path, "train")) == 2 and len(SegmentationFolder(tmp_path, "val")) == 1
    with pytest.raises(DataError, match=r"holds splits \(train, val\).*split='train'"):
        SegmentationFolder(tmp_path)
    with pytest.raises(DataError, match=r"no split 'test'.*its splits: train, val\. Pass one of those"):
        SegmentationFolder(tmp_path, "test")
    make_folder(tmp_path / "flat", names=("a",))
    with pytest.raises(DataError, match=r"no split 'train': it is one unsplit set \(folder layout\)"):
        SegmentationFolder(tmp_path / "flat", "train")
    with pytest.raises(DataError, match="does not exist"):
        SegmentationFolder(tmp_path / "nowhere")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no masks/ folder"):
        SegmentationFolder(tmp_path / "empty")
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        SegmentationFolder(tmp_path / "empty")


def test_unpaired_files_raise_naming_them(tmp_path):
    make_folder(tmp_path)
    save(tmp_path / "images" / "lonely.png", np.zeros((12, 16, 3), np.uint8))
    (tmp_path / "masks" / "b.png").unlink()
    expected = r"do not pair up.*images/b\.png: image has no mask.*images/lonely\.png: image has no mask"
    with pytest.raises(DataError, match=expected):
        SegmentationFolder(tmp_path)


def test_num_classes_inferred_and_checked(tmp_path):
    make_folder(tmp_path, k=4)
    assert SegmentationFolder(tmp_path).num_classes == 4  # largest id + 1
    data = SegmentationFolder(tmp_path, num_classes=3)
    with pytest.raises(DataError, match=r"class ids \[3\] outside 0\.\.2.*ignore_index 255"):
        for i in range(len(data)):
            data[i]
    with pytest.raises(ConfigError, match="num_classes=5 but the class list has 2"):
        SegmentationFolder(tmp_path, classes=ClassInfo.default(2), num_classes=5)


def test_size_mismatch_and_corrupt_image_errors(tmp_path):
    make_folder(tmp_path, names=("a",))
    save(tmp_path / "masks" / "a.png", np.zeros((10, 16), np.uint8))
    with pytest.raises(DataError, match=r"16x12 \(WxH\).*16x10"):
        SegmentationFolder(tmp_path, num_classes=3)[0]
    (tmp_path / "images" / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*a\.png"):
        SegmentationFolder(tmp_path, num_classes=3)


def test_transform_and_instances_are_passed(tmp_path):
    make_folder(tmp_path, names=("a",))
    save(tmp_path / "instances" / "a.png", np.full((12, 16), 300, np.uint16))
    calls = []

    def transform(*tensors):
        calls.append(len(tensors))
        return tuple(t[..., :4, :5] for t in tensors)

    item = SegmentationFolder(tmp_path, transform=transform, instances=True, num_classes=3)[0]
    assert calls == [3] and item["instances"].dtype == torch.int32 and int(item["instances"][0, 0]) == 300
    assert item["image"].shape == (3, 4, 5) and item["mask"].shape == (4, 5)
    assert "instances" not in SegmentationFolder(tmp_path, num_classes=3)[0]


# ---------------------------------------------------------------- image formats


@pytest.mark.parametrize(
    ("array", "suffix", "channels", "top"),
    [
        (np.full((6, 7), 255, np.uint8), ".png", 1, 1.0),
        (np.full((6, 7, 3), 51, np.uint8), ".png", 3, 0.2),
        (np.full((6, 7), 65535, np.uint16), ".png", 1, 1.0),
        (np.full((6, 7, 4), 255, np.uint8), ".png", 3, 1.0),  # RGBA: alpha dropped
        (np.full((6, 7), 32768, np.uint16), ".tif", 1, 32768 / 65535),
        (np.full((6, 7, 5), 1000, np.uint16), ".tif", 5, 1000 / 65535),  # HWC multi-channel
        (np.full((5, 20, 24), 0.25, np.float32), ".tif", 5, 0.25),  # small first, large last dim: CHW; float as is
        (np.full((20, 24, 3), 255, np.uint8), ".tif", 3, 1.0),
    ],
)
def test_image_formats(tmp_path, array, suffix, channels, top):
    image = read_image(save(tmp_path / f"im{suffix}", array))
    height, width = (6, 7) if array.shape[1] != 20 and array.shape[0] != 20 else (20, 24)
    assert image.shape == (channels, height, width) and image.dtype == np.float32
    assert image.max() == pytest.approx(top, rel=1e-6)


def test_chw_rule_needs_larger_last_dim(tmp_path):
    assert read_image(save(tmp_path / "chw.tif", np.zeros((4, 32, 32), np.uint8))).shape == (4, 32, 32)
    assert read_image(save(tmp_path / "hwc.tif", np.zeros((32, 32, 4), np.uint8))).shape == (4, 32, 32)


# ---------------------------------------------------------------- mask formats and class files


def test_palette_index_and_16bit_masks(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    palette = ClassInfo.default(3).palette()
    assert (read_mask(save(tmp_path / "p.png", ids, palette)) == ids).all()
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert (read_mask(save(tmp_path / "l.png", ids)) == ids).all()
    big = np.array([[0, 300], [1000, 2]], np.uint16)
    mask = read_mask(save(tmp_path / "i16.png", big))
    assert mask.dtype == np.int64 and (mask == big).all()


def test_rgb_mask_with_class_file(tmp_path):
    info = ClassInfo(["sky", "road"], [0, 1], [(128, 128, 128), (128, 64, 128)], ignore_color=(0, 0, 0))
    info.save(tmp_path / "classes.yaml")
    loaded = ClassInfo.find(tmp_path / "train")  # found in the parent folder
    assert loaded == info
    rgb = np.array([[[128, 128, 128], [128, 64, 128]], [[0, 0, 0], [128, 64, 128]]], np.uint8)
    assert read_mask(save(tmp_path / "m.png", rgb), loaded).tolist() == [[0, 1], [255, 1]]
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(DataError, match=r"m\.png.*colours \[1, 2, 3\].*classes\.yaml"):
        read_mask(save(tmp_path / "m.png", rgb), loaded)
    with pytest.raises(DataError, match="no class file gives the class colours"):
        read_mask(tmp_path / "m.png", None)


def test_class_file_formats_and_errors(tmp_path):
    (tmp_path / "a.json").write_text('{"classes": ["bg", "fg"], "ignore_index": 7}')
    info = ClassInfo.load(tmp_path / "a.json")
    assert info.names == ["bg", "fg"] and info.ids == [0, 1] and info.ignore_index == 7 and info.colors is None
    (tmp_path / "b.yaml").write_text("classes:\n  - {name: a, id: 0}\n  - {name: b, id: 2}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml.*exactly 0\.\.1"):
        ClassInfo.load(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        ClassInfo.load(tmp_path / "missing.yaml")
    palette = ClassInfo.default(2).palette()
    assert len(palette) == 768 and palette[:6] == [0, 0, 0, 128, 0, 0]


def test_rgb_masks_in_a_folder_use_the_class_file(tmp_path):
    info = ClassInfo(["a", "b", "c"], [0, 1, 2], [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    info.save(tmp_path / "classes.json")
    save(tmp_path / "images" / "x.png", np.zeros((2, 2), np.uint8))
    save(tmp_path / "masks" / "x.png", np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 0]]], np.uint8))
    data = SegmentationFolder(tmp_path)
    assert data.classes.names == ["a", "b", "c"] and data[0]["mask"].tolist() == [[0, 1], [2, 0]]
    assert data.in_channels == 1


# ---------------------------------------------------------------- check-data


def broken_folder(root: Path) -> Path:
    make_folder(root, names=("good", "nomask", "small", "range", "gray"), k=3)
    (root / "masks" / "nomask.png").unlink()
    save(root / "masks" / "orphan.png", np.zeros((12, 16), np.uint8))
    save(root / "masks" / "small.png", np.zeros((10, 16), np.uint8))
    save(root / "masks" / "range.png", np.full((12, 16), 7, np.uint8))
    save(root / "images" / "gray.png", np.zeros((12, 16), np.uint8))
    save(root / "images" / "corrupt.png", np.zeros((12, 16, 3), np.uint8))
    (root / "masks" / "corrupt.png").write_bytes(b"\x89PNG garbage bytes")
    return root


def test_check_dataset_names_each_problem(tmp_path):
    report = check_dataset(broken_folder(tmp_path), num_classes=3, progress=False)
    problems = {Path(file).relative_to(tmp_path).as_posix(): message for file, message in report.problems}
    assert set(problems) == {
        "images/nomask.png", "masks/orphan.png", "masks/small.png", "masks/range.png", "images/gray.png",
        "masks/corrupt.png",
    }  # fmt: skip
    assert "no mask" in problems["images/nomask.png"] and "no image" in problems["masks/orphan.png"]
    assert "size mismatch" in problems["masks/small.png"] and "16x10" in problems["masks/small.png"]
    assert "class ids [7] out of range 0..2" in problems["masks/range.png"]
    assert "unreadable mask" in problems["masks/corrupt.png"]
    assert "1 channels, most images have 3" in problems["images/gray.png"]
    assert not report.ok and report.in_channels == 3 and report.num_pairs == 5
    text = report.format()
    assert "6 problems" in text and "masks/range.png" in text
    with pytest.raises(DataError, match=r"masks/orphan\.png"):
        report.raise_if_bad()


def test_median_frequency_weights_by_hand(tmp_path):
    # image a: 12 px of class 0, 4 of class 1; image b: 8 of class 0, 6 of class 2, 2 void
    save(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    save(tmp_path / "masks" / "a.png", np.array([0] * 12 + [1] * 4, np.uint8).reshape(4, 4))
    save(tmp_path / "images" / "b.png", np.full((4, 4), 255, np.uint8))
    save(tmp_path / "masks" / "b.png", np.array([0] * 8 + [2] * 6 + [255] * 2, np.uint8).reshape(4, 4))
    report = check_dataset(tmp_path, progress=False)
    assert report.ok and report.num_classes == 3 and report.class_pixels.tolist() == [20, 4, 6]
    assert report.void_pixels == 2 and np.allclose(report.frequencies, [20 / 30, 4 / 30, 6 / 30])
    freq = np.array([20 / 32, 4 / 16, 6 / 16])  # pixels of c / pixels of the images holding c
    assert np.allclose(report.median_frequency_weights, np.median(freq) / freq)
    assert np.allclose(report.mean, [0.5]) and np.allclose(report.std, [0.5])
    assert median_frequency_weights(np.array([5, 0]), np.array([10, 0])).tolist() == [1.0, 0.0]


def test_check_data_command_exit_codes(tmp_path, capsys):
    good = make_folder(tmp_path / "good")
    assert main(["check-data", str(good)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["check-data", str(good), "--classes", "2"]) == 1
    assert "out of range 0..1" in capsys.readouterr().out
    assert main(["check-data", str(broken_folder(tmp_path / "bad")), "--classes", "3"]) == 1
    assert "masks/small.png: size mismatch" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- real data (skipped when absent)


@pytest.mark.skipif(not (DATA / "isbi2012-em" / "train").is_dir(), reason=f"no ISBI 2012 data under {DATA}")
def test_isbi_em_item_shapes():
    data = SegmentationFolder(DATA / "isbi2012-em", "train", num_classes=2)
    item = data[0]
    assert len(data) == 25 and data.in_channels == 1
    assert item["image"].shape == (1, 512, 512) and item["mask"].shape == (512, 512)
    assert set(item["mask"].unique().tolist()) <= {0, 1}


@pytest.mark.skipif(not (DATA / "camvid" / "val").is_dir(), reason=f"no CamVid data under {DATA}")
def test_camvid_val_loads_and_checks_clean():
    data = SegmentationFolder(DATA / "camvid", "val", num_classes=11)
    item = data[0]
    assert len(data) == 101 and item["image"].shape == (3, 360, 480) and item["mask"].shape == (360, 480)
    report = check_dataset(DATA / "camvid", "val", num_classes=11, progress=False)
    assert report.ok, report.format()
    # the README's train fractions (of all pixels, void included); val is a different sample of roads
    readme = np.array([0.169, 0.233, 0.010, 0.317, 0.045, 0.097, 0.012, 0.011, 0.059, 0.006, 0.003])
    share = report.class_pixels / (report.class_pixels.sum() + report.void_pixels)
    assert np.abs(share - readme).max() < 0.1  # val has less sky than train (0.09 against 0.17)
    assert set(np.argsort(share)[-2:].tolist()) == {1, 3}  # building and road are the largest classes
    assert report.median_frequency_weights[3] < 1 < report.median_frequency_weights[10]  # road common, bicyclist rare


def test_palette_png_is_colours_as_image_and_indices_as_mask(tmp_path):
    ids = np.array([[0, 1], [1, 0]], np.uint8)
    path = save(tmp_path / "p.png", ids, [0, 0, 0, 255, 0, 0] + [0] * 762)
    assert read_image(path)[:, 0, 1].tolist() == [1.0, 0.0, 0.0]
    assert read_mask(path).tolist() == [[0, 1], [1, 0]]


def test_files_selects_stems_by_glob_and_list(tmp_path):
    from pixelwise.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "c", "cells", n_train=6, n_val=1, size=32, seed=0)
    assert [p[0].stem for p in SegmentationFolder(root, "train", files="000[0-2]").pairs] == ["0000", "0001", "0002"]
    assert [p[0].stem for p in SegmentationFolder(root, "train", files=["0004", "0005"]).pairs] == ["0004", "0005"]
    report = check_dataset(root, split="train", files="000[3-5]")
    assert report.num_pairs == 3 and report.ok
    with pytest.raises(DataError, match=r"files='9\*' selects none of the 6 images"):
        SegmentationFolder(root, "train", files="9*")


@pytest.mark.parametrize("offset", [(-0.5, 0.0), (0.0, 0.0), (0.3, -0.6)])
def test_check_dataset_measures_how_far_the_masks_sit_from_the_image_edges(tmp_path, offset):
    report = check_dataset(edge_pairs(tmp_path / "d", offset))
    assert report.offset_pairs == 6
    np.testing.assert_allclose(report.mask_offset, offset, atol=0.12)
    text = report.format()
    suggested = [round(2 * v) / 2 if abs(v) >= 0.4 else 0.0 for v in offset]
    assert report.suggested_mask_offset == (suggested if any(suggested) else None)
    assert ("mask_offset: " + str(suggested) in text) == any(suggested), text
