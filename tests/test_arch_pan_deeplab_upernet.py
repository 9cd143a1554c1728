"""PAN, DeepLabV3 and UPerNet: equal to segmentation_models_pytorch 0.6 once its weights are copied in, any size
and batch size 1 in train mode, options and their errors (plus DeepLabV3Plus's decoder_aspp_separable)."""

from __future__ import annotations

import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.models.blocks import PooledBatchNorm2d, PooledInstanceNorm2d
from pixelwise.models.deeplab import DeepLabV3, DeepLabV3Plus
from pixelwise.models.pan import PAN
from pixelwise.models.registry import create_model, from_pretrained, get_model_class
from pixelwise.models.upernet import UPerNet

SMP = {PAN: smp.PAN, DeepLabV3: smp.DeepLabV3, UPerNet: smp.UPerNet}
# SMP's module order: encoder, decoder, segmentation head, classification head; ours registers the
# classification head (aux_params) before the segmentation head, so ours is read in SMP's order.
OUR_ORDER = ("encoder.", "decoder.", "head.", "classification_head.")


def ordered_state(model: nn.Module, prefixes: tuple[str, ...] | None = None) -> list[tuple[str, torch.Tensor]]:
    items = list(model.state_dict().items())
    if prefixes is None:
        return items
    return [item for prefix in prefixes for item in items if item[0].startswith(prefix)]


