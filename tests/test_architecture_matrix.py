"""The architecture matrix of issue 20: every encoder-based architecture × a ResNet, an EfficientNet and a
transformer encoder, at an odd size with batch size 1 in train mode (forward + backward), 1 and 4 input
channels, with the ``aux_params`` head where segmentation_models_pytorch has one; and every architecture
through ``torch.compile`` (one graph, no breaks) and the ONNX export (checked against PyTorch)."""

import json

import pytest
import torch

import pixelwise
from pixelwise.errors import WeightsError
from pixelwise.inference.export import export_onnx
from pixelwise.models import create_model, list_models
from pixelwise.models.base import segmentation_output

ARCHS = [arch for arch in list_models() if arch not in ("unet2015", "dpt")]
SMP_ARCHS = {
    "unet",
    "unetplusplus",
    "manet",
    "linknet",
    "fpn",
    "pspnet",
    "pan",
    "deeplabv3",
    "deeplabv3plus",
    "upernet",
    "segformer",
    "dpt",
}
"""The architectures segmentation_models_pytorch 0.6 has (they take ``aux_params``)."""
SWIN = ("swin_tiny_patch4_window7_224", {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)})
"""A Swin transformer, shrunk through the keywords that pass through to timm."""
TRANSFORMERS = {"segformer": ("mit_b0", {}), "dpt": ("vit_tiny_patch16_224", {"depth": 4})}
"""The transformer encoder of each architecture whose paper uses another one than Swin."""
CNNS = [("resnet18", {}, 1), ("efficientnet_b0", {}, 4)]
"""(encoder, timm options, input channels): every encoder-based architecture takes both."""


def cases() -> list[tuple[str, str, dict, int]]:
    found = [(arch, name, options, channels) for arch in ARCHS for name, options, channels in CNNS]
    found += [(arch, *TRANSFORMERS.get(arch, SWIN), 3) for arch in [*ARCHS, "dpt"]]
    return found


def build(arch: str, encoder: str, options: dict, in_channels: int = 3) -> torch.nn.Module:
    aux = {"aux_params": {"classes": 2, "dropout": 0.5}} if arch in SMP_ARCHS else {}
    return create_model(arch, encoder, in_channels=in_channels, classes=3, **aux, **options)


@pytest.mark.parametrize(("arch", "encoder", "options", "in_channels"), cases(), ids=lambda v: str(v)[:24])
def test_odd_size_batch_one_trains(arch, encoder, options, in_channels):
    torch.manual_seed(0)
    model = build(arch, encoder, options, in_channels).train()
    output = model(torch.randn(1, in_channels, 97, 131))
    masks = segmentation_output(output)
    assert masks.shape == (1, 3, 97, 131) and torch.isfinite(masks).all()
    loss = masks.square().mean()
    if arch in SMP_ARCHS:
        labels = output[1]
        assert labels.shape == (1, 2)
        loss = loss + labels.square().mean()
    loss.backward()
    decoder = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    assert decoder and all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder)
    assert any(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize("arch", [*ARCHS, "dpt"])
def test_compiles_to_one_graph(arch):
    encoder, options = ("vit_tiny_patch16_224", {"depth": 4}) if arch == "dpt" else ("resnet18", {})
    model = create_model(arch, encoder, classes=3, **options).eval()
    x = torch.randn(1, 3, 64, 96)
    torch._dynamo.reset()  # every architecture shares SegmentationModel.forward: start from an empty cache
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


DPT_NOT_EXPORTABLE = pytest.mark.xfail(
    strict=True,
    reason="timm resamples a ViT's position embeddings to the input size with antialiased bicubic "
    "interpolation, which has no ONNX operator; segmentation_models_pytorch's DPT fails the same way",
)


@pytest.mark.parametrize("arch", [*ARCHS, pytest.param("dpt", marks=DPT_NOT_EXPORTABLE)])
def test_exports_to_onnx(arch, tmp_path):
    pytest.importorskip("onnxruntime")
    encoder, options = ("vit_tiny_patch16_224", {"depth": 4}) if arch == "dpt" else ("resnet18", {})
    model = create_model(arch, encoder, classes=3, **options).eval()
    # PAN pads inputs below 128 px for its attention pyramid: a trace at such a size would fix that padding
    sample = (128, 160) if arch == "pan" else (64, 96)
    report = export_onnx(model, tmp_path / "m.onnx", sample_size=sample)  # verified at another size, batch 2
    assert (tmp_path / "m.onnx").is_file() and report.verified_shape[0] == 2


@pytest.mark.parametrize(("arch", "refused"), [("fpn", True), ("linknet", True), ("pspnet", True), ("unet", False)])
def test_folders_saved_before_a_layout_change_are_refused(arch, refused, tmp_path):
    """FPN, Linknet and PSPNet took SMP's exact layers in 0.2.0: their 0.1.0 weights would load into layers
    that compute something else (PSPNet's even fit), so such folders are refused by name, never run."""
    create_model(arch, "resnet18", classes=2).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"pixelwise_version": "0.1.0"}))
    if not refused:
        assert type(pixelwise.from_pretrained(tmp_path / "m")).__name__ == "Unet"
        return
    with pytest.raises(WeightsError, match=rf"saved by pixelwise 0\.1\.0, but pixelwise 0\.2\.0 changed .*{arch}"):
        pixelwise.from_pretrained(tmp_path / "m")
