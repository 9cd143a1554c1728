"""Average precision over IoU thresholds and the aggregated Jaccard index, against hand counts and the
published definitions (StarDist ``matching`` / ``matching_dataset``, Cellpose ``average_precision`` /
``aggregated_jaccard_index``, Kumar et al. 2017 Algorithm 1), re-implemented here by brute force.

Layout of the hand case (one row of pixels; true objects above, predictions below)::

    true:  AAAAAAAAAAAA........BBBBBBBBBB..........CCCCCCCCCC..........
    pred:  111111111...........2222223333..........................44444
"""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.instances.metrics import (
    InstanceScores,
    aggregated_jaccard_index,
    average_precision,
    average_precision_dataset,
    instance_metrics,
)
from pixelwise.instances.scoring import InstanceScorer
from pixelwise.report import write_report

THRESHOLDS = np.arange(0.5, 1.0, 0.05)  # StarDist's and Cellpose's usual table: 0.6000000000000001, ...


def strip(*spans: tuple[int, int, int], width: int = 70) -> np.ndarray:
    """A ``[1, width]`` label image with ``label`` on ``[start, stop)`` for each ``(label, start, stop)``."""
    labels = np.zeros((1, width), np.int32)
    for label, start, stop in spans:
        labels[0, start:stop] = label
    return labels


# A (12 px) found at IoU 9/12 = 0.75; B (10 px) split 6 + 4 (IoU 0.6 and 0.4); C missed; 4 a false positive.
TRUE = strip((1, 0, 12), (2, 20, 30), (3, 40, 50))
PRED = strip((1, 0, 9), (2, 20, 26), (3, 26, 30), (4, 60, 65))


def test_ap_table_on_the_hand_case():
    table = average_precision(TRUE, PRED, THRESHOLDS)
    # pairs at IoU >= t: A-1 (0.75) up to t = 0.75, B-2 (0.6) up to t = 0.6; ties count (StarDist: >=)
    tp = np.array([2, 2, 2, 1, 1, 1, 0, 0, 0, 0])
    n_pred, n_true = 4, 3
    np.testing.assert_array_equal(table["tp"], tp)
    np.testing.assert_array_equal(table["fp"], n_pred - tp)
    np.testing.assert_array_equal(table["fn"], n_true - tp)
    np.testing.assert_allclose(table["ap"], tp / (tp + (n_pred - tp) + (n_true - tp)))
    assert table["ap"][0] == pytest.approx(2 / 5) and table["ap"][3] == pytest.approx(1 / 6)


def test_iou_exactly_one_half_counts_for_ap_not_for_the_dsb_score():
    true, pred = strip((1, 0, 10)), strip((1, 5, 10))  # IoU 5 / 10
    assert average_precision(true, pred, [0.5])["tp"].tolist() == [1]
    assert instance_metrics(pred, true)["tp"] == 0  # the DSB / panoptic convention is strict (> 0.5)
    # just below: 5 of 11
    assert average_precision(strip((1, 0, 11)), strip((1, 6, 11)), [0.5])["tp"].tolist() == [0]


def test_ap_matching_is_one_to_one_and_optimal():
    true = strip((1, 0, 10), (2, 10, 20))
    pred = strip((1, 4, 14), (2, 0, 4))  # pred 1: IoU 6/14 with 1, 4/16 with 2; pred 2: 4/10 with 1
    assert average_precision(true, pred, [0.2])["tp"].tolist() == [2]  # greedy by best IoU would find 1
    # ids need not be consecutive, and renumbering changes nothing
    relabelled = average_precision(np.where(true > 0, true * 7 + 100, 0), np.where(pred > 0, 50 - pred, 0), [0.2])
    assert relabelled["tp"].tolist() == [2]


def test_empty_images():
    empty, one = strip(), strip((5, 3, 8))
    nothing = average_precision(empty, empty, THRESHOLDS)
    assert np.isnan(nothing["ap"]).all() and nothing["tp"].sum() == nothing["fp"].sum() == nothing["fn"].sum() == 0
    for true, pred in ((empty, one), (one, empty)):
        table = average_precision(true, pred, THRESHOLDS)
        assert (table["ap"] == 0).all() and (table["tp"] == 0).all()
        assert aggregated_jaccard_index(true, pred) == 0.0
    assert math.isnan(aggregated_jaccard_index(empty, empty))


def test_errors_name_the_problem():
    with pytest.raises(ShapeError, match="one shape"):
        average_precision(strip(), np.zeros((2, 70), np.int32))
    with pytest.raises(ConfigError, match="trues has 2 label images and preds 1"):
        average_precision_dataset([TRUE, TRUE], [PRED])
    with pytest.raises(ConfigError, match="AJI variant 'kumarr'; did you mean 'kumar'"):
        aggregated_jaccard_index(TRUE, PRED, variant="kumarr")


