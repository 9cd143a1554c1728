"""Losses: hand-computed values, gradchecks, oracles (torch, segmentation_models_pytorch), ignore_index,
empty masks, shapes, weight maps and the get_loss spec parser."""

import math

import pytest
import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses._functional import softmax_focal_loss_with_logits
from torch import nn

from pixelwise.errors import ConfigError, ShapeError
from pixelwise.losses import (
    BCELoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszLoss,
    TverskyLoss,
    get_loss,
    list_losses,
    parse_loss_spec,
    register_loss,
)
from pixelwise.losses.base import SegmentationLoss

IGNORE = 255
K = 3
MODES = ("binary", "multiclass", "multilabel")
SUPPORTED = {"ce": ("multiclass",), "bce": ("binary", "multilabel")}
LOSS_MODES = [(name, mode) for name in sorted(list_losses()) for mode in SUPPORTED.get(name, MODES)]
PIXEL_LOSSES = [(name, mode) for name, mode in LOSS_MODES if name in ("ce", "bce", "focal")]


def sample(mode, n=1, h=3, w=4, dtype=torch.float64, ignore=True):
    """Random logits and a target of ``mode`` where every class occurs; some pixels ignored (last row)."""
    channels = 1 if mode == "binary" else K
    preds = torch.randn(n, channels, h, w, dtype=dtype)
    if mode == "binary":
        target = torch.randint(0, 2, (n, h, w))
        target[:, 0, :2] = torch.tensor([0, 1])
    elif mode == "multiclass":
        target = torch.randint(0, K, (n, h, w))
        target[:, 0, :K] = torch.arange(K)
    else:
        target = torch.randint(0, 2, (n, K, h, w))
        target[:, :, 0, :2] = torch.tensor([0, 1])
    if ignore:
        if mode == "multilabel":  # ignored per class entry, not per pixel
            target[:, 0, -1, :2] = IGNORE
            target[:, 2, -1, 3] = IGNORE
        else:
            target[:, -1, :2] = IGNORE
    return preds.requires_grad_(), target


def ignored_entries(preds, target, mode):
    """Boolean mask over ``preds`` of the entries whose target is ignored."""
    if mode == "multilabel":
        return target == IGNORE
    return (target == IGNORE).unsqueeze(1).expand_as(preds)


def grad_of(loss, preds, target, **kwargs):
    preds = preds.detach().clone().requires_grad_()
    value = loss(preds, target, **kwargs)
    (grad,) = torch.autograd.grad(value, preds)
    return value.detach(), grad


# ----------------------------------------------------------------------------- hand-computed values

# 1 image, 2 classes, 2x2 pixels; pixel (1, 1) is ignored.
LOGITS_0 = [[2.0, 0.5], [-1.0, 0.0]]
LOGITS_1 = [[0.0, 1.5], [1.0, 3.0]]
LABELS = [[0, 1], [0, IGNORE]]
VALID = [(0, 0), (0, 1), (1, 0)]


def _two_class_example():
    preds = torch.tensor([[LOGITS_0, LOGITS_1]], dtype=torch.float64)
    return preds, torch.tensor([LABELS])


def _hand_probs():
    """Softmax probabilities {pixel: (p0, p1)} of the valid pixels, from the formula."""
    probs = {}
    for i, j in VALID:
        p1 = 1 / (1 + math.exp(LOGITS_0[i][j] - LOGITS_1[i][j]))
        probs[i, j] = (1 - p1, p1)
    return probs


def _hand_counts(probs):
    """Per class (TP, FP, FN) summed over the valid pixels."""
    counts = []
    for c in (0, 1):
        tp = sum(p[c] for (i, j), p in probs.items() if LABELS[i][j] == c)
        fp = sum(p[c] for (i, j), p in probs.items() if LABELS[i][j] != c)
        fn = sum(1 - p[c] for (i, j), p in probs.items() if LABELS[i][j] == c)
        counts.append((tp, fp, fn))
    return counts


