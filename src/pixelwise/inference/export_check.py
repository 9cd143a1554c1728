"""What an export needs besides the graph: the model's stored facts, the metadata, and the check.

:func:`resolve` turns what the user passes (module, :class:`~pixelwise.evaluate.LoadedModel`, run
or ``save_pretrained`` directory) into a module and its normalisation, scale and class names;
:func:`metadata` writes those down; :func:`verify` compares an exported model with eager PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise.bundle import FLOAT as FLOAT  # re-exported: the ONNX input formats
from pixelwise.bundle import RAW as RAW
from pixelwise.bundle import ModelBundle, Preprocessing
from pixelwise.data import ClassInfo
from pixelwise.errors import ConfigError, ExportError
from pixelwise.inference.exportable import UINT8_MAX
from pixelwise.inference.loaded import LoadedModel, load_model
from pixelwise.inference.predictor import Predictor, RuntimeOptions
from pixelwise.models.geometry import uses_valid_convolution

DEFAULT_TOLERANCE = 1e-4
"""Largest accepted difference between the exported model's and PyTorch's fp32 outputs, in units of
``max(1, largest |output|)``: absolute for logits up to 1, relative beyond (fp32 rounding error grows
with the values; an untrained ResNet-34 U-Net gives logits near 100 and differences near 2e-4)."""
VERIFY_BATCH = 2
"""Batch size of the verification input: checks that the batch axis is dynamic too."""


def import_optional(name: str) -> Any:
    """Import ``onnx`` / ``onnxruntime``, or raise a ConfigError that names the install command."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(
            f"{name} is not installed, and ONNX export / inference needs it; "
            'install the export extra: pip install "pixelwise[export]"'
        ) from error


