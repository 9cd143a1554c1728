"""Instance targets, post-processing, objects and metrics, checked against direct computations and
hand-made label images with answers worked out by hand."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from pixelwise.data import read_instances
from pixelwise.errors import ConfigError, ShapeError
from pixelwise.instances import (
    InstanceScores,
    boundary_target,
    class_balance_weights,
    draw_instances,
    encode_polygons,
    has_pycocotools,
    instance_metrics,
    instances_from_mask,
    iou_matrix,
    model_instance_settings,
    objects,
    separate_touching,
    to_instances,
    unet_weight_map,
    write_instance_outputs,
    write_prediction_instances,
)
from pixelwise.instances.postprocess import close_gaps


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images hold the same objects, whatever their ids (0 must match 0)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a[a > 0], b[b > 0], strict=True)}
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def disk_labels(shape, centres, radius) -> np.ndarray:
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = i
    return labels


# -- weight map ------------------------------------------------------------------------------------


def direct_weight_map(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula pixel by pixel: w_c from counted frequencies, d1/d2 by brute force over object pixels."""
    total = labels.size
    fg = int((labels > 0).sum())
    w_fg, w_bg = min(total / (2 * fg), 10.0), min(total / (2 * (total - fg)), 10.0)
    ids = [i for i in np.unique(labels) if i > 0]
    coords = {i: np.argwhere(labels == i) for i in ids}
    out = np.empty(labels.shape)
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            if labels[y, x] > 0:
                out[y, x] = w_fg
                continue
            d = sorted(np.sqrt(((coords[i] - (y, x)) ** 2).sum(1)).min() for i in ids)
            border = w0 * math.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2)) if len(d) >= 2 else 0.0
            out[y, x] = w_bg + border
    return out


@pytest.fixture(scope="module")
def irregular() -> np.ndarray:
    labels = np.zeros((26, 30), np.int32)
    labels[2:9, 3:10] = 1  # square
    labels[2:9, 12:15] = 2  # a bar 2 px right of the square
    labels[12:20, 5:12] = 3
    labels[14:17, 12:14] = 3  # an L-shaped object
    labels[15:24, 17:27] = 4
    labels[19:24, 17:20] = 0  # a notch
    return labels


@pytest.mark.parametrize(("w0", "sigma"), [(10.0, 5.0), (7.0, 2.5)])
def test_weight_map_matches_the_formula_pixel_by_pixel(irregular, w0, sigma):
    expected = direct_weight_map(irregular, w0, sigma)
    exact = unet_weight_map(irregular, w0=w0, sigma=sigma, tolerance=0)
    np.testing.assert_allclose(exact, expected, rtol=1e-5, atol=1e-5)
    fast = unet_weight_map(irregular, w0=w0, sigma=sigma)  # border values below 1e-4 dropped
    assert np.abs(fast - expected).max() <= 1e-4 + 1e-5
    assert exact.dtype == np.float32 and exact.shape == irregular.shape


def test_weight_map_in_a_two_pixel_gap_by_hand():
    labels = np.zeros((10, 12), np.int32)
    labels[:, 0:5] = 1
    labels[:, 7:12] = 2  # background columns 5 and 6 between them
    weights = unet_weight_map(labels, w0=10, sigma=5)
    w_bg = 120 / (2 * 20)  # 20 background pixels of 120
    assert weights[3, 5] == pytest.approx(w_bg + 10 * math.exp(-((1 + 2) ** 2) / 50), rel=1e-6)
    assert weights[3, 0] == pytest.approx(120 / (2 * 100))  # inside an object: w_c only
    no_balance = unet_weight_map(labels, class_balance=False)
    assert no_balance[3, 2] == 1.0 and no_balance[3, 6] == pytest.approx(1 + 10 * math.exp(-9 / 50), rel=1e-6)


