"""Static int8 quantization of an exported ONNX model with ONNX Runtime.

Weights are quantized per output channel to int8; activations get a fixed uint8 scale and zero
point each, measured on calibration images (MinMax). On x86 CPUs with AVX512-VNNI (or AVX-VNNI)
uint8 activations × int8 weights is ONNX Runtime's fast path and has no saturation problem, so
``reduce_range`` stays off; on older AVX2-only CPUs pass ``reduce_range=True``.

Calibrate with real images: by default random inputs are used, which makes a runnable model but
sets the activation ranges from noise, and the labels of real images then disagree more with fp32.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.errors import ConfigError
from pixelwise.io import atomic_path

CALIBRATION_LIMIT = 32
"""At most this many images of a calibration folder are used to calibrate int8 quantization."""
SYNTHETIC_SAMPLES = 8
"""Random calibration inputs used when no images are given."""
SYNTHETIC_SIZE = (256, 256)
"""``(H, W)`` of the random calibration inputs."""
ACTIVATION_TYPES = ("uint8", "int8")


def _batches(images: Iterable[Any], dtype: np.dtype) -> Iterator[np.ndarray]:
    """``[1, C, H, W]`` arrays from ``[C, H, W]`` or ``[N, C, H, W]`` arrays / tensors, one image at a time."""
    for image in images:
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ConfigError(f"calibration images must be [C, H, W] or [N, C, H, W], got shape {list(array.shape)}.")
        for single in array:
            yield np.ascontiguousarray(single[None], dtype=dtype)


def _synthetic(channels: int, size: tuple[int, int], count: int, raw: bool) -> Iterator[np.ndarray]:
    generator = np.random.default_rng(0)
    for _ in range(count):
        if raw:
            yield generator.integers(0, 256, (1, channels, *size), dtype=np.uint8)
        else:
            yield generator.standard_normal((1, channels, *size), dtype=np.float32)


def calibration_images(folder: str | os.PathLike, onnx_path: str | os.PathLike, limit: int = 32) -> list[np.ndarray]:
    """Up to ``limit`` images of ``folder`` prepared as the exported model takes them.

    Reads the image files in ``folder`` (or its ``images/`` subfolder, or its ``*/images/`` split
    folders), sorted by name; for a float model they are scaled to [0, 1], resized by the stored
    ``scale`` and normalised with the stored ``mean`` / ``std``; a raw-input model gets the uint8 pixels.

    Shape: each ``[C, H, W]``.

    Raises:
        ConfigError: no image files found.
    """
    import json

    import torch.nn.functional as F

    from pixelwise.data.readers import IMAGE_SUFFIXES, read_image, read_image_array
    from pixelwise.inference.export_check import RAW, import_optional

    folder = Path(folder)
    candidates = [folder / "images", *sorted(folder.glob("*/images")), folder]
    files: list[Path] = []
    for candidate in candidates:
        found = candidate.glob("*") if candidate.is_dir() else []
        files = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            break
    if not files:
        raise ConfigError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r} or its images/ folder.")
    props = {p.key: p.value for p in import_optional("onnx").load(str(onnx_path)).metadata_props}
    if props.get("input_format") == RAW:
        return [read_image_array(path) for path in files[:limit]]
    mean = torch.tensor(json.loads(props.get("mean", "[0.0]"))).view(-1, 1, 1)
    std = torch.tensor(json.loads(props.get("std", "[1.0]"))).view(-1, 1, 1)
    scale = float(props.get("scale", 1.0))
    images = []
    for path in files[:limit]:
        image = torch.from_numpy(read_image(path))
        if scale != 1:
            size = [max(1, round(n * scale)) for n in image.shape[-2:]]
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
        images.append(((image - mean) / std).numpy())
    return images


def quantize_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images: Iterable[Any] | None = None,
    *,
    activation_type: str = "uint8",
    per_channel: bool = True,
    reduce_range: bool = False,
    preprocess: bool = True,
    synthetic_samples: int = SYNTHETIC_SAMPLES,
    synthetic_size: tuple[int, int] = SYNTHETIC_SIZE,
) -> Path:
    """Quantize an fp32 ONNX model to int8 (QDQ format) and write it to ``out_path`` (atomically).

    Args:
        onnx_path: an fp32 model from :func:`~pixelwise.inference.export.export_onnx`.
        out_path: where the int8 model goes; the pixelwise metadata is kept, plus ``precision: int8``.
        calibration_images: images as the model takes them: float ``[C, H, W]`` (or ``[N, C, H, W]``)
            arrays or tensors, normalised like the training data (uint8 for a model exported
            ``with_preprocessing``). A few dozen representative images are enough. Default: random
            inputs, which give a runnable but less accurate model.
        activation_type: ``"uint8"`` (fast on x86 with VNNI) or ``"int8"``.
        per_channel: one weight scale per output channel (more accurate, same speed).
        reduce_range: 7-bit weights, for CPUs without VNNI where uint8×int8 products can saturate.
        preprocess: run ONNX Runtime's ``quant_pre_process`` (ONNX shape inference, graph
            optimisation such as BatchNorm folding) first, as its documentation recommends.
        synthetic_samples, synthetic_size: number and ``(H, W)`` of the random calibration inputs.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ConfigError: onnxruntime missing, a missing input file, bad options or calibration shapes.
    """
    from pixelwise.inference.export_check import import_optional

    onnx = import_optional("onnx")
    import_optional("onnxruntime")
    from onnxruntime import quantization as q

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX model {str(onnx_path)!r} does not exist; export one first (pixelwise export).")
    if activation_type not in ACTIVATION_TYPES:
        raise ConfigError(f"activation_type={activation_type!r}: choose one of {', '.join(ACTIVATION_TYPES)}.")
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    reader = _calibration_reader(onnx_path, metadata, calibration_images, synthetic_samples, synthetic_size)
    activations = q.QuantType.QUInt8 if activation_type == "uint8" else q.QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="pixelwise-quantize-") as folder:
        model_path = onnx_path
        if preprocess:
            model_path = Path(folder) / "preprocessed.onnx"
            _preprocess(onnx_path, model_path)
        quantized = Path(folder) / "int8.onnx"
        q.quantize_static(
            str(model_path),
            str(quantized),
            reader,
            quant_format=q.QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=activations,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
        result = onnx.load(str(quantized))
        onnx.helper.set_model_props(result, metadata | {"precision": "int8"})
        with atomic_path(out_path) as tmp:
            onnx.save(result, str(tmp))
    return out_path


def _calibration_reader(
    onnx_path: Path,
    metadata: dict[str, str],
    images: Iterable[Any] | None,
    synthetic_samples: int,
    synthetic_size: tuple[int, int],
) -> Any:
    """An ONNX Runtime ``CalibrationDataReader`` feeding ``images`` (default: random inputs) one at a time
    to the model's first input, as uint8 for a raw-input model and float32 otherwise."""
    from onnxruntime import InferenceSession
    from onnxruntime import quantization as q

    from pixelwise.inference.export_check import RAW

    raw = metadata.get("input_format") == RAW
    session = InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    channels = model_input.shape[1] if isinstance(model_input.shape[1], int) else int(metadata.get("in_channels", 3))
    if images is None:
        arrays: Iterator[np.ndarray] = _synthetic(channels, synthetic_size, synthetic_samples, raw)
    else:
        arrays = _batches(images, np.uint8 if raw else np.float32)

    class Reader(q.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            array = next(arrays, None)
            return None if array is None else {model_input.name: array}

    return Reader()


def _preprocess(onnx_path: Path, out_path: Path) -> None:
    """ONNX Runtime's recommended ``quant_pre_process`` (shape inference, BatchNorm folding, ...)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX's own shape inference suffices for convolutional graphs; ORT's symbolic pass gives up on
    # the dynamic-size padding ("Incomplete symbolic shape inference") and drops a file in the cwd
    quant_pre_process(str(onnx_path), str(out_path), skip_symbolic_shape=True)
