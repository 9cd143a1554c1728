"""Export a trained model to ONNX or TorchScript, verified against PyTorch, with its metadata.

The graphs are recorded by tracing (``torch.onnx.export(dynamo=False)``, ``torch.jit.trace``) the
branch-free forms in :mod:`pixelwise.inference.exportable`, with dynamic batch, height and width.
Why not the ``torch.export``-based ONNX exporter, PyTorch's default since 2.9? Measured with torch
2.14.1 on every registered architecture: it freezes the "pad only when needed" branch at the sample
size, fails on ConvNeXt encoders ("Invalid ranges") and on SegNet's unpooling, gives wrong PSPNet
results at other sizes, and takes 5-10× longer; tracing the branch-free forms exports all of them
correctly. ``exporter="dynamo"`` remains available.

Every export is checked: the written file is run at another size and batch size and compared
with the eager model; when the check fails nothing is written.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.inference import export_check as check
from pixelwise.inference.export_check import DEFAULT_TOLERANCE, ExportError
from pixelwise.inference.exportable import ExportableModel, RawImageModel, exportable_copy
from pixelwise.inference.quantize import quantize_int8
from pixelwise.io import atomic_path
from pixelwise.models.geometry import uses_valid_convolution

__all__ = ["DEFAULT_OPSET", "ExportError", "ExportReport", "export_onnx", "export_torchscript", "quantize_int8"]

DEFAULT_OPSET = 17
"""ONNX opset: has every operator pixelwise models need, and runtimes from 2022 on read it."""
EXPORTERS = ("torchscript", "dynamo")
TORCHSCRIPT_METADATA = "pixelwise.json"
"""Name of the extra file holding the metadata inside a TorchScript archive."""


@dataclass
class ExportReport:
    """What an export wrote and how closely it matched PyTorch.

    ``max_abs_diff``: largest absolute output difference at ``verified_shape`` (None: not
    verified). For label outputs: the largest top-2 logit margin among pixels whose label differs,
    with ``label_mismatches`` counting them (only near-ties may differ).
    """

    path: Path
    format: str
    input_format: str
    output: str
    sample_shape: tuple[int, ...]
    verified_shape: tuple[int, ...] | None
    max_abs_diff: float | None
    label_mismatches: int | None
    seconds: float
    metadata: dict[str, str]

    def __str__(self) -> str:
        result = "not verified"
        if self.max_abs_diff is not None:
            result = f"max abs diff vs PyTorch {self.max_abs_diff:.3g} at input {list(self.verified_shape or ())}"
            if self.label_mismatches == 0:
                result = f"labels identical to PyTorch's at input {list(self.verified_shape or ())}"
            elif self.label_mismatches is not None:
                margin = f"{self.max_abs_diff:.2g}"
                result = f"{self.label_mismatches} labels differ from PyTorch's, at near-ties (margins ≤ {margin})"
        return f"{self.format}: {self.path} ({self.input_format} → {self.output}; {result})"


@contextmanager
def _tracing() -> Iterator[None]:
    """Trace without the tracer's notes on Python values (the forms in
    :mod:`~pixelwise.inference.exportable` make them safe, and verification checks the result)
    and without the notices that the tracing exporters are deprecated (the module notes say why
    they are used)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        # replicate padding (the mask_offset shift) reverses its pad list with a step -1 Slice, which
        # constant folding skips; the graph is still right (verification compares it with PyTorch)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        yield


def _graph(module: nn.Module, info: dict[str, Any], raw: bool) -> nn.Module:
    if not raw:
        return ExportableModel(exportable_copy(module)).eval()
    if uses_valid_convolution(module):
        raise ConfigError(
            f"with_preprocessing needs an output as large as the input, but {type(module).__name__} uses valid "
            "convolutions; export it without preprocessing and predict with pixelwise.Predictor."
        )
    mean, std = torch.tensor(info["mean"]), torch.tensor(info["std"])
    return RawImageModel(exportable_copy(module), mean, std, info["scale"], info["mask_offset"]).eval()


