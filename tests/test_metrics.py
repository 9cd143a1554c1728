"""pixelwise.metrics on hand-checked examples: confusion matrix, reductions, Keras API, boundary scores, errors.

Peer comparisons (torchmetrics, segmentation_models_pytorch) live in test_metrics_oracle.py.
"""

import math
import multiprocessing as mp

import numpy as np
import pytest
import torch
import torch.distributed as dist

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.metrics import (
    BoundaryScores,
    ConfusionMatrix,
    FScore,
    IOUScore,
    boundary_f1,
    boundary_iou,
    confusion_matrix,
    f_score,
    get_stats,
    inner_band,
    iou_score,
)

IGNORE = 255
nan = float("nan")


def assert_same(actual: torch.Tensor, expected) -> None:
    """Equal to 1e-12, NaN where expected is NaN."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=1e-12, rtol=0, equal_nan=True)


# ---------------------------------------------------------------- confusion matrix, by hand

# target [[0, 1], [1, 1]] and prediction [[0, 1], [0, 1]]: rows = target, columns = prediction
TARGET_2X2 = torch.tensor([[[0, 1], [1, 1]]])
PREDS_2X2 = torch.tensor([[[0, 1], [0, 1]]])


def test_two_by_two_by_hand():
    cm = ConfusionMatrix(2)
    cm.update(PREDS_2X2, TARGET_2X2)
    assert cm.matrix.tolist() == [[1, 0], [1, 2]]
    out = cm.compute()
    assert_same(out["iou"], [1 / 2, 2 / 3])  # class 0: tp 1, fp 1, fn 0; class 1: tp 2, fp 0, fn 1
    assert_same(out["mean_iou"], (1 / 2 + 2 / 3) / 2)
    assert_same(out["f1"], [2 / 3, 4 / 5])
    assert_same(out["precision"], [1 / 2, 1.0])
    assert_same(out["recall"], [1.0, 2 / 3])
    assert_same(out["accuracy"], 3 / 4)
    assert_same(out["mean_accuracy"], (1 + 2 / 3) / 2)
    assert_same(out["fw_iou"], (1 * 1 / 2 + 3 * 2 / 3) / 4)


def test_beta_weighs_recall():
    cm = ConfusionMatrix(2, beta=2.0)
    cm.update(PREDS_2X2, TARGET_2X2)
    out = cm.compute()
    # F2 = 5 tp / (5 tp + 4 fn + fp): class 0 = 5 / 6, class 1 = 10 / 14; f1 stays F1
    assert_same(out["fscore"], [5 / 6, 10 / 14])
    assert_same(out["f1"], [2 / 3, 4 / 5])


def test_absent_class_is_nan_and_unpredicted_class_is_zero():
    target = torch.tensor([[[0, 0], [1, 1]]])
    preds = torch.tensor([[[0, 0], [0, 0]]])
    cm = ConfusionMatrix(3)
    cm.update(preds, target)
    out = cm.compute()
    assert_same(out["iou"], [2 / 4, 0.0, nan])  # class 1 in target, never predicted: 0; class 2 nowhere: NaN
    assert_same(out["mean_iou"], 0.25)  # NaN left out of the mean
    assert_same(out["precision"], [0.5, nan, nan])  # class 1 never predicted: precision undefined
    assert_same(out["recall"], [1.0, 0.0, nan])


def test_ignored_pixels_are_not_counted():
    target = torch.tensor([[[0, IGNORE], [1, 1]]])
    preds = torch.tensor([[[0, 0], [1, 0]]])
    cm = ConfusionMatrix(2)
    cm.update(preds, target)
    assert cm.matrix.tolist() == [[1, 0], [1, 1]]
    cm2 = ConfusionMatrix(2, ignore_index=None)
    with pytest.raises(ConfigError, match=r"class ids \[255\] outside 0..1"):
        cm2.update(preds, target)


def test_all_ignored_is_nan():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), IGNORE))
    out = cm.compute()
    assert all(v.isnan().all() for v in out.values())


def test_binary_threshold_and_labels():
    target = torch.tensor([[[1, 1], [0, 0]]])
    probs = torch.tensor([[[0.9, 0.4], [0.6, 0.1]]])
    by_probs = ConfusionMatrix(1, "binary", from_logits=False)
    by_probs.update(probs, target)
    by_logits = ConfusionMatrix(1, "binary")
    by_logits.update(torch.logit(probs).unsqueeze(1), target.unsqueeze(1))
    by_labels = ConfusionMatrix(2, "binary")
    by_labels.update(probs > 0.5, target)
    for cm in (by_probs, by_logits, by_labels):
        assert cm.matrix.tolist() == [[1, 1], [1, 1]]
        assert_same(cm.compute()["iou"], [1 / 3, 1 / 3])
    strict = ConfusionMatrix(1, "binary", threshold=0.95, from_logits=False)
    strict.update(probs, target)
    assert_same(strict.compute()["iou"], [0.5, 0.0])  # nothing predicted: foreground IoU 0 (target has some)


def test_multilabel_by_hand_with_ignore_per_channel():
    target = torch.tensor([[[[1, 0], [1, 0]], [[1, IGNORE], [0, 0]]]])  # [1, 2, 2, 2]
    preds = torch.tensor([[[[1, 1], [0, 0]], [[1, 1], [1, 0]]]])
    cm = ConfusionMatrix(2, "multilabel")
    cm.update(preds, target)
    # class 0: tn 1, fp 1, fn 1, tp 1; class 1 (one pixel ignored): tn 1, fp 1, fn 0, tp 1
    assert cm.matrix.tolist() == [[[1, 1], [1, 1]], [[1, 1], [0, 1]]]
    out = cm.compute()
    assert_same(out["iou"], [1 / 3, 1 / 2])
    assert_same(out["accuracy"], 4 / 7)


def test_streaming_equals_one_update_and_merge_equals_both():
    preds, target = torch.randn(6, 4, 9, 9), torch.randint(0, 4, (6, 9, 9))
    target[0, :3] = IGNORE
    whole = ConfusionMatrix(4, per_image=True)
    whole.update(preds, target)
    streamed = ConfusionMatrix(4, per_image=True)
    for i in range(0, 6, 2):
        streamed.update(preds[i : i + 2], target[i : i + 2])
    first, second = ConfusionMatrix(4, per_image=True), ConfusionMatrix(4, per_image=True)
    first.update(preds[:4], target[:4])
    second.update(preds[4:], target[4:])
    merged = first.merge(second)
    for cm in (streamed, merged):
        assert torch.equal(cm.matrix, whole.matrix)
        for key, value in whole.compute().items():
            torch.testing.assert_close(cm.compute()[key], value, equal_nan=True, msg=key)
    merged.reset()
    assert merged.matrix.sum() == 0
    with pytest.raises(ConfigError, match="cannot merge"):
        merged.merge(ConfusionMatrix(5))


def test_single_class_multiclass():
    cm = ConfusionMatrix(1)
    cm.update(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 3, dtype=torch.long))
    assert cm.matrix.tolist() == [[18]]
    assert_same(cm.compute()["iou"], [1.0])


def test_confusion_matrix_function_and_integer_dtype():
    counts = confusion_matrix(PREDS_2X2, TARGET_2X2, num_classes=2)
    assert counts.dtype == torch.int64 and counts.tolist() == [[1, 0], [1, 2]]


# ---------------------------------------------------------------- functional reductions, by hand


def test_reductions_by_hand():
    # two images, two classes
    tp, fp = torch.tensor([[1, 2], [3, 0]]), torch.tensor([[1, 0], [0, 0]])
    fn, tn = torch.tensor([[0, 1], [1, 0]]), torch.tensor([[2, 1], [0, 4]])
    assert_same(iou_score(tp, fp, fn, tn, reduction="micro"), 6 / 9)
    assert_same(iou_score(tp, fp, fn, tn, reduction="macro"), (4 / 6 + 2 / 3) / 2)
    assert_same(iou_score(tp, fp, fn, tn, reduction="weighted"), (5 * 4 / 6 + 3 * 2 / 3) / 8)  # support 5, 3
    assert_same(iou_score(tp, fp, fn, tn, reduction="weighted", class_weights=[1, 3]), (4 / 6 + 3 * 2 / 3) / 4)
    assert_same(iou_score(tp, fp, fn, tn, reduction="micro-imagewise"), (3 / 5 + 3 / 4) / 2)
    # image 2 has no class-1 pixel: NaN there, so class 1's image mean is image 1's 2 / 3
    assert_same(iou_score(tp, fp, fn, tn, reduction="none"), [[1 / 2, 2 / 3], [3 / 4, nan]])
    assert_same(iou_score(tp, fp, fn, tn, reduction="macro-imagewise"), ((1 / 2 + 3 / 4) / 2 + 2 / 3) / 2)
    assert_same(f_score(tp, fp, fn, tn, beta=1.0, reduction="micro"), 12 / 15)


def test_reduction_errors():
    stats = get_stats(PREDS_2X2, TARGET_2X2, "multiclass", 2)
    with pytest.raises(ConfigError, match="unknown reduction 'mikro'; did you mean 'micro'"):
        iou_score(*stats, reduction="mikro")
    with pytest.raises(ConfigError, match="use 'weighted'"):
        iou_score(*stats, reduction="macro", class_weights=[1, 2])
    with pytest.raises(ConfigError, match="one entry per class"):
        iou_score(*stats, reduction="weighted", class_weights=[1, 2, 3])
    with pytest.raises(ShapeError, match=r"\[N, K\]"):
        iou_score(*(s[0] for s in stats), reduction="micro")


# ---------------------------------------------------------------- errors


def test_shape_error_names_both_shapes():
    cm = ConfusionMatrix(3)
    with pytest.raises(ShapeError, match=r"preds \[2, 3, 8, 8\] and target \[2, 7, 7\]"):
        cm.update(torch.randn(2, 3, 8, 8), torch.zeros(2, 7, 7, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"4 channels but num_classes=3.*\[2, 4, 8, 8\]"):
        cm.update(torch.randn(2, 4, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"preds \[2, 1, 8, 8\] and target \[2, 1, 4, 4\]"):
        ConfusionMatrix(1, "binary").update(torch.randn(2, 1, 8, 8), torch.zeros(2, 1, 4, 4))


def test_value_errors_are_clear():
    with pytest.raises(ConfigError, match=r"class ids \[7\] outside 0..2"):
        ConfusionMatrix(3).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ConfigError, match=r"preds holds labels \[5\] outside 0..2"):
        ConfusionMatrix(3).update(torch.full((1, 2, 2), 5), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="num_classes=1 or 2"):
        ConfusionMatrix(3, "binary")
    with pytest.raises(ConfigError, match="unknown mode 'multiclas'; did you mean 'multiclass'"):
        ConfusionMatrix(3, "multiclas")
    with pytest.raises(ConfigError, match="threshold"):
        ConfusionMatrix(1, "binary", threshold=2.0)
    with pytest.raises(ConfigError, match="fractional"):
        ConfusionMatrix(1, "binary").update(torch.randn(1, 4, 4), torch.full((1, 4, 4), 0.5))
    with pytest.raises(ConfigError, match="needs num_classes"):
        get_stats(PREDS_2X2, TARGET_2X2, "multiclass")


# ---------------------------------------------------------------- torch.distributed (2 CPU processes, gloo)


def _distributed_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 4, (4, 12, 12), generator=g), torch.randint(0, 4, (4, 12, 12), generator=g)


def _distributed_worker(rank: int, world: int, init_file: str, out: str) -> None:
    # A forked child must not enter the parent's OpenMP thread pool (it would hang): run single-threaded.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    preds, target = _distributed_data()
    cm, boundary = ConfusionMatrix(4, per_image=True), BoundaryScores(4, tolerance=1)
    cm.update(preds[rank::world], target[rank::world])  # each rank sees different images
    boundary.update(preds[rank::world], target[rank::world])
    first = cm.compute()
    second = cm.compute()  # a second compute must not count the other ranks twice
    torch.save({"first": first, "second": second, "local": cm.matrix, "boundary": boundary.compute()}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_distributed_compute_sums_over_ranks(tmp_path):
    world = 2
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(world)]
    # fork: the workers inherit the imported modules, so the test takes a second, not an import per process
    ctx = mp.get_context("fork")
    init = str(tmp_path / "init")
    procs = [ctx.Process(target=_distributed_worker, args=(r, world, init, outs[r])) for r in range(world)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    preds, target = _distributed_data()
    single = ConfusionMatrix(4, per_image=True)
    single.update(preds, target)
    boundary = BoundaryScores(4, tolerance=1)
    boundary.update(preds, target)
    results = [torch.load(o) for o in outs]
    assert not torch.equal(results[0]["local"], results[1]["local"])
    for res in results:
        for key, value in single.compute().items():
            torch.testing.assert_close(res["first"][key], value, equal_nan=True, msg=key)
            torch.testing.assert_close(res["second"][key], value, equal_nan=True, msg=key)
        for key, value in boundary.compute().items():
            torch.testing.assert_close(res["boundary"][key], value, equal_nan=True, msg=key)


# ---------------------------------------------------------------- Keras segmentation_models API


def keras_reference(gt, pr, *, beta=None, class_weights=1.0, class_indexes=None, threshold=None, per_image=False):
    """segmentation_models' base/functional.py formulas in NumPy, channels-last ``[N, H, W, C]``, float64."""
    smooth = 1e-5
    if class_indexes is not None:
        gt, pr = gt[..., class_indexes], pr[..., class_indexes]
    if threshold is not None:
        pr = (pr > threshold).astype(np.float64)
    axes = (1, 2) if per_image else (0, 1, 2)
    tp = (gt * pr).sum(axis=axes)
    if beta is None:
        score = (tp + smooth) / ((gt + pr).sum(axis=axes) - tp + smooth)
    else:
        fp, fn = pr.sum(axis=axes) - tp, gt.sum(axis=axes) - tp
        score = ((1 + beta**2) * tp + smooth) / ((1 + beta**2) * tp + beta**2 * fn + fp + smooth)
    if per_image:
        score = score.mean(axis=0)
    return float(np.mean(score * np.asarray(class_weights)))


