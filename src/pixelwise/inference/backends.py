"""Turning what the user passes as a model into a fast forward function, for :class:`~pixelwise.inference.Predictor`.

``resolve`` accepts a module or callable, a :class:`~pixelwise.evaluate.LoadedModel`, a run /
``save_pretrained`` directory or an ``.onnx`` file (whose stored mean, std, scale, classes and
valid-convolution geometry are used); ``prepare`` makes the forward function: for torch, an
eval-mode copy with BatchNorm folded, on the device, optionally channels-last and compiled, with
the model's own output activation removed (the predictor applies softmax/sigmoid); for ONNX
Runtime, the model exported (and quantized for int8) to a temporary file. The ONNX modules
(``export``, ``quantize``, ``onnx_runtime``) are imported only when used.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise.bundle import ModelBundle
from pixelwise.errors import ConfigError
from pixelwise.inference.auto_backend import SwitchingForward
from pixelwise.inference.fuse import fold_batchnorm
from pixelwise.inference.fuse_activation import fuse_conv_activations
from pixelwise.inference.loaded import LoadedModel, load_model
from pixelwise.models.base import segmentation_output
from pixelwise.models.geometry import ValidGeometry, uses_valid_convolution

BACKENDS = ("auto", "torch", "onnxruntime")
"""``auto``: ONNX Runtime for ``.onnx`` files and int8; else torch, switching to ONNX Runtime on the CPU in fp32
once a job is long enough to repay the export (:mod:`~pixelwise.inference.auto_backend`)."""
FOLD_EXAMPLE_SIZE = 64
"""Side of the random example input used to check BatchNorm folding (any valid size works)."""


@dataclass
class ResolvedModel:
    """The model and what was stored with it (None: not known)."""

    module: Any
    onnx_path: Path | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    scale: float | None = None
    classes: Any = None
    geometry: Any = None
    """A valid-convolution model or its :class:`~pixelwise.models.geometry.ValidGeometry`, or None."""
    owned: bool = False
    """The module was loaded here (from a path), so it may be changed in place instead of copied."""
    mask_offset: tuple[float, float] = (0.0, 0.0)
    """``[dy, dx]``: images are shifted by this before the network (``TrainConfig.mask_offset``)."""
    tta: str | None = None
    """The test-time augmentation stored with the model (``TrainConfig.tta``), None: none stored."""


def engine(backend: str, model: Any, precision: str) -> str:
    """What runs the model first: ``backend`` itself, or for ``"auto"`` ONNX Runtime for an ``.onnx`` file or
    int8 and torch otherwise (which :func:`prepare` may switch to ONNX Runtime later)."""
    if backend != "auto":
        return backend
    is_onnx = isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx"
    return "onnxruntime" if is_onnx or precision == "int8" else "torch"


def resolve(model: Any, backend: str, precision: str) -> ResolvedModel:
    """Load ``model`` if it is a path; keep the normalisation, scale and classes stored with it.

    Raises:
        ConfigError: missing path, an ``.onnx`` file without ``backend="onnxruntime"``, int8 without
            it, or something that is not callable.
    """

    loaded_here = False
    if precision == "int8" and backend != "onnxruntime":
        raise ConfigError("precision='int8' runs an int8-quantized ONNX model; pass backend='onnxruntime' too.")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise ConfigError(f"ONNX model {str(path)!r} does not exist; check the path.")
            if backend != "onnxruntime":
                raise ConfigError(f"{str(path)!r} is an ONNX model; pass backend='onnxruntime' to run it.")
            return _resolve_onnx(path)
        model = load_model(path)
        loaded_here = True
    if isinstance(model, LoadedModel):
        module = model.model
        geometry = module if uses_valid_convolution(module) else None
        mean, std = model.mean.flatten(), model.std.flatten()
        return ResolvedModel(
            module, None, mean, std, model.scale, model.classes, geometry, loaded_here, model.mask_offset, model.tta
        )
    if not callable(model):
        raise ConfigError(
            f"cannot predict with a {type(model).__name__}; pass a model (any callable [N, C, H, W] → "
            "[N, K, H, W] logits), a run directory, a save_pretrained directory or an .onnx file."
        )
    return ResolvedModel(model, geometry=model if uses_valid_convolution(model) else None)


def _resolve_onnx(path: Path) -> ResolvedModel:
    """An ``.onnx`` file and what ``pixelwise export`` stored with it (nothing for other files)."""
    from pixelwise.inference.onnx_runtime import OnnxModel

    model = OnnxModel(path)
    meta = model.metadata
    bundle = ModelBundle.from_onnx_metadata(meta, source=f"the metadata of {str(path)!r}")
    channels = model.in_channels or 1
    # a key the file lacks (an ONNX file not exported by pixelwise) is left to the Predictor's arguments
    mean, std = (
        None if meta.get(key) is None else torch.as_tensor(values, dtype=torch.float32).expand(channels)
        for key, values in (("mean", bundle.preprocessing.mean), ("std", bundle.preprocessing.std))
    )
    geometry = None
    if bundle.graph.get("valid_convolution") is True:
        architecture = bundle.architecture or {}
        geometry = ValidGeometry.of(architecture.get("arch", ""), architecture.get("options", {}))
    scale = bundle.preprocessing.scale if "scale" in meta else None
    # a raw-image graph shifts its input itself; a float graph leaves it to the Predictor
    offset = (0.0, 0.0) if model.raw else bundle.preprocessing.mask_offset
    return ResolvedModel(model, path, mean, std, scale, bundle.classes, geometry, mask_offset=offset)


def default_device(resolved: ResolvedModel, backend: str) -> torch.device:
    """CUDA when available for torch modules; the CPU for ONNX Runtime and plain callables."""
    if backend == "torch" and isinstance(resolved.module, nn.Module) and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(precision: str, backend: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context factory that runs the model at ``precision`` (bf16: ``torch.autocast``).

    Raises:
        ConfigError: bf16 with ONNX Runtime, or on a device without bf16 autocast.
    """
    if precision != "bf16":
        return contextlib.nullcontext
    if backend != "torch":
        raise ConfigError("precision='bf16' needs backend='torch'; ONNX Runtime runs fp32 or int8 (precision='int8').")
    supported = torch.amp.is_autocast_available(device.type)
    if device.type == "cuda":
        supported = supported and torch.cuda.is_bf16_supported()
    if not supported:
        raise ConfigError(
            f"precision='bf16' is not supported on device {device.type!r} (no bfloat16 autocast there); "
            "use precision='fp32' or another device."
        )
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _strip_activation(module: nn.Module) -> nn.Module:
    from pixelwise.models.base import SegmentationModel

    if isinstance(module, SegmentationModel) and not isinstance(module.activation, nn.Identity):
        module.activation = nn.Identity()  # the predictor applies softmax / sigmoid itself
    return module