def test_dataset_pools_counts_like_stardist_by_image_false():
    perfect = strip((1, 0, 10))
    three_missed = strip((1, 0, 5), (2, 10, 15), (3, 20, 25))
    empty = strip()
    table = average_precision_dataset([perfect, three_missed, empty], [perfect, empty, empty], [0.5, 0.9])
    # TP 1, FP 0, FN 3 pooled: 1 / 4 (the mean of the per-image APs would be (1 + 0) / 2 = 0.5)
    assert table["ap"].tolist() == [0.25, 0.25]
    assert (table["tp"].tolist(), table["fp"].tolist(), table["fn"].tolist()) == ([1, 1], [0, 0], [3, 3])
    assert np.isnan(average_precision_dataset([empty], [empty], [0.5])["ap"]).all()


def test_aji_on_hand_cases_kumar_and_cellpose():
    # Kumar: A takes 1 (C 9, U 12), B takes 2 (C 6, U 10), C touches nothing (U 10), 3 and 4 unused (U 4 + 5)
    assert aggregated_jaccard_index(TRUE, PRED) == pytest.approx((9 + 6) / (12 + 10 + 10 + 4 + 5))
    # Cellpose: the same pairs' intersections over the foreground union (32 true px + the 5 px of pred 4)
    assert aggregated_jaccard_index(TRUE, PRED, "cellpose") == pytest.approx(15 / 37)
    # one prediction over two true objects: Kumar lets both take it, Cellpose pairs it once (IoU 0.6 >= 0.5)
    true, pred = strip((1, 0, 4), (2, 4, 10)), strip((1, 0, 10))
    assert aggregated_jaccard_index(true, pred) == pytest.approx((4 + 6) / (10 + 10))
    assert aggregated_jaccard_index(true, pred, "cellpose") == pytest.approx(6 / 10)
    # perfect
    assert aggregated_jaccard_index(TRUE, TRUE) == aggregated_jaccard_index(TRUE, TRUE, "cellpose") == 1.0


# ---- brute force from the published definitions, on random label images -----------------------------------------


def random_labels(rng: np.random.Generator, size: int = 24, boxes: int = 9) -> np.ndarray:
    labels = np.zeros((size, size), np.int32)
    for label in rng.permutation(np.arange(1, boxes + 1) * 3):  # ids not consecutive, painted in random order
        y, x = rng.integers(0, size - 3, 2)
        h, w = rng.integers(2, 9, 2)
        labels[y : y + h, x : x + w] = label
    return labels