@pytest.mark.parametrize("threshold", [None, 0.5, 0.3])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(
    "options", [{}, {"class_weights": [0.5, 1.0, 2.0]}, {"class_indexes": [0, 2]}, {"class_indexes": 1}]
)
def test_keras_metrics_equal_reference(threshold, per_image, options):
    probs = (3 * torch.randn(3, 3, 10, 10)).softmax(1)  # confident enough that thresholds 0.3 / 0.5 differ
    labels = torch.randint(0, 3, (3, 10, 10))
    labels[0] = 0  # image 0 lacks classes 1 and 2, so smoothing matters per image
    one_hot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    gt, pr = one_hot.permute(0, 2, 3, 1).double().numpy(), probs.permute(0, 2, 3, 1).double().numpy()
    ref_options = dict(options, threshold=threshold, per_image=per_image)
    metrics = ((IOUScore(**ref_options), None), (FScore(**ref_options), 1), (FScore(2, **ref_options), 2))
    for metric, beta in metrics:
        expected = keras_reference(gt, pr, beta=beta, **ref_options)
        for target in (one_hot, labels):
            value = metric(probs, target)
            assert value.shape == ()
            assert value.item() == pytest.approx(expected, abs=1e-6), (metric.name, target.ndim)


def test_keras_names_binary_and_gradient():
    assert IOUScore().__name__ == "iou_score" and FScore().name == "f1-score" and FScore(beta=2).__name__ == "f2-score"
    assert FScore(name="dice").name == "dice"
    probs = torch.rand(2, 1, 6, 6, requires_grad=True)
    mask = torch.randint(0, 2, (2, 6, 6))
    score = IOUScore(threshold=None)(probs, mask)
    expected = keras_reference(mask.unsqueeze(-1).double().numpy(), probs.detach().permute(0, 2, 3, 1).double().numpy())
    assert score.item() == pytest.approx(expected, abs=1e-6)
    score.backward()  # soft scores (threshold=None) stay differentiable, as in Keras
    assert probs.grad is not None and probs.grad.abs().sum() > 0
    with pytest.raises(ShapeError, match=r"preds \[2, 3, 6, 6\] and target \[2, 5, 5\]"):
        IOUScore()(torch.rand(2, 3, 6, 6), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="class_weights"):
        IOUScore(class_weights=[1.0, 2.0])(torch.rand(2, 3, 6, 6), torch.zeros(2, 6, 6, dtype=torch.long))