def test_hand_computed_multiclass():
    preds, target = _two_class_example()
    probs = _hand_probs()
    p_true = [probs[i, j][LABELS[i][j]] for i, j in VALID]
    counts = _hand_counts(probs)

    ce = sum(-math.log(p) for p in p_true) / len(VALID)
    dice = sum(1 - 2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts) / 2
    jaccard = sum(1 - tp / (tp + fp + fn) for tp, fp, fn in counts) / 2
    tversky = sum((1 - tp / (tp + 0.3 * fp + 0.7 * fn)) ** 2 for tp, fp, fn in counts) / 2
    focal = sum(-((1 - p) ** 2) * math.log(p) for p in p_true) / len(VALID)
    alpha = [0.25, 0.75]
    focal_alpha = (
        sum(-alpha[LABELS[i][j]] * (1 - p) ** 2 * math.log(p) for (i, j), p in zip(VALID, p_true, strict=True)) / 3
    )

    # class weights c and label smoothing e: sum_x [(1-e) c_y (-log p_y) + e/K sum_k c_k (-log p_k)] / sum_x c_y
    c, e = [1.0, 3.0], 0.1
    numerator = sum(
        (1 - e) * c[LABELS[i][j]] * -math.log(probs[i, j][LABELS[i][j]])
        + e / 2 * sum(c[k] * -math.log(probs[i, j][k]) for k in (0, 1))
        for i, j in VALID
    )
    ce_weighted = numerator / sum(c[LABELS[i][j]] for i, j in VALID)

    expected = {
        CrossEntropyLoss(): ce,
        CrossEntropyLoss(class_weights=c, label_smoothing=e): ce_weighted,
        DiceLoss(): dice,
        JaccardLoss(): jaccard,
        TverskyLoss(alpha=0.3, beta=0.7, gamma=2.0): tversky,
        FocalLoss(): focal,
        FocalLoss(alpha=alpha): focal_alpha,
    }
    for loss, value in expected.items():
        assert loss(preds, target).item() == pytest.approx(value, rel=1e-12), loss


BINARY_LOGITS = [[1.0, -2.0], [0.5, 3.0]]
BINARY_LABELS = [[1, 0], [0, IGNORE]]


def test_hand_computed_binary():
    preds = torch.tensor([BINARY_LOGITS], dtype=torch.float64)  # [N, H, W]
    target = torch.tensor([BINARY_LABELS])
    p = {(i, j): 1 / (1 + math.exp(-BINARY_LOGITS[i][j])) for i, j in VALID}
    t = {(i, j): BINARY_LABELS[i][j] for i, j in VALID}

    bce = sum(-(2.0 * t[x] * math.log(p[x]) + (1 - t[x]) * math.log(1 - p[x])) for x in VALID) / 3
    p_t = {x: p[x] if t[x] else 1 - p[x] for x in VALID}
    focal = sum(-(0.25 if t[x] else 0.75) * (1 - p_t[x]) ** 2 * math.log(p_t[x]) for x in VALID) / 3
    tp = sum(p[x] * t[x] for x in VALID)
    fp = sum(p[x] * (1 - t[x]) for x in VALID)
    fn = sum((1 - p[x]) * t[x] for x in VALID)

    assert BCELoss("binary", pos_weight=2.0)(preds, target).item() == pytest.approx(bce, rel=1e-12)
    assert FocalLoss("binary", alpha=0.25)(preds, target).item() == pytest.approx(focal, rel=1e-12)
    assert DiceLoss("binary")(preds, target).item() == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert JaccardLoss("binary")(preds, target).item() == pytest.approx(1 - tp / (tp + fp + fn), rel=1e-12)


def lovasz_by_definition(errors, fg, hinge):
    """Lovász extension of the Jaccard loss, straight from the set function (no cumsum trick).

    The set function of the mispredicted pixels ``M`` is ``1 - |F - M| / |F ∪ M|`` (``F`` the
    foreground); the extension adds each sorted error times the increase when its pixel joins ``M``.
    """
    foreground = {i for i, f in enumerate(fg) if f}

    def jaccard_loss(wrong):
        union = foreground | wrong
        return 1 - len(foreground - wrong) / len(union) if union else 0.0

    total, wrong, before = 0.0, set(), 0.0
    for i in sorted(range(len(errors)), key=lambda i: -errors[i]):
        wrong.add(i)
        after = jaccard_loss(wrong)
        total += (max(errors[i], 0.0) if hinge else errors[i]) * (after - before)
        before = after
    return total