def test_weight_map_one_object_has_no_border_term_and_class_weights_are_capped():
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:5] = 1  # 20 of 100 pixels
    np.testing.assert_allclose(unet_weight_map(labels), np.where(labels > 0, 2.5, 0.625))
    tiny = np.zeros((10, 10), bool)
    tiny[0, 0] = True  # 1 % foreground would get 50: capped at 10
    assert class_balance_weights(tiny)[0, 0] == 10.0
    assert np.all(class_balance_weights(np.zeros((4, 4), bool)) == 1.0)
    valid = np.ones((10, 10), bool)
    valid[5:] = False  # frequencies over the valid half only: 20 of 50
    assert class_balance_weights(labels > 0, valid)[0, 0] == pytest.approx(50 / 40)


def test_weight_map_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="sigma > 0"):
        unet_weight_map(np.zeros((4, 4), np.int32), sigma=0)


def test_weight_map_512_with_200_objects_is_fast():
    rng = np.random.default_rng(0)
    labels = np.zeros((512, 512), np.int32)
    disk = np.add.outer(np.arange(-9, 10) ** 2, np.arange(-9, 10) ** 2) <= 81
    for i, (y, x) in enumerate(rng.integers(0, 493, (200, 2)), start=1):  # some overlap: later disks on top
        labels[y : y + 19, x : x + 19][disk] = i
    assert len(np.unique(labels)) > 190
    unet_weight_map(labels)  # warm-up
    start = time.process_time()  # CPU time: the test machine is shared
    unet_weight_map(labels)
    assert time.process_time() - start < 1.0


# -- gaps, boundary target, instances from masks -----------------------------------------------------


def test_separate_touching_cuts_a_gap_only_where_objects_touch():
    labels = np.zeros((6, 12), np.int32)
    labels[1:5, 0:5] = 1
    labels[1:5, 5:10] = 2
    separated = separate_touching(labels, gap=1)
    expected = labels.copy()
    expected[1:5, 4:6] = 0  # the contact columns of both objects
    np.testing.assert_array_equal(separated, expected)
    diagonal = np.zeros((4, 4), np.int32)
    diagonal[:2, :2], diagonal[2:, 2:] = 1, 2  # touching at one corner only
    cut = separate_touching(diagonal, gap=1)
    assert cut[1, 1] == 0 and cut[2, 2] == 0 and cut[0, 0] == 1 and cut[3, 3] == 2
    np.testing.assert_array_equal(separate_touching(labels, 0), labels)


def test_close_gaps_restores_the_contact_but_not_free_outlines():
    labels = np.zeros((6, 12), np.int32)
    labels[1:5, 0:5] = 1
    labels[1:5, 5:10] = 2
    closed = close_gaps(separate_touching(labels, 1), 1)
    np.testing.assert_array_equal(closed, labels)


def direct_boundary(labels: np.ndarray, width: int) -> np.ndarray:
    out = np.where(labels > 0, 1, 0)
    h, w = labels.shape
    for y, x in np.argwhere(labels > 0):
        for dy in range(-width, width + 1):
            for dx in range(-width, width + 1):
                yy, xx = y + dy, x + dx
                inside = 0 <= yy < h and 0 <= xx < w
                if inside and dy * dy + dx * dx <= width * width and labels[yy, xx] != labels[y, x]:
                    out[y, x] = 2
    return out


@pytest.mark.parametrize("width", [1, 2, 3])
def test_boundary_target_matches_direct_search(irregular, width):
    touching = irregular.copy()
    touching[2:9, 10:12] = 1  # square now touches the bar
    np.testing.assert_array_equal(boundary_target(touching, width), direct_boundary(touching, width))


def test_boundary_target_and_gap_reject_bad_widths():
    with pytest.raises(ConfigError, match="at least 1"):
        boundary_target(np.zeros((3, 3), np.int32), 0)
    with pytest.raises(ConfigError, match=">= 0"):
        separate_touching(np.zeros((3, 3), np.int32), -1)


def test_instances_from_mask_splits_classes_not_touching_objects():
    mask = np.zeros((5, 9), np.int64)
    mask[1:4, 0:3] = 1
    mask[1:4, 3:6] = 2  # touches the first but is another class
    mask[0, 8] = 1
    mask[4, 7] = 1  # diagonal neighbour of (0, 8)? no: rows 0 and 4 are far apart
    mask[2, 8] = 255  # void
    labels = instances_from_mask(mask)
    assert labels.dtype == np.int32 and len(np.unique(labels)) - 1 == 4 and labels[2, 8] == 0