def resolve(model: Any, in_channels: int | None, mean: Any, std: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode module to export and what is known about it.

    Returns:
        ``(module, info)`` with ``info`` keys ``in_channels``, ``mean``, ``std`` (lists, one value
        per channel or one for all), ``scale`` (float) and ``classes`` (names, or None).

    Raises:
        ConfigError: a missing path, a module without ``in_channels``, or a wrong number of mean/std values.
    """

    info: dict[str, Any] = {"scale": 1.0, "mask_offset": [0.0, 0.0], "classes": None, "mean": None, "std": None}
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        info |= {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(), "scale": model.scale}
        info["classes"] = list(model.classes.names)
        info["mask_offset"] = list(model.mask_offset)
        model = model.model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"cannot export a {type(model).__name__}; pass a model, a run directory or a saved model.")
    channels = in_channels or getattr(model, "in_channels", None)
    if not isinstance(channels, int):
        raise ConfigError(f"cannot tell how many input channels {type(model).__name__} takes; pass in_channels=...")
    info["in_channels"] = channels
    for name, given, neutral in (("mean", mean, 0.0), ("std", std, 1.0)):
        values = given if given is not None else info[name] or [neutral] * channels
        # float32 is what the graph computes with; str() gives its shortest form (0.2, not 0.20000000298)
        values = [float(str(np.float32(v))) for v in torch.as_tensor(values).flatten().tolist()]
        if len(values) not in (1, channels):
            raise ConfigError(f"{name} has {len(values)} values but the model takes {channels} input channels.")
        info[name] = values
    return model.eval(), info


def metadata(model: nn.Module, info: dict[str, Any], raw: bool) -> dict[str, str]:
    """The string key/value pairs stored with the export (ONNX ``metadata_props``, TorchScript extra file):
    :meth:`ModelBundle.to_onnx_metadata <pixelwise.bundle.ModelBundle.to_onnx_metadata>` of ``model``
    with the facts :func:`resolve` found."""
    names = info["classes"]
    classes = ClassInfo(list(names), list(range(len(names)))) if names else None
    preprocessing = Preprocessing(
        mean=info["mean"], std=info["std"], scale=info["scale"], mask_offset=tuple(info["mask_offset"])
    )
    bundle = ModelBundle(model, preprocessing, classes, in_channels=info["in_channels"])
    return bundle.to_onnx_metadata(raw)


def sizes(model: nn.Module, sample_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The traced sample's ``(H, W)`` and a different verification size (not a multiple of the stride)."""
    if uses_valid_convolution(model):
        step = 2 ** int(model.depth)
        sample = (model.valid_input_size(sample_size[0]), model.valid_input_size(sample_size[1]))
        return sample, (model.valid_input_size(sample[0] + 1), model.valid_input_size(sample[1] + step + 1))
    multiple = int(getattr(model, "input_multiple", 1))
    return tuple(sample_size), (sample_size[0] + multiple + 13, sample_size[1] + 2 * multiple + 7)


def example(info: dict[str, Any], size: tuple[int, int], batch: int, raw: bool) -> torch.Tensor:
    """A random input: ``uint8`` pixels for raw-image exports, standard normal values otherwise."""
    shape = (batch, info["in_channels"], *size)
    return torch.randint(0, int(UINT8_MAX) + 1, shape, dtype=torch.uint8) if raw else torch.randn(shape)


def reference(model: nn.Module, info: dict[str, Any], x: torch.Tensor, raw: bool) -> torch.Tensor:
    """The eager output to reproduce: ``model(x)``, or for raw images the log-probabilities the
    :class:`~pixelwise.inference.Predictor` gives each whole image (shift, normalise, resize by scale,
    forward, resize back): their differences between classes are the logits' margins."""
    if not raw:
        with torch.inference_mode():
            return model(x).float()

    shape = (1, -1, 1, 1)
    mean, std = torch.tensor(info["mean"]).view(shape), torch.tensor(info["std"]).view(shape)
    offset = tuple(info["mask_offset"])
    loaded = LoadedModel(model, mean, std, ClassInfo.default(1), None, info["scale"], mask_offset=offset)
    # unfolded, NCHW, on the CPU and torch only (never switching to the graph under test): the plain eager
    # computation the export must reproduce
    runtime = RuntimeOptions(backend="torch", device="cpu", fold_bn=False, channels_last=False)
    predictor = Predictor(loaded, runtime=runtime)
    probabilities = torch.stack([torch.from_numpy(predictor.predict(image.float() / UINT8_MAX)) for image in x])
    if probabilities.shape[1] == 1:
        return torch.logit(probabilities, eps=1e-7)
    return probabilities.clamp_min(1e-30).log()


def compare(output: torch.Tensor, expected: torch.Tensor, raw: bool) -> tuple[float, int | None]:
    """``(max abs difference, None)`` for float outputs; for labels ``(largest logit margin among
    pixels whose label differs, number of such pixels)``: only near-ties may differ."""
    if not raw:
        if output.shape != expected.shape:
            raise ExportError(
                f"the exported model returned shape {list(output.shape)}, PyTorch {list(expected.shape)}."
            )
        return (output.float() - expected).abs().max().item(), None
    if expected.shape[1] == 1:
        labels, margin = (expected[:, 0] > 0).long(), expected[:, 0].abs()
    else:
        top2 = expected.topk(2, dim=1).values
        labels, margin = expected.argmax(1), top2[:, 0] - top2[:, 1]
    if output.shape != labels.shape:
        raise ExportError(f"the exported model returned shape {list(output.shape)}, expected {list(labels.shape)}.")
    wrong = output.long() != labels
    return (margin[wrong].max().item() if wrong.any() else 0.0), int(wrong.sum())


def verify(
    run: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    info: dict[str, Any],
    raw: bool,
    size: tuple[int, int],
    tolerance: float,
    what: str,
) -> tuple[tuple[int, ...], float, int | None]:
    """Run the exported model (``run``) and eager PyTorch on one random input and compare.

    Returns:
        ``(input shape, difference, label mismatches)`` as :func:`compare` defines them.

    Raises:
        ExportError: the difference exceeds ``tolerance × max(1, largest |output|)`` (or is NaN).
    """
    x = example(info, size, VERIFY_BATCH, raw)
    expected = reference(model, info, x, raw)
    diff, mismatches = compare(run(x), expected, raw)
    allowed = tolerance * max(1.0, expected.abs().max().item())
    if not diff <= allowed:  # also catches NaN
        kind = "label margin" if raw else "output"
        raise ExportError(
            f"the exported {what} model differs from PyTorch ({kind} difference {diff:.3g}) at input shape "
            f"{list(x.shape)} (allowed {allowed:.3g}: tolerance {tolerance:g} × max(1, largest |logit|)); "
            "nothing was written. Please report it with the model's config.json."
        )
    return tuple(x.shape), diff, mismatches