def _check_output_path(path: str | os.PathLike, example: str) -> None:
    """Refuse, before exporting, an output ``path`` that is an existing folder.

    Raises:
        ConfigError: names the path and a file name to use instead.
    """
    if Path(path).is_dir():
        raise ConfigError(
            f"path {str(path)!r} is an existing folder; give the file to write, e.g. {str(Path(path) / example)!r}."
        )


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    in_channels: int | None = None,
    opset: int = DEFAULT_OPSET,
    with_preprocessing: bool = False,
    mean: Any = None,
    std: Any = None,
    sample_size: tuple[int, int] = (256, 256),
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
) -> ExportReport:
    """Write ``model`` as an ONNX file with dynamic batch, height and width, and check it.

    Args:
        model: a module, a :class:`~pixelwise.evaluate.LoadedModel`, or a run / ``save_pretrained``
            directory (its normalisation, scale and class names are stored in the file).
        path: the ``.onnx`` file to write (atomically; nothing is written if verification fails).
        in_channels: input channels, for modules without an ``in_channels`` attribute.
        opset: ONNX opset version (at most 20 with the default exporter).
        with_preprocessing: export :class:`~pixelwise.inference.exportable.RawImageModel`: raw
            ``uint8 [N, C, H, W]`` pixels in, ``int64 [N, H, W]`` labels out.
        mean, std: per-channel normalisation, overriding what the model was saved with
            (default: the saved values, else 0 and 1, i.e. inputs in [0, 1] go in unchanged).
        sample_size: ``(H, W)`` of the traced example input (any size works afterwards).
        verify: run the file with ONNX Runtime at another size and batch 2, compare with PyTorch.
        tolerance: largest accepted difference of the fp32 outputs, times ``max(1, largest |output|)``
            (absolute for small logits, relative for large ones); for labels, of the logit margin
            at pixels whose label differs (so only near-ties may differ).
        exporter: ``"torchscript"`` (tracing; default) or ``"dynamo"`` (``torch.export``, see above).

    Shape: ``float32 [N, C, H, W]`` normalised → ``[N, K, H, W]`` logits (or the model's activation;
    valid-convolution models give their smaller valid output). Padded models need
    ``(-H) % input_multiple < H`` (and the same for W), the sizes that eager models mirror-pad.

    Returns:
        An :class:`ExportReport` (path, max abs difference, metadata, timing).

    Raises:
        ConfigError: a missing model path, ``path`` an existing folder, or onnx / onnxruntime not installed.
        ExportError: the export does not reproduce PyTorch within ``tolerance``.

    Example:
        >>> report = export_onnx("runs/isbi2012", "model.onnx")  # doctest: +SKIP
        >>> print(report.max_abs_diff)  # doctest: +SKIP
        3.1e-06
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter={exporter!r}: choose one of {', '.join(map(repr, EXPORTERS))}.")
    _check_output_path(path, "model.onnx")
    onnx = check.import_optional("onnx")
    if verify:
        check.import_optional("onnxruntime")
    start = time.perf_counter()
    module, info = check.resolve(model, in_channels, mean, std)
    sample, verify_size = check.sizes(module, sample_size)
    graph = _graph(module, info, with_preprocessing)
    example = check.example(info, sample, 1, with_preprocessing)
    output = "labels" if with_preprocessing else "logits"
    axes = {0: "batch", 2: "height", 3: "width"}
    output_axes = {0: "batch", 1: "height", 2: "width"} if with_preprocessing else axes
    metadata = check.metadata(module, info, with_preprocessing)
    with atomic_path(path) as tmp, _tracing():
        if exporter == "dynamo":
            dims = dict.fromkeys(axes, torch.export.Dim.DYNAMIC)
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                opset_version=max(opset, 18),
                dynamic_shapes=[dims],
                input_names=["image"],
                output_names=[output],
                verbose=False,
            )
            program.save(str(tmp))
        else:
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=[output],
                dynamic_axes={"image": axes, output: output_axes},
            )
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))
        checked = (None, None, None)
        if verify:
            from pixelwise.inference.onnx_runtime import OnnxModel

            session = OnnxModel(tmp)
            checked = check.verify(session, module, info, with_preprocessing, verify_size, tolerance, "ONNX")
    return ExportReport(
        Path(path),
        "onnx",
        metadata["input_format"],
        metadata["output"],
        tuple(example.shape),
        *checked,
        time.perf_counter() - start,
        metadata,
    )


def export_torchscript(
    model: Any,
    path: str | os.PathLike,
    *,
    in_channels: int | None = None,
    with_preprocessing: bool = False,
    mean: Any = None,
    std: Any = None,
    sample_size: tuple[int, int] = (256, 256),
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Write ``model`` as a traced TorchScript archive (``torch.jit.load``-able) and check it.

    Tracing records the shape arithmetic of the branch-free forms, so the archive runs at any
    height, width and batch size (verified at a size other than the sample's). The metadata of
    :func:`export_onnx` is stored as the extra file ``pixelwise.json``; read it with
    ``torch.jit.load(path, _extra_files={"pixelwise.json": ""})``. Arguments, shapes and errors
    are those of :func:`export_onnx`.

    PyTorch 2.14 marks ``torch.jit`` as deprecated (FutureWarning) in favour of ``torch.export``;
    archives still load in C++ (libtorch) and Python, but prefer ONNX for new deployments.
    """
    _check_output_path(path, "model.pt")
    start = time.perf_counter()
    module, info = check.resolve(model, in_channels, mean, std)
    sample, verify_size = check.sizes(module, sample_size)
    graph = _graph(module, info, with_preprocessing)
    example = check.example(info, sample, 1, with_preprocessing)
    metadata = check.metadata(module, info, with_preprocessing)
    with atomic_path(path) as tmp:
        with _tracing(), torch.no_grad():
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
            loaded = torch.jit.load(str(tmp)) if verify else None
        checked = (None, None, None)
        if loaded is not None:

            def run(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return loaded(x)

            checked = check.verify(run, module, info, with_preprocessing, verify_size, tolerance, "TorchScript")
    return ExportReport(
        Path(path),
        "torchscript",
        metadata["input_format"],
        metadata["output"],
        tuple(example.shape),
        *checked,
        time.perf_counter() - start,
        metadata,
    )