# -- post-processing ---------------------------------------------------------------------------------


def probs_from(labels: np.ndarray) -> np.ndarray:
    foreground = (labels > 0).astype(np.float32)
    return np.stack([1 - foreground, foreground])


def test_components_merge_touching_disks_watershed_splits_them():
    truth = disk_labels((48, 60), [(24, 20), (24, 38)], 10)  # centres 18 apart, radius 10: they overlap
    merged = to_instances(probs_from(truth), "components")
    assert merged.dtype == np.int32 and merged.max() == 1
    split = to_instances(probs_from(truth), "watershed")
    assert split.max() == 2
    iou, _, _ = iou_matrix(split, truth)
    assert sorted(iou.max(1)) == pytest.approx([1, 1], abs=0.08)


def test_min_size_and_hole_filling():
    labels = np.zeros((20, 20), np.int32)
    labels[2:9, 2:9] = 1
    labels[5, 5] = 0  # a hole
    labels[15:17, 15:17] = 2  # 4 pixels: below min_size 5
    out = to_instances(probs_from(labels), "components", min_size=5)
    expected = np.zeros_like(labels)
    expected[2:9, 2:9] = 1
    np.testing.assert_array_equal(out, expected)
    assert to_instances(probs_from(labels), "components", min_size=1, fill_holes=False)[5, 5] == 0


def test_classes_are_never_merged_and_threshold_sets_foreground():
    probs = np.zeros((3, 4, 8), np.float32)
    probs[0] = 1
    probs[:, :, 0:4] = np.array([0.1, 0.8, 0.1])[:, None, None]
    probs[:, :, 4:8] = np.array([0.3, 0.1, 0.6])[:, None, None]
    assert to_instances(probs, min_size=1).max() == 2  # touching, different classes
    assert to_instances(probs, min_size=1, threshold=0.8).max() == 1  # 1 - 0.3 = 0.7 is not above 0.8
    binary = torch.tensor(probs[1:2] + probs[2:3])  # a sigmoid output [1, H, W]
    assert to_instances(binary, min_size=1).max() == 1


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_boundary_target_probabilities_give_back_the_objects(method):
    truth = disk_labels((48, 60), [(24, 20), (24, 38), (8, 52)], 9)
    target = boundary_target(truth, 2)
    probs = np.stack([(target == k).astype(np.float32) for k in range(3)])
    found = to_instances(probs, method, target="boundary", min_size=1)
    assert same_partition(found, truth)


def test_to_instances_rejects_bad_options():
    probs = probs_from(np.ones((4, 4), np.int32))
    with pytest.raises(ConfigError, match="did you mean 'watershed'"):
        to_instances(probs, "watershd")
    with pytest.raises(ConfigError, match="target='boundary'"):
        to_instances(probs, "watershed", markers="interior")
    with pytest.raises(ShapeError, match=r"\[3, H, W\]"):
        to_instances(probs, target="boundary")


# -- metrics -------------------------------------------------------------------------------------------


@pytest.fixture
def squares():
    """Two true 10×10 squares; predictions: one exact, one shifted by 2 px (IoU 80/120), one extra."""
    true = np.zeros((40, 40), np.int32)
    true[2:12, 2:12] = 1
    true[20:30, 20:30] = 2
    pred = np.zeros_like(true)
    pred[2:12, 2:12] = 5
    pred[20:30, 22:32] = 9
    pred[35:38, 2:5] = 3  # a false positive
    return pred, true


def test_metrics_on_hand_made_squares(squares):
    m = instance_metrics(*squares)
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"], m["n_true"]) == (2, 1, 0, 3, 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    # IoU 2/3 passes thresholds 0.5-0.65 (4 of them: TP 2, FP 1, FN 0); the exact square passes all 10
    dsb = (4 * (2 / 3) + 6 * (1 / (1 + 2 + 1))) / 10
    assert m["dsb_score"] == pytest.approx(dsb)
    sq, rq = (1 + 2 / 3) / 2, 2 / (2 + 0.5)
    assert (m["sq"], m["rq"], m["pq"]) == pytest.approx((sq, rq, sq * rq))