def dense_overlap(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t_ids, p_ids = np.unique(true[true > 0]), np.unique(pred[pred > 0])
    inter = np.array([[np.sum((true == t) & (pred == p)) for p in p_ids] for t in t_ids], dtype=np.int64)
    union = np.array([[np.sum((true == t) | (pred == p)) for p in p_ids] for t in t_ids], dtype=np.int64)
    return inter.reshape(len(t_ids), len(p_ids)), union.reshape(len(t_ids), len(p_ids)), t_ids


def stardist_tp(inter: np.ndarray, union: np.ndarray, threshold: float) -> int:
    """StarDist's ``matching``: assignment maximising the pairs with IoU >= t, IoU as tie-breaker."""
    if 0 in inter.shape:
        return 0
    iou = inter / union
    t = Fraction(threshold).limit_denominator(100)  # exact ratios: ties at the threshold count
    ok = np.vectorize(lambda i, u: Fraction(int(i), int(u)) >= t)(inter, union).astype(bool)
    rows, cols = linear_sum_assignment(-(ok.astype(float)) - iou / (2 * min(iou.shape)))
    return int(ok[rows, cols].sum())


def kumar_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al. 2017, Algorithm 1, literally (a true object without overlap adds its area to U)."""
    p_ids = [p for p in np.unique(pred) if p]
    intersection, union, used = 0, 0, set()
    for t in (t for t in np.unique(true) if t):
        g = true == t
        ious = [np.sum(g & (pred == p)) / np.sum(g | (pred == p)) for p in p_ids]
        if not ious or max(ious) == 0:
            union += g.sum()
            continue
        best = p_ids[int(np.argmax(ious))]
        intersection += np.sum(g & (pred == best))
        union += np.sum(g | (pred == best))
        used.add(best)
    union += sum(np.sum(pred == p) for p in p_ids if p not in used)
    return intersection / union


def cellpose_aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Cellpose's ``aggregated_jaccard_index``: one-to-one assignment on the whole [T, P] matrix."""
    inter, union, _ = dense_overlap(true, pred)
    iou = inter / union
    rows, cols = linear_sum_assignment(-(iou >= 0.5).astype(float) - iou / (2 * min(iou.shape)))
    return inter[rows, cols].sum() / np.sum((true > 0) | (pred > 0))


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_match_the_published_definitions(seed):
    rng = np.random.default_rng(seed)
    true, pred = random_labels(rng), random_labels(rng)
    pred[rng.random(pred.shape) < 0.1] = 0  # ragged predictions
    inter, union, _ = dense_overlap(true, pred)
    thresholds = [0.1, 0.3, *THRESHOLDS]
    expected = [stardist_tp(inter, union, t) for t in thresholds]
    assert average_precision(true, pred, thresholds)["tp"].tolist() == expected
    assert aggregated_jaccard_index(true, pred) == pytest.approx(kumar_aji(true, pred))
    assert aggregated_jaccard_index(true, pred, "cellpose") == pytest.approx(cellpose_aji(true, pred))


def test_thousands_of_objects_stay_fast():
    import time

    grid = np.arange(60 * 60, dtype=np.int32).reshape(60, 60) + 1  # 3,600 objects of 25 x 25 px
    true = np.kron(grid, np.ones((25, 25), np.int32))
    pred = np.roll(true, 3, axis=1)  # every object shifted: IoU 22 / 28
    start = time.perf_counter()
    table = average_precision(true, pred, THRESHOLDS)
    aji = aggregated_jaccard_index(true, pred), aggregated_jaccard_index(true, pred, "cellpose")
    assert time.perf_counter() - start < 10
    assert table["tp"][:6].tolist() == [3600] * 6 and table["tp"][6:].sum() == 0  # 22 / 28 = 0.786
    # Kumar: each takes its shifted self (C 550 of U 700); Cellpose divides by the foreground instead
    assert aji[0] == pytest.approx(550 / 700) and aji[1] == pytest.approx(3600 * 550 / true.size)


# ---- InstanceScores, the scorer's JSON, and the report ---------------------------------------------------------


def test_instance_scores_report_the_pooled_table_and_aji():
    scores = InstanceScores()
    scores.update(PRED, TRUE)
    scores.update(strip(), strip())  # no objects: adds nothing
    scores.update(strip((1, 0, 10)), strip((1, 0, 10)))
    result = scores.compute()
    tp = np.array([2, 2, 2, 1, 1, 1, 0, 0, 0, 0]) + 1
    ap = tp / (tp + (5 - tp) + (4 - tp))
    assert [row["ap"] for row in result["ap_table"]] == pytest.approx(ap.tolist())
    assert [row["iou"] for row in result["ap_table"]] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert (result["ap50"], result["ap75"], result["map"]) == pytest.approx((ap[0], ap[5], ap.mean()))
    assert result["aji"] == pytest.approx((15 / 41 + 1) / 2)  # mean over the images with objects
    assert result["pooled_aji"] == pytest.approx((15 + 10) / (41 + 10))


def test_scorer_writes_json_without_nan():
    scorer = InstanceScorer()
    background = np.zeros((2, 6, 6), np.float32)
    background[0] = 1
    scorer.update(background, np.zeros((6, 6), np.int32))
    result = scorer.compute()
    assert result["map"] is None and result["aji"] is None and result["ap_table"][0]["ap"] is None
    json.dumps(result, allow_nan=False)


def test_report_shows_the_ap_table(tmp_path):
    scores = InstanceScores()
    scores.update(PRED, TRUE)
    metrics = {"mean_iou": 0.5, "iou": [0.5], "f1": [0.5], "precision": [0.5], "recall": [0.5]}
    html = write_report(tmp_path, title="t", metrics=metrics, class_names=["x"], instance_metrics=scores.compute())
    page = html.read_text()
    assert 'id="ap-table"' in page and "Average precision by IoU threshold" in page
    assert page.count('<tr><td class="name">0.') == 10 and "ap_table" not in page  # one row per threshold
    assert '<td class="name">aji</td><td>0.366</td>' in page  # 15 / 41


def test_evaluate_instances_prints_and_writes_the_ap_table(tmp_path, capsys):
    import pixelwise
    from pixelwise.cli import main
    from pixelwise.data.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "cells", "cells", n_train=1, n_val=2, size=64, seed=3)
    options = {"encoder_depth": 3, "decoder_channels": [16, 8, 4], "in_channels": 1, "classes": 2}
    model_dir = tmp_path / "model"
    pixelwise.Unet("resnet18", **options).eval().save_pretrained(model_dir)
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(model_dir), "--data", str(data), "--out", str(out), "--instances"]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert all(label in printed for label in ("AP50", "AP75", "mAP@0.5:0.95", "AJI"))
    found = json.loads((out / "metrics.json").read_text())["instances"]
    table = found["ap_table"]
    assert len(table) == 10 and all(row["tp"] + row["fn"] == found["n_true"] for row in table)
    assert all(row["tp"] + row["fp"] == found["n_pred"] for row in table)
    assert 'id="ap-table"' in (out / "report.html").read_text()