def _example(module: nn.Module, in_channels: int | None) -> torch.Tensor | None:
    if in_channels is None:
        return None
    size = module.valid_input_size(1) if uses_valid_convolution(module) else FOLD_EXAMPLE_SIZE
    size = max(size, getattr(module, "input_multiple", 1))
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    return torch.rand(1, in_channels, size, size, device=device)


def prepare(
    resolved: ResolvedModel,
    backend: str,
    precision: str,
    device: torch.device,
    in_channels: int | None,
    fold_bn: bool,
    channels_last: bool,
    compile: bool,
    temp: tempfile.TemporaryDirectory | None,
    fuse_activations: bool = True,
    switch: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function ``[N, C, h, w]`` (normalised) → logits (valid-conv models: their ``forward_valid``).

    ``fuse_activations``: on the CPU in fp32 (not compiled: inductor fuses by itself), each convolution runs
    with the activation after it as one oneDNN kernel (:func:`fuse_conv_activations`).
    ``switch`` (backend ``"auto"``): on the CPU in fp32, not compiled, a
    :class:`~pixelwise.inference.auto_backend.SwitchingForward` that moves to ONNX Runtime once the job is long.
    """
    module = resolved.module
    if backend == "onnxruntime":
        return _prepare_onnx(resolved, precision, in_channels, temp)
    if not isinstance(module, nn.Module):
        return torch.compile(module) if compile else module
    if fold_bn:
        module = fold_batchnorm(module, _example(module, in_channels), inplace=resolved.owned)
    else:  # a copy, so that moving it to the device and changing its layout leave the caller's model alone
        module = (module if resolved.owned else copy.deepcopy(module)).eval()
    module = _strip_activation(module).to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if fuse_activations and device.type == "cpu" and precision == "fp32" and not compile:
        example = _example(module, in_channels)
        if example is not None:
            fuse_conv_activations(module, example)
    forward = module.forward_valid if uses_valid_convolution(module) else _masks_of(module)
    if compile:
        return torch.compile(forward)
    if switch and device.type == "cpu" and precision == "fp32":
        return SwitchingForward(module, forward, in_channels)
    return forward


def _masks_of(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` itself, or for a model with an aux_params head a function giving only its masks."""
    if getattr(module, "classification_head", None) is None:
        return module
    return lambda x: segmentation_output(module(x))


def _prepare_onnx(
    resolved: ResolvedModel, precision: str, in_channels: int | None, temp: tempfile.TemporaryDirectory | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An :class:`~pixelwise.inference.onnx_runtime.OnnxModel`: the given file, or the module exported
    to ``temp`` (logits: its activation removed), quantized to int8 there if asked."""
    from pixelwise.inference.onnx_runtime import OnnxModel

    folder = Path(temp.name if temp is not None else tempfile.mkdtemp(prefix="pixelwise-onnx-"))
    path, model = resolved.onnx_path, resolved.module
    if path is None:
        from pixelwise.inference.export import export_onnx

        if not isinstance(resolved.module, nn.Module):
            raise ConfigError("backend='onnxruntime' needs an nn.Module (to export) or an .onnx file.")
        path = folder / "model.onnx"
        export_onnx(_strip_activation(copy.deepcopy(resolved.module).eval()), path, in_channels=in_channels)
        model = None
    if precision == "int8":
        from pixelwise.inference.quantize import quantize_int8

        path = quantize_int8(path, folder / "model.int8.onnx")
        model = None
    return model if model is not None else OnnxModel(path)
