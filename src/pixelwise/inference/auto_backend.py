"""The default backend, ``"auto"``: eager PyTorch first, ONNX Runtime once the job has shown it is long.

On a CPU in fp32, ONNX Runtime ran U-Net-ResNet34 at 512² 1.13-1.26× faster than pixelwise's best eager path
(folded BatchNorm, channels-last, fused activations; two runs), and five registered models (U-Net over
ResNet-18/34/50, FPN-EfficientNet-B0, SegFormer-B0) 1.07-1.55× faster than folded eager PyTorch. Getting there
costs a switch: about 2.5-3 s on a 2-core CPU (import onnx, trace, write, verify at another size and batch, open
a session; docs/RESULTS.md). Paying it for one small image would make the default slower, so the choice is made
the way a ski-rental problem is solved: run eagerly until the job has spent about what the switch costs, then
switch. A job never takes much more than twice as long as the better choice in hindsight, and a long job (a
folder, a large image in tiles, a server answering requests) runs on the faster engine. The price is memory:
ONNX Runtime holds its own copy of the weights and of the activations (streaming a 64 Mpx image peaked at
1.66 GB instead of 1.47 GB); ``backend="torch"`` keeps the smaller footprint.

The amount is counted in pixels, not seconds (:data:`SWITCH_PIXELS`), so that when the switch happens
does not depend on the machine's load: the same inputs give the same outputs on every run.

The switch keeps the eager model's results to within :data:`SWITCH_TOLERANCE`: the exported graph is
checked by :func:`~pixelwise.inference.export.export_onnx` at another size and batch, and again on the
batch at hand, against the eager output just computed; if either check fails, if onnxruntime is not
installed or the export is not possible, eager PyTorch goes on and :attr:`SwitchingForward.note` says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pixelwise.errors import InputSizeError

if TYPE_CHECKING:
    from pixelwise.inference.onnx_runtime import OnnxModel

SWITCH_PIXELS = 2**21
"""Pixels (batch × height × width) run eagerly before the switch: 8 inputs of 512², 32 of 256². For a
ResNet-34 U-Net on a 2-core CPU their eager time (8 × 0.27-0.33 s) is about what the switch costs (2.5-3 s:
importing onnx, tracing, checking at another size, opening the session)."""
SWITCH_TOLERANCE = 1e-4
"""Largest accepted difference between ONNX Runtime's and eager PyTorch's logits on the switching batch,
in units of ``max(1, largest |logit|)``, as for exports (``export_check.DEFAULT_TOLERANCE``)."""

EXPORT_SAMPLE_SIDE = 64
"""Side of the traced example (any size works afterwards): the trace and the check run the model on it, so a
small one exports faster than 256² (ResNet-34 U-Net, three warm exports each: median 1.2 s against 1.8 s)."""

Forward = Callable[[torch.Tensor], torch.Tensor]


def onnxruntime_installed() -> bool:
    """True when both onnx (to export) and onnxruntime (to run) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class SwitchingForward:
    """A forward function that runs ``eager`` until :data:`SWITCH_PIXELS` have gone through, then ONNX Runtime.

    Args:
        module: the prepared module (folded, channels-last, activation removed) that ``eager`` runs; it is
            exported at the switch.
        eager: its forward function (``module``, its ``forward_valid``, or the masks of an aux-head model).
        in_channels: input channels, for modules without an ``in_channels`` attribute.
        switch_pixels: pixels before the switch (default :data:`SWITCH_PIXELS`; 0: at the first call).

    Shape: ``float32 [N, C, H, W]`` → ``float32 [N, K, h, w]`` logits, on the CPU.

    Attributes:
        backend: ``"torch"`` or ``"onnxruntime"``: what runs the next input.
        note: why: pixels still to go, the switch and its measured difference, or why it was not possible.
    """

    def __init__(
        self, module: nn.Module, eager: Forward, in_channels: int | None, switch_pixels: int | None = None
    ) -> None:
        self.module, self.eager, self.in_channels = module, eager, in_channels
        self.switch_pixels = SWITCH_PIXELS if switch_pixels is None else int(switch_pixels)
        self.pixels = 0
        self.onnx: OnnxModel | None = None
        self.pending = True
        self.backend = "torch"
        self.note = self._waiting_note()
        self._folder: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """For copies and pickles: the eager model and the count, not the lock or the ONNX Runtime session (a copy
        that had switched counts again from zero and makes its own session)."""
        state = {**self.__dict__, "_lock": None, "onnx": None, "_folder": None}
        if self.onnx is not None:
            state.update(pixels=0, pending=True, backend="torch", note=self._waiting_note())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def _waiting_note(self) -> str:
        return f"torch until {self.switch_pixels:,} pixels have been predicted, then ONNX Runtime"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            if not _fits(self.onnx, x):
                return self.eager(x)  # too small to mirror-pad in the graph: eager models edge-pad instead
            try:
                return self.onnx(x)
            except Exception as error:  # an optimisation must never fail where eager PyTorch works
                self._stay_eager(f"ONNX Runtime failed on input {list(x.shape)} ({error})", warn=True)
        logits = self.eager(x)
        if self.pending:
            with self._lock:  # a predictor shared by threads (a server) counts each call once and switches once
                if self.pending:
                    self.pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
                    if self.pixels >= self.switch_pixels:
                        self._switch(x, logits)
        return logits

    def _switch(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        """Export the module, check ONNX Runtime on ``x`` against ``logits``, and use it if they agree."""
        self.pending = False
        if not onnxruntime_installed():
            self.note = 'torch: install onnx and onnxruntime (pip install "pixelwise[export]") for a faster CPU engine'
            return
        # imported here: the ONNX modules need the optional export extra, and export_check imports the Predictor
        from pixelwise.inference.export import export_onnx
        from pixelwise.inference.onnx_runtime import OnnxModel

        self._folder = tempfile.TemporaryDirectory(prefix="pixelwise-auto-")
        path = Path(self._folder.name) / "model.onnx"
        try:
            side = max(EXPORT_SAMPLE_SIDE, 2 * int(getattr(self.module, "input_multiple", 1)))
            export_onnx(self.module, path, in_channels=self.in_channels, sample_size=(side, side))
            onnx = OnnxModel(path)
            candidate = onnx(x) if _fits(onnx, x) else None
        except Exception as error:  # export and ONNX Runtime raise many types; any of them means: stay eager
            self._stay_eager(f"the export to ONNX failed ({error})")
            return
        if candidate is None or candidate.shape != logits.shape:
            self._stay_eager("ONNX Runtime's output could not be checked on this input")
            return
        reference = logits.detach().float().cpu()
        difference = float((candidate - reference).abs().max())
        allowed = SWITCH_TOLERANCE * max(1.0, float(reference.abs().max()))
        if not difference <= allowed:
            self._stay_eager(f"ONNX Runtime differs from PyTorch by {difference:.3g} (> {allowed:.3g})")
            return
        self.onnx, self.backend = onnx, "onnxruntime"
        _return_freed_memory()
        self.note = (
            f"ONNX Runtime after {self.pixels:,} pixels in eager PyTorch "
            f"(largest logit difference {difference:.2g} on the switching batch)"
        )

    def _stay_eager(self, reason: str, warn: bool = False) -> None:
        self.onnx, self.backend, self.pending = None, "torch", False
        self.note = f"torch: {reason}"
        if warn:
            warnings.warn(f"pixelwise goes on with PyTorch: {reason}", RuntimeWarning, stacklevel=3)


def _return_freed_memory() -> None:
    """Hand the heap memory the export freed back to the system (glibc keeps it otherwise: 270 MB for a
    ResNet-34 U-Net, measured as resident memory before and after ``malloc_trim``); a no-op elsewhere."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc (macOS, Windows, musl)
        ctypes.CDLL(None).malloc_trim(0)


def _fits(onnx: OnnxModel, x: torch.Tensor) -> bool:
    """Whether the exported graph takes ``x``'s size (it cannot mirror-pad inputs smaller than the padding)."""
    try:
        onnx.check_size(int(x.shape[-2]), int(x.shape[-1]))
    except InputSizeError:
        return False
    return True
