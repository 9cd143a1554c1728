"""Surface distances against MONAI 1.6, and smp's confusion-derived scores against segmentation_models_pytorch."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
from scipy import ndimage

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.metrics import (
    ConfusionMatrix,
    SurfaceDistances,
    confusion_metrics,
    get_stats,
    surface_distances,
)
from pixelwise.metrics import functional as F

VOID = 255
SURFACE_ATOL = 1e-4
SMP_ATOL = 1e-6
CONFUSION_NAMES = tuple(F.CONFUSION_SCORES)


def _blobs(rng: np.random.Generator, n: int, k: int, h: int, w: int) -> torch.Tensor:
    """Label maps of smooth random blobs (several per class, some touching the border, some classes absent)."""
    out = np.zeros((n, h, w), np.int64)
    for i in range(n):
        for c in range(1, k):
            for _ in range(int(rng.integers(0, 3))):
                out[i][ndimage.gaussian_filter(rng.random((h, w)), 2.5) > 0.55] = c
    return torch.from_numpy(out)


def _one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """[N, H, W] ids → MONAI's [N, K, H, W] one-hot; void pixels are all-zero (MONAI's sentinel ignore)."""
    return torch.nn.functional.one_hot(labels.clamp(max=k), k + 1)[..., :k].permute(0, 3, 1, 2).float()


def _monai(preds: torch.Tensor, target: torch.Tensor, k: int, spacing, tolerance: float, background: bool):
    """MONAI's four per-image, per-class scores (class 0 dropped unless ``background``)."""
    common = {"include_background": background, "ignore_index": VOID, "reduction": "none"}
    metrics = {
        "hausdorff": HausdorffDistanceMetric(**common),
        "hd95": HausdorffDistanceMetric(percentile=95, **common),
        "assd": SurfaceDistanceMetric(symmetric=True, **common),
        "nsd": SurfaceDiceMetric(class_thresholds=[tolerance] * (k - (not background)), **common),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty class
        return {
            name: m(_one_hot(preds, k), _one_hot(target, k), spacing=spacing).double() for name, m in metrics.items()
        }


def _random_case(seed: int, n: int = 3, k: int = 4, h: int = 40, w: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    target, preds = _blobs(rng, n, k, h, w), _blobs(rng, n, k, h, w)
    preds[0] = torch.from_numpy(ndimage.grey_dilation(target[0].numpy(), size=3))  # a near miss, small distances
    target[:, : h // 8, : w // 6] = VOID  # a void corner
    return preds, target


@pytest.mark.parametrize(
    ("seed", "spacing", "tolerance", "background"),
    [(0, None, 2.0, False), (1, (0.7, 1.3), 1.5, False), (2, (2.0, 0.5), 1.0, True)],
)
def test_surface_distances_equal_monai(seed, spacing, tolerance, background):
    k = 4
    preds, target = _random_case(seed, k=k)
    ours = surface_distances(
        preds,
        target,
        num_classes=k,
        spacing=spacing,
        tolerance=tolerance,
        include_background=background,
        per_image=True,
    )
    ref = _monai(preds, target, k, list(spacing) if spacing else None, tolerance, background)
    first = 0 if background else 1
    finite_seen = 0
    for name in ("hausdorff", "assd", "nsd", "hd95"):
        mine = ours[name][:, first:]
        theirs = ref[name]
        if name == "hd95":  # MONAI's HD95 is NaN (inf - inf in quantile) where its Hausdorff distance is inf
            theirs = torch.where(ref["hausdorff"].isinf(), ref["hausdorff"], theirs)
        torch.testing.assert_close(mine, theirs, atol=SURFACE_ATOL, rtol=1e-5, equal_nan=True)
        finite_seen += int(theirs.isfinite().sum())
    assert finite_seen > 10, "the random case should hold many defined, finite scores"
    if not background:
        assert ours["nsd"][:, 0].isnan().all()


def test_empty_mask_conventions_match_monai():
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 2:6, 2:6] = 1  # class 1 only in the target
    preds = torch.zeros_like(target)
    preds[0, 7:10, 7:10] = 2  # class 2 only in the prediction; class 3 in neither
    ours = surface_distances(preds, target, num_classes=4, per_image=True)
    ref = _monai(preds, target, 4, None, 2.0, background=False)
    for name in ("hausdorff", "assd"):
        assert ref[name][0].tolist()[:2] == [math.inf, math.inf] and math.isnan(ref[name][0, 2])
        torch.testing.assert_close(ours[name][:, 1:], ref[name], equal_nan=True)
    assert ref["nsd"][0].tolist()[:2] == [0.0, 0.0]
    torch.testing.assert_close(ours["nsd"][:, 1:], ref["nsd"], equal_nan=True)
    # our policy: HD95 follows the Hausdorff distance (inf), where MONAI's quantile gives NaN
    assert ours["hd95"][0, 1:3].tolist() == [math.inf, math.inf] and ref["hd95"][0, :2].isnan().all()
    assert ours["hd95"][0, 3].isnan()


def test_streaming_means_equal_monai_mean_batch():
    k, spacing, tolerance = 3, (0.8, 1.1), 1.0
    batches = [_random_case(seed, n=2, k=k, h=32, w=32) for seed in (5, 6)]
    metric = SurfaceDistances(k, spacing=spacing, tolerance=tolerance)
    refs = {name: [] for name in ("hausdorff", "assd", "nsd")}
    for preds, target in batches:
        metric.update(preds, target)
        ref = _monai(preds, target, k, list(spacing), tolerance, background=False)
        for name in refs:
            refs[name].append(ref[name])
    scores = metric.compute()
    for name, parts in refs.items():
        stacked = torch.cat(parts)  # MONAI's "mean_batch": per class, the mean over images of the defined values
        defined = ~stacked.isnan()
        expected = torch.where(defined, stacked, 0).sum(0) / defined.sum(0)
        torch.testing.assert_close(scores[name][1:], expected, atol=SURFACE_ATOL, rtol=1e-5, equal_nan=True)
        assert scores[f"mean_{name}"].isnan() or scores[f"mean_{name}"] == torch.nanmean(scores[name])


def test_hand_made_distances_and_score_inputs():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 8, 3] = 1  # one pixel: its own edge
    preds = torch.zeros_like(target)
    preds[0, 8, 7] = 1  # four columns away: 4 pixels, or 4 * 0.5 = 2 units with 0.5-wide columns
    scores = surface_distances(preds, target, num_classes=2, spacing=(1.0, 0.5), tolerance=1.9)
    assert scores["hausdorff"][1] == pytest.approx(2.0) and scores["assd"][1] == pytest.approx(2.0)
    assert scores["nsd"][1] == 0.0 and scores["images"].tolist() == [0.0, 1.0]
    within = surface_distances(preds, target, num_classes=2, spacing=(1.0, 0.5), tolerance=2.0)
    assert within["nsd"][1] == 1.0
    # probabilities and one-hot masks are argmaxed to the same labels
    one_hot = torch.nn.functional.one_hot(preds, 2).permute(0, 3, 1, 2)
    for as_scores in (one_hot, one_hot.float().softmax(1)):
        again = surface_distances(as_scores, target, num_classes=2, spacing=(1.0, 0.5), tolerance=1.9)
        assert again["hausdorff"][1] == scores["hausdorff"][1]


def test_surface_options_are_checked():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ConfigError, match="spacing"):
        surface_distances(labels, labels, num_classes=2, spacing=(1.0, 0.0))
    with pytest.raises(ConfigError, match="spacing"):
        surface_distances(labels, labels, num_classes=2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="tolerance"):
        surface_distances(labels, labels, num_classes=2, tolerance=-1)
    with pytest.raises(ConfigError, match="one per class"):
        SurfaceDistances(3, tolerance=[1.0, 2.0])
    with pytest.raises(ShapeError):
        surface_distances(labels[0], labels, num_classes=2)


