"""Tests of the original, unpadded U-Net (Ronneberger et al. 2015)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import pixelwise.models.unet2015 as unet2015_module
from pixelwise.errors import ConfigError, InputSizeError
from pixelwise.models.registry import create_model, from_pretrained
from pixelwise.models.unet2015 import UNet2015, center_crop


def conv_params(c_in: int, c_out: int, k: int) -> int:
    """Weights and biases of a k×k (transposed) convolution from c_in to c_out channels."""
    return c_in * c_out * k * k + c_out


# -- architecture -----------------------------------------------------------------------------------
def test_paper_geometry_572_in_388_out():
    model = UNet2015(in_channels=1, classes=2, base_channels=8).eval()  # 64 channels: same shapes, ~8 s on CPU
    with torch.no_grad():
        out = model(torch.randn(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_parameter_count_is_the_papers():
    # Fig. 1 of the paper, counted layer by layer (3×3 valid convs, 2×2 up-convs, 1×1 head).
    contracting = (
        conv_params(1, 64, 3) + conv_params(64, 64, 3)
        + conv_params(64, 128, 3) + conv_params(128, 128, 3)
        + conv_params(128, 256, 3) + conv_params(256, 256, 3)
        + conv_params(256, 512, 3) + conv_params(512, 512, 3)
        + conv_params(512, 1024, 3) + conv_params(1024, 1024, 3)
    )  # fmt: skip
    expanding = (
        conv_params(1024, 512, 2) + conv_params(1024, 512, 3) + conv_params(512, 512, 3)
        + conv_params(512, 256, 2) + conv_params(512, 256, 3) + conv_params(256, 256, 3)
        + conv_params(256, 128, 2) + conv_params(256, 128, 3) + conv_params(128, 128, 3)
        + conv_params(128, 64, 2) + conv_params(128, 64, 3) + conv_params(64, 64, 3)
    )  # fmt: skip
    head = conv_params(64, 2, 1)
    expected = contracting + expanding + head
    # 31,031,685, often quoted, is a Keras variant whose head is a 3×3 conv to 2 channels plus a
    # 1×1 conv to 1 channel: (64·2·9 + 2) + (2 + 1) = 1157 instead of 130, i.e. 1027 more.
    assert expected == 31_030_658
    model = UNet2015(in_channels=1, classes=2, base_channels=64, depth=4, batchnorm=False)
    assert sum(p.numel() for p in model.parameters()) == expected
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert len(convs) == 19 and len([m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]) == 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(c.padding == (0, 0) for c in convs)


def test_he_initialisation():
    model = UNet2015(base_channels=32)
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            fan_in = module.in_channels  # k=2, s=2: each output pixel sees one pixel per input channel
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * 9 if module.kernel_size == (3, 3) else module.in_channels
        else:
            continue
        if module.weight.numel() < 10_000:
            continue  # too few samples for a tight std estimate
        assert module.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
        assert torch.all(module.bias == 0)


# -- size arithmetic ---------------------------------------------------------------------------------
def test_class_level_geometry():
    assert UNet2015.output_size(572) == 388
    assert UNet2015.valid_input_size(570) == 572
    assert UNet2015.valid_input_size(572) == 572
    assert UNet2015.valid_input_size(573) == 588
    assert UNet2015.border() == 92 and UNet2015.border(depth=4) == 92
    assert UNet2015.valid_input_size(1) == 188 and UNet2015.output_size(188) == 4  # the smallest
    assert UNet2015.output_size(732) == 548
    assert UNet2015.output_size(172, depth=3) == 84 and UNet2015.border(3) == 44
    assert UNet2015.is_valid_input_size(572) and not UNet2015.is_valid_input_size(570)


def _valid_brute_force(n: int, depth: int) -> bool:
    """Independent check: simulate with the literal rule (even before each pool, never below 1)."""
    size = n
    for _ in range(depth):
        if size - 2 < 1 or size - 4 < 1 or (size - 4) % 2:
            return False
        size = (size - 4) // 2
    sizes = [size - 2, size - 4]
    size -= 4
    for _ in range(depth):
        sizes += [2 * size, 2 * size - 2, 2 * size - 4]
        size = 2 * size - 4
    return min(sizes) >= 1


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_valid_input_size_is_the_smallest_valid_size_at_or_above(depth):
    valid = [m for m in range(1, 1200) if _valid_brute_force(m, depth)]
    for n in range(1, 1100):
        v = UNet2015.valid_input_size(n, depth)
        assert v >= n and UNet2015.is_valid_input_size(v, depth) and _valid_brute_force(v, depth)
        assert not any(_valid_brute_force(m, depth) for m in range(n, v)), (n, v)
        assert UNet2015.is_valid_input_size(n, depth) == (n in valid)
    # The valid sizes are 2**depth·k + c, and the border is the same for all of them.
    step = 2**depth
    assert all(b - a == step for a, b in itertools.pairwise(valid))
    border = UNet2015.border(depth)
    assert all(UNet2015.output_size(v, depth) == v - 2 * border for v in valid)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_output_size_matches_the_network(depth):
    model = UNet2015(base_channels=2, depth=depth).eval()
    smallest = UNet2015.valid_input_size(1, depth)
    for n in (smallest, smallest + 2**depth):
        with torch.no_grad():
            out = model(torch.randn(1, 1, n, n))
        assert out.shape[-2:] == (UNet2015.output_size(n, depth),) * 2
    with pytest.raises(InputSizeError):
        model(torch.randn(1, 1, smallest - 1, smallest))  # one below the smallest valid size


def test_instance_methods_use_the_models_depth():
    model = UNet2015(base_channels=2, depth=3)
    assert model.border() == UNet2015.border(depth=3) == 44
    assert model.output_size(172) == UNet2015.output_size(172, depth=3)
    assert model.valid_input_size(170) == UNet2015.valid_input_size(170, depth=3) == 172
    assert model.output_size(572, depth=4) == 388  # an explicit depth still wins
    assert model.output_size(580) == 580 - 2 * 44  # valid for depth 3 ...
    with pytest.raises(InputSizeError):
        UNet2015.output_size(580)  # ... but not for the class default, depth 4


def test_invalid_size_error_names_the_nearest_valid_sizes():
    with pytest.raises(InputSizeError) as info:
        UNet2015.output_size(570)
    message = str(info.value)
    assert "570" in message and "556 and 572" in message
    assert "16k + 124" in message and "valid_input_size" in message and "mirror-pad" in message
    with pytest.raises(InputSizeError, match=r"smallest valid size is 188"):
        UNet2015.output_size(100)

    model = UNet2015(base_channels=2)
    with pytest.raises(InputSizeError, match=r"input height 570 .* 556 and 572"):
        model(torch.zeros(1, 1, 570, 572))
    with pytest.raises(InputSizeError, match=r"input width 590 .* 588 and 604"):
        model(torch.zeros(1, 1, 572, 590))
    with pytest.raises(InputSizeError, match=r"in_channels"):
        model(torch.zeros(1, 3, 572, 572))


def test_bad_options():
    for options in ({"depth": 0}, {"depth": 2.0}, {"base_channels": 0}, {"classes": -1}):
        with pytest.raises(ConfigError):
            UNet2015(**options)
    with pytest.raises(ConfigError, match="did you mean"):
        UNet2015(base_channel=8)


# -- forward -----------------------------------------------------------------------------------------
def test_non_square_input():
    assert UNet2015.is_valid_input_size(572) and UNet2015.is_valid_input_size(732)
    model = UNet2015(in_channels=3, classes=5, base_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 572, 732))
    assert out.shape == (1, 5, 388, 548)


def test_center_crop_takes_the_middle():
    x = torch.arange(8 * 10, dtype=torch.float32).reshape(1, 1, 8, 10)
    torch.testing.assert_close(center_crop(x, (4, 2)), x[..., 2:6, 4:6])
    torch.testing.assert_close(center_crop(x, (8, 10)), x)
    with pytest.raises(InputSizeError):
        center_crop(x, (9, 2))


def _symmetrise(model: nn.Module) -> None:
    """Make every kernel mirror-symmetric left-right, so a correct U-Net commutes with a flip."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)


