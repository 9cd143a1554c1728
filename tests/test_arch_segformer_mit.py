"""Mix Transformer encoders (mit_b0 … mit_b5) and Segformer, against segmentation_models_pytorch 0.6."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import mix_transformer as smp_mit
from torch import nn

from pixelwise.errors import ConfigError, WeightsError
from pixelwise.models import FPN, Segformer, Unet
from pixelwise.models.encoders import build_encoder
from pixelwise.models.mit import MIT_CONFIGS, MixTransformerEncoder, mit_state_dict_from_smp

MIT_NAMES = list(MIT_CONFIGS)


@pytest.fixture
def smp_without_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip SMP's MiT weight initialisation (truncated normals, applied again at every nesting level), which
    takes seconds: the structure is unchanged and PyTorch's default initialisation still gives random weights."""
    for cls in (smp_mit.Mlp, smp_mit.Attention, smp_mit.Block, smp_mit.OverlapPatchEmbed, smp_mit.MixVisionTransformer):
        monkeypatch.setattr(cls, "_init_weights", lambda self, module: None)


def shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def from_smp_model(smp_state: Mapping[str, torch.Tensor], ours: nn.Module) -> dict[str, torch.Tensor]:
    """SMP Segformer keys → ours: MiT through mit_state_dict_from_smp, a timm encoder by its unique key
    suffix (ours wraps it in ``encoder.model...``), the decoder and heads by name."""
    state = mit_state_dict_from_smp(smp_state, prefix="encoder.")
    own = list(ours.state_dict())
    renames = {
        "decoder.mlp_stage.": "decoder.projections.",
        "decoder.fuse_stage.": "decoder.fuse.",
        "segmentation_head.": "head.",
    }
    first = next(key for key in state if key.startswith("encoder."))
    # where the timm model sits in our encoder: the shortest prefix under which SMP's first encoder key exists
    wrapper = min((k[: -len(first) + len("encoder.")] for k in own if k.endswith(first[len("encoder.") :])), key=len)
    converted = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :].replace("linear.", "")
        if key.startswith("encoder."):
            key = wrapper + key[len("encoder.") :]
        converted[key] = value
    return converted


@pytest.mark.parametrize("name", MIT_NAMES)
def test_mit_structure_equals_smp(name: str, smp_without_init: None) -> None:
    reference = smp.encoders.get_encoder(name, weights=None)
    with torch.device("meta"):
        ours = MixTransformerEncoder(name)
    assert n_parameters(ours) == n_parameters(reference)
    assert shapes(mit_state_dict_from_smp(reference.state_dict())) == shapes(ours.state_dict())
    assert ours.out_channels == [c for c in reference.out_channels if c][1:]  # SMP's: input, empty stride 2, ...
    assert ours.reductions == [4, 8, 16, 32]


def test_mit_features_equal_smp_at_any_size(smp_without_init: None) -> None:
    reference = smp.encoders.get_encoder("mit_b0", weights=None).eval()
    ours = MixTransformerEncoder("mit_b0").eval()
    ours.load_state_dict(mit_state_dict_from_smp(reference.state_dict()))
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        expected, got = reference(x)[2:], ours(x)
    assert [f.shape[-2:] for f in got] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder", ["mit_b0", "resnet18"])
def test_segformer_equals_smp(encoder: str, smp_without_init: None) -> None:
    aux = {"classes": 3, "dropout": 0.5}
    reference = smp.Segformer(encoder, encoder_weights=None, classes=2, aux_params=aux).eval()
    ours = Segformer(encoder, classes=2, aux_params=aux).eval()
    assert n_parameters(ours) == n_parameters(reference)
    ours.load_state_dict(from_smp_model(reference.state_dict(), ours))
    for height, width in [(64, 64), (96, 128)]:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            (expected, expected_labels), (got, labels) = reference(x), ours(x)
        assert got.shape == (2, 2, height, width)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(labels, expected_labels, atol=1e-5, rtol=1e-5)


def train_step(model: nn.Module, height: int = 97, width: int = 131) -> None:
    """Batch 1, train mode, forward + backward at an odd size: shapes and finite gradients everywhere."""
    model.train()
    output = model(torch.randn(1, model.in_channels, height, width))
    masks, labels = output if isinstance(output, tuple) else (output, None)
    assert masks.shape == (1, model.classes, height, width)
    loss = masks.square().mean() + (0 if labels is None else labels.square().mean())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("in_channels", [1, 4])
