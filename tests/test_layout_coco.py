"""The COCO layout: detection, polygons and RLE drawn to the pixel (against masks the tests draw
themselves and against pycocotools), crowd and overlap rules, instance labels, exports of CVAT and
Label Studio, errors that name the file and the fix, and a short train + evaluate run."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import SegmentationFolder
from pixelwise.data.layouts import coco_masks, detect_layout, open_layout
from pixelwise.data.layouts.coco_masks import (
    decode_rle_counts,
    decode_rle_string,
    decode_segmentation,
    rasterize_polygons,
    rle_area,
)
from pixelwise.errors import ConfigError, DataError
from settings import TINY_TRAIN

# pycocotools 2.0.11 (the reference the decoders are compared with) warns on NumPy 2 in every decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 32, 48
IGNORE = 255
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 9, "name": "bird"}]
CLASS_OF = {3: 1, 7: 2, 9: 3}  # categories in id order after background 0


# ---------------------------------------------------------------- independent encoders and drawings


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a mask, written out run by run (column-major, background first)."""
    flat = mask.T.ravel().astype(bool).tolist()
    counts, current, run = [], False, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string, written by the rule of its format description."""
    out = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        while True:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            out.append(chr(48 + (group | (0x20 if more else 0))))
            if not more:
                break
    return "".join(out)


def box(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """A rectangle polygon; COCO's pixel rule covers columns x0..x1-1 and rows y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def blob(seed: int) -> np.ndarray:
    """A random blob mask of ``H x W``: a few discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    mask = np.zeros((H, W), bool)
    for cy, cx, r in rng.uniform((6, 6, 3), (H - 6, W - 6, 7), (3, 3)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return mask


def save_image(path, seed: int, size=(H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def write_json(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def annotation(ann_id, image_id, category, segmentation, crowd=0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation, "iscrowd": crowd}


def two_image_set(root, json_path, file_names=("a.png", "b.png"), image_dir=None):
    """Two images with polygons, uncompressed RLE (a crowd region), compressed RLE and an overlap;
    returns the expected masks and instance labels (drawn here with NumPy)."""
    image_dir = image_dir or root / "images"
    for i, name in enumerate(file_names):
        save_image(image_dir / name.split("/")[-1], i)
    crowd, dog_blob = np.zeros((H, W), bool), blob(1)
    crowd[20:30, 30:46] = True
    annotations = [
        annotation(1, 1, 3, [box(2, 2, 30, 20)]),  # cat, large
        annotation(2, 1, 7, [box(10, 5, 20, 12)]),  # dog, small, drawn first yet on top (smaller)
        annotation(3, 1, 9, {"size": [H, W], "counts": rle_counts(crowd)}, crowd=1),  # bird crowd: ignored
        annotation(4, 2, 7, {"size": [H, W], "counts": rle_string(rle_counts(dog_blob))}),  # dog, compressed RLE
        annotation(5, 2, 9, [box(0, 0, 6, 6), box(40, 24, 48, 32)]),  # bird, two polygons
    ]
    annotations[0], annotations[1] = annotations[1], annotations[0]  # the small dog comes first in the file
    images = [{"id": i + 1, "file_name": n, "height": H, "width": W} for i, n in enumerate(file_names)]
    write_json(json_path, {"images": images, "annotations": annotations, "categories": CATEGORIES})
    a, b = np.zeros((H, W), np.int64), np.zeros((H, W), np.int64)
    a[2:20, 2:30], a[5:12, 10:20], a[crowd] = CLASS_OF[3], CLASS_OF[7], IGNORE
    b[dog_blob], b[0:6, 0:6], b[24:32, 40:48] = CLASS_OF[7], CLASS_OF[9], CLASS_OF[9]
    ia, ib = np.zeros((H, W), np.int32), np.zeros((H, W), np.int32)
    ia[2:20, 2:30], ia[5:12, 10:20] = 2, 1  # ids in file order: the dog is 1, the cat 2
    ib[dog_blob], ib[0:6, 0:6], ib[24:32, 40:48] = 1, 2, 2
    return {"a": a, "b": b}, {"a": ia, "b": ib}


def check_json(root, capsys, *args) -> dict:
    capsys.readouterr()
    main(["check-data", str(root), "--json", *args])
    return json.loads(capsys.readouterr().out)


def assert_counts(report: dict, masks) -> None:
    stacked = np.concatenate([m.ravel() for m in masks])
    expected = np.bincount(stacked[stacked != IGNORE], minlength=4)
    assert [c["pixels"] for c in report["classes"]] == expected.tolist()
    assert report["ignored_pixels"] == int((stacked == IGNORE).sum())


# ---------------------------------------------------------------- the decoders against pycocotools


def random_polygon(rng, kind: str, h: int, w: int) -> list[float]:
    n = int(rng.integers(3, 14))
    if kind == "convex":
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(1, max(h, w) / 2)
        pts = np.c_[rng.uniform(0, w) + r * np.cos(angles), rng.uniform(0, h) + r * np.sin(angles)]
    elif kind == "concave":  # a star: alternating radii
        angles = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
        radii = np.where(np.arange(2 * n) % 2, rng.uniform(1, 4), rng.uniform(6, 20))
        pts = np.c_[w / 2 + radii * np.cos(angles), h / 2 + radii * np.sin(angles)]
    elif kind == "tiny":
        pts = rng.uniform(0, 2.5, (n, 2)) + rng.uniform(0, (w, h))
    elif kind == "off-image":
        pts = rng.uniform(-20, max(h, w) + 20, (n, 2))
    elif kind == "grid":  # vertices on whole and half pixels, repeated vertices included
        pts = np.round(rng.uniform(-2, (w + 2, h + 2), (n, 2)) * 2) / 2
        pts = np.repeat(pts, rng.integers(1, 3, n), axis=0)
    else:  # self-intersecting
        pts = rng.uniform(0, (w, h), (n, 2))
    return pts.ravel().tolist()


@pytest.mark.parametrize("seed, kind", list(enumerate(["convex", "concave", "tiny", "off-image", "grid", "crossing"])))
def test_polygons_are_rasterised_as_pycocotools_does_to_the_pixel(seed, kind):
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(seed)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        polygons = [random_polygon(rng, kind, h, w) for _ in range(int(rng.integers(1, 3)))]
        expected = mask_api.decode(mask_api.merge(mask_api.frPyObjects(polygons, h, w))).astype(bool)
        np.testing.assert_array_equal(rasterize_polygons(polygons, h, w), expected, err_msg=f"{polygons} {h}x{w}")


def test_rle_decoders_match_pycocotools_and_an_independent_encoder():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for i in range(300):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        mask = rng.random((h, w)) < rng.random()
        if i % 5 == 0:
            mask[:] = i % 2  # empty and full masks: a leading zero count, a single run
        rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle_string(rle_counts(mask)) == rle["counts"].decode()  # the test's encoder writes COCO's format
        np.testing.assert_array_equal(decode_rle_counts(decode_rle_string(rle["counts"]), h, w), mask)
        np.testing.assert_array_equal(decode_rle_counts(rle_counts(mask), h, w), mask)
        uncompressed = {"size": [h, w], "counts": rle_counts(mask)}
        np.testing.assert_array_equal(decode_segmentation(uncompressed, h, w), mask_api.decode(rle).astype(bool))
        assert rle_area(rle_counts(mask)) == int(mask_api.area(rle)) == int(mask.sum())


def test_bad_rle_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="add up to 5 pixels but the image has 2x3 = 6"):
        decode_rle_counts([2, 3], 2, 3)
    with pytest.raises(ValueError, match="outside"):
        decode_rle_string("0~")
    with pytest.raises(ValueError, match="truncated"):
        decode_rle_string("0P")  # 'P' = 48 + 0x20: another group should follow
    with pytest.raises(ValueError, match=r"RLE is 3x2 .* image entry says 4x2"):
        decode_segmentation({"size": [2, 3], "counts": [6]}, 2, 4)
    with pytest.raises(ValueError, match="box-only"):
        decode_segmentation([], 2, 4)


def test_the_layout_needs_no_pycocotools(tmp_path, monkeypatch):
    expected, _ = two_image_set(tmp_path, tmp_path / "annotations" / "instances_default.json")
    calls = []
    real = coco_masks.rasterize_polygons
    monkeypatch.setattr(coco_masks, "rasterize_polygons", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # any import of it now raises ImportError
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    data = SegmentationFolder(tmp_path)
    for i, name in enumerate(("a", "b")):
        np.testing.assert_array_equal(data[i]["mask"].numpy(), expected[name])
    assert len(calls) == 3  # the three polygon annotations (a: cat, dog; b: bird), read by our decoder


# ---------------------------------------------------------------- the layout


def test_cvat_export_is_detected_and_checked_to_the_pixel(tmp_path, capsys):
    expected, instances = two_image_set(tmp_path, tmp_path / "annotations" / "instances_default.json")
    assert detect_layout(tmp_path).name == "coco"
    assert open_layout(tmp_path).split is None  # one annotation file: an unsplit set
    report = check_json(tmp_path, capsys)
    assert report["layout"] == "coco" and report["num_pairs"] == 2 and report["problems"] == []
    assert [c["name"] for c in report["classes"]] == ["background", "cat", "dog", "bird"]
    assert "instances_default.json" in report["pairing"] and "smaller on top" in report["pairing"]
    assert_counts(report, expected.values())
    data = SegmentationFolder(tmp_path, instances=True)
    assert data.classes.source_ids == [0, 3, 7, 9]
    for i, name in enumerate(("a", "b")):
        item = data[i]
        assert item["name"] == name
        np.testing.assert_array_equal(item["mask"].numpy(), expected[name])
        np.testing.assert_array_equal(item["instances"].numpy(), instances[name])


def test_overlap_and_crowd_options_change_the_painting(tmp_path):
    expected, _ = two_image_set(tmp_path, tmp_path / "instances.json")
    later = SegmentationFolder(tmp_path / "instances.json", layout_options={"overlap": "later"})
    a = expected["a"].copy()
    a[2:20, 2:30] = CLASS_OF[3]  # the cat comes later in the file: it covers the dog
    np.testing.assert_array_equal(later.read_mask(0), a)
    labels = later.records[0].instances.read()
    assert set(np.unique(labels).tolist()) == {0, 2}  # the dog (id 1) is hidden under the cat
    crowd_as_class = SegmentationFolder(tmp_path / "instances.json", layout_options={"crowd": "class"})
    a = expected["a"].copy()
    a[a == IGNORE] = CLASS_OF[9]
    np.testing.assert_array_equal(crowd_as_class.read_mask(0), a)


def test_crowd_regions_lie_under_single_objects(tmp_path):
    save_image(tmp_path / "images" / "a.png", 0)
    crowd = np.zeros((H, W), bool)
    crowd[0:16, 0:24] = True
    annotations = [
        annotation(1, 1, 3, [box(4, 4, 10, 10)]),
        annotation(2, 1, 3, {"size": [H, W], "counts": rle_counts(crowd)}, 1),
    ]
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    write_json(tmp_path / "result.json", {"images": images, "annotations": annotations, "categories": CATEGORIES})
    mask = SegmentationFolder(tmp_path).read_mask(0)
    expected = np.zeros((H, W), np.int64)
    expected[crowd], expected[4:10, 4:10] = IGNORE, CLASS_OF[3]
    np.testing.assert_array_equal(mask, expected)


def test_label_studio_export_with_upload_paths(tmp_path, capsys):
    names = ("images/a.png", "../../label-studio/data/upload/1/b.png")
    expected, _ = two_image_set(tmp_path, tmp_path / "result.json", file_names=names)
    assert detect_layout(tmp_path).name == "coco"
    report = check_json(tmp_path, capsys)
    assert report["num_pairs"] == 2 and report["problems"] == []
    assert_counts(report, expected.values())


def test_coco_tree_with_split_files_and_split_folders(tmp_path, capsys):
    for split in ("train2017", "val2017"):
        two_image_set(tmp_path, tmp_path / "annotations" / f"instances_{split}.json", image_dir=tmp_path / split)
    (tmp_path / "train2017" / "b.png").unlink()
    assert detect_layout(tmp_path).name == "coco"
    scan = open_layout(tmp_path, "train")
    assert scan.split == "train2017" and [r.name for r in scan.records] == ["a"]
    assert scan.records[0].image == tmp_path / "train2017" / "a.png"
    assert scan.problems == [
        (
            str(tmp_path / "train2017" / "b.png"),
            f"COCO image id 2: file not found; looked in train2017/, annotations/, ./ (under {tmp_path}); "
            "put the images there or fix file_name",
        )
    ]
    with pytest.raises(DataError, match=r"holds splits .*train2017, val2017"):
        open_layout(tmp_path)
    report = check_json(tmp_path, capsys)
    assert report["splits"] == {"train2017": 1, "val2017": 2}
    with pytest.raises(DataError, match=r"do not pair up .* 1 problems: .*b.png: COCO image id 2: file not found"):
        SegmentationFolder(tmp_path, "train")


def test_names_of_images_that_share_a_stem_keep_their_folder(tmp_path):
    two_image_set(tmp_path, tmp_path / "data.json", file_names=("x/a.png", "y/a.png"))
    (tmp_path / "images" / "a.png").rename(tmp_path / "a.png")
    for sub in ("x", "y"):
        save_image(tmp_path / "images" / sub / "a.png", 0)
    assert [r.name for r in open_layout(tmp_path / "data.json").records] == ["x/a", "y/a"]


def test_a_background_category_is_reused_as_class_0(tmp_path):
    two_image_set(tmp_path, tmp_path / "coco.json")
    data = json.loads((tmp_path / "coco.json").read_text())
    data["categories"].append({"id": 1, "name": "_background_"})
    (tmp_path / "coco.json").write_text(json.dumps(data))
    classes = open_layout(tmp_path).classes
    assert classes.names == ["_background_", "cat", "dog", "bird"] and classes.source_ids == [1, 3, 7, 9]


def test_no_image_found_is_an_error_naming_the_json_and_the_folders(tmp_path):
    two_image_set(tmp_path, tmp_path / "annotations" / "instances_default.json", image_dir=tmp_path / "elsewhere")
    with pytest.raises(
        DataError, match=r"none of the 2 images listed in .*instances_default.json.* was found.*Put the images in"
    ):
        open_layout(tmp_path)


def test_bad_annotations_are_problems_naming_the_annotation(tmp_path):
    two_image_set(tmp_path, tmp_path / "coco.json")
    data = json.loads((tmp_path / "coco.json").read_text())
    data["annotations"] += [
        annotation(20, 99, 3, [box(0, 0, 4, 4)]),
        annotation(21, 1, 42, [box(0, 0, 4, 4)]),
        annotation(22, 1, 3, []) | {"bbox": [0, 0, 4, 4]},
    ]
    (tmp_path / "coco.json").write_text(json.dumps(data))
    messages = [message for _, message in open_layout(tmp_path).problems]
    assert "COCO annotation id 20 names image_id 99, which is not in 'images'" in messages[0]
    assert "COCO annotation id 21 names category_id 42, which is not in 'categories'" in messages[1]
    assert "COCO annotation id 22 has no segmentation (an empty list: a box-only annotation)" in messages[2]


def test_broken_annotation_files_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "annotations" / "instances_val.json"
    path.parent.mkdir()
    path.write_text('{"images": [')
    with pytest.raises(
        DataError, match=r"cannot read COCO annotation file .*instances_val.json.*invalid JSON at line 1"
    ):
        open_layout(tmp_path)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match=r"is not a COCO annotation file: it has no 'categories' list"):
        open_layout(tmp_path)
    path.unlink()
    with pytest.raises(DataError, match=r"holds no COCO annotation file: expected annotations/instances_<split>\.json"):
        open_layout(tmp_path, format="coco")


def test_unknown_options_are_refused(tmp_path):
    two_image_set(tmp_path, tmp_path / "coco.json")
    expected = "'overlaps' is not one the coco layout takes; it takes background, crowd, overlap"
    with pytest.raises(ConfigError, match=expected):
        open_layout(tmp_path, options={"overlaps": "later"})
    with pytest.raises(ConfigError, match="unknown overlap option 'smallest'; did you mean 'smaller'"):
        open_layout(tmp_path, options={"overlap": "smallest"})


def test_train_and_evaluate_on_a_coco_file(tmp_path):
    from pixelwise.evaluate import evaluate
    from pixelwise.training.config import TrainConfig
    from pixelwise.training.run import train

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split in ("train", "val"):
        images, annotations = [], []
        for i in range(3):
            name = f"{split}{i}.png"
            image = np.full((64, 64, 3), 30, np.uint8)
            x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
            image[y0 : y0 + 30, x0 : x0 + 30] = 200
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / name)
            images.append({"id": i, "file_name": name, "height": 64, "width": 64})
            annotations.append(annotation(i, i, 3, [box(x0, y0, x0 + 30, y0 + 30)]))
        write_json(
            root / "annotations" / f"instances_{split}.json",
            {"images": images, "annotations": annotations, "categories": CATEGORIES[1:2]},
        )
    config = TrainConfig(
        data=str(root),
        data_format="coco",
        data_options={"overlap": "later"},
        train_split="train",
        val_split="val",
        runs_dir=str(tmp_path),
        name="coco",
        **TINY_TRAIN,
    )
    run_dir = train(config).run_dir
    metrics = evaluate(run_dir / "model", root, split="val", format="coco", out_dir=tmp_path / "eval", progress=False)
    truth = np.asarray(metrics.confusion_matrix).sum(1)
    assert truth.tolist() == [3 * 64 * 64 - 3 * 900, 3 * 900]


def test_without_a_background_class_the_categories_are_classes_0_to_k_minus_1(tmp_path, capsys):
    """``background: false`` (an export labelling every pixel): unannotated pixels are ignored, no class is added."""
    expected, _ = two_image_set(tmp_path, tmp_path / "coco.json")
    data = SegmentationFolder(tmp_path / "coco.json", layout_options={"background": False})
    assert data.classes.names == ["cat", "dog", "bird"] and data.classes.source_ids == [3, 7, 9]
    for i, name in enumerate(("a", "b")):
        without_background = {0: IGNORE, 1: 0, 2: 1, 3: 2, IGNORE: IGNORE}  # unannotated → ignored, cat → 0, ...
        mask = np.vectorize(without_background.get)(expected[name])
        np.testing.assert_array_equal(data.read_mask(i), mask)
    report = check_json(tmp_path / "coco.json", capsys, "--data-options", "{background: false}")
    assert report["num_classes"] == 3 and "no background class" in report["pairing"]


def test_coco_instances_feed_the_boundary_target_and_the_instance_metrics(tmp_path):
    """Two touching boxes per image: one connected component, but two COCO objects. A boundary-target run
    trains on the objects' gaps, and evaluate --instances counts the true objects from the annotations."""
    from pixelwise.evaluate import evaluate
    from pixelwise.training.config import TrainConfig
    from pixelwise.training.run import train

    root = tmp_path / "data"
    for split in ("train", "val"):
        images, annotations = [], []
        for i in range(2):
            image = np.full((64, 64, 3), 30, np.uint8)
            image[10:40, 8:56] = 200
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / f"{split}{i}.png")
            images.append({"id": i, "file_name": f"{split}{i}.png", "height": 64, "width": 64})
            annotations += [
                annotation(2 * i, i, 3, [box(8, 10, 32, 40)]),
                annotation(2 * i + 1, i, 3, [box(32, 10, 56, 40)]),
            ]
        write_json(
            root / "annotations" / f"instances_{split}.json",
            {"images": images, "annotations": annotations, "categories": CATEGORIES[1:2]},
        )
    config = TrainConfig(data=str(root), runs_dir=str(tmp_path), name="bnd", target="boundary", **TINY_TRAIN)
    run_dir = train(config).run_dir
    result = evaluate(run_dir / "model", root, split="val", instances=True, out_dir=tmp_path / "eval", progress=False)
    assert result.instances["n_true"] == 4  # two objects per image, though each image has one connected component
