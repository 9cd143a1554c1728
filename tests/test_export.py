"""ONNX / TorchScript export, int8 quantization, OnnxModel and `pixelwise export`.

References are computed independently of the exported graph: the eager PyTorch model, the stock
``F.adaptive_avg_pool2d`` / ``max_unpool2d`` / antialiased ``F.interpolate``, and
the :class:`Predictor` (whole images, unfolded) for the raw-image pipeline.
"""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise.cli import main
from pixelwise.errors import ConfigError, InputSizeError
from pixelwise.evaluate import load_model
from pixelwise.inference import Predictor, RuntimeOptions
from pixelwise.inference.export import ExportError, export_onnx, export_torchscript
from pixelwise.inference.exportable import AdaptiveAvgPoolMatrix, antialiased_resize, unpool_first_maximum
from pixelwise.models import create_model
from pixelwise.models.segnet import unpool_with_indices

SAMPLE = (64, 64)
TINY_UNET = dict(encoder_name="resnet10t", encoder_depth=3, decoder_channels=(16, 8, 8), classes=3)


def tiny_unet(**options):
    torch.manual_seed(0)
    return create_model("unet", **(TINY_UNET | options)).eval()


def eager(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny U-Net and its ONNX export at 64×64."""
    pytest.importorskip("onnxruntime")
    model = tiny_unet()
    path = tmp_path_factory.mktemp("onnx") / "unet.onnx"
    report = export_onnx(model, path, sample_size=SAMPLE)
    return model, path, report


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


# -- the branch-free replacements match the ops they stand for ------------------------------------


@pytest.mark.parametrize("bins", [2, 3, 6, (2, 5)])
def test_adaptive_pool_matrix_matches_torch(bins):
    x = torch.randn(2, 4, 19, 37)
    assert torch.allclose(AdaptiveAvgPoolMatrix(bins)(x), F.adaptive_avg_pool2d(x, bins), atol=1e-6)


def test_unpool_first_maximum_matches_max_unpool_with_ties():
    feature = torch.relu(torch.randn(2, 5, 16, 20))  # ReLU zeros: many all-tie windows
    feature[1, 1, 1::2, 1::2] = feature[1, 1, ::2, ::2]  # ties between two positive values
    x = torch.randn(2, 5, 8, 10)
    assert torch.equal(unpool_first_maximum(x, feature), unpool_with_indices(x, feature))


@pytest.mark.parametrize(("size", "out"), [((300, 333), (150, 166)), ((50, 50), (80, 81))])
def test_antialiased_resize_matches_interpolate(size, out):
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    expected = F.interpolate(x, size=out, mode="bilinear", antialias=True)
    assert torch.allclose(antialiased_resize(x, out), expected, atol=1e-12)


# -- ONNX -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 104), (75, 83)])  # a multiple of the stride and not
def test_onnx_round_trip_at_other_sizes(exported, size):
    model, path, report = exported
    assert path.is_file() and report.max_abs_diff < 1e-4 and report.verified_shape[-2:] != SAMPLE
    x = torch.randn(2, 3, *size)
    out = run_onnx(path, x)
    assert out.shape == (2, 3, *size)
    assert np.abs(out - eager(model, x).numpy()).max() < 1e-4


def test_onnx_model_wrapper_and_metadata(exported):
    from pixelwise.inference.onnx_runtime import OnnxModel

    model, path, _ = exported
    onnx_model = OnnxModel(path, threads=1)
    assert onnx_model.in_channels == 3 and onnx_model.metadata["input_format"] == "float-normalised"
    assert onnx_model.metadata["architecture"]["arch"] == "unet"
    assert onnx_model.metadata["architecture"]["options"]["decoder_channels"] == [16, 8, 8]
    assert onnx_model.metadata["mean"] == [0.0, 0.0, 0.0] and onnx_model.metadata["output"] == "logits"
    x = torch.randn(1, 3, 41, 50)
    assert torch.allclose(onnx_model(x), eager(model, x), atol=1e-4)
    with pytest.raises(InputSizeError, match="too small"):
        onnx_model(torch.randn(1, 3, 3, 50))  # eager pads by edge replication here; the export cannot


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("pspnet", dict(encoder_name="resnet10t", psp_out_channels=16)),  # adaptive pooling
        ("segnet", dict(encoder_name="resnet10t", encoder_depth=3, decoder_channels=8)),  # unpooling
    ],
)
def test_onnx_export_of_size_dependent_ops(tmp_path, arch, options):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(arch, classes=2, **options).eval()
    export_onnx(model, tmp_path / "m.onnx", sample_size=SAMPLE)
    x = torch.randn(1, 3, 90, 71)
    assert np.abs(run_onnx(tmp_path / "m.onnx", x) - eager(model, x).numpy()).max() < 1e-4


def test_onnx_export_of_the_valid_convolution_unet(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("unet2015", in_channels=1, base_channels=4, depth=2).eval()
    export_onnx(model, tmp_path / "m.onnx", sample_size=SAMPLE)
    x = torch.randn(1, 1, model.valid_input_size(90), model.valid_input_size(120))
    out, expected = run_onnx(tmp_path / "m.onnx", x), eager(model, x).numpy()
    assert out.shape == expected.shape and np.abs(out - expected).max() < 1e-4 * max(1, np.abs(expected).max())


def saved_model(directory, scale=1.0, mask_offset=(0.0, 0.0)):
    model = tiny_unet()
    model.save_pretrained(directory)
    preprocessing = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "scale": scale, "mask_offset": mask_offset}
    (directory / "preprocessing.json").write_text(json.dumps(preprocessing))
    return directory


@pytest.mark.parametrize(("scale", "mask_offset"), [(0.5, (0.0, 0.0)), (1.0, (-0.5, 1.25))])
def test_with_preprocessing_gives_the_labels_of_the_predictor(tmp_path, scale, mask_offset):
    pytest.importorskip("onnxruntime")
    loaded = load_model(saved_model(tmp_path / "model", scale=scale, mask_offset=mask_offset))
    report = export_onnx(loaded, tmp_path / "raw.onnx", with_preprocessing=True, sample_size=SAMPLE)
    assert report.output == "labels" and report.metadata["scale"] == repr(scale)
    assert json.loads(report.metadata["mask_offset"]) == list(mask_offset)
    image = torch.randint(0, 256, (2, 3, 77, 90), dtype=torch.uint8)
    labels = run_onnx(tmp_path / "raw.onnx", image)
    predictor = Predictor(loaded, runtime=RuntimeOptions(fold_bn=False, channels_last=False))
    probabilities = torch.stack([torch.from_numpy(predictor.predict(one.float() / 255)) for one in image])
    logits = probabilities.log()  # log-softmax: the logits' differences between classes
    top2 = logits.topk(2, dim=1).values
    differ = torch.from_numpy(labels) != logits.argmax(1)
    assert labels.dtype == np.int64 and labels.shape == (2, 77, 90)
    margins = (top2[:, 0] - top2[:, 1])[differ]
    assert differ.sum() < 0.001 * differ.numel() and (margins < 1e-3).all()  # only near-ties may differ


def test_an_exported_float_graph_leaves_the_mask_offset_to_the_predictor(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelwise import Predictor

    directory = saved_model(tmp_path / "model", mask_offset=(-0.5, 0.0))
    export_onnx(load_model(directory), tmp_path / "m.onnx", sample_size=SAMPLE)
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    through_onnx = Predictor(tmp_path / "m.onnx", runtime=RuntimeOptions(backend="onnxruntime")).predict(image)
    through_torch = Predictor.from_pretrained(directory).predict(image)
    unshifted = Predictor.from_pretrained(saved_model(tmp_path / "plain")).predict(image)
    assert np.abs(through_onnx - through_torch).max() < 1e-4 < np.abs(unshifted - through_torch).max()


def test_export_refuses_a_model_it_cannot_reproduce(tmp_path):
    class SizeDependent(torch.nn.Module):  # a Python branch on the size: tracing freezes it
        def forward(self, x):
            return x * 2 if x.shape[-2] > 100 else x

    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(SizeDependent(), tmp_path / "bad.onnx", in_channels=1, sample_size=(90, 90))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_onnxruntime_missing_is_a_clear_error(tmp_path, monkeypatch):
    from pixelwise.inference.onnx_runtime import OnnxModel

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "pixelwise\[export\]"'):
        OnnxModel(tmp_path / "m.onnx")


def test_int8_labels_mostly_agree_with_fp32(exported, tmp_path, monkeypatch):
    from pixelwise.inference.export import quantize_int8

    model, path, _ = exported
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(3, 64, 64, generator=generator) for _ in range(4)]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    out = quantize_int8(path, tmp_path / "int8.onnx", calibration)
    assert not list(workdir.iterdir())  # ONNX Runtime's shape inference once left a <uuid>.data file here
    x = torch.randn(2, 3, 96, 96, generator=generator)
    quantized, expected = run_onnx(out, x), eager(model, x).numpy()
    agreement = (quantized.argmax(1) == expected.argmax(1)).mean()
    assert quantized.shape == expected.shape and agreement > 0.8, agreement
    assert np.abs(quantized - expected).mean() < 0.2 * expected.std()


# -- TorchScript ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")
def test_torchscript_round_trip_at_other_size(tmp_path):
    model = tiny_unet()
    report = export_torchscript(model, tmp_path / "m.pt", sample_size=SAMPLE)
    assert report.max_abs_diff < 1e-4
    extra = {"pixelwise.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    x = torch.randn(3, 3, 75, 109)
    assert torch.allclose(eager(loaded, x), eager(model, x), atol=1e-4)
    assert json.loads(extra["pixelwise.json"])["input_format"] == "float-normalised"


# -- command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_command_on_a_saved_model(tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    saved = saved_model(tmp_path / "model")
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--model", str(saved), "--format", fmt, "--out", str(out), "--size", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and str(out) in printed and "max abs diff" in printed
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["std"]) == pytest.approx([0.2, 0.25, 0.3])
        assert json.loads(props["classes"]) == ["class_0", "class_1", "class_2"]


def test_export_command_int8_with_calibration_images(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from pixelwise.inference.onnx_runtime import OnnxModel

    saved = saved_model(tmp_path / "model")
    (tmp_path / "data" / "images").mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / "images" / f"{index}.png")
    out = tmp_path / "model.onnx"
    args = ["export", "--model", str(saved), "--out", str(out), "--size", "64", "64", "--int8"]
    assert main([*args, "--calibration-data", str(tmp_path / "data")]) == 0
    assert "calibrated on" in capsys.readouterr().out and (tmp_path / "model.fp32.onnx").is_file()
    quantized = OnnxModel(out)
    assert quantized.metadata["precision"] == "int8" and quantized.metadata["std"] == [0.2, 0.25, 0.3]
    assert quantized(torch.randn(1, 3, 50, 70)).shape == (1, 3, 50, 70)


def test_export_command_missing_model(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "m.onnx")
