"""Issue 22 losses: class weights / class subsets / log loss of the overlap losses (against
segmentation_models_pytorch 0.6), Generalized Dice (MONAI), MCC and label-smoothed BCE (SMP),
soft clDice (hand-made cases and a NumPy re-derivation of Shit et al. 2021) and the Keras
segmentation_models loss names (against the explicit sums and NumPy versions of Keras' formulas)."""

import numpy as np
import pytest
import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F
from monai.losses import GeneralizedDiceLoss as MonaiGeneralizedDice

from pixelwise.errors import ConfigError
from pixelwise.losses import (
    KERAS_ALIASES,
    BCELoss,
    ClDiceLoss,
    CombinedLoss,
    DiceLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    MCCLoss,
    TverskyLoss,
    get_loss,
    parse_loss_spec,
    soft_skeleton,
)

IGNORE = 255
K = 3
MODES = ("binary", "multiclass", "multilabel")


def sample(mode, n=2, h=6, w=5, ignore=True, seed=0):
    """float64 logits and a target of ``mode`` in which every class occurs; some pixels ignored."""
    generator = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "binary" else K
    preds = torch.randn(n, channels, h, w, dtype=torch.float64, generator=generator)
    if mode == "multiclass":
        target = torch.randint(0, K, (n, h, w), generator=generator)
        target[:, 0, :K] = torch.arange(K)
    else:
        shape = (n, h, w) if mode == "binary" else (n, K, h, w)
        target = torch.randint(0, 2, shape, generator=generator)
        target[..., 0, :2] = torch.tensor([0, 1])
    if ignore:
        target[..., -1, :2] = IGNORE
    return preds, target


def one_hot(preds, target, mode):
    """Probabilities and 0/1 targets ``[N, C, H, W]`` as NumPy arrays (no ignored pixels)."""
    if mode == "multiclass":
        return preds.softmax(1).numpy(), F.one_hot(target, K).movedim(-1, 1).double().numpy()
    t = target.unsqueeze(1) if mode == "binary" else target
    return preds.sigmoid().numpy(), t.double().numpy()


# ----------------------------------------------------------------------------- class weights, subsets, log loss

OVERLAP = {
    "dice": (DiceLoss, smp_losses.DiceLoss, {}),
    "jaccard": (JaccardLoss, smp_losses.JaccardLoss, {}),
    "tversky": (TverskyLoss, smp_losses.TverskyLoss, {"alpha": 0.3, "beta": 0.7}),
}
OPTIONS = [
    {"log_loss": True},
    {"classes": [0, 2]},
    {"class_weights": [0.5, 1.0, 3.0]},
    {"classes": [2, 1], "class_weights": [4.0, 1.0, 2.0], "log_loss": True},
    {"smooth": 1.0, "class_weights": [1.0, 0.0, 2.0]},
]


# binary mode has one class: SMP refuses classes and class_weights there, and so do we
CASES = [(mode, options) for mode in MODES for options in OPTIONS if mode != "binary" or list(options) == ["log_loss"]]


@pytest.mark.parametrize(("mode", "options"), CASES)
@pytest.mark.parametrize("name", sorted(OVERLAP))
def test_overlap_options_equal_smp(name, mode, options):
    ours, theirs, fixed = OVERLAP[name]
    preds, target = sample(mode)
    expected = theirs(mode, ignore_index=IGNORE, **fixed, **options)(preds, target)
    torch.testing.assert_close(ours(mode, **fixed, **options)(preds, target), expected, rtol=1e-6, atol=1e-6)


