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
from collections.abc import Callable, Iterator
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

Checked = tuple[tuple[int, ...], float, int | None]
"""What :func:`export_check.verify` returns: verified input shape, difference, label mismatches."""
Unchecked = tuple[None, None, None]


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


@dataclass
class _Prepared:
    """A model made ready to export: the resolved module and its settings, the graph to record,
    the example input, the size to verify at and the metadata to store."""

    module: nn.Module
    info: dict[str, Any]
    graph: nn.Module
    example: torch.Tensor
    verify_size: tuple[int, int]
    metadata: dict[str, str]

    def verify(self, run: Callable[[torch.Tensor], torch.Tensor], raw: bool, tolerance: float, what: str) -> Checked:
        """Compare the exported ``run`` with the eager module (see :func:`export_check.verify`)."""
        return check.verify(run, self.module, self.info, raw, self.verify_size, tolerance, what)

    def report(self, path: str | os.PathLike, fmt: str, checked: Checked | Unchecked, start: float) -> ExportReport:
        """The :class:`ExportReport` of an export to ``path`` begun at ``start`` (``time.perf_counter``)."""
        metadata = self.metadata
        return ExportReport(
            Path(path),
            fmt,
            metadata["input_format"],
            metadata["output"],
            tuple(self.example.shape),
            *checked,
            time.perf_counter() - start,
            metadata,
        )


def _prepare(
    model: Any, in_channels: int | None, mean: Any, std: Any, sample_size: tuple[int, int], raw: bool
) -> _Prepared:
    """Resolve ``model`` and build what both exporters record and store."""
    module, info = check.resolve(model, in_channels, mean, std)
    sample, verify_size = check.sizes(module, sample_size)
    graph = _graph(module, info, raw)
    example = check.example(info, sample, 1, raw)
    metadata = check.metadata(module, info, raw)
    return _Prepared(module, info, graph, example, verify_size, metadata)


def _trace_onnx(graph: nn.Module, example: torch.Tensor, tmp: Path, opset: int, exporter: str, raw: bool) -> None:
    """Record ``graph`` as ONNX in ``tmp`` with dynamic batch, height and width."""
    output = "labels" if raw else "logits"
    axes = {0: "batch", 2: "height", 3: "width"}
    output_axes = {0: "batch", 1: "height", 2: "width"} if raw else axes
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
    prepared = _prepare(model, in_channels, mean, std, sample_size, with_preprocessing)
    with atomic_path(path) as tmp, _tracing():
        _trace_onnx(prepared.graph, prepared.example, tmp, opset, exporter, with_preprocessing)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, prepared.metadata)
        onnx.save(proto, str(tmp))
        checked: Checked | Unchecked = (None, None, None)
        if verify:
            from pixelwise.inference.onnx_runtime import OnnxModel

            session = OnnxModel(tmp)
            checked = prepared.verify(session, with_preprocessing, tolerance, "ONNX")
    return prepared.report(path, "onnx", checked, start)


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
    prepared = _prepare(model, in_channels, mean, std, sample_size, with_preprocessing)
    with atomic_path(path) as tmp:
        with _tracing(), torch.no_grad():
            traced = torch.jit.trace(prepared.graph, (prepared.example,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(prepared.metadata)})
            loaded = torch.jit.load(str(tmp)) if verify else None
        checked: Checked | Unchecked = (None, None, None)
        if loaded is not None:

            def run(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return loaded(x)

            checked = prepared.verify(run, with_preprocessing, tolerance, "TorchScript")
    return prepared.report(path, "torchscript", checked, start)