# ---------------------------------------------------------------- boundary scores


def square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, top : top + side, left : left + side] = 1
    return labels


def test_contour_and_band_by_hand():
    mask = square(10, 3, 3, 4).bool().unsqueeze(1)
    assert inner_band(mask).sum() == 12  # the 4 × 4 square's 12 edge pixels
    assert inner_band(mask, 1).sum() == 16  # tolerance 1 reaches the whole 4 × 4 square
    full = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    assert inner_band(full).sum() == 0  # the image border is not a contour


def test_square_shifted_by_one_pixel():
    target, preds = square(10, 3, 3, 4), square(10, 3, 4, 4)
    # tolerance 0: 6 of the 12 contour pixels coincide (top and bottom rows, columns 4 to 6) on each side
    assert_same(boundary_f1(preds, target, 2, tolerance=0)[1], 0.5)
    assert_same(boundary_iou(preds, target, 2, tolerance=0)[1], 6 / 18)
    assert_same(boundary_f1(preds, target, 2, tolerance=1), [1.0, 1.0])
    assert_same(boundary_f1(preds, target, 2, tolerance=2), [1.0, 1.0])
    assert_same(boundary_iou(preds, preds, 2, tolerance=2), [1.0, 1.0])


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 12])
def test_boundary_dilation_equals_scipy_square_dilation(radius):
    from scipy import ndimage

    from pixelwise.metrics.boundary import _dilate

    masks = torch.rand(2, 3, 9, 13) > 0.85
    got = _dilate(masks, radius).numpy()
    square = np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)
    for n in range(2):
        for c in range(3):
            expected = ndimage.binary_dilation(masks[n, c].numpy(), square) if radius else masks[n, c].numpy()
            np.testing.assert_array_equal(got[n, c], expected)


