"""FCN-32s/16s/8s and SegNet: shapes, gradients, the bilinear-initialised upsampling, FCN's zero-initialised
skips, and SegNet's max-unpooling with the encoder's pooling indices."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.encoders import feature_at
from pixelwise.models.fcn import FCN8s, FCN16s, FCN32s, FCNDecoder
from pixelwise.models.registry import create_model, from_pretrained, get_model_class
from pixelwise.models.segnet import SegNet, pooling_indices, unpool_with_indices

FCNS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s}
# VGG is slow on CPU, so it gets a smaller input.
SIZES = {"resnet18": (45, 67), "vgg16": (33, 35), "vgg16_bn": (33, 35)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _check_forward_backward(model: nn.Module, encoder: str, classes: int) -> None:
    height, width = SIZES[encoder]
    x = torch.randn(1, 3, height, width, requires_grad=True)
    y = model(x)
    assert y.shape == (1, classes, height, width)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# -- FCN -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet18", "vgg16"])
@pytest.mark.parametrize("arch", list(FCNS))
def test_fcn_forward_backward(arch, encoder):
    classes = {"fcn32s": 1, "fcn16s": 2, "fcn8s": 3}[arch]
    model = FCNS[arch](encoder, classes=classes)  # encoder_name is the first positional argument
    assert get_model_class(arch) is FCNS[arch] and model.arch_name == arch
    assert model.input_multiple == 32 and model.config["encoder_name"] == encoder
    _check_forward_backward(model, encoder, classes)


def test_fcn_default_encoder_is_vgg16():
    for cls in FCNS.values():
        assert inspect.signature(cls).parameters["encoder_name"].default == "vgg16"


def test_fcn_score_layers():
    model = FCN8s("resnet18", classes=5)
    score = model.decoder.score
    assert len(score) == 3
    channels = dict(zip(model.encoder.reductions, model.encoder.out_channels, strict=True))
    for layer, stride in zip(score, (32, 16, 8), strict=True):
        assert isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1)
        assert (layer.in_channels, layer.out_channels) == (channels[stride], 5)
    # skip scores start at zero (paper), the main score layer does not
    assert all(not layer.weight.any() and not layer.bias.any() for layer in score[1:])
    assert score[0].weight.abs().sum() > 0
    assert len(FCN16s("resnet18").decoder.score) == 2
    assert len(FCN32s("resnet18").decoder.score) == 1


@pytest.mark.parametrize(("cls", "n_upsample"), [(FCN32s, 0), (FCN16s, 1), (FCN8s, 2)])
def test_fcn_upsampling_is_learnable_bilinear_transposed_conv(cls, n_upsample):
    model = cls("resnet18", classes=3)
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == n_upsample  # the final upsampling is fixed interpolation, no weights
    for layer in transposed:
        assert layer.stride == (2, 2) and layer.weight.requires_grad
        x = torch.randn(2, 3, 6, 7)
        with torch.no_grad():
            up = layer(x)
        expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        assert up.shape == expected.shape == (2, 3, 12, 14)
        torch.testing.assert_close(up[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])  # interior; borders differ
    if n_upsample:  # trainable: one optimiser step changes them
        x = torch.randn(1, 3, 64, 64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        before = transposed[0].weight.detach().clone()
        model(x).square().mean().backward()
        optimizer.step()
        assert not torch.equal(before, transposed[0].weight)


@pytest.mark.parametrize(("coarse_cls", "fine_cls"), [(FCN32s, FCN16s), (FCN16s, FCN8s)])
def test_fcn_finer_model_starts_as_coarser_one(coarse_cls, fine_cls):
    coarse, fine = coarse_cls("resnet18", classes=3).eval(), fine_cls("resnet18", classes=3).eval()
    result = fine.load_state_dict(coarse.state_dict(), strict=False)
    assert not result.unexpected_keys
    n = len(coarse.decoder.score)  # the new skip score layer and the ×2 upsampling feeding it
    assert sorted(result.missing_keys) == sorted(
        [f"decoder.score.{n}.weight", f"decoder.score.{n}.bias", f"decoder.upsample.{n - 1}.weight"]
    )
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = coarse.encoder(x)
        coarse_scores = coarse.decoder(features)
        upsampled = fine.decoder.upsample[n - 1](coarse_scores)
        torch.testing.assert_close(fine.decoder(features), upsampled)
        expected = F.interpolate(upsampled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(fine(x), expected)
        # the test can fail: a nonzero skip score changes the prediction
        fine.decoder.score[n].bias.fill_(1.0)
        assert not torch.allclose(fine.decoder(features), upsampled)


def test_fcn_fc_block():
    plain = FCN32s("resnet18", classes=2)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    model = FCN32s("resnet18", classes=2, fc_channels=64, dropout=0.2)
    convs = [m for m in model.decoder.fc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(512, 64, (7, 7)), (64, 64, (1, 1))]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert model.decoder.score[0].in_channels == 64
    _check_forward_backward(model, "resnet18", 2)


def test_fcn_config_errors():
    with pytest.raises(ConfigError, match="encoder_depth must be 5"):
        FCN8s("resnet18", encoder_depth=4)
    with pytest.raises(ConfigError, match="fc_channels"):
        FCN8s("resnet18", fc_channels=0)
    with pytest.raises(ConfigError, match=r"did you mean 'classes'"):
        FCN8s("resnet18", clases=2)
    # no timm encoder with a stride-32 feature lacks one at stride 8, so hand the decoder such feature levels
    encoder = types.SimpleNamespace(out_channels=[64, 256, 512], reductions=[4, 16, 32])
    with pytest.raises(ConfigError, match=r"\[4, 16, 32\]"):
        FCNDecoder(encoder.out_channels, encoder.reductions, 2, (32, 16, 8))
    FCNDecoder(encoder.out_channels, encoder.reductions, 2, (32, 16))  # FCN-16s is fine


def test_fcn_save_and_load(tmp_path):
    model = create_model("fcn16s", encoder_name="resnet18", classes=2, fc_channels=32).eval()
    assert type(model) is FCN16s
    assert model.config == {
        "encoder_name": "resnet18",
        "encoder_depth": 5,
        "encoder_weights": None,
        "encoder_freeze": False,
        "fc_channels": 32,
        "dropout": 0.5,
        "in_channels": 3,
        "classes": 2,
        "activation": None,
    }
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded) is FCN16s
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


# -- SegNet --------------------------------------------------------------------------------------------------------


def _manual_unpool(x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Reference: put each value of ``x`` at the argmax of its 2×2 window of ``feature``, by loops."""
    out = torch.zeros(feature.shape)
    n, c, h, w = x.shape
    for b in range(n):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    window = feature[b, k, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    di, dj = divmod(int(window.argmax()), 2)
                    out[b, k, 2 * i + di, 2 * j + dj] = x[b, k, i, j]
    return out


@pytest.mark.parametrize("size", [(6, 8), (7, 9)])
def test_unpool_with_indices_places_values_at_the_maxima(size):
    feature = torch.randn(2, 3, *size)  # continuous values: no ties
    x = torch.randn(2, 3, size[0] // 2, size[1] // 2)
    out = unpool_with_indices(x, feature)
    assert out.shape == feature.shape
    torch.testing.assert_close(out, _manual_unpool(x, feature), rtol=0, atol=0)
    assert (out != 0).sum() == x.numel()  # exactly one nonzero per window
    if size[0] % 2:
        assert not out[..., -1, :].any()  # the row max-pooling dropped stays zero
    with pytest.raises(ValueError, match="cannot unpool"):
        unpool_with_indices(torch.randn(2, 3, 2, 2), feature)


def test_pooling_indices_have_no_gradient():
    feature = torch.randn(1, 2, 4, 4, requires_grad=True)
    indices = pooling_indices(feature)
    assert indices.dtype == torch.int64 and not indices.requires_grad and indices.shape == (1, 2, 2, 2)


@pytest.mark.parametrize("encoder", ["resnet18", "vgg16_bn"])
def test_segnet_forward_backward(encoder):
    model = SegNet(encoder, classes=3)
    assert get_model_class("segnet") is SegNet and model.input_multiple == 32
    _check_forward_backward(model, encoder, 3)
    x = torch.randn(2, 3, 31, 33)
    assert model.eval()(x).shape == (2, 3, 31, 33)


@pytest.fixture
def vgg_segnet():
    return SegNet("vgg16_bn", classes=2).eval()


def test_segnet_vgg_decoder_mirrors_encoder(vgg_segnet):
    assert inspect.signature(SegNet).parameters["encoder_name"].default == "vgg16_bn"
    stages = vgg_segnet.decoder.stages
    assert len(stages) == 5 and all(stage.unpools for stage in stages)  # VGG has a feature at every stride
    assert all(isinstance(stage.project, nn.Identity) for stage in stages)
    first_convs = [stage.convs[0][0] for stage in stages]
    last_convs = [stage.convs[-1][0] for stage in stages]
    # no skip concatenation: each stage's first conv sees only the unpooled channels
    assert [c.in_channels for c in first_convs] == [512, 512, 256, 128, 64]
    assert [c.out_channels for c in last_convs] == [512, 256, 128, 64, 64]
    assert vgg_segnet.head[0].in_channels == 64


def test_segnet_vgg_uses_the_encoders_own_pooling_indices(vgg_segnet):
    """The indices SegNet computes are those of VGG's own max-pool layers, and the decoder's unpooled maps are
    nonzero only where the encoder's pools found their maxima."""
    encoder = vgg_segnet.encoder
    pools = [m for m in encoder.model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5
    pool_io: list[tuple[torch.Tensor, torch.Tensor]] = []
    unpooled: list[torch.Tensor] = []
    hooks = [p.register_forward_hook(lambda m, i, o: pool_io.append((i[0].clone(), o.clone()))) for p in pools]
    hooks += [
        stage.convs.register_forward_hook(lambda m, i, o: unpooled.append(i[0].clone()))
        for stage in vgg_segnet.decoder.stages
    ]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = encoder(x)
        vgg_segnet(x)
    for hook in hooks:
        hook.remove()
    pool_io = pool_io[: len(pools)]  # the first pass: encoder(x)
    assert len(unpooled) == 5
    for k, (pool_in, pool_out) in enumerate(pool_io):
        stride = 2**k
        feature = feature_at(features, encoder.reductions, stride)
        # the feature SegNet takes indices from is exactly what the encoder's k-th pool sees
        assert torch.equal(feature, pool_in)
        indices = pooling_indices(feature)
        gathered = feature.flatten(2).gather(2, indices.flatten(2)).view_as(pool_out)
        assert torch.equal(gathered, pool_out)
        # decoder: the stage arriving at this stride unpools onto the encoder pool's argmax positions only
        unpooled_map = unpooled[len(unpooled) - 1 - k]
        assert unpooled_map.shape == pool_in.shape
        is_max = pool_in == F.interpolate(pool_out, size=pool_in.shape[-2:], mode="nearest")
        assert not (unpooled_map != 0)[~is_max].any()
        assert (unpooled_map != 0).sum() > 0


def test_segnet_resnet_projects_and_falls_back():
    model = SegNet("resnet18", classes=2, decoder_channels=32, fallback_upsampling="nearest")
    stages = model.decoder.stages
    assert [stage.unpools for stage in stages] == [True, True, True, True, False]  # resnet: no stride-1 feature
    assert isinstance(stages[0].project[0], nn.Conv2d) and stages[0].project[0].kernel_size == (1, 1)
    assert (stages[0].project[0].in_channels, stages[0].project[0].out_channels) == (512, 256)
    assert isinstance(stages[-1].upsample, nn.Upsample) and stages[-1].upsample.mode == "nearest"
    assert [stage.convs[-1][0].out_channels for stage in stages] == [128, 64, 64, 32, 32]
    assert model.head[0].in_channels == 32


def test_segnet_convs_per_stage_and_errors():
    model = SegNet("resnet18", decoder_convs_per_stage=(3, 3, 3, 2, 1))
    assert [len(stage.convs) for stage in model.decoder.stages] == [3, 3, 3, 2, 1]
    assert model.config["decoder_convs_per_stage"] == (3, 3, 3, 2, 1)
    with pytest.raises(ConfigError, match="decoder_convs_per_stage"):
        SegNet("resnet18", decoder_convs_per_stage=(2, 2))
    with pytest.raises(ConfigError, match="fallback_upsampling"):
        SegNet("resnet18", fallback_upsampling="unpool")
    with pytest.raises(ConfigError, match="decoder_channels"):
        SegNet("resnet18", decoder_channels=0)
