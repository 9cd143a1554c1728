"""pixelwise metrics against the peers users compare them with: torchmetrics and segmentation_models_pytorch.

Both peers are test-only dependencies. Where a score is undefined (0 / 0), pixelwise returns NaN and leaves it out
of means, torchmetrics returns 0 per class (but leaves classes absent from both sides out of its macro mean), and
smp substitutes ``zero_division`` (1.0). The comparisons therefore check every class where pixelwise is defined,
and check that pixelwise is NaN exactly where it should be.
"""

import pytest
import segmentation_models_pytorch as smp
import torch
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelJaccardIndex,
)

from pixelwise.metrics import REDUCTIONS, ConfusionMatrix, f_score, get_stats, iou_score
from pixelwise.metrics import accuracy as pw_accuracy
from pixelwise.metrics import precision as pw_precision
from pixelwise.metrics import recall as pw_recall

TOL = 1e-6
IGNORE = 255


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to 1e-6 where ours is defined; ``theirs`` may hold a zero_division stand-in where ours is NaN."""
    ours, theirs = ours.double().cpu(), theirs.double().cpu()
    defined = ~ours.isnan()
    assert defined.any(), "nothing to compare: every pixelwise score is NaN"
    torch.testing.assert_close(ours[defined], theirs[defined], atol=TOL, rtol=0)


def absent_mask(preds: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Classes with no pixel in prediction or (counted) target: exactly where IoU and F are undefined."""
    counted = target != IGNORE
    present = torch.zeros(k, dtype=torch.bool)
    present[preds[counted].unique()] = True
    present[target[counted].unique()] = True
    return ~present


def random_case(k: int, seed: int, n: int = 3, size: int = 16, ignore_frac: float = 0.1, drop: tuple = ()):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, size, size), generator=g)
    # a prediction that agrees with the target on about half the pixels, so scores are neither 0 nor 1
    preds = torch.where(
        torch.rand(n, size, size, generator=g) < 0.5, target, torch.randint(0, k, target.shape, generator=g)
    )
    for c in drop:  # make class c absent everywhere
        target[target == c] = (c + 1) % k
        preds[preds == c] = (c + 1) % k
    target[torch.rand(n, size, size, generator=g) < ignore_frac] = IGNORE
    return preds, target


