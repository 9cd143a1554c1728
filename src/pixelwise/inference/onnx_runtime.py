"""Run an exported ONNX model with ONNX Runtime as if it were a PyTorch model.

:class:`OnnxModel` takes and returns torch tensors, so it stands in wherever pixelwise (or MONAI's
inferers, or any loop) calls a model: ``logits = OnnxModel("model.onnx")(images)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.errors import ConfigError, InputSizeError
from pixelwise.inference.export_check import RAW, import_optional

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class OnnxModel:
    """An ONNX file in an ONNX Runtime session, callable on torch tensors.

    Args:
        path: an ``.onnx`` file, e.g. from :func:`pixelwise.inference.export.export_onnx`.
        threads: intra-op threads (default ``torch.get_num_threads()``, so it obeys the same
            setting as PyTorch).
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).

    Shape: ``float32 [N, C, H, W]`` normalised → ``float32 [N, K, H, W]`` logits; a model exported
    ``with_preprocessing`` (``metadata["input_format"] == "uint8-raw"``) takes ``uint8 [N, C, H, W]``
    and returns ``int64 [N, H, W]`` labels. Outputs are on the CPU.

    Attributes:
        metadata: the pixelwise metadata stored in the file (JSON values parsed: ``mean``,
            ``classes``, ``architecture``, ...); empty for files exported by other tools.
        in_channels: input channels, from the graph's input shape.
        classes: class names if stored, else None.

    Raises:
        ConfigError: onnxruntime is not installed, or the file does not exist.

    Example:
        >>> model = OnnxModel("model.onnx", threads=2)  # doctest: +SKIP
        >>> model(torch.rand(1, 3, 300, 333)).shape  # doctest: +SKIP
        torch.Size([1, 2, 300, 333])
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None) -> None:
        ort = import_optional("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"ONNX model {str(self.path)!r} does not exist; export one with `pixelwise export`.")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: the CPU provider's notes on unused optimisers are noise
        # no per-shape memory plan: it kept 700 instead of 400 MB for U-Net-ResNet34 on 4×3×512² tiles at the
        # same speed (230-234 ms per tile; 1-2 tiles: 0-7 % slower, near the noise of repeated runs), on a 2-core CPU
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {key: _parse(value) for key, value in meta.items()}
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = _NUMPY_DTYPES.get(model_input.type, np.float32)
        channels = model_input.shape[1] if len(model_input.shape) == 4 else None
        self.in_channels: int | None = channels if isinstance(channels, int) else self.metadata.get("in_channels")
        self.classes: list[str] | None = self.metadata.get("classes")
        self.input_multiple = int(self.metadata.get("input_multiple", 1))
        self.raw = self.metadata.get("input_format") == RAW

    def check_size(self, height: int, width: int) -> None:
        """Raise InputSizeError for sizes the exported padding cannot mirror (eager models edge-pad them)."""
        m = self.input_multiple
        if self.metadata.get("valid_convolution") is not True and ((-height) % m >= height or (-width) % m >= width):
            raise InputSizeError(
                f"input {height}×{width} is too small for the exported model, which mirror-pads to multiples "
                f"of {m}: give at least {m}×{m} pixels (pad the image, or predict with pixelwise.Predictor)."
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model: ``[N, C, H, W]`` → ``[N, K, H, W]`` logits (or ``[N, H, W]`` labels)."""
        if x.ndim != 4 or (self.in_channels is not None and x.shape[1] != self.in_channels):
            raise InputSizeError(f"the ONNX model expects input [N, {self.in_channels}, H, W], got {list(x.shape)}.")
        self.check_size(int(x.shape[-2]), int(x.shape[-1]))
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.input_dtype)
        (output,) = self.session.run(None, {self.input_name: array})[:1]
        return torch.from_numpy(output)

    forward = __call__

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, in_channels={self.in_channels}, classes={self.classes})"