def test_hand_computed_lovasz():
    # Binary hinge on 3 pixels, worked by hand: errors 1 - s*t' = [-1, 0, 1.5]; sorted [1.5, 0, -1] with
    # labels [0, 0, 1]; Jaccard-loss increments [1/2, 1/6, 1/3]; loss = 1.5 / 2 = 0.75.
    logits, labels = [2.0, -1.0, 0.5], [1, 0, 0]
    errors = [1 - x * (2 * t - 1) for x, t in zip(logits, labels, strict=True)]
    assert lovasz_by_definition(errors, labels, hinge=True) == pytest.approx(0.75)
    preds = torch.tensor(logits, dtype=torch.float64).view(1, 1, 1, 3)
    value = LovaszLoss("binary")(preds, torch.tensor(labels).view(1, 1, 3))
    assert value.item() == pytest.approx(0.75, rel=1e-12)

    # Lovász-softmax on probabilities of 3 pixels and 2 classes: class 1 gives 0.5, class 0 gives 0.6.
    p1, labels = [0.9, 0.4, 0.2], [1, 0, 1]
    per_class = []
    for c, p in ((0, [1 - q for q in p1]), (1, p1)):
        fg = [int(y == c) for y in labels]
        per_class.append(lovasz_by_definition([abs(f - q) for f, q in zip(fg, p, strict=True)], fg, hinge=False))
    assert per_class == pytest.approx([0.6, 0.5])
    probs = torch.tensor([[1 - q for q in p1], p1], dtype=torch.float64).view(1, 2, 1, 3)
    value = LovaszLoss("multiclass", from_logits=False)(probs, torch.tensor(labels).view(1, 1, 3))
    assert value.item() == pytest.approx(0.55, rel=1e-12)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_lovasz_matches_definition_on_random_input(mode):
    preds, target = sample(mode, n=2)
    value = LovaszLoss(mode)(preds, target).item()
    per_class = []
    for c in range(K):
        if mode == "multiclass":
            keep = target != IGNORE
            fg = (target[keep] == c).tolist()
            if not any(fg):
                continue
            p = preds.detach().softmax(1)[:, c][keep].tolist()
            per_class.append(lovasz_by_definition([abs(f - q) for f, q in zip(fg, p, strict=True)], fg, hinge=False))
        else:
            keep = target[:, c] != IGNORE
            fg = target[:, c][keep].tolist()
            x = preds.detach()[:, c][keep].tolist()
            per_class.append(
                lovasz_by_definition([1 - s * (2 * t - 1) for s, t in zip(x, fg, strict=True)], fg, hinge=True)
            )
    assert value == pytest.approx(sum(per_class) / len(per_class), rel=1e-10)


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(("name", "mode"), LOSS_MODES)
def test_gradcheck(name, mode):
    preds, target = sample(mode)  # random distinct values: no ties in the Lovász sort
    loss = get_loss(name, mode=mode)
    assert torch.autograd.gradcheck(lambda p: loss(p, target), (preds,))
    if loss.accepts_weight_map:
        weight_map = torch.rand(1, 3, 4, dtype=torch.float64) + 0.5
        assert torch.autograd.gradcheck(lambda p: loss(p, target, weight_map), (preds,))


# ----------------------------------------------------------------------------- oracles


def test_ce_matches_torch():
    preds, target = sample("multiclass", n=2, h=6, w=5)
    weights = [0.5, 2.0, 1.5]
    for options in (
        {},
        {"class_weights": weights},
        {"label_smoothing": 0.2},
        {"class_weights": weights, "label_smoothing": 0.2},
    ):
        torch_options = {"weight": torch.tensor(weights, dtype=torch.float64)} if "class_weights" in options else {}
        torch_options["label_smoothing"] = options.get("label_smoothing", 0.0)
        expected = F.cross_entropy(preds, target, ignore_index=IGNORE, **torch_options)
        torch.testing.assert_close(CrossEntropyLoss(**options)(preds, target), expected)
    probs = preds.softmax(1)
    torch.testing.assert_close(
        CrossEntropyLoss(from_logits=False)(probs, target), F.cross_entropy(preds, target, ignore_index=IGNORE)
    )


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_bce_matches_torch_and_smp(mode):
    preds, target = sample(mode, n=2, h=6, w=5)
    valid = target != IGNORE
    if mode == "binary":
        valid, target_ = valid.unsqueeze(1), target.unsqueeze(1)
    else:
        target_ = target
    pos_weight = torch.tensor([2.0] if mode == "binary" else [2.0, 0.5, 1.0], dtype=torch.float64)
    elementwise = F.binary_cross_entropy_with_logits(
        preds, target_.double(), pos_weight=pos_weight.view(1, -1, 1, 1), reduction="none"
    )
    value = BCELoss(mode, pos_weight=pos_weight.tolist())(preds, target)
    torch.testing.assert_close(value, elementwise[valid].mean())
    # smp multiplies ignored entries by 0 but still divides by all entries, so compare without ignored ones.
    preds, target = sample(mode, n=2, h=6, w=5, ignore=False)
    target_ = target.unsqueeze(1) if mode == "binary" else target
    expected = smp_losses.SoftBCEWithLogitsLoss()(preds, target_.double())
    torch.testing.assert_close(BCELoss(mode)(preds, target), expected)