def hand_scores(preds, target, mode, alpha, beta):
    """Per-class Tversky scores from NumPy sums (no ignored pixels)."""
    p, t = one_hot(preds, target, mode)
    tp, fp, fn = (p * t).sum((0, 2, 3)), (p * (1 - t)).sum((0, 2, 3)), ((1 - p) * t).sum((0, 2, 3))
    return tp / (tp + alpha * fp + beta * fn)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_class_weights_and_subset_against_hand_values(mode):
    preds, target = sample(mode, ignore=False)
    score = hand_scores(preds, target, mode, 0.5, 0.5)
    weights = np.array([2.0, 1.0, 5.0])
    for chosen in ([0, 1, 2], [1, 2], [2]):
        w = weights[chosen]
        expected = (w * (1 - score[chosen])).sum() / w.sum()
        value = DiceLoss(mode, classes=chosen, class_weights=weights.tolist())(preds, target)
        assert value.item() == pytest.approx(expected, rel=1e-10)
        # Keras' spellings: class_indexes, and one weight per selected class in that order
        keras = DiceLoss(mode, class_indexes=chosen, class_weights=w.tolist())(preds, target)
        assert keras.item() == pytest.approx(expected, rel=1e-10)
    expected = -np.log(score[[0, 2]]).mean()
    assert DiceLoss(mode, classes=[0, 2], log_loss=True)(preds, target).item() == pytest.approx(expected, rel=1e-10)
    # Keras computes 1 - mean_c(w_c * score_c); with weights averaging 1 that is our weighted mean.
    w = np.array([0.5, 1.0, 1.5])
    keras_value = 1 - (w * score).mean()
    assert DiceLoss(mode, class_weights=w.tolist())(preds, target).item() == pytest.approx(keras_value, rel=1e-10)
    assert DiceLoss(mode, class_indexes=1)(preds, target).item() == pytest.approx(1 - score[1], rel=1e-10)


def test_absent_classes_leave_the_weighted_mean():
    preds, target = sample("multiclass", ignore=False)
    target[target == 2] = 0  # class 2 absent: with smooth = 0 it is not counted, whatever its weight
    score = hand_scores(preds, target, "multiclass", 1.0, 1.0)
    expected = (2 * (1 - score[0]) + 1 * (1 - score[1])) / 3
    value = JaccardLoss(class_weights=[2.0, 1.0, 100.0])(preds, target)
    assert value.item() == pytest.approx(expected, rel=1e-10)
    assert JaccardLoss(classes=[2])(preds, target).item() == 0.0


def test_overlap_option_errors():
    preds, target = sample("multiclass")
    with pytest.raises(ConfigError, match=r"classes=\[1\] or class_indexes=\[2\]"):
        DiceLoss(classes=[1], class_indexes=[2])
    with pytest.raises(ConfigError, match="binary mode has one class"):
        JaccardLoss("binary", classes=[0])
    with pytest.raises(ConfigError, match="binary mode has one class"):
        DiceLoss("binary", class_weights=[1.0])
    for bad in ([], [1, 1], [-1], [0.5], "1"):
        with pytest.raises(ConfigError, match="distinct class ids"):
            TverskyLoss(classes=bad)
    with pytest.raises(ConfigError, match=r"classes \[0, 5\] are out of range for preds with 3 classes"):
        DiceLoss(classes=[0, 5])(preds, target)
    with pytest.raises(ConfigError, match=r"class_weights has 2 entries but preds have 3 classes; give 3\."):
        DiceLoss(class_weights=[1.0, 2.0])(preds, target)
    with pytest.raises(ConfigError, match=r"give 3 or 1 \(one per entry of classes\)"):
        DiceLoss(classes=[1], class_weights=[1.0, 2.0])(preds, target)
    with pytest.raises(ConfigError, match="class_weights must be"):
        DiceLoss(class_weights=[1.0, -1.0, 1.0])


def test_get_loss_routes_class_options_to_overlap_losses():
    loss = get_loss("ce + dice", class_weights=[1.0, 2.0, 3.0], class_indexes=[1, 2])
    assert loss.components["dice"].class_weights.tolist() == [1.0, 2.0, 3.0]
    assert loss.components["dice"].classes == [1, 2] and loss.components["ce"].class_weights.tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- Generalized Dice, MCC, smoothed BCE


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("weighting", ["square", "simple", "uniform"])
@pytest.mark.parametrize("mode", MODES)
def test_generalized_dice_equals_monai(mode, weighting, per_image):
    preds, target = sample(mode, n=3, ignore=False, seed=1)
    if mode == "multiclass":
        target[1] = 0  # image 1 lacks classes 1 and 2: MONAI's absent-class weight rule
        monai_target = target.unsqueeze(1)
        monai = MonaiGeneralizedDice(softmax=True, to_onehot_y=True, w_type=weighting, batch=not per_image)
    else:
        target[1] = 0
        monai_target = target.unsqueeze(1) if mode == "binary" else target
        monai = MonaiGeneralizedDice(sigmoid=True, w_type=weighting, batch=not per_image)
    expected = monai(preds, monai_target.double())
    value = get_loss("generalized_dice", mode=mode, weighting=weighting, per_image=per_image)(preds, target)
    torch.testing.assert_close(value, expected.to(value.dtype), rtol=1e-5, atol=1e-5)


