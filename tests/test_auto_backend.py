"""The default backend "auto": eager PyTorch, then ONNX Runtime once enough pixels went through, checked."""

from __future__ import annotations

import copy
import importlib.util
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import pixelwise
from pixelwise.inference import Predictor, auto_backend
from pixelwise.inference.auto_backend import SWITCH_TOLERANCE, SwitchingForward
from pixelwise.inference.export import export_onnx
from pixelwise.inference.predictor import RuntimeOptions

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def small_unet() -> nn.Module:
    torch.manual_seed(0)
    return pixelwise.create_model("unet", encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8)).eval()


def eager_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= SWITCH_TOLERANCE * max(1.0, float(b.abs().max()))


def test_switches_after_the_pixel_budget_and_keeps_the_outputs():
    model = small_unet()
    forward = SwitchingForward(model, model, in_channels=3, switch_pixels=3 * 64 * 64)
    inputs = [torch.randn(1, 3, 64, 64) for _ in range(5)]
    backends = []
    with torch.inference_mode():
        for x in inputs:
            backends.append(forward.backend)
            assert close(forward(x), eager_logits(model, x))
    # 64² each: the third call reaches the budget and switches, so the fourth is the first on ONNX Runtime
    assert backends == ["torch", "torch", "torch", "onnxruntime", "onnxruntime"]
    assert "ONNX Runtime after 12,288 pixels" in forward.note
    # another size and batch run on the exported graph (dynamic axes) and still match
    x = torch.randn(2, 3, 96, 160)
    with torch.inference_mode():
        assert close(forward(x), eager_logits(model, x))


def test_inputs_the_graph_cannot_pad_go_to_pytorch_after_the_switch():
    model = small_unet()  # input_multiple 8: the exported graph mirror-pads, which needs at least 8 pixels
    forward = SwitchingForward(model, model, in_channels=3, switch_pixels=0)
    with torch.inference_mode():
        forward(torch.randn(1, 3, 32, 32))
        assert forward.backend == "onnxruntime"
        tiny = torch.randn(1, 3, 3, 3)  # padding to 8 adds 5 > 3 rows: mirroring cannot
        assert torch.equal(forward(tiny), eager_logits(model, tiny))


class NumpyRoundTrip(nn.Module):
    """A model whose forward leaves torch (through numpy): a trace freezes that value, so an export is wrong."""

    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(np.abs(x.detach().numpy()).mean())
        return self.conv(x) * scale


def test_a_model_that_does_not_export_stays_on_pytorch_and_says_why():
    model = NumpyRoundTrip().eval()
    forward = SwitchingForward(model, model, in_channels=3, switch_pixels=0)
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(forward(x), eager_logits(model, x))
    assert forward.backend == "torch"
    assert forward.note.startswith("torch: the export to ONNX failed")


def test_without_onnxruntime_it_stays_on_pytorch(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    model = small_unet()
    forward = SwitchingForward(model, model, in_channels=3, switch_pixels=0)
    with torch.inference_mode():
        forward(torch.randn(1, 3, 32, 32))
    assert forward.backend == "torch"
    assert "pip install" in forward.note


def test_predictor_default_switches_and_torch_never_does(monkeypatch):
    monkeypatch.setattr(auto_backend, "SWITCH_PIXELS", 2 * 48 * 48)
    model = small_unet()
    auto, torch_only = Predictor(model), Predictor(model, runtime=RuntimeOptions(backend="torch"))
    images = [np.random.default_rng(i).random((48, 48, 3), dtype=np.float32) for i in range(4)]
    for image in images:
        a, b = auto.predict(image), torch_only.predict(image)
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert auto.backend == "onnxruntime" and "ONNX Runtime after" in auto.backend_note
    assert torch_only.backend == "torch" and torch_only.backend_note == "torch, as asked"


def test_a_bf16_predictor_is_not_switched(monkeypatch):
    monkeypatch.setattr(auto_backend, "SWITCH_PIXELS", 0)
    model = small_unet()
    predictor = Predictor(model, runtime=RuntimeOptions(precision="bf16", device="cpu"))
    predictor.predict(np.zeros((32, 32, 3), np.float32))
    assert predictor.backend == "torch" and not isinstance(predictor._forward, SwitchingForward)
    assert "only for a torch module run in fp32 on the CPU" in predictor.backend_note


def test_auto_runs_an_onnx_file_without_naming_the_backend(tmp_path):
    model = small_unet()
    export_onnx(model, tmp_path / "model.onnx", sample_size=(32, 32))
    predictor = Predictor(tmp_path / "model.onnx")
    assert predictor.backend == "onnxruntime" and "auto: .onnx files" in predictor.backend_note
    image = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    reference = Predictor(model, runtime=RuntimeOptions(backend="torch")).predict(image)
    np.testing.assert_allclose(predictor.predict(image), reference, atol=1e-5)


def test_a_switched_predictor_copies_and_pickles_and_the_copy_switches_again(monkeypatch):
    monkeypatch.setattr(auto_backend, "SWITCH_PIXELS", 32 * 32)
    model = small_unet()
    predictor = Predictor(model)
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    expected = predictor.predict(image)
    assert predictor.backend == "onnxruntime"
    for clone in (copy.deepcopy(predictor), pickle.loads(pickle.dumps(predictor))):
        assert clone.backend == "torch"  # the session stays with the original; the copy counts again
        np.testing.assert_allclose(clone.predict(image), expected, atol=1e-5)
        assert clone.backend == "onnxruntime"