# --- smp's confusion-derived set ------------------------------------------------------------------------------


def _smp_stats(preds: torch.Tensor, target: torch.Tensor, mode: str = "multiclass", **kwargs) -> list[torch.Tensor]:
    """smp's per-image counts as float64: smp's formulas then run in float64 (on int64 counts they run in float32,
    whose rounding alone exceeds 1e-6 on a likelihood ratio near 10), so the comparison is of definitions."""
    return [s.double() for s in smp.metrics.get_stats(preds, target, mode=mode, **kwargs)]


def _smp_case(seed: int, n: int = 4, k: int = 5, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, size, size), generator=gen)
    preds = torch.where(torch.rand(n, size, size, generator=gen) < 0.6, target, torch.randint(0, k, (n, size, size)))
    target[:, :3] = VOID
    return preds, target


@pytest.mark.parametrize("reduction", ["none", "micro", "macro", "weighted", "micro-imagewise", "macro-imagewise"])
def test_confusion_scores_equal_smp(reduction):
    k = 5
    preds, target = _smp_case(0, k=k)
    ours_stats = get_stats(preds, target, "multiclass", k, ignore_index=VOID)
    smp_stats = _smp_stats(preds, target, num_classes=k, ignore_index=VOID)
    weights = [0.1, 0.4, 0.2, 0.2, 0.1] if reduction == "weighted" else None
    for name in CONFUSION_NAMES:
        mine = getattr(F, name)(*ours_stats, reduction=reduction, class_weights=weights)
        theirs = getattr(smp.metrics, name)(*smp_stats, reduction=reduction, class_weights=weights)
        torch.testing.assert_close(mine, theirs, atol=SMP_ATOL, rtol=0, msg=f"{name} {reduction}")