OVERLAP_ORACLES = [
    ("dice", {}, lambda mode: smp_losses.DiceLoss(mode, ignore_index=IGNORE)),
    ("dice", {"smooth": 1.0}, lambda mode: smp_losses.DiceLoss(mode, ignore_index=IGNORE, smooth=1.0)),
    ("jaccard", {}, lambda mode: smp_losses.JaccardLoss(mode, ignore_index=IGNORE)),
    (
        "tversky",
        {"alpha": 0.3, "beta": 0.7},
        lambda mode: smp_losses.TverskyLoss(mode, ignore_index=IGNORE, alpha=0.3, beta=0.7),
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "options", "oracle"), OVERLAP_ORACLES)
def test_overlap_losses_match_smp(name, options, oracle, mode):
    # Every class occurs in the target: smp zeroes absent classes but keeps them in the mean, we drop them.
    preds, target = sample(mode, n=2, h=6, w=5)
    torch.testing.assert_close(get_loss(name, mode=mode, **options)(preds, target), oracle(mode)(preds, target))


def test_focal_tversky_gamma_matches_smp_in_binary_mode():
    # smp raises the class mean to gamma, we each class's loss; with one class (binary) they agree.
    preds, target = sample("binary", n=2, h=6, w=5)
    oracle = smp_losses.TverskyLoss("binary", ignore_index=IGNORE, alpha=0.3, beta=0.7, gamma=2.0)
    torch.testing.assert_close(
        TverskyLoss("binary", alpha=0.3, beta=0.7, gamma=2.0)(preds, target), oracle(preds, target)
    )


def test_focal_matches_smp():
    preds, target = sample("binary", n=2, h=6, w=5)
    for alpha in (None, 0.25):
        oracle = smp_losses.FocalLoss("binary", alpha=alpha, ignore_index=IGNORE)
        torch.testing.assert_close(FocalLoss("binary", alpha=alpha)(preds, target), oracle(preds, target))
    # smp's multilabel mode cannot ignore per entry; without ignored entries its mean of class means is ours.
    preds, target = sample("multilabel", n=2, h=6, w=5, ignore=False)
    torch.testing.assert_close(
        FocalLoss("multilabel")(preds, target), smp_losses.FocalLoss("multilabel")(preds, target)
    )
    # smp's multiclass FocalLoss applies a sigmoid per channel; its softmax focal function is the oracle here.
    preds, target = sample("multiclass", n=2, h=6, w=5)
    keep = target != IGNORE
    expected = softmax_focal_loss_with_logits(preds.movedim(1, -1)[keep], target[keep], gamma=2.0)
    torch.testing.assert_close(FocalLoss("multiclass")(preds, target), expected)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_lovasz_matches_smp(mode, per_image):
    # float32: smp's Lovász gradient is float32 whatever the input dtype.
    preds, target = sample(mode, n=2, h=6, w=5, dtype=torch.float32)
    value = LovaszLoss(mode, per_image=per_image)(preds, target)
    if mode == "multilabel":  # smp pools all channels into one hinge; we average one hinge per channel
        oracle = smp_losses.LovaszLoss("binary", per_image=per_image, ignore_index=IGNORE)
        expected = torch.stack([oracle(preds[:, c], target[:, c]) for c in range(K)]).mean()
    else:
        expected = smp_losses.LovaszLoss(mode, per_image=per_image, ignore_index=IGNORE)(preds, target)
    torch.testing.assert_close(value, expected)


def test_focal_with_gamma_zero_is_cross_entropy():
    preds, target = sample("multiclass", n=2)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(preds, target), CrossEntropyLoss()(preds, target))
    preds, target = sample("binary", n=2)
    torch.testing.assert_close(FocalLoss("binary", gamma=0.0)(preds, target), BCELoss("binary")(preds, target))