def copy_positionally(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s state dict into ``target`` entry by entry, in order, checking every shape."""
    theirs, ours = ordered_state(source), ordered_state(target, OUR_ORDER)
    assert len(theirs) == len(ours) == len(target.state_dict())
    with torch.no_grad():
        for (their_key, value), (our_key, own) in zip(theirs, ours, strict=True):
            assert value.shape == own.shape, (their_key, our_key)
            own.copy_(value)


def align_dilation_to_smp(model: nn.Module) -> None:
    """SMP's own ResNet encoders dilate every 3×3 conv of a dilated stage; timm keeps the first block's first
    conv at the previous stage's dilation. Give ours SMP's pattern (what a converter of SMP's "resnet*"
    checkpoints has to do for dilated models)."""
    for name, stage in model.encoder.named_modules():
        if not name.split(".")[-1].startswith("layer"):
            continue
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
        dilation = max(conv.dilation[0] for conv in convs)
        for conv in convs:
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (ours, our encoder, SMP's encoder, options, two input sizes SMP accepts)
slow = pytest.mark.slow
SMP_CASES = [
    (PAN, "resnet18", "resnet18", {}, [(128, 128), (128, 192)]),  # SMP's PAN needs a deepest map of 8×8
    (DeepLabV3, "resnet18", "resnet18", {"decoder_channels": 64}, [(64, 64), (96, 64)]),
    (
        DeepLabV3,
        "efficientnet_b0",
        "tu-efficientnet_b0",
        {"decoder_channels": 64, "decoder_aspp_separable": True},
        [(64, 64), (64, 96)],
    ),
    (UPerNet, "resnet18", "resnet18", {"decoder_channels": 64, "aux_params": {"classes": 4}}, [(64, 64), (96, 64)]),
    (UPerNet, "efficientnet_b0", "tu-efficientnet_b0", {"decoder_channels": 32}, [(64, 64), (64, 96)]),
    pytest.param(
        PAN,
        "resnet18",
        "resnet18",
        {"encoder_output_stride": 32, "decoder_interpolation": "nearest"},
        [(256, 256)],
        marks=slow,
    ),
    pytest.param(PAN, "efficientnet_b0", "tu-efficientnet_b0", {"in_channels": 1}, [(128, 160)], marks=slow),
    pytest.param(
        DeepLabV3, "resnet18", "tu-resnet18", {"encoder_output_stride": 16, "encoder_depth": 4}, [(48, 80)], marks=slow
    ),
    pytest.param(
        DeepLabV3, "efficientnet_b0", "tu-efficientnet_b0", {"aux_params": {"classes": 3}}, [(64, 64)], marks=slow
    ),
    pytest.param(UPerNet, "resnet18", "resnet18", {}, [(64, 64)], marks=slow),
    pytest.param(
        UPerNet, "convnext_atto", "tu-convnext_atto", {"decoder_use_norm": "identity"}, [(96, 64)], marks=slow
    ),
]


def _case_id(case) -> str:
    cls, _, smp_encoder, options, _ = case.values if hasattr(case, "values") else case
    return f"{cls.__name__}-{smp_encoder}-{'-'.join(options) or 'default'}"


@pytest.mark.parametrize(
    ("cls", "encoder", "smp_encoder", "options", "sizes"),
    SMP_CASES,
    ids=[_case_id(case) for case in SMP_CASES],
)
def test_equals_smp_after_copying_its_weights(cls, encoder, smp_encoder, options, sizes):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SMP's notices about its encoders
        reference = SMP[cls](smp_encoder, encoder_weights=None, classes=3, **options).eval()
    model = cls(encoder, classes=3, **options).eval()
    assert n_params(model) == n_params(reference)
    copy_positionally(reference, model)
    if not smp_encoder.startswith("tu-") and model.encoder.output_stride < 2**model.encoder.depth:
        align_dilation_to_smp(model)
    for height, width in sizes:
        x = torch.randn(2, options.get("in_channels", 3), height, width)
        with torch.no_grad():
            expected, got = reference(x), model(x)
        if "aux_params" in options:
            torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
            expected, got = expected[0], got[0]
        assert got.shape == (2, 3, height, width)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_smp_resnet_dilation_differs_from_timm_without_alignment():
    """Why :func:`align_dilation_to_smp` exists: the same weights give other outputs when dilated the timm way."""
    torch.manual_seed(0)
    reference = smp.DeepLabV3("resnet18", encoder_weights=None, decoder_channels=32).eval()
    model = DeepLabV3("resnet18", decoder_channels=32).eval()
    copy_positionally(reference, model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference(x), atol=1e-3)


def train_step(model: nn.Module, height: int = 97, width: int = 131) -> None:
    """Forward + backward in train mode with batch size 1; check shapes and that every decoder weight learns."""
    torch.manual_seed(0)
    model.train()
    output = model(torch.randn(1, model.in_channels, height, width))
    masks, labels = output if isinstance(output, tuple) else (output, None)
    assert masks.shape == (1, model.classes, height, width) and torch.isfinite(masks).all()
    loss = masks.square().mean() + (labels.square().mean() if labels is not None else 0)
    loss.backward()
    for name, parameter in model.named_parameters():
        if not name.startswith("encoder."):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert next(model.encoder.parameters()).grad is not None


TRAIN_CASES = [
    (PAN, "resnet18", {"in_channels": 1}),
    (PAN, "efficientnet_b0", {"in_channels": 4, "aux_params": {"classes": 2, "pooling": "max"}}),
    (PAN, "convnext_atto", {"encoder_output_stride": 32}),
    (DeepLabV3, "resnet18", {"in_channels": 4, "decoder_channels": 32}),
    (
        DeepLabV3,
        "efficientnet_b0",
        {"decoder_channels": 32, "decoder_aspp_separable": True, "aux_params": {"classes": 2}},
    ),
    (UPerNet, "resnet18", {"in_channels": 1, "decoder_channels": 32, "aux_params": {"classes": 5}}),
    (UPerNet, "efficientnet_b0", {"decoder_channels": 32}),
    (UPerNet, "convnext_atto", {"in_channels": 4, "decoder_channels": 32}),
]


@pytest.mark.parametrize(
    ("cls", "encoder", "options"), TRAIN_CASES, ids=[f"{c.__name__}-{e}-{'-'.join(o)}" for c, e, o in TRAIN_CASES]
)
def test_train_step_odd_size_batch_one(cls, encoder, options):
    train_step(cls(encoder, classes=3, **options))


@pytest.mark.parametrize(
    "model",
    [
        lambda: PAN("resnet18", encoder_depth=3, classes=2),
        lambda: DeepLabV3("resnet18", encoder_depth=4, decoder_channels=16, classes=2),
        lambda: UPerNet("resnet18", encoder_depth=3, decoder_channels=16, decoder_use_norm="instancenorm", classes=2),
        lambda: UPerNet("resnet18", encoder_depth=3, decoder_channels=16, decoder_use_norm="layernorm", classes=2),
    ],
    ids=["pan-depth3", "deeplabv3-depth4", "upernet-instancenorm", "upernet-layernorm"],
)
def test_tiny_inputs_train_with_batch_one(model):
    """Maps pooled to 1×1 (and PAN's deepest map, padded to 8×8) must train with one image."""
    train_step(model(), 9, 13)


def test_pooled_norms():
    norm = PooledBatchNorm2d(4).train()
    norm(torch.randn(1, 4, 1, 1))  # nn.BatchNorm2d raises here
    assert norm.num_batches_tracked == 0 and torch.equal(norm.running_mean, torch.zeros(4))
    norm(torch.randn(2, 4, 1, 1) + 3)  # two values per channel: ordinary batch statistics
    assert norm.num_batches_tracked == 1 and (norm.running_mean > 0).all()
    instance = PooledInstanceNorm2d(4, affine=True)
    with torch.no_grad():
        instance.bias.fill_(0.5)
    assert torch.equal(instance(torch.randn(1, 4, 1, 1)), torch.full((1, 4, 1, 1), 0.5))
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(instance(x), nn.InstanceNorm2d(4, affine=True)(x) + 0.5)


def test_pooling_branches_use_pooled_norms():
    deeplab = DeepLabV3("resnet18", encoder_depth=3, decoder_channels=16)
    assert isinstance(deeplab.decoder[0].branches[-1][1][1], PooledBatchNorm2d)
    upernet = UPerNet("resnet18", encoder_depth=3, decoder_channels=16)
    assert all(isinstance(branch[1][1], PooledBatchNorm2d) for branch in upernet.decoder.ppm.branches)
    pan = PAN("resnet18", encoder_depth=3)
    assert isinstance(pan.decoder.fpa.global_branch[1][1], PooledBatchNorm2d)
    assert all(isinstance(gau.channel_attention[1][1], PooledBatchNorm2d) for gau in pan.decoder.gaus)


def test_deeplabv3plus_separable_aspp():
    plain = DeepLabV3Plus("resnet18", encoder_depth=3, decoder_channels=32, classes=2)
    separable = DeepLabV3Plus("resnet18", encoder_depth=3, decoder_channels=32, classes=2, decoder_aspp_separable=True)
    assert n_params(separable) < n_params(plain)
    branch = separable.decoder.aspp[0].branches[1]
    assert branch[0].groups == branch[0].in_channels == 128 and branch[0].dilation == (12, 12)
    train_step(separable, 45, 37)
    labelled = DeepLabV3Plus("resnet18", encoder_depth=3, classes=2, aux_params={"classes": 3})
    assert labelled.eval()(torch.randn(1, 3, 32, 32))[1].shape == (1, 3)


def test_defaults_and_registry():
    assert get_model_class("pan") is PAN and get_model_class("upernet") is UPerNet
    assert get_model_class("deeplabv3") is DeepLabV3 and get_model_class("deeplabv3plus") is DeepLabV3Plus
    assert DeepLabV3("resnet18").encoder.reductions[-1] == 8  # SMP 0.6's default output stride
    assert PAN("resnet18").encoder.reductions[-1] == 16
    model = create_model("upernet", encoder_name="resnet18", encoder_depth=3, decoder_channels=16, classes=2)
    assert isinstance(model, UPerNet) and model.head[-1].align_corners


def test_save_and_reload(tmp_path):
    for model in (
        PAN("resnet18", encoder_depth=3, decoder_channels=8, classes=2),
        DeepLabV3("resnet18", encoder_depth=3, decoder_channels=8, decoder_aspp_separable=True, classes=2),
        UPerNet("resnet18", encoder_depth=3, decoder_channels=8, decoder_use_norm="identity", classes=2),
    ):
        model.eval()
        x = torch.randn(1, 3, 40, 24)
        loaded = from_pretrained(model.save_pretrained(tmp_path / model.arch_name)).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: PAN("resnet18", encoder_output_stride=8), "encoder_output_stride"),
        (lambda: PAN("resnet18", decoder_interpolation="bilinaer"), "bilinear"),
        (lambda: PAN("resnet18", upsampling=2), "upsampling=2"),
        (lambda: PAN("resnet18", encoder_depth=2), "encoder_depth >= 3"),
        (lambda: DeepLabV3("resnet18", encoder_output_stride=4), "encoder_output_stride"),
        (lambda: DeepLabV3("resnet18", decoder_atrous_rates=(0, 6)), "decoder_atrous_rates"),
        (lambda: DeepLabV3("resnet18", upsampling=4), "upsampling=4"),
        (lambda: DeepLabV3("resnet18", decoder_aspp_separable="yes"), "decoder_aspp_separable"),
        (lambda: DeepLabV3Plus("resnet18", upsampling=8), "upsampling=8"),
        (lambda: UPerNet("resnet18", decoder_use_norm="groupnorm"), "decoder_use_norm"),
        (lambda: UPerNet("resnet18", encoder_depth=2), "encoder_depth >= 3"),
        (lambda: UPerNet("resnet18", aux_params={"classes": 2, "pool": "avg"}), "pool"),
        (lambda: UPerNet("resnet18", decoder_chanels=64), "decoder_channels"),
    ],
)
def test_bad_options_raise_config_error(build, match):
    with pytest.raises(ConfigError, match=match):
        build()
