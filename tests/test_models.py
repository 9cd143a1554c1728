"""Every registered architecture × at least two encoders: shapes at odd sizes, gradients,
activations, freezing, input channels, batch size 1, and save/load."""

import pytest
import torch

import pixelwise
from pixelwise.models import create_model, list_models

# DPT takes only plain ViTs (tests/test_arch_dpt.py, tests/test_architecture_matrix.py); UNet2015 has no encoder
ENCODER_ARCHS = [a for a in list_models() if a not in ("unet2015", "dpt")]
# Two encoders for every architecture (a ResNet and an EfficientNet), plus each architecture's
# paper encoder where that is a third family.
ENCODERS = {arch: ["resnet18", "efficientnet_b0"] for arch in ENCODER_ARCHS}
for arch in ("fcn8s", "fcn16s", "fcn32s"):
    ENCODERS[arch] = [*ENCODERS.get(arch, []), "vgg16"]
CASES = [(arch, enc) for arch in ENCODER_ARCHS for enc in ENCODERS[arch]]


def small(arch: str, encoder: str = "resnet18", **options) -> pixelwise.SegmentationModel:
    return create_model(arch, encoder_name=encoder, **options)


@pytest.mark.parametrize(("arch", "encoder"), CASES)
def test_forward_backward_odd_size_batch_one(arch, encoder):
    model = small(arch, encoder, classes=3).train()
    x = torch.randn(1, 3, 97, 131)
    y = model(x)
    assert y.shape == (1, 3, 97, 131)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
@pytest.mark.parametrize("size", [(1, 1), (31, 33), (64, 64)])
def test_any_size_in_eval(arch, size):
    model = small(arch, classes=2).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 2, *size)


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
@pytest.mark.parametrize("in_channels", [1, 4, 13])
def test_in_channels(arch, in_channels):
    model = small(arch, in_channels=in_channels, classes=2).train()
    y = model(torch.randn(2, in_channels, 64, 96))
    assert y.shape == (2, 2, 64, 96)
    y.mean().backward()


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_wrong_channel_count_is_a_clear_error(arch):
    model = small(arch, in_channels=4)
    with pytest.raises(pixelwise.InputSizeError, match=r"expects input \[N, 4, H, W\].*in_channels=3"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_activations(arch):
    x = torch.randn(2, 3, 64, 64)
    softmax = small(arch, classes=4, activation="softmax").eval()
    with torch.no_grad():
        probs = softmax(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 64))
    sigmoid = small(arch, classes=1, activation="sigmoid").eval()
    with torch.no_grad():
        out = sigmoid(x)
    assert out.min() >= 0 and out.max() <= 1
    # the activation is applied to the same logits an activation-free model returns
    logits_model = small(arch, classes=4).eval()
    logits_model.load_state_dict(softmax.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(logits_model(x).softmax(1), probs)


def test_unknown_activation():
    with pytest.raises(pixelwise.ConfigError, match="unknown activation 'softmx'; did you mean 'softmax'"):
        pixelwise.Unet("resnet18", activation="softmx")


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_encoder_freeze_really_freezes(arch):
    model = small(arch, classes=2, encoder_freeze=True)
    model.train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training, "a frozen encoder stays in eval mode"
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    rest_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    assert any("running_mean" in k for k in encoder_before), "test needs an encoder with BatchNorm"
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, target = torch.randn(2, 3, 64, 64) * 3 + 1, torch.randint(0, 2, (2, 64, 64))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), f"encoder tensor {key} changed"
    changed = [k for k, v in model.state_dict().items() if k in rest_before and not torch.equal(v, rest_before[k])]
    assert changed, "the decoder must still train"
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.encoder.parameters()) and model.encoder.training


def test_unfrozen_batchnorm_stats_do_move():
    """The counterpart of the freeze test: it would pass vacuously if stats never moved."""
    model = small("unet", classes=2).train()
    before = _bn_stats(model.encoder)
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    after = _bn_stats(model.encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_keras_style_call():
    model = pixelwise.Unet("resnet50", classes=3, activation="softmax", encoder_weights=None, encoder_freeze=True)
    assert model.config["encoder_name"] == "resnet50" and model.encoder_frozen
    with torch.no_grad():
        y = model.eval()(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(y.sum(1), torch.ones(1, 64, 64))


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_encoder_depth(depth):
    model = pixelwise.Unet("resnet18", encoder_depth=depth, classes=2)
    assert model.encoder.reductions[-1] == 2**depth and model.input_multiple == 2**depth
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 2, 50, 70)


@pytest.mark.parametrize("encoder", ["resnet34", "resnet50", "vgg16", "mobilenetv3_large_100", "convnext_tiny"])
def test_more_encoders_with_unet(encoder):
    model = pixelwise.Unet(encoder, classes=2)
    y = model(torch.randn(1, 3, 45, 67))
    assert y.shape == (1, 2, 45, 67)
    y.mean().backward()


@pytest.mark.parametrize("upsampling", ["bilinear", "nearest", "transposed", "pixelshuffle"])
def test_unet_upsampling_modes(upsampling):
    model = pixelwise.Unet("resnet18", decoder_upsampling=upsampling, decoder_channels=(64, 32, 16, 16, 8), classes=2)
    assert model(torch.randn(1, 3, 45, 67)).shape == (1, 2, 45, 67)


def test_unet_upsampling_unknown_and_unpool_hint():
    with pytest.raises(pixelwise.ConfigError, match="did you mean 'transposed'"):
        pixelwise.Unet("resnet18", decoder_upsampling="transpose")
    with pytest.raises(pixelwise.ConfigError, match="SegNet"):
        pixelwise.Unet("resnet18", decoder_upsampling="unpool")


def test_decoder_channels_must_match_depth():
    with pytest.raises(pixelwise.ConfigError, match="decoder_channels has 2 entries but encoder_depth=5"):
        pixelwise.Unet("resnet18", decoder_channels=(32, 16))


@pytest.mark.parametrize("arch", [*ENCODER_ARCHS, "unet2015"])
def test_save_pretrained_round_trip(arch, tmp_path):
    options = {"base_channels": 8, "depth": 2} if arch == "unet2015" else {"encoder_name": "resnet18", "classes": 3}
    model = create_model(arch, **options).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = pixelwise.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model)
    size = 140 if arch == "unet2015" else 75
    x = torch.randn(1, model.in_channels, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_unet_full_resolution_stem_feeds_the_last_decoder_block(tmp_path):
    model = pixelwise.Unet(
        "resnet18", decoder_channels=(64, 32, 16, 16, 8), decoder_full_resolution_channels=6, classes=2
    ).eval()
    # ResNet has no stride-1 feature: without the stem the last block would see only its 16 input channels
    last_conv = next(m for m in model.decoder.blocks[-1].conv1.modules() if isinstance(m, torch.nn.Conv2d))
    assert last_conv.in_channels == 16 + 6
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 2, 45, 67)
        for parameter in model.full_resolution_stem.parameters():
            parameter.zero_()
        assert not torch.allclose(model(x), y)  # the stem's output really reaches the head
    model.save_pretrained(tmp_path / "m")
    assert pixelwise.from_pretrained(tmp_path / "m").full_resolution_stem is not None