@pytest.mark.parametrize(
    ("name", "mode"), [lm for lm in LOSS_MODES if lm not in (("lovasz", "binary"), ("lovasz", "multilabel"))]
)
def test_probabilities_give_the_same_loss_as_logits(name, mode):
    preds, target = sample(mode)
    probs = preds.softmax(1) if mode == "multiclass" else preds.sigmoid()
    expected = get_loss(name, mode=mode)(preds, target)
    torch.testing.assert_close(get_loss(name, mode=mode, from_logits=False)(probs, target), expected)


def test_lovasz_hinge_refuses_probabilities():
    with pytest.raises(ConfigError, match="needs logits"):
        LovaszLoss("binary", from_logits=False)


# ----------------------------------------------------------------------------- ignore_index and empty masks


@pytest.mark.parametrize(("name", "mode"), LOSS_MODES)
def test_ignored_pixels_change_nothing(name, mode):
    loss = get_loss(name, mode=mode)
    preds, target = sample(mode, n=2)
    ignored = ignored_entries(preds, target, mode)
    changed = preds.detach().clone()
    changed[ignored] = 10 * torch.randn(int(ignored.sum()), dtype=changed.dtype)
    value, grad = grad_of(loss, preds, target)
    changed_value, changed_grad = grad_of(loss, changed, target)
    torch.testing.assert_close(changed_value, value)
    torch.testing.assert_close(changed_grad[~ignored], grad[~ignored])
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))
    assert torch.equal(changed_grad[ignored], torch.zeros_like(grad[ignored]))
    assert grad[~ignored].abs().sum() > 0  # the other pixels do get a gradient