CASES = {  # name: (preds, target, K)
    "random-k5": lambda: (*random_case(5, 0), 5),
    "k21": lambda: (*random_case(21, 1, size=24), 21),
    "class-absent": lambda: (*random_case(6, 2, drop=(3,)), 6),
    "all-one-class": lambda: (torch.zeros(2, 8, 8, dtype=torch.long), torch.zeros(2, 8, 8, dtype=torch.long), 3),
    "target-one-class": lambda: (torch.randint(0, 4, (2, 8, 8)), torch.full((2, 8, 8), 2), 4),
    "no-ignored": lambda: (*random_case(4, 3, ignore_frac=0.0), 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_confusion_matrix_equals_torchmetrics(name):
    preds, target, k = CASES[name]()
    cm = ConfusionMatrix(k)
    cm.update(preds, target)
    ours = cm.compute()
    absent = absent_mask(preds, target, k)
    assert torch.equal(ours["iou"].isnan(), absent) and torch.equal(ours["f1"].isnan(), absent)

    def tm(metric_cls, **kw):
        return metric_cls(num_classes=k, ignore_index=IGNORE, **kw)(preds, target)

    close(ours["iou"], tm(MulticlassJaccardIndex, average=None))
    close(ours["mean_iou"], tm(MulticlassJaccardIndex, average="macro"))
    close(ours["fw_iou"], tm(MulticlassJaccardIndex, average="weighted"))
    close(ours["f1"], tm(MulticlassF1Score, average=None))
    close(ours["mean_f1"], tm(MulticlassF1Score, average="macro"))
    close(ours["accuracy"], tm(MulticlassF1Score, average="micro"))
    close(ours["precision"], tm(MulticlassPrecision, average=None))
    close(ours["recall"], tm(MulticlassRecall, average=None))
    tp, fp, fn, tn = get_stats(preds, target, "multiclass", k)
    close(f_score(tp, fp, fn, tn, reduction="micro"), tm(MulticlassF1Score, average="micro"))
    close(iou_score(tp, fp, fn, tn, reduction="weighted"), tm(MulticlassJaccardIndex, average="weighted"))


def test_logits_and_probabilities_equal_labels_in_torchmetrics():
    k = 5
    logits = torch.randn(2, k, 12, 12)
    target = torch.randint(0, k, (2, 12, 12))
    expected = MulticlassJaccardIndex(num_classes=k, average=None)(logits.argmax(1), target)
    for scores in (logits, logits.softmax(1)):
        cm = ConfusionMatrix(k)
        cm.update(scores, target)
        close(cm.compute()["iou"], expected)


def test_all_pixels_ignored_gives_nan_without_crash():
    preds, target = torch.randint(0, 4, (2, 8, 8)), torch.full((2, 8, 8), IGNORE)
    cm = ConfusionMatrix(4)
    cm.update(preds, target)
    out = cm.compute()
    for key in ("iou", "f1", "recall", "mean_iou", "mean_f1", "accuracy", "mean_accuracy", "fw_iou"):
        assert out[key].isnan().all(), key
    assert cm.matrix.sum() == 0
    tp, fp, fn, tn = get_stats(preds, target, "multiclass", 4)
    assert (tp + fp + fn + tn).sum() == 0
    assert iou_score(tp, fp, fn, tn, reduction="macro").isnan()


@pytest.mark.parametrize("num_classes", [1, 2])
def test_binary_equals_torchmetrics(num_classes):
    logits = torch.randn(3, 1, 16, 16) * 3
    target = torch.randint(0, 2, (3, 1, 16, 16))
    target[:, :, :2] = IGNORE
    cm = ConfusionMatrix(num_classes, "binary")
    cm.update(logits, target)
    out = cm.compute()
    assert out["iou"].shape == (2,)
    close(out["iou"][1], BinaryJaccardIndex(ignore_index=IGNORE)(logits, target))
    close(out["f1"][1], BinaryF1Score(ignore_index=IGNORE)(logits, target))
    # the background entry is torchmetrics' binary score with the classes swapped
    swapped = torch.where(target == IGNORE, target, 1 - target)
    close(out["iou"][0], BinaryJaccardIndex(ignore_index=IGNORE)(-logits, swapped))


def test_multilabel_equals_torchmetrics():
    k = 4
    logits = torch.randn(2, k, 16, 16) * 2
    target = torch.randint(0, 2, (2, k, 16, 16))
    target[:, 1, :3] = IGNORE
    cm = ConfusionMatrix(k, "multilabel")
    cm.update(logits, target)
    out = cm.compute()
    tm = MultilabelJaccardIndex(num_labels=k, average=None, ignore_index=IGNORE)(logits, target)
    close(out["iou"], tm)
    close(out["mean_iou"], MultilabelJaccardIndex(num_labels=k, average="macro", ignore_index=IGNORE)(logits, target))


# ------------------------------------------------------------------ smp


def smp_defined_case(k: int, seed: int):
    """Every class in every image's target and prediction, so no score is 0 / 0 and smp needs no stand-in."""
    preds, target = random_case(k, seed, n=4, size=24, ignore_frac=0.05)
    for i in range(4):
        target[i, 0, :k] = torch.arange(k)
        preds[i, 1, :k] = torch.arange(k)
    return preds, target


@pytest.mark.parametrize("k", [2, 5, 21])
def test_get_stats_equals_smp_multiclass(k):
    preds, target = random_case(k, 10 + k, size=24)
    ours = get_stats(preds, target, "multiclass", k, ignore_index=IGNORE)
    theirs = smp.metrics.get_stats(preds, target, mode="multiclass", num_classes=k, ignore_index=IGNORE)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_get_stats_equals_smp_threshold_modes(mode):
    c = 1 if mode == "binary" else 3
    probs = torch.rand(3, c, 16, 16)
    target = torch.randint(0, 2, (3, c, 16, 16))
    theirs = smp.metrics.get_stats(probs, target, mode=mode, threshold=0.5)
    ours = get_stats(probs, target, mode, ignore_index=None, threshold=0.5, from_logits=False)
    ours_logits = get_stats(torch.logit(probs), target, mode, ignore_index=None)
    ours_labels = get_stats((probs > 0.5).long(), target, mode, ignore_index=None)
    for a, b, d, e in zip(ours, theirs, ours_logits, ours_labels, strict=True):
        assert a.shape == (3, c)
        assert torch.equal(a, b) and torch.equal(d, b) and torch.equal(e, b)


SMP_SCORES = [
    (iou_score, smp.metrics.iou_score, {}),
    (f_score, smp.metrics.f1_score, {}),
    (lambda *s, **kw: f_score(*s, beta=2.0, **kw), lambda *s, **kw: smp.metrics.fbeta_score(*s, beta=2.0, **kw), {}),
    (pw_precision, smp.metrics.precision, {}),
    (pw_recall, smp.metrics.recall, {}),
    (pw_accuracy, smp.metrics.accuracy, {}),
]


@pytest.mark.parametrize("reduction", [r for r in REDUCTIONS if r != "weighted-imagewise"])
@pytest.mark.parametrize("k", [3, 21])
def test_reductions_equal_smp(reduction, k):
    preds, target = smp_defined_case(k, 20 + k)
    stats = get_stats(preds, target, "multiclass", k)
    weights = torch.linspace(0.5, 2.0, k).tolist() if reduction == "weighted" else None
    for ours_fn, smp_fn, _ in SMP_SCORES:
        ours = ours_fn(*stats, reduction=reduction, class_weights=weights)
        theirs = smp_fn(*stats, reduction=reduction, class_weights=weights)
        assert not ours.isnan().any()
        close(ours, theirs)


def test_weighted_imagewise_is_a_weighted_mean_where_smp_divides_by_k_again():
    k = 4
    preds, target = smp_defined_case(k, 30)
    stats = get_stats(preds, target, "multiclass", k)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    per_class = iou_score(*stats, reduction="none").mean(0)
    ours = iou_score(*stats, reduction="weighted-imagewise", class_weights=w)
    close(ours, (per_class * w).sum() / w.sum())
    # smp 0.6 normalises the weights and then takes a mean over classes as well: K times smaller
    theirs = smp.metrics.iou_score(*stats, reduction="weighted-imagewise", class_weights=w.tolist())
    close(ours, theirs * k)


def test_absent_class_is_nan_where_smp_substitutes_one():
    preds, target = random_case(5, 40, drop=(2,))
    stats = get_stats(preds, target, "multiclass", 5)
    ours = iou_score(*stats, reduction="none")
    theirs = smp.metrics.iou_score(*stats, reduction="none")
    assert ours[:, 2].isnan().all() and (theirs[:, 2] == 1).all()
    close(ours, theirs)
    # the macro mean leaves class 2 out instead of averaging in smp's 1.0
    keep = [0, 1, 3, 4]
    expected = smp.metrics.iou_score(*(s[:, keep] for s in stats), reduction="macro")
    close(iou_score(*stats, reduction="macro"), expected)
    assert iou_score(*stats, reduction="macro") < smp.metrics.iou_score(*stats, reduction="macro")


def test_streaming_imagewise_equals_smp_macro_imagewise():
    preds, target = smp_defined_case(3, 50)
    cm = ConfusionMatrix(3, per_image=True)
    cm.update(preds[:2], target[:2])
    cm.update(preds[2:], target[2:])
    stats = get_stats(preds, target, "multiclass", 3)
    out = cm.compute()
    close(out["mean_iou_imagewise"], smp.metrics.iou_score(*stats, reduction="macro-imagewise"))
    close(out["mean_fscore_imagewise"], smp.metrics.f1_score(*stats, reduction="macro-imagewise"))