def test_thin_line_pixel_iou_hides_what_boundary_f1_shows():
    target, preds = torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, :, 5] = 1
    preds[0, :, 7] = 1  # the membrane predicted 2 px off
    cm = ConfusionMatrix(2)
    cm.update(preds, target)
    assert cm.compute()["iou"][0] > 0.75  # pixel IoU of the background looks fine
    assert_same(boundary_f1(preds, target, 2, tolerance=1)[1], 0.0)
    assert_same(boundary_f1(preds, target, 2, tolerance=2)[1], 1.0)


def test_boundary_absent_one_sided_and_ignored():
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    both_empty = boundary_f1(empty, empty, 3, tolerance=1)
    assert both_empty[1:].isnan().all() and both_empty[0].isnan()  # all background: no contour anywhere
    only_target = BoundaryScores(2, tolerance=1)
    only_target.update(empty, square(8, 2, 2, 3))
    out = only_target.compute()
    assert_same(out["boundary_f1"], [0.0, 0.0])
    assert_same(out["boundary_precision"], [nan, nan])  # an all-background prediction has no contour at all
    # target square ringed by void; the predicted square spills into the void ring
    target = square(12, 4, 4, 4)
    ring = square(12, 3, 3, 6).bool() & ~target.bool()
    target[ring] = IGNORE
    preds = square(12, 3, 3, 6)
    scores = BoundaryScores(2, tolerance=1)
    scores.update(preds, target)
    out = scores.compute()
    assert out["boundary_precision"][1].isnan()  # the predicted contour lies wholly in void: not counted
    assert_same(out["boundary_recall"][1], 1.0)  # but it still matches the true contour one pixel away
    assert_same(out["boundary_f1"][1], 1.0)