def test_iou_threshold_is_strict():
    true = np.zeros((1, 20), np.int32)
    true[0, 0:10] = 1
    pred = np.zeros_like(true)
    pred[0, 5:10] = 1  # IoU exactly 0.5: not a match
    m = instance_metrics(pred, true)
    assert (m["tp"], m["fp"], m["fn"], m["pq"]) == (0, 1, 1, 0.0)


def test_matching_is_optimal_not_greedy():
    true = np.zeros((1, 20), np.int32)
    true[0, 0:10], true[0, 10:20] = 1, 2
    pred = np.zeros_like(true)
    pred[0, 4:14] = 1  # IoU 6/14 with object 1, 4/16 with object 2
    pred[0, 0:4] = 2  # IoU 4/10 with object 1
    # greedy would pair pred 1 with object 1 (best IoU) and leave pred 2 unmatched: one match
    m = instance_metrics(pred, true, thresholds=(0.2,))
    assert m["dsb_score"] == 1.0  # 2 matches: TP / (TP + FP + FN) = 2 / 2


def test_empty_images():
    empty = np.zeros((5, 5), np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 1
    nothing = instance_metrics(empty, empty)
    assert all(math.isnan(nothing[k]) for k in ("precision", "dsb_score", "pq"))
    missed = instance_metrics(empty, one)
    assert (missed["precision"], missed["recall"], missed["f1"], missed["dsb_score"], missed["pq"]) == (0, 0, 0, 0, 0)
    scores = InstanceScores()
    scores.update(empty, empty)
    scores.update(one, one)
    scores.update(empty, one)
    result = scores.compute()
    assert result["dsb_score"] == 0.5 and result["images"] == 3  # the empty image is left out of the mean
    assert result["pooled_f1"] == pytest.approx(1 / (1 + 0.5)) and result["count_error"] == pytest.approx(1 / 3)
    with pytest.raises(ShapeError, match="one shape"):
        instance_metrics(empty, np.zeros((5, 6), np.int32))


def test_iou_matrix_and_scores_against_direct_computation():
    rng = np.random.default_rng(3)
    for _ in range(5):
        true = disk_labels((40, 40), rng.uniform(0, 40, (6, 2)), 6)
        pred = disk_labels((40, 40), rng.uniform(0, 40, (7, 2)), 7)
        iou, pred_ids, true_ids = iou_matrix(pred, true)
        for i, p in enumerate(pred_ids):
            for j, t in enumerate(true_ids):
                inter = np.sum((pred == p) & (true == t))
                assert iou[i, j] == pytest.approx(inter / np.sum((pred == p) | (true == t)))
        # above IoU 0.5 every object has at most one partner: TP is just the count of such pairs
        m = instance_metrics(pred, true)
        tps = [int((iou > t).sum()) for t in np.arange(0.5, 0.96, 0.05)]
        n_p, n_t = len(pred_ids), len(true_ids)
        assert m["dsb_score"] == pytest.approx(np.mean([tp / (n_p + n_t - tp) for tp in tps]))
        assert m["tp"] == tps[0]
        assert m["pq"] == pytest.approx(iou[iou > 0.5].sum() / (tps[0] + (n_p + n_t - 2 * tps[0]) / 2))


# -- objects and outputs -----------------------------------------------------------------------------


def test_objects_records_by_hand():
    labels = np.zeros((10, 12), np.int32)
    labels[2:5, 3:8] = 4  # 15 pixels, centre (3, 5)
    labels[7:9, 0:2] = 6
    probs = np.zeros((3, 10, 12), np.float32)
    probs[0] = 1.0
    probs[:, 2:5, 3:8] = np.array([0.1, 0.2, 0.7])[:, None, None]
    probs[:, 2, 3:8] = np.array([0.1, 0.6, 0.3])[:, None]  # first row votes class 1; the two others class 2
    probs[:, 7:9, 0:2] = np.array([0.2, 0.8, 0.0])[:, None, None]
    first, second = objects(labels, probs, class_names=["bg", "a", "b"])
    assert first["id"] == 4 and first["class"] == 2 and first["class_name"] == "b"
    assert first["score"] == pytest.approx((5 * 0.3 + 10 * 0.7) / 15)
    assert (first["area"], first["bbox"], first["centroid"]) == (15, [2, 3, 5, 8], [3.0, 5.0])
    assert (second["id"], second["class"], second["score"]) == (6, 1, pytest.approx(0.8))
    plain = objects(labels)
    assert plain[0]["class"] == 1 and plain[0]["score"] is None


def test_polygons_surround_the_pixels():
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:8] = True
    (polygon,) = encode_polygons(mask)
    xs, ys = polygon[0::2], polygon[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (2.5, 7.5, 1.5, 4.5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools
@pytest.mark.parametrize("encoding", ["rle", "polygon"])
def test_write_instance_outputs(tmp_path, encoding):
    if encoding == "rle" and not has_pycocotools():
        pytest.skip("pycocotools is not installed (pip install 'pixelwise[instances]')")
    labels = np.zeros((16, 20), np.int32)
    labels[2:6, 3:9] = 1
    labels[9:14, 10:18] = 2
    image = np.random.default_rng(0).random((1, 16, 20)).astype(np.float32)
    paths = write_instance_outputs(tmp_path, "x", labels, probs_from(labels), image=image, encoding=encoding)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_instances.png", "x_objects.json", "x_outlines.png"]
    np.testing.assert_array_equal(read_instances(paths["labels"]), labels)
    document = json.loads(paths["objects"].read_text())
    assert document["encoding"] == encoding and [o["id"] for o in document["objects"]] == [1, 2]
    segmentation = document["objects"][1]["segmentation"]
    if encoding == "rle":
        from pycocotools import mask as coco_mask

        decoded = coco_mask.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), labels == 2)
    else:
        xs, ys = segmentation[0][0::2], segmentation[0][1::2]
        assert (min(xs), max(xs), min(ys), max(ys)) == (9.5, 17.5, 8.5, 13.5)
    from PIL import Image

    assert np.asarray(Image.open(paths["outlines"])).shape == (16, 20, 3)