def _flip_error(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x.flip(-1)) - model(x).flip(-1)).abs().max().item()


def test_copy_crop_is_centred(monkeypatch):
    # With left-right symmetric kernels the network commutes with a left-right flip only if
    # every skip feature is cropped from its exact middle (any other offset breaks the symmetry).
    torch.manual_seed(0)
    model = UNet2015(base_channels=4, depth=3).eval()
    _symmetrise(model)
    x = torch.randn(1, 1, 172, 188)
    assert _flip_error(model, x) < 1e-4

    def corner_crop(feature: torch.Tensor, size) -> torch.Tensor:
        return feature[..., : size[0], : size[1]]

    monkeypatch.setattr(unet2015_module, "center_crop", corner_crop)
    assert _flip_error(model, x) > 1e-3  # the check above can fail


def test_forward_backward_is_finite():
    torch.manual_seed(0)
    model = UNet2015(base_channels=8).train()
    x = torch.randn(2, 1, 188, 204)
    target = torch.randint(0, 2, (2, 4, 20))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_batchnorm_variant_trains_with_batch_size_one():
    model = UNet2015(base_channels=4, batchnorm=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 18  # one per 3×3 conv
    assert all(m.bias is None for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3))
    out = model(torch.randn(1, 1, 188, 188))
    out.mean().backward()
    assert out.shape == (1, 2, 4, 4) and torch.isfinite(out).all()
    assert all(bn.num_batches_tracked.item() == 1 for bn in bns)


def test_activation_and_forward_padded():
    model = UNet2015(base_channels=2, classes=3, activation="softmax").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 188, 188))
    torch.testing.assert_close(out.sum(1), torch.ones(1, 4, 4))
    with pytest.raises(NotImplementedError, match="does not pad"):
        model.forward_padded(torch.randn(1, 1, 188, 188))


# -- registry and saving ----------------------------------------------------------------------------
def test_registered_and_save_pretrained_round_trip(tmp_path):
    model = create_model("unet2015", in_channels=2, classes=3, base_channels=4, depth=3, batchnorm=True)
    assert type(model) is UNet2015
    model.train()
    model(torch.randn(2, 2, 172, 172))  # move the BatchNorm running statistics off their defaults
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    loaded = from_pretrained(tmp_path / "saved").eval()
    assert type(loaded) is UNet2015 and loaded.config == model.config and loaded.depth == 3
    x = torch.randn(1, 2, 188, 172)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