def test_generalized_dice_by_hand_and_errors():
    preds, target = sample("multiclass", n=1, ignore=False)
    p, t = one_hot(preds, target, "multiclass")
    tp, size, total = (p * t).sum((0, 2, 3)), t.sum((0, 2, 3)), p.sum((0, 2, 3)) + t.sum((0, 2, 3))
    w = 1 / size**2
    expected = 1 - (2 * (w * tp).sum() + 1e-5) / ((w * total).sum() + 1e-5)
    assert GeneralizedDiceLoss()(preds, target).item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ConfigError, match="unknown weighting option 'squre'; did you mean 'square'"):
        GeneralizedDiceLoss(weighting="squre")
    with pytest.raises(ConfigError, match=r"smooth_dr=0\.0"):
        GeneralizedDiceLoss(smooth_dr=0.0)


def test_mcc_equals_smp_and_hand_value():
    preds, target = sample("binary", ignore=False)
    expected = smp_losses.MCCLoss()(preds.sigmoid().unsqueeze(1), target.unsqueeze(1).double())
    torch.testing.assert_close(get_loss("mcc", mode="binary")(preds, target), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(MCCLoss("binary", from_logits=False)(preds.sigmoid(), target), expected)
    # multilabel: the mean of the per-channel binary losses; ignored entries are dropped, not true negatives
    preds, target = sample("multilabel")
    per_channel = []
    for c in range(K):
        keep = target[:, c] != IGNORE
        p, t = preds[:, c][keep].sigmoid(), target[:, c][keep].double()
        per_channel.append(smp_losses.MCCLoss()(p.view(1, 1, -1), t.view(1, 1, -1)))
    torch.testing.assert_close(MCCLoss("multilabel")(preds, target), torch.stack(per_channel).mean())
    with pytest.raises(ConfigError, match=r"eps=0\.0"):
        MCCLoss(eps=0.0)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_label_smoothed_bce_equals_smp(mode):
    preds, target = sample(mode, ignore=False)
    target_ = target.unsqueeze(1) if mode == "binary" else target
    for smooth_factor in (0.1, 0.3):
        expected = smp_losses.SoftBCEWithLogitsLoss(smooth_factor=smooth_factor)(preds, target_.double())
        value = get_loss("bce", mode=mode, smooth_factor=smooth_factor)(preds, target)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    # with ignored entries: the mean over the others of BCE against the smoothed targets
    preds, target = sample(mode)
    target_ = target.unsqueeze(1) if mode == "binary" else target
    keep = target_ != IGNORE
    soft = target_.double()[keep] * 0.8 + 0.1
    expected = F.binary_cross_entropy_with_logits(preds[keep], soft)
    torch.testing.assert_close(BCELoss(mode, smooth_factor=0.1)(preds, target), expected)
    with pytest.raises(ConfigError, match=r"smooth_factor=1\.5"):
        BCELoss(smooth_factor=1.5)


# ----------------------------------------------------------------------------- clDice


def np_erode(x):
    """Minimum over each pixel and its 4 neighbours, by loops (borders: the neighbours that exist)."""
    out = np.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            near = [(i, j), (i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
            out[..., i, j] = np.min([x[..., a, b] for a, b in near if 0 <= a < h and 0 <= b < w], axis=0)
    return out


def np_dilate(x):
    out = np.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            out[..., i, j] = x[..., max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].max(axis=(-2, -1))
    return out


def np_skeleton(x, iterations):
    """Shit et al.'s soft skeleton, Algorithm 1 of the paper, in NumPy."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    skeleton = relu(x - np_dilate(np_erode(x)))
    for _ in range(iterations):
        x = np_erode(x)
        delta = relu(x - np_dilate(np_erode(x)))
        skeleton = skeleton + relu(delta - skeleton * delta)
    return skeleton


def np_cldice_loss(p, t, iterations=3, smooth=1.0):
    sp, st = np_skeleton(p, iterations), np_skeleton(t, iterations)
    tprec = ((sp * t).sum() + smooth) / (sp.sum() + smooth)
    tsens = ((st * p).sum() + smooth) / (st.sum() + smooth)
    return 1 - 2 * tprec * tsens / (tprec + tsens)


def test_soft_skeleton_of_thin_lines_is_the_line():
    image = torch.zeros(1, 3, 9, 9, dtype=torch.float64)
    image[0, 0, 4, 1:8] = 1  # horizontal
    image[0, 1, 1:8, 3] = 1  # vertical
    image[0, 2].fill_diagonal_(1)  # diagonal, 8-connected
    torch.testing.assert_close(soft_skeleton(image), image)
    # a 5 x 5 square: its skeleton is a subset of it and much thinner
    square = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    square[..., 2:7, 2:7] = 1
    skeleton = soft_skeleton(square)
    assert (skeleton <= square).all() and 0 < skeleton.sum() < square.sum() / 2


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_soft_skeleton_equals_numpy_derivation(iterations):
    x = torch.rand(2, 2, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(soft_skeleton(x, iterations).numpy(), np_skeleton(x.numpy(), iterations), atol=1e-12)


def test_cldice_identical_masks_and_numpy_derivation():
    generator = torch.Generator().manual_seed(4)
    mask = (torch.rand(2, 1, 10, 10, generator=generator) > 0.5).long()
    assert ClDiceLoss("binary", from_logits=False)(mask.double(), mask).item() == pytest.approx(0.0, abs=1e-12)
    preds = torch.randn(2, 1, 10, 10, dtype=torch.float64, generator=generator)
    expected = np_cldice_loss(preds.sigmoid().numpy(), mask.double().numpy())
    assert ClDiceLoss("binary")(preds, mask).item() == pytest.approx(expected, rel=1e-10)
    expected = np_cldice_loss(preds.sigmoid().numpy(), mask.double().numpy(), iterations=1, smooth=0.5)
    assert ClDiceLoss("binary", iterations=1, smooth=0.5)(preds, mask).item() == pytest.approx(expected, rel=1e-10)


def test_cldice_multiclass_leaves_out_background_and_ignored_pixels():
    preds, target = sample("multiclass", h=8, w=8, ignore=True)
    valid = (target != IGNORE).unsqueeze(1).numpy()
    p = preds.softmax(1).numpy() * valid
    t = F.one_hot(torch.where(target == IGNORE, 0, target), K).movedim(-1, 1).double().numpy() * valid
    expected = np_cldice_loss(p[:, 1:], t[:, 1:])
    assert ClDiceLoss("multiclass")(preds, target).item() == pytest.approx(expected, rel=1e-10)
    expected = np_cldice_loss(p, t)
    value = ClDiceLoss("multiclass", include_background=True)(preds, target)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_cldice_scores_centre_lines_not_thickness():
    # A continuous prediction twice as thick as the vessel: Dice loss 1/3, but its soft skeleton (the
    # two middle columns) lies inside the target and the target's skeleton (itself) inside it: clDice 1.
    target = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    target[0, 0, :, 15:17] = 1
    thick = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    thick[0, 0, :, 14:18] = 1
    assert DiceLoss("binary", from_logits=False)(thick, target).item() == pytest.approx(1 / 3)
    assert ClDiceLoss("binary", from_logits=False)(thick, target).item() == pytest.approx(0.0, abs=1e-12)
    # The other way round (prediction thinner than the target) clDice is also 1: it measures topology.
    assert ClDiceLoss("binary", from_logits=False)(target.double(), thick.long()).item() == pytest.approx(0.0)


def test_cldice_combines_with_dice_and_rejects_bad_options():
    preds, target = sample("binary")
    loss = get_loss("dice + 0.5*cldice", mode="binary", iterations=2)
    assert isinstance(loss, CombinedLoss) and loss.components["cldice"].iterations == 2
    expected = DiceLoss("binary")(preds, target) + 0.5 * ClDiceLoss("binary", iterations=2)(preds, target)
    torch.testing.assert_close(loss(preds, target), expected)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="iterations must be an integer"):
            ClDiceLoss(iterations=bad)
    with pytest.raises(ConfigError, match=r"smooth=0\.0"):
        ClDiceLoss(smooth=0.0)


# ----------------------------------------------------------------------------- Keras names

EXPLICIT = {
    "categorical_crossentropy": "ce",
    "binary_crossentropy": "bce",
    "dice_loss": {"dice": {"smooth": 5e-6}},
    "jaccard_loss": {"jaccard": {"smooth": 1e-5}},
    "categorical_focal_loss": {"focal": {"weight": 0.25, "mean_over_classes": True}},
    "binary_focal_loss": {"focal": {"alpha": 0.25}},
    "bce_dice_loss": {"bce": 1.0, "dice": {"smooth": 5e-6}},
    "bce_jaccard_loss": {"bce": 1.0, "jaccard": {"smooth": 1e-5}},
    "cce_dice_loss": {"ce": {"mean_over_classes": True}, "dice": {"smooth": 5e-6}},
    "cce_jaccard_loss": {"ce": {"mean_over_classes": True}, "jaccard": {"smooth": 1e-5}},
    "binary_focal_dice_loss": {"focal": {"alpha": 0.25}, "dice": {"smooth": 5e-6}},
    "binary_focal_jaccard_loss": {"focal": {"alpha": 0.25}, "jaccard": {"smooth": 1e-5}},
    "categorical_focal_dice_loss": {
        "focal": {"weight": 0.25, "mean_over_classes": True},
        "dice": {"smooth": 5e-6},
    },
    "categorical_focal_jaccard_loss": {
        "focal": {"weight": 0.25, "mean_over_classes": True},
        "jaccard": {"smooth": 1e-5},
    },
}


def alias_modes(name):
    if name.startswith(("categorical", "cce")):
        return ["multiclass"]
    if name.startswith(("binary", "bce")):
        return ["binary", "multilabel"]
    return list(MODES)


@pytest.mark.parametrize("name", sorted(KERAS_ALIASES))
def test_keras_alias_equals_explicit_combination(name):
    assert set(EXPLICIT) == set(KERAS_ALIASES)
    for mode in alias_modes(name):
        preds, target = sample(mode)
        value = get_loss(name, mode=mode)(preds, target)
        torch.testing.assert_close(value, get_loss(EXPLICIT[name], mode=mode)(preds, target))


# Keras segmentation_models' formulas (base/functional.py) in NumPy on probabilities, channels first.
KERAS_EPS = 1e-7  # keras.backend.epsilon()


def keras_f_score(gt, pr, smooth=1e-5):
    tp = (gt * pr).sum((0, 2, 3))
    fp, fn = pr.sum((0, 2, 3)) - tp, gt.sum((0, 2, 3)) - tp
    return np.mean((2 * tp + smooth) / (2 * tp + fn + fp + smooth))


def keras_iou(gt, pr, smooth=1e-5):
    intersection = (gt * pr).sum((0, 2, 3))
    return np.mean((intersection + smooth) / ((gt + pr).sum((0, 2, 3)) - intersection + smooth))


def keras_cce(gt, pr):
    return -np.mean(gt * np.log(np.clip(pr / pr.sum(1, keepdims=True), KERAS_EPS, 1 - KERAS_EPS)))


def keras_bce(gt, pr):
    pr = np.clip(pr, KERAS_EPS, 1 - KERAS_EPS)
    return -np.mean(gt * np.log(pr) + (1 - gt) * np.log(1 - pr))


def keras_categorical_focal(gt, pr, gamma=2.0, alpha=0.25):
    pr = np.clip(pr, KERAS_EPS, 1 - KERAS_EPS)
    return np.mean(-gt * alpha * (1 - pr) ** gamma * np.log(pr))


def keras_binary_focal(gt, pr, gamma=2.0, alpha=0.25):
    pr = np.clip(pr, KERAS_EPS, 1 - KERAS_EPS)
    loss_1 = -gt * alpha * (1 - pr) ** gamma * np.log(pr)
    loss_0 = -(1 - gt) * (1 - alpha) * pr**gamma * np.log(1 - pr)
    return np.mean(loss_0 + loss_1)


KERAS_FORMULAS = {
    "dice_loss": lambda gt, pr: 1 - keras_f_score(gt, pr),
    "jaccard_loss": lambda gt, pr: 1 - keras_iou(gt, pr),
    "bce_dice_loss": lambda gt, pr: keras_bce(gt, pr) + 1 - keras_f_score(gt, pr),
    "bce_jaccard_loss": lambda gt, pr: keras_bce(gt, pr) + 1 - keras_iou(gt, pr),
    "cce_dice_loss": lambda gt, pr: keras_cce(gt, pr) + 1 - keras_f_score(gt, pr),
    "cce_jaccard_loss": lambda gt, pr: keras_cce(gt, pr) + 1 - keras_iou(gt, pr),
    "binary_focal_dice_loss": lambda gt, pr: keras_binary_focal(gt, pr) + 1 - keras_f_score(gt, pr),
    "binary_focal_jaccard_loss": lambda gt, pr: keras_binary_focal(gt, pr) + 1 - keras_iou(gt, pr),
    "categorical_focal_dice_loss": lambda gt, pr: keras_categorical_focal(gt, pr) + 1 - keras_f_score(gt, pr),
    "categorical_focal_jaccard_loss": lambda gt, pr: keras_categorical_focal(gt, pr) + 1 - keras_iou(gt, pr),
}


@pytest.mark.parametrize("name", sorted(KERAS_FORMULAS))
def test_keras_alias_equals_keras_formula(name):
    for mode in alias_modes(name):
        preds, target = sample(mode, ignore=False)
        if mode == "multiclass":
            target[:, 1] = 1  # Keras keeps absent classes too; here every class occurs anyway
        pr, gt = one_hot(preds, target, mode)
        probs = torch.from_numpy(pr)
        value = get_loss(name, mode=mode, from_logits=False)(probs if mode != "binary" else probs[:, 0], target)
        assert value.item() == pytest.approx(KERAS_FORMULAS[name](gt, pr), rel=1e-6), mode


def test_keras_alias_errors_options_and_sums():
    with pytest.raises(ConfigError, match="unknown loss 'dice_los'; did you mean 'dice_loss'"):
        get_loss("dice_los")
    with pytest.raises(ConfigError, match="unknown loss 'bce_dise_loss'; did you mean 'bce_dice_loss'"):
        get_loss("bce_dise_loss", mode="binary")
    with pytest.raises(ConfigError, match=r"'cce_dice_loss' is for multiclass masks, not mode 'binary'.*binary_\*"):
        get_loss("cce_dice_loss", mode="binary")
    with pytest.raises(ConfigError, match=r"'binary_focal_loss' is for binary / multilabel.*categorical_\*"):
        get_loss("binary_focal_loss", mode="multiclass")
    with pytest.raises(ConfigError, match="'dice' appears twice"):
        get_loss("dice_loss + dice")
    with pytest.raises(ConfigError, match=r"'bce_dice_loss' \(bce \+ dice\) has no option 'gama'"):
        get_loss({"bce_dice_loss": {"gama": 2}}, mode="binary")
    # an alias inside a sum, weighted; options given by the user override the alias's own
    assert parse_loss_spec("0.5*bce_jaccard_loss + cldice") == {
        "bce": (0.5, {}),
        "jaccard": (0.5, {"smooth": 1e-5}),
        "cldice": (1.0, {}),
    }
    loss = get_loss("Dice_Loss", mode="binary", smooth=1.0)
    assert isinstance(loss, DiceLoss) and loss.smooth == 1.0
    loss = get_loss({"bce_dice_loss": {"weight": 2.0, "pos_weight": 3.0, "log_loss": True}}, mode="binary")
    assert loss.weights == {"bce": 2.0, "dice": 2.0}
    assert loss.components["bce"].pos_weight.item() == 3.0 and loss.components["dice"].log_loss


def test_new_losses_are_registered():
    for name, cls in (("generalized_dice", GeneralizedDiceLoss), ("mcc", MCCLoss), ("cldice", ClDiceLoss)):
        assert isinstance(get_loss(name, mode="multilabel"), cls)
    with pytest.raises(ConfigError, match="unknown loss 'cldise'; did you mean 'cldice'"):
        get_loss("cldise")


@pytest.mark.parametrize(
    "spec, weighted",
    [("ce+dice", {"ce"}), ("ce + 0.5*jaccard", {"ce"}), ("dice", {"dice"}), ("jaccard+lovasz", {"jaccard"})],
)
def test_a_runs_class_weights_go_to_its_cross_entropy_term_else_to_the_terms_that_take_them(spec, weighted):
    """As before issue 22, ``ce+dice`` weights only the cross-entropy (Dice weighs classes equally); a loss
    without ``ce`` gives the weights to each term that accepts them instead of refusing them."""
    from pixelwise.training.config import TrainConfig
    from pixelwise.training.task import SegmentationTask

    config = TrainConfig(data="unused", loss=spec, model="unet", encoder="resnet18").validate()
    task = SegmentationTask(config, in_channels=3, classes=3, mean=[0.5] * 3, std=[0.2] * 3, class_weights=[1, 2, 3])
    parts = dict(task.loss.components) if hasattr(task.loss, "components") else {spec: task.loss}
    for name, part in parts.items():
        has = getattr(part, "class_weights", None) is not None
        assert has == (name in weighted), name