def test_boundary_streaming_modes_and_errors():
    preds, target = torch.randint(0, 3, (4, 12, 12)), torch.randint(0, 3, (4, 12, 12))
    whole, streamed = BoundaryScores(3), BoundaryScores(3)
    whole.update(preds, target)
    streamed.update(preds[:1], target[:1])
    other = BoundaryScores(3)
    other.update(preds[1:], target[1:])
    streamed.merge(other)
    for key, value in whole.compute().items():
        torch.testing.assert_close(streamed.compute()[key], value, equal_nan=True, msg=key)
    # multilabel channels and binary logits give the same per-class scores as label maps
    masks = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2)
    pred_masks = torch.nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2)
    ml = boundary_f1(pred_masks, masks, 3, mode="multilabel")
    torch.testing.assert_close(ml, whole.compute()["boundary_f1"])
    fg = (target == 1).long()
    logits = torch.where(preds == 1, 4.0, -4.0).unsqueeze(1)
    torch.testing.assert_close(boundary_f1(logits, fg, 1, mode="binary")[1], boundary_f1((preds == 1).long(), fg, 2)[1])
    with pytest.raises(ConfigError, match="tolerance"):
        BoundaryScores(3, tolerance=-1)
    assert not math.isnan(whole.compute()["mean_boundary_f1"])