@pytest.mark.parametrize(("name", "mode"), LOSS_MODES)
@pytest.mark.parametrize("fill", ["background", "ignored"])
def test_empty_masks_are_finite(name, mode, fill):
    preds, target = sample(mode, ignore=False)
    target.fill_(0 if fill == "background" else IGNORE)
    value, grad = grad_of(get_loss(name, mode=mode), preds, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    if fill == "ignored":
        assert value.item() == 0.0
        assert torch.equal(grad, torch.zeros_like(grad))


def test_dice_absent_class_policy():
    # Class 2 is absent. With smooth=0 it is left out of the mean; with smooth > 0 it stays and
    # penalises the probability put on it. Dice = (TP + s) / (TP + FP/2 + FN/2 + s), as smp 0.6.
    preds, target = sample("multiclass", h=4, w=4, ignore=False)
    target[0] = torch.tensor([[0, 1, 0, 1]] * 4)
    p = preds.detach().softmax(1)
    onehot = F.one_hot(target, K).movedim(-1, 1).double()
    tp, fp, fn = (p * onehot).sum((0, 2, 3)), (p * (1 - onehot)).sum((0, 2, 3)), ((1 - p) * onehot).sum((0, 2, 3))
    for smooth, classes in ((0.0, [0, 1]), (1.0, [0, 1, 2])):
        dice = [1 - (2 * tp[c] + 2 * smooth) / (2 * tp[c] + fp[c] + fn[c] + 2 * smooth) for c in classes]
        assert DiceLoss(smooth=smooth)(preds, target).item() == pytest.approx(sum(dice).item() / len(classes))
    # binary, all background: 0 with smooth=0, a false-positive penalty with smooth=1
    preds = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    assert DiceLoss("binary")(preds, target).item() == 0.0
    expected = 1 - 1 / (0.5 * preds.sigmoid().sum().item() + 1)
    assert DiceLoss("binary", smooth=1.0)(preds, target).item() == pytest.approx(expected)


# ----------------------------------------------------------------------------- shapes and validation

WRONG_SHAPES = {
    "binary": ((2, 2, 4, 4), (2, 4, 4)),
    "multiclass": ((2, 3, 4, 4), (2, 5, 5)),
    "multilabel": ((2, 3, 4, 4), (2, 4, 4)),
}


@pytest.mark.parametrize(("name", "mode"), LOSS_MODES)
def test_wrong_shapes_name_both(name, mode):
    preds_shape, target_shape = WRONG_SHAPES[mode]
    with pytest.raises(ShapeError) as error:
        get_loss(name, mode=mode)(torch.randn(preds_shape), torch.zeros(target_shape, dtype=torch.long))
    message = str(error.value)
    assert mode in message and str(list(preds_shape)) in message and str(list(target_shape)) in message


def test_wrong_weight_map_shape_names_both():
    preds, target = sample("multiclass")
    with pytest.raises(ShapeError, match=r"\[1, 3, 3, 4\].*\[1, 4, 3\]"):
        CrossEntropyLoss()(preds, target, torch.ones(1, 4, 3))


def test_invalid_options_and_targets():
    preds, target = sample("multiclass")
    with pytest.raises(ConfigError, match="class_weights has 2 entries but preds have 3 classes"):
        CrossEntropyLoss(class_weights=[1.0, 2.0])(preds, target)
    with pytest.raises(ConfigError, match=r"label_smoothing=1\.5"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ConfigError, match=r"per-class weights"):
        FocalLoss("multiclass", alpha=0.25)
    with pytest.raises(ConfigError, match=r"gamma=0\.0"):
        TverskyLoss(gamma=0.0)
    with pytest.raises(ConfigError, match=r"class ids \[7\]"):
        DiceLoss()(preds, torch.full_like(target, 7))


def test_cross_entropy_modes():
    with pytest.raises(ConfigError, match=r"'ce' does not support mode 'binary'.*Use \"bce\""):
        get_loss("ce+dice", mode="binary")
    with pytest.raises(ConfigError, match=r"'bce' does not support mode 'multiclass'.*\"ce\""):
        get_loss("bce", mode="multiclass")


# ----------------------------------------------------------------------------- weight maps


@pytest.mark.parametrize(("name", "mode"), PIXEL_LOSSES)
def test_weight_map_of_ones_changes_nothing(name, mode):
    preds, target = sample(mode, n=2)
    loss = get_loss(name, mode=mode)
    torch.testing.assert_close(loss(preds, target, torch.ones(2, 3, 4, dtype=torch.float64)), loss(preds, target))


def test_weight_map_doubling_one_pixel():
    # mean of w(x) * l(x) over the 3 valid pixels: doubling pixel (0, 1) adds its loss / 3.
    preds, target = _two_class_example()
    probs = _hand_probs()
    ce = {x: -math.log(probs[x][LABELS[x[0]][x[1]]]) for x in VALID}
    weight_map = torch.ones(1, 2, 2, dtype=torch.float64)
    weight_map[0, 0, 1] = 2.0
    expected = (sum(ce.values()) + ce[0, 1]) / 3
    assert CrossEntropyLoss()(preds, target, weight_map).item() == pytest.approx(expected, rel=1e-12)
    # with class weights c the normaliser stays sum_x c(y_x): (sum c l + c_1 l(0, 1)) / (1 + 3 + 1)
    c = [1.0, 3.0]
    expected = (sum(c[LABELS[i][j]] * ce[i, j] for i, j in VALID) + c[1] * ce[0, 1]) / 5
    assert CrossEntropyLoss(class_weights=c)(preds, target, weight_map).item() == pytest.approx(expected, rel=1e-12)

    preds = torch.tensor([BINARY_LOGITS], dtype=torch.float64)
    target = torch.tensor([BINARY_LABELS])
    p = {x: 1 / (1 + math.exp(-BINARY_LOGITS[x[0]][x[1]])) for x in VALID}
    bce = {x: -math.log(p[x]) if BINARY_LABELS[x[0]][x[1]] else -math.log(1 - p[x]) for x in VALID}
    expected = (sum(bce.values()) + bce[0, 1]) / 3
    assert BCELoss("binary")(preds, target, weight_map).item() == pytest.approx(expected, rel=1e-12)
    focal = {x: (1 - math.exp(-value)) ** 2 * value for x, value in bce.items()}
    expected = (sum(focal.values()) + focal[0, 1]) / 3
    assert FocalLoss("binary")(preds, target, weight_map).item() == pytest.approx(expected, rel=1e-12)


def test_weight_map_only_for_per_pixel_losses():
    preds, target = sample("multiclass")
    weight_map = torch.rand(1, 3, 4, dtype=torch.float64)
    with pytest.raises(ConfigError, match="'dice' has no per-pixel form"):
        DiceLoss()(preds, target, weight_map)
    combined = get_loss("ce + dice")
    expected = CrossEntropyLoss()(preds, target, weight_map) + DiceLoss()(preds, target)
    torch.testing.assert_close(combined(preds, target, weight_map), expected)
    with pytest.raises(ConfigError, match="can use a weight_map"):
        get_loss("dice + lovasz")(preds, target, weight_map)


# ----------------------------------------------------------------------------- get_loss


def test_get_loss_names():
    assert list_losses() == [
        "bce",
        "ce",
        "cldice",
        "dice",
        "focal",
        "generalized_dice",
        "jaccard",
        "lovasz",
        "mcc",
        "tversky",
    ]
    assert isinstance(get_loss("dice"), DiceLoss)
    assert isinstance(get_loss(" Dice "), DiceLoss)
    module = nn.MSELoss()
    assert get_loss(module) is module
    with pytest.raises(ConfigError, match="unknown loss 'dise'; did you mean 'dice'"):
        get_loss("dise")
    with pytest.raises(ConfigError, match="unknown mode 'multiclas'; did you mean 'multiclass'"):
        get_loss("ce", mode="multiclas")


@pytest.mark.parametrize(
    "spec",
    [
        "ce+0.5*dice",
        " ce +  0.5 * dice ",
        {"ce": 1.0, "dice": 0.5},
        {"ce": {"weight": 1.0}, "dice": {"weight": 0.5}},
        ["ce", "0.5*dice"],
    ],
)
def test_get_loss_spec_forms(spec):
    loss = get_loss(spec)
    assert isinstance(loss, CombinedLoss)
    assert loss.weights == {"ce": 1.0, "dice": 0.5}
    preds, target = sample("multiclass")
    value = loss(preds, target)
    ce, dice = CrossEntropyLoss()(preds, target), DiceLoss()(preds, target)
    torch.testing.assert_close(value, ce + 0.5 * dice)
    torch.testing.assert_close(loss.last_components["ce"], ce.detach())
    torch.testing.assert_close(loss.last_components["dice"], dice.detach())
    value.backward()
    assert preds.grad is not None


def test_get_loss_routes_options():
    loss = get_loss("focal + tversky", mode="binary", ignore_index=7, alpha=0.3, from_logits=False)
    focal, tversky = loss.components["focal"], loss.components["tversky"]
    assert focal.alpha.item() == pytest.approx(0.3) and tversky.alpha == 0.3
    assert focal.ignore_index == tversky.ignore_index == 7 and not focal.from_logits and not tversky.from_logits
    loss = get_loss("ce+dice", class_weights=[1.0, 2.0, 3.0])
    assert loss.components["ce"].class_weights.tolist() == [1.0, 2.0, 3.0]
    loss = get_loss({"ce": {"weight": 2.0, "label_smoothing": 0.1}, "dice": 0.5}, label_smoothing=0.3, smooth=1.0)
    assert loss.weights == {"ce": 2.0, "dice": 0.5}
    assert loss.components["ce"].label_smoothing == 0.1 and loss.components["dice"].smooth == 1.0
    single = get_loss("lovasz", per_image=True)
    assert isinstance(single, LovaszLoss) and single.per_image


def test_get_loss_rejects_bad_specs():
    with pytest.raises(ConfigError, match=r"no loss in \['ce', 'dice'\] accepts option 'gama'.*ce: from_logits"):
        get_loss("ce+dice", gama=2.0)
    with pytest.raises(ConfigError, match=r"'gama' \(did you mean 'gamma'\?\). Valid options: from_logits, gamma"):
        get_loss({"focal": {"gama": 2.0}, "ce": 1.0})
    with pytest.raises(ConfigError, match="appears twice"):
        get_loss("ce + dice + ce")
    with pytest.raises(ConfigError, match="cannot read loss term ''"):
        get_loss("ce+")
    with pytest.raises(ConfigError, match=r"cannot read loss term '0\.5\*'"):
        parse_loss_spec("0.5*")
    with pytest.raises(ConfigError, match="finite number >= 0"):
        get_loss({"ce": -1.0})
    with pytest.raises(ConfigError, match="names no loss"):
        get_loss({})
    with pytest.raises(ConfigError, match="cannot be applied"):
        get_loss(nn.MSELoss(), smooth=1.0)


def test_register_loss_rejects_duplicates():
    with pytest.raises(ConfigError, match="'dice' is already registered"):

        @register_loss("dice")
        class AnotherDice(SegmentationLoss):
            pass