def test_confusion_scores_nan_where_smp_divides_by_zero():
    target = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 0, 0]]])
    preds = torch.tensor([[[0, 1, 1, 1]], [[0, 0, 0, 0]]])  # image 2: class 1 absent from both sides
    tp, fp, fn, tn = get_stats(preds, target, "multiclass", 2)
    smp_stats = _smp_stats(preds, target, num_classes=2)
    for name in CONFUSION_NAMES:
        mine = getattr(F, name)(tp, fp, fn, tn)
        theirs = getattr(smp.metrics, name)(*smp_stats, zero_division=math.nan)
        torch.testing.assert_close(mine, theirs, atol=SMP_ATOL, rtol=0, equal_nan=True, msg=name)
    # image 1, class 0: no false positive, so LR+ = sensitivity / 0 = inf in both (not a 0 / 0)
    assert F.positive_likelihood_ratio(tp, fp, fn, tn)[0, 0] == math.inf


@pytest.mark.parametrize("reduction", ["none", "micro", "macro", "weighted"])
def test_confusion_metrics_of_a_matrix_equal_smp(reduction):
    k = 5
    cm = ConfusionMatrix(k)
    smp_parts = []
    for seed in (1, 2):
        preds, target = _smp_case(seed, k=k)
        cm.update(preds, target)
        smp_parts.append(_smp_stats(preds, target, num_classes=k, ignore_index=VOID))
    smp_stats = [torch.cat(parts) for parts in zip(*smp_parts, strict=True)]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0] if reduction == "weighted" else None
    scores = confusion_metrics(cm.matrix, reduction, class_weights=weights)
    assert set(scores) == set(CONFUSION_NAMES)
    for name in CONFUSION_NAMES:
        if reduction == "none":  # smp's "none" is per image: score the counts summed over images instead
            expected = getattr(smp.metrics, name)(*(s.sum(0, keepdim=True) for s in smp_stats))[0]
        else:
            expected = getattr(smp.metrics, name)(*smp_stats, reduction=reduction, class_weights=weights)
        torch.testing.assert_close(scores[name], expected, atol=SMP_ATOL, rtol=0, msg=name)
        torch.testing.assert_close(cm.confusion_metrics(reduction, weights)[name], scores[name])


def test_confusion_metrics_multilabel_matrix_and_errors():
    k = 3
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(0, 2, (2, k, 16, 16), generator=gen)
    preds = torch.randint(0, 2, (2, k, 16, 16), generator=gen)
    cm = ConfusionMatrix(k, "multilabel")
    cm.update(preds, target)
    smp_stats = _smp_stats(preds, target, "multilabel")
    for name, score in cm.confusion_metrics("macro").items():
        expected = getattr(smp.metrics, name)(*smp_stats, reduction="macro")
        torch.testing.assert_close(score, expected, atol=SMP_ATOL, rtol=0, msg=name)
    with pytest.raises(ConfigError, match="reduction"):
        confusion_metrics(cm.matrix, "macro-imagewise")
    with pytest.raises(ShapeError, match="matrix"):
        confusion_metrics(torch.zeros(3, 4, dtype=torch.long))
