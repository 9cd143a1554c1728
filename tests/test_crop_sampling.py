"""Rare-class crop sampling (``crop_sampling``): how often a crop holds a rare class, against the
probabilities computed here by enumerating every crop position; the uniform crop unchanged; image,
mask and instances cut at the same window; a training run; config errors."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import yaml
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.cli.train import add_train_arguments, overrides_from
from pixelwise.data.synthetic import write_synthetic
from pixelwise.data.transforms import build_transforms, class_presence
from pixelwise.errors import ConfigError
from pixelwise.training.config import TrainConfig, resolve
from pixelwise.training.data import SegmentationDataModule
from pixelwise.training.run import train
from settings import TINY_TRAIN

IGNORE = 255
SIZE, CROP = 64, 24
RARE = 2
DRAWS = 2000
SIGMAS = 4.5
"""Binomial tolerance of the measured shares, in standard deviations (a false alarm about once in 10^5 runs)."""


def rare_mask() -> torch.Tensor:
    """64 x 64: class 1 on the left half, background elsewhere, and class 2 on 42 pixels (1 %) near a corner."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    mask[:, : SIZE // 2] = 1
    mask[52:58, 50:57] = RARE
    return mask


def window_sums(indicator: np.ndarray, height: int, width: int) -> np.ndarray:
    """Sum of ``indicator`` over every ``height x width`` window, indexed by the window's top-left corner."""
    table = np.pad(indicator.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return table[height:, width:] - table[:-height, width:] - table[height:, :-width] + table[:-height, :-width]


def uniform_share(mask: np.ndarray) -> float:
    """Exact share of the uniformly placed crops (image larger than the crop: no padding) holding the rare class."""
    return float((window_sums(mask == RARE, CROP, CROP) > 0).mean())


def centred_share(mask: np.ndarray, pixels: np.ndarray) -> float:
    """Mean, over ``pixels`` (rows of (y, x)), of whether the crop centred on the pixel and clamped to the
    image holds the rare class (MONAI's centring: top-left = pixel - size // 2)."""
    holds = window_sums(mask == RARE, CROP, CROP) > 0
    tops = np.clip(pixels[:, 0] - CROP // 2, 0, SIZE - CROP)
    lefts = np.clip(pixels[:, 1] - CROP // 2, 0, SIZE - CROP)
    return float(holds[tops, lefts].mean())


def measured_share(augment, mask: torch.Tensor, draws: int = DRAWS) -> float:
    image = torch.rand(3, *mask.shape)
    return sum(bool((augment(image, mask)[1] == RARE).any()) for _ in range(draws)) / draws


def within_binomial(measured: float, expected: float, draws: int = DRAWS) -> bool:
    return abs(measured - expected) <= SIGMAS * math.sqrt(expected * (1 - expected) / draws) + 1e-9


def test_uniform_share_is_the_geometric_probability():
    mask = rare_mask()
    expected = uniform_share(mask.numpy())
    assert 0.05 < expected < 0.2  # a rare class: in about one crop in ten
    measured = measured_share(build_transforms("none", crop_size=CROP, crop_sampling="uniform"), mask)
    assert within_binomial(measured, expected), (measured, expected)


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_class_balanced_share_matches_the_definition(ratio):
    mask = rare_mask()
    array = mask.numpy()
    present = np.unique(array)
    # pick a present class uniformly, then one of its pixels uniformly, centre the crop on it
    centred = np.mean([centred_share(array, np.argwhere(array == c)) for c in present])
    expected = ratio * centred + (1 - ratio) * uniform_share(array)
    assert expected >= ratio / len(present) + (1 - ratio) * uniform_share(array)
    augment = build_transforms("none", crop_size=CROP, crop_sampling="class_balanced", crop_sampling_ratio=ratio)
    measured = measured_share(augment, mask)
    assert within_binomial(measured, expected), (measured, expected)


def test_class_balanced_ignores_ignore_index_and_ratio_zero_is_uniform():
    mask = rare_mask()
    mask[:8] = IGNORE  # a third "class" that must not be drawn: it would lower the rare share to 1/4
    array = mask.numpy()
    classes = [0, 1, RARE]
    expected = np.mean([centred_share(array, np.argwhere(array == c)) for c in classes])
    augment = build_transforms("none", crop_size=CROP, crop_sampling="class_balanced", crop_sampling_ratio=1.0)
    assert within_binomial(measured_share(augment, mask), expected)
    never = build_transforms("none", crop_size=CROP, crop_sampling="class_balanced", crop_sampling_ratio=0.0)
    assert within_binomial(measured_share(never, mask), uniform_share(array))


def test_foreground_ratio_one_always_holds_foreground_and_centres_on_it():
    mask = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    mask[40, 30] = 3
    mask[10, 50] = IGNORE  # not foreground
    augment = build_transforms("light", crop_size=CROP, crop_sampling="foreground", crop_sampling_ratio=1.0)
    for _ in range(200):
        _, out = augment(torch.rand(1, SIZE, SIZE), mask)
        assert (out == 3).sum() == 1
    plain = build_transforms("none", crop_size=CROP, crop_sampling="foreground", crop_sampling_ratio=1.0)
    _, out = plain(torch.rand(1, SIZE, SIZE), mask)
    assert out[CROP // 2, CROP // 2] == 3  # far from the border: exactly in the centre
    _, empty = plain(torch.rand(1, SIZE, SIZE), torch.zeros(SIZE, SIZE, dtype=torch.int64))
    assert empty.shape == (CROP, CROP)  # no foreground anywhere: a uniform crop, no error


@pytest.mark.parametrize("size", [SIZE, 17])  # 17 < CROP: padded, as before
def test_uniform_reproduces_torchvision_random_crop(size):
    fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE}
    old = v2.RandomCrop(CROP, pad_if_needed=True, fill=fill)
    new = build_transforms("none", crop_size=CROP, crop_sampling="uniform")
    image, mask = torch.rand(3, size, size + 5), torch.randint(0, 4, (size, size + 5))
    for seed in range(5):
        torch.manual_seed(seed)
        expected = old(tv_tensors.Image(image), tv_tensors.Mask(mask))
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        got = new(image, mask)
        assert torch.equal(got[0], expected[0].as_subclass(torch.Tensor))
        assert torch.equal(got[1], expected[1].as_subclass(torch.Tensor))
        assert torch.equal(torch.get_rng_state(), state)  # the same random numbers used, no more


@pytest.mark.parametrize("sampling", ["class_balanced", "foreground"])
@pytest.mark.parametrize(("size", "border"), [(SIZE, 0), (15, 0), (32, 8)])
def test_image_mask_and_instances_cut_at_the_same_window(sampling, size, border):
    crop = CROP + 2 * border
    mask = torch.randint(0, 3, (size, size))
    mask[size // 3, size // 2] = RARE + 5  # a one-pixel class
    image = mask[None].float()
    augment = build_transforms(
        "light", crop_size=crop, mirror_border=border, crop_sampling=sampling, crop_sampling_ratio=1.0
    )
    hits, draws = 0, 100
    for _ in range(draws):
        out_image, out_mask, out_instances = augment(image, mask, mask.int())
        assert out_image.shape == (1, crop, crop) and out_mask.shape == out_instances.shape == (crop, crop)
        valid = out_mask != IGNORE
        assert torch.equal(out_image[0][valid], out_mask[valid].float())
        assert torch.equal(out_instances[valid], out_mask[valid].int())
        assert (out_instances[~valid] == 0).all()
        # a valid-convolution model's output tile (inside the mirrored border) holds the chosen pixel
        inner = out_mask[border : crop - border, border : crop - border]
        assert sampling != "foreground" or ((inner != 0) & (inner != IGNORE)).any()
        hits += bool((inner == RARE + 5).any())
    assert hits >= draws // 10  # class_balanced: at least a quarter expected (four classes present)


def test_config_fields_flags_and_errors():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--data", "d", "--crop-sampling", "class_balanced", "--crop-sampling-ratio", "0.3"])
    config = resolve(None, overrides_from(args))
    assert (config.crop_sampling, config.crop_sampling_ratio) == ("class_balanced", 0.3)
    assert (TrainConfig.crop_sampling, TrainConfig.crop_sampling_ratio) == ("uniform", 0.5)
    with pytest.raises(ConfigError, match=r"'class_balance'.*did you mean 'class_balanced'"):
        resolve(None, {"data": "d", "crop_sampling": "class_balance"})
    for ratio in (1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"crop_sampling_ratio={ratio}.*at least 0 and at most 1"):
            resolve(None, {"data": "d", "crop_sampling_ratio": ratio})
    with pytest.raises(ConfigError, match=r"crop_sampling='foreground'.*--crop"):
        TrainConfig(data="d", crop_sampling="foreground", crop=None).validate()
    with pytest.raises(ConfigError, match=r"crop_sampling option 'forground'; did you mean 'foreground'"):
        build_transforms("none", crop_size=CROP, crop_sampling="forground")
    with pytest.raises(ConfigError, match=r"crop_sampling_ratio=2 must be a probability"):
        build_transforms("none", crop_size=CROP, crop_sampling="foreground", crop_sampling_ratio=2)


@pytest.mark.parametrize("sampling", ["class_balanced", "rare_class"])
def test_two_epoch_training_with_data_set_level_crops(tmp_path, sampling):
    data = write_synthetic(tmp_path / "shapes", "shapes", n_train=4, n_val=2, size=96, seed=0)
    options = {**TINY_TRAIN, "crop_sampling": sampling, "crop_sampling_ratio": 0.8}
    train(TrainConfig(data=str(data), runs_dir=str(tmp_path), name="cb", **options))
    saved = yaml.safe_load((tmp_path / "cb" / "config.yaml").read_text())
    assert (saved["crop_sampling"], saved["crop_sampling_ratio"]) == (sampling, 0.8)
    assert (tmp_path / "cb" / "last.ckpt").is_file()


def presence_masks() -> list[np.ndarray]:
    """Eight 64 x 64 masks: classes 0 and 1 in halves everywhere, class 2 (1 % of the pixels) in the first only."""
    common = np.zeros((SIZE, SIZE), dtype=np.int64)
    common[:, : SIZE // 2] = 1
    return [rare_mask().numpy()] + [common.copy() for _ in range(7)]


def expected_class_probability(masks: list[np.ndarray], sampling: str) -> np.ndarray:
    """p(c) from the definitions: uniform over the classes present, or DAFormer's exp((1 - f_c) / 0.01)."""
    pixels = np.array([np.sum([(m == c).sum() for m in masks]) for c in range(4)], dtype=np.float64)
    if sampling == "class_balanced":
        scores = (pixels > 0).astype(np.float64)
    else:
        scores = np.where(pixels > 0, np.exp((1 - pixels / pixels.sum()) / 0.01), 0.0)
    return scores / scores.sum()


@pytest.mark.parametrize("sampling", ["class_balanced", "rare_class"])
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_class_presence_centres_each_class_as_often_as_its_probability(sampling, ratio):
    masks = presence_masks()
    presence = class_presence(masks, num_classes=4, sampling=sampling)  # class 3 is in no mask: never drawn
    np.testing.assert_array_equal(presence.present.sum(axis=0), [8, 8, 1, 0])
    expected = expected_class_probability(masks, sampling)
    np.testing.assert_allclose(presence.class_probability, expected, rtol=1e-9)
    weights = presence.image_weights(ratio)
    assert weights.sum() == pytest.approx(1.0)
    # the chance a crop is centred on each class, summed over images, from the factorisation's parts
    centred = np.zeros(4)
    for weight, row in zip(weights, presence.present, strict=True):
        classes = np.flatnonzero(row)
        within = presence.class_weights[classes] / presence.class_weights[classes].sum()
        centred[classes] += weight * presence.centre_probability(classes, ratio) * within
    np.testing.assert_allclose(centred, ratio * expected, atol=1e-12)


def test_rare_class_draws_favour_the_class_with_fewest_pixels():
    presence = class_presence(presence_masks(), num_classes=4, sampling="rare_class")
    assert presence.class_probability[RARE] > 0.99  # 42 of 32768 pixels against halves: e^{0.5/0.01} apart
    with pytest.raises(ConfigError, match=r"rare_class.*class_presence"):
        build_transforms("none", crop_size=CROP, crop_sampling="rare_class")


def test_data_set_level_class_balanced_crops_hold_the_rare_class_far_more_often():
    masks = [torch.from_numpy(m) for m in presence_masks()]
    presence = class_presence(masks, num_classes=3)
    ratio, generator = 1.0, np.random.default_rng(0)
    torch.manual_seed(0)
    over_data = build_transforms(
        "none", crop_size=CROP, crop_sampling="class_balanced", crop_sampling_ratio=ratio, class_presence=presence
    )
    per_image = build_transforms("none", crop_size=CROP, crop_sampling="class_balanced", crop_sampling_ratio=ratio)
    image = torch.rand(3, SIZE, SIZE)
    drawn = generator.choice(len(masks), size=DRAWS, p=presence.image_weights(ratio))
    hits = sum(bool((over_data(image, masks[i])[1] == RARE).any()) for i in drawn) / DRAWS
    uniform_images = generator.integers(len(masks), size=DRAWS)
    hits_per_image = sum(bool((per_image(image, masks[i])[1] == RARE).any()) for i in uniform_images) / DRAWS
    # over the data set: a third of the crops are centred on the rare class (and always hold it)
    assert hits >= 1 / 3 - SIGMAS * math.sqrt(2 / 9 / DRAWS)
    # within each image: only the one image in eight holding it, a third of its crops
    assert hits_per_image <= 1 / 8 * (1 / 3 + uniform_share(masks[0].numpy())) + SIGMAS * math.sqrt(0.05 / DRAWS)


def test_training_draws_images_holding_a_rare_class_more_often(tmp_path):
    data = write_synthetic(tmp_path / "shapes", "shapes", n_train=4, n_val=2, size=96, seed=0)
    config = TrainConfig(data=str(data), runs_dir=str(tmp_path), **{**TINY_TRAIN, "crop_sampling": "class_balanced"})
    module = SegmentationDataModule(config, num_classes=4)
    module.setup()
    masks = [module.train_set.read_mask(i) for i in range(4)]
    holding = np.array([[(m == c).any() for c in range(4)] for m in masks])
    np.testing.assert_array_equal(module.presence.present, holding)
    sampler = module.train_dataloader().sampler
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    uniform = SegmentationDataModule(TrainConfig(data=str(data), **TINY_TRAIN), num_classes=4)
    uniform.setup()
    assert uniform.presence is None
    assert isinstance(uniform.train_dataloader().sampler, torch.utils.data.RandomSampler)