def test_draw_instances_outlines_in_object_colours():
    labels = np.zeros((30, 30), np.int32)
    labels[5:25, 5:25] = 1
    gray = np.full((30, 30), 0.5, np.float32)
    picture = draw_instances(gray, labels, ids=False)
    assert tuple(picture[0, 0]) == (128, 128, 128)  # background untouched
    assert tuple(picture[5, 12]) != tuple(picture[15, 12])  # outline differs from the tinted inside


def test_prediction_instances_follow_the_model_target(tmp_path):
    truth = disk_labels((48, 60), [(24, 20), (24, 38), (8, 52)], 9)
    target = boundary_target(truth, 2)
    probs = np.stack([(target == k).astype(np.float32) for k in range(3)])
    model = tmp_path / "run"
    (model / "model").mkdir(parents=True)
    (model / "model" / "preprocessing.json").write_text(json.dumps({"target": "boundary", "separation_gap": 0}))
    assert model_instance_settings(model) == {"target": "boundary", "separation_gap": 0}
    assert model_instance_settings(tmp_path / "elsewhere.onnx") == {"target": "semantic", "separation_gap": 0}
    image = np.zeros((1, 48, 60), np.float32)
    written = write_prediction_instances(tmp_path / "out", "a", probs, model, image, ["bg", "interior", "boundary"])
    assert sorted(p.name for p in written) == ["a_instances.png", "a_objects.json", "a_overlay.png"]
    assert same_partition(read_instances(tmp_path / "out" / "a_instances.png"), truth)
    records = json.loads((tmp_path / "out" / "a_objects.json").read_text())["objects"]
    assert [r["class_name"] for r in records] == ["object"] * 3 and all(r["score"] == 1.0 for r in records)