def test_segformer_mit_trains_at_odd_size(in_channels: int) -> None:
    train_step(Segformer("mit_b0", in_channels=in_channels, classes=3, aux_params={"classes": 2}))


@pytest.mark.parametrize("encoder", ["resnet18", "convnext_atto"])
def test_segformer_with_other_encoders(encoder: str) -> None:
    train_step(Segformer(encoder, in_channels=4, classes=2, decoder_segmentation_channels=32))


@pytest.mark.parametrize("arch", [Unet, FPN])
def test_other_architectures_take_mit(arch: type[nn.Module]) -> None:
    model = arch(
        "mit_b0", in_channels=1, classes=2, **({"decoder_channels": (32, 16, 16, 8, 8)} if arch is Unet else {})
    )
    assert model.encoder.reductions == [4, 8, 16, 32]
    train_step(model)


def test_segformer_options_and_errors() -> None:
    assert Segformer().encoder.name == "resnet34"  # SMP 0.6's default
    model = Segformer("mit_b0", encoder_depth=4, upsampling=1).eval()
    assert model.encoder.reductions == [4, 8, 16]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 16, 16)  # no ×4: stride-4 scores, as SMP
    with pytest.raises(ConfigError, match="encoder_depth >= 3"):
        Segformer("resnet18", encoder_depth=2)
    with pytest.raises(ConfigError, match="encoder_depth 2 to 5"):
        MixTransformerEncoder("mit_b0", depth=1)


def test_mit_cannot_dilate_and_says_so() -> None:
    with pytest.warns(UserWarning, match="does not support dilation"):
        encoder = build_encoder("mit_b0", 3, 5, None, output_stride=16)
    assert encoder.output_stride == 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_encoder("mit_b0", 3, 3, None, output_stride=8)  # nothing to dilate at depth 3


def test_mit_weights_from_local_files(tmp_path, smp_without_init: None) -> None:
    reference = smp.encoders.get_encoder("mit_b0", weights=None).eval()
    smp_file = tmp_path / "mit_b0_smp.safetensors"
    save_file({**reference.state_dict(), "head.weight": torch.zeros(1000, 256)}, smp_file)  # as the SegFormer .pth
    x = torch.randn(1, 3, 64, 64)
    ours = build_encoder("mit_b0", 3, 5, str(smp_file)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[-1], reference(x)[-1], atol=1e-5, rtol=1e-5)
    own_file = tmp_path / "mit_b0.pth"
    torch.save(ours.state_dict(), own_file)
    shallow = build_encoder("mit_b0", 1, 3, own_file)  # pixelwise keys, 1 channel, deeper stages ignored
    assert shallow.stages[0].patch_embed.proj.weight.shape[1] == 1
    torch.testing.assert_close(shallow.stages[1].norm.weight, ours.stages[1].norm.weight)
    with pytest.raises(WeightsError, match="does not fit encoder 'mit_b1'"):
        build_encoder("mit_b1", 3, 2, own_file)  # wider stages
    with pytest.raises(ConfigError, match="local file"):
        build_encoder("mit_b0", 3, 5, "imagenet")


def test_mit_state_dict_from_smp_names() -> None:
    value = torch.zeros(1)
    state = {
        "encoder.block2.1.attn.sr.weight": value,
        "encoder.block2.1.attn.norm.bias": value,
        "encoder.block1.0.mlp.dwconv.dwconv.bias": value,
        "encoder.patch_embed3.proj.weight": value,
        "encoder.norm4.weight": value,
        "encoder.head.weight": value,
        "decoder.fuse_stage.0.weight": value,
    }
    assert list(mit_state_dict_from_smp(state, prefix="encoder.")) == [
        "encoder.stages.1.blocks.1.attn.reduce.weight",
        "encoder.stages.1.blocks.1.attn.reduce_norm.bias",
        "encoder.stages.0.blocks.0.mlp.dwconv.bias",
        "encoder.stages.2.patch_embed.proj.weight",
        "encoder.stages.3.norm.weight",
        "decoder.fuse_stage.0.weight",
    ]
