"""Augmentation: image and masks stay aligned, masks stay valid, fills, presets and config errors."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors

from pixelwise.data import RandomElasticGrid, build_transforms
from pixelwise.data.transforms import shift_image
from pixelwise.errors import ConfigError, ShapeError

IGNORE = 255


def blobs(size=64, channels=1, seed=0):
    """A smooth image and the mask made by thresholding it: any misalignment shows as disagreement."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), 4)
    image = (field - field.min()) / (field.max() - field.min())
    image = torch.from_numpy(np.repeat(image[None], channels, 0)).float()
    return image, (image[0] > 0.5).long()


def agreement(image, mask):
    valid = mask != IGNORE
    return float(((image[0] > 0.5).long() == mask)[valid].float().mean()), valid


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_presets_keep_image_and_mask_aligned(preset):
    augment = build_transforms(preset, crop_size=48)
    for seed in range(6):
        torch.manual_seed(seed)
        _, mask = blobs(seed=seed)
        image = mask[None].float()  # two-level image: intensity jitter cannot move its 0.5 contour
        out_image, out_mask = augment(image, mask)
        assert out_image.shape == (1, 48, 48) and out_mask.shape == (48, 48) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 1, IGNORE}
        score, valid = agreement(out_image, out_mask)  # equal up to interpolation at the contour
        assert valid.float().mean() > 0.5 and score > 0.95


def test_elastic_moves_image_and_mask_together():
    torch.manual_seed(0)
    image, mask = blobs(size=96, channels=4)
    augment = build_transforms([{"name": "RandomElasticGrid", "sigma": 12.0, "p": 1.0}])
    out_image, out_mask = augment(image, mask)
    assert not torch.equal(out_mask, mask)  # it did deform
    score, _ = agreement(out_image, out_mask)
    assert score > 0.97
    unrelated = torch.roll(out_mask, 5, dims=0)  # sanity: a misaligned mask scores far lower
    assert agreement(out_image, unrelated)[0] < score - 0.05


def test_rotation_fills_mask_with_ignore_and_instances_with_background():
    image, mask = torch.ones(3, 40, 40), torch.ones(40, 40, dtype=torch.int64)
    instances = torch.full((40, 40), 7, dtype=torch.int32)
    augment = build_transforms([{"name": "RandomAffine", "degrees": (45, 45)}])
    out_image, out_mask, out_instances = augment(image, mask, instances)
    assert out_mask[0, 0] == IGNORE and out_instances[0, 0] == 0 and out_image[:, 0, 0].eq(0).all()
    assert out_mask[20, 20] == 1 and out_instances[20, 20] == 7 and out_instances.dtype == torch.int32
    assert set(out_mask.unique().tolist()) == {1, IGNORE} and set(out_instances.unique().tolist()) == {0, 7}


def test_crop_pads_small_images_with_ignore():
    image, mask = torch.rand(2, 10, 12), torch.zeros(10, 12, dtype=torch.int64)
    out_image, out_mask = build_transforms("none", crop_size=(16, 20))(image, mask)
    assert out_image.shape == (2, 16, 20) and (out_mask == IGNORE).sum() == 16 * 20 - 10 * 12


def test_intensity_transforms_work_for_many_channels_and_leave_masks_alone():
    image, mask = torch.rand(5, 32, 32), torch.randint(0, 3, (32, 32))
    config = [
        {"name": name, "p": 1.0}
        for name in ("RandomBrightness", "RandomContrast", "RandomGamma", "RandomGaussianNoise")
    ]
    out_image, out_mask = build_transforms(config)(image, mask)
    assert out_image.shape == image.shape and not torch.equal(out_image, image)
    assert torch.equal(out_mask, mask)


def test_rot90_swaps_height_and_width_together():
    image, mask = blobs()
    image, mask = image[:, :40], mask[:40]
    shapes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = build_transforms(["RandomRot90"])(image, mask)
        assert out_image.shape[1:] == out_mask.shape and agreement(out_image, out_mask)[0] == 1.0
        shapes.add(tuple(out_mask.shape))
    assert shapes == {(40, 64), (64, 40)}


def test_none_is_identity_and_config_errors():
    image, mask = blobs()
    out_image, out_mask = build_transforms("none")(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    with pytest.raises(ConfigError, match="did you mean 'RandomHorizontalFlip'"):
        build_transforms([{"name": "RandomHorizontalFlipp"}])
    with pytest.raises(ConfigError, match="did you mean 'strong'"):
        build_transforms("stronk")
    with pytest.raises(ConfigError, match="RandomElasticGrid accepts: grid, sigma, p, fill"):
        build_transforms([{"name": "RandomElasticGrid", "alpha": 3}])
    with pytest.raises(ConfigError, match="not understood"):
        build_transforms([42])
    with pytest.raises(ShapeError, match=r"image \[1, 64, 64\], mask \[10, 10\]"):
        build_transforms("light")(image, mask[:10, :10])


def test_config_list_composes_presets_and_nested_transforms():
    augment = build_transforms(
        ["light", {"name": "RandomApply", "transforms": [{"name": "RandomRotation", "degrees": 30}], "p": 1.0}]
    )
    names = [type(t).__name__ for t in augment.transforms]
    assert names == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRot90", "RandomApply"]
    rotation = augment.transforms[-1].transforms[0]
    assert rotation.interpolation.value == "bilinear" and rotation.fill[tv_tensors.Mask] == IGNORE
    assert RandomElasticGrid().sigma == 10.0 and RandomElasticGrid().grid == 3  # the U-Net paper's values


def test_mirror_border_reflects_the_image_and_pads_masks_with_ignore():
    image = torch.rand(2, 5, 7)
    mask = torch.randint(0, 3, (5, 7))
    instances = torch.randint(1, 4, (5, 7), dtype=torch.int32)
    out_image, out_mask, out_instances = build_transforms("none", mirror_border=9, ignore_index=255)(
        image, mask, instances
    )
    # numpy reflects again and again when the border exceeds the image, like the U-Net paper's tiles
    expected = np.pad(image.numpy(), ((0, 0), (9, 9), (9, 9)), mode="reflect")
    np.testing.assert_array_equal(out_image.numpy(), expected)
    assert out_mask.shape == out_instances.shape == (23, 25)
    assert torch.equal(out_mask[9:14, 9:16], mask) and torch.equal(out_instances[9:14, 9:16], instances)
    outside = torch.ones(23, 25, dtype=torch.bool)
    outside[9:14, 9:16] = False
    assert (out_mask[outside] == 255).all() and (out_instances[outside] == 0).all()
    # with a crop, the crop is cut from the padded image: the model's input tile
    cropped, cropped_mask = build_transforms("light", crop_size=20, mirror_border=9)(image, mask)
    assert cropped.shape == (2, 20, 20) and cropped_mask.shape == (20, 20)
    with pytest.raises(ConfigError, match="border"):
        build_transforms("none", mirror_border=-1)


@pytest.mark.parametrize("shape", [(17, 23), (3, 17, 23), (2, 3, 17, 23)])
@pytest.mark.parametrize("offset", [(-0.5, 0.0), (0.0, 0.75), (1.0, -2.0), (-1.25, 0.3), (0.0, 0.0)])
def test_shift_image_is_scipys_linear_shift_with_repeated_edges(shape, offset):
    image = torch.rand(shape, dtype=torch.float64)
    expected = ndimage.shift(image.numpy(), (0,) * (len(shape) - 2) + offset, order=1, mode="nearest")
    np.testing.assert_allclose(shift_image(image, offset).numpy(), expected, atol=1e-12)
