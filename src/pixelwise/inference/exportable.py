"""Export-friendly forms of pixelwise models: the graphs that ONNX and TorchScript record.

Tracing (``torch.jit.trace`` and the TorchScript-based ONNX exporter) records tensor operations,
including the shape arithmetic on ``x.shape``, but turns every Python ``if`` and ``int()`` into a constant. Four
places in the eager models would therefore be frozen at the sample size, so here they get
branch-free equivalents that give the same numbers:

- :func:`~pixelwise.models.base.pad_to_multiple` skips padding when none is needed: here the input
  is always reflect-padded (by zero rows when the size fits), so 300×333 works after an export at 256×256;
- ``nn.AdaptiveAvgPool2d(b)`` with ``b > 1`` (PSPNet) has no dynamic-size ONNX operator: here it is
  two averaging matrices built from the input size;
- SegNet's max-unpooling with recomputed indices has no ONNX operator: here it is "keep the first
  maximum of each 2×2 window", which is what ``max_pool2d``'s indices point to;
- the valid-convolution U-Net's crop computes its offsets with ``int()``: here they stay tensors.

:class:`RawImageModel` adds the preprocessing (uint8 → normalised float, optional resize) and the
argmax in front of and behind the network, for deployments that only have raw pixels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.data.transforms import shift_image
from pixelwise.models.base import SegmentationModel
from pixelwise.models.geometry import uses_valid_convolution
from pixelwise.models.segnet import unpool_first_maximum  # noqa: F401  (kept importable from here)

UINT8_MAX = 255.0
"""Raw 8-bit pixel values are divided by this to land in [0, 1], as the training data loader does."""


class ExportableModel(nn.Module):
    """A pixelwise model with branch-free padding, so that traced graphs work for any H, W.

    Args:
        model: a :class:`~pixelwise.models.SegmentationModel` (padded to its ``input_multiple``
            and cropped back; the valid-convolution U-Net runs ``forward_valid``) or any module
            mapping ``[N, C, H, W]`` to ``[N, K, H, W]`` (run as it is).
        activation: apply the model's output activation (False: raw logits).

    Shape: ``[N, C, H, W]`` float, normalised → ``[N, K, H, W]`` (valid-conv models: smaller by
    twice their border). Padded models need ``(-H) % input_multiple < H`` and the same for W, the
    sizes at which eager models mirror-pad (smaller inputs are edge-padded in eager mode).
    """

    def __init__(self, model: nn.Module, activation: bool = True) -> None:
        super().__init__()
        self.model = model
        self.segmentation = isinstance(model, SegmentationModel)
        self.multiple = int(getattr(model, "input_multiple", 1)) if self.segmentation else 1
        self.valid_conv = uses_valid_convolution(model)
        self.apply_activation = activation

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores before the output activation (what the model's ``forward_padded`` computes, cropped)."""
        if not self.segmentation:
            return self.model(x)
        if self.valid_conv:
            return self.model.forward_valid(x)
        if self.multiple == 1:
            return self.model.forward_padded(x)
        height, width = x.shape[-2], x.shape[-1]
        # (m - n % m) % m, not (-n) % m: traced sizes are tensors, and this form stays non-negative
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.model.forward_padded(padded)[:, :, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        if self.segmentation and self.apply_activation:
            return self.model.activation(logits)
        return logits


def _average_matrix(size: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``[bins, size]`` rows averaging the windows ``[⌊i·size/bins⌋, ⌈(i+1)·size/bins⌉)`` (adaptive pooling)."""
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    position = torch.arange(size, device=like.device)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class AdaptiveAvgPoolMatrix(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two matrix products, which trace for any input size.

    Shape: ``[N, C, H, W] → [N, C, bins_h, bins_w]``.
    """

    def __init__(self, output_size: int | Sequence[int]) -> None:
        super().__init__()
        self.bins = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _average_matrix(x.shape[-2], self.bins[0], x)
        cols = _average_matrix(x.shape[-1], self.bins[1], x)
        return rows @ x @ cols.transpose(0, 1)


def exportable_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with adaptive pools replaced by :class:`AdaptiveAvgPoolMatrix`."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if not isinstance(child, nn.AdaptiveAvgPool2d):
                continue
            size = child.output_size
            bins = (size, size) if isinstance(size, int) else tuple(size)
            # global pooling (1×1) exports as GlobalAveragePool; None ("keep this size") needs no pooling matrix
            if bins != (1, 1) and all(isinstance(b, int) for b in bins):
                setattr(parent, name, AdaptiveAvgPoolMatrix(bins))
    return model


def _resize_matrix(size_in: torch.Tensor | int, size_out: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """``[size_out, size_in]`` weights of PyTorch's antialiased bilinear resize (``antialias=True``).

    A triangle filter as wide as the scale ratio when shrinking (one pixel when enlarging),
    centred on each output pixel, clipped at the borders and normalised to sum 1.
    """
    ratio = torch.as_tensor(size_in, dtype=torch.float64) / torch.as_tensor(size_out, dtype=torch.float64)
    support = torch.clamp(ratio, min=1.0)
    centre = (torch.arange(size_out, device=like.device, dtype=torch.float64) + 0.5) * ratio
    position = torch.arange(size_in, device=like.device, dtype=torch.float64) + 0.5
    weights = torch.clamp(1 - ((position[None, :] - centre[:, None]) / support).abs(), min=0)
    return (weights / weights.sum(1, keepdim=True)).to(like.dtype)


def antialiased_resize(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", antialias=True)`` as two matrix products (traceable).

    Costs ``O(H·W·(h + w))``: fine for the usual scales; the exported graph has no antialiased Resize.

    Shape: ``[N, C, H, W] → [N, C, size[0], size[1]]``.
    """
    rows = _resize_matrix(x.shape[-2], size[0], x)
    cols = _resize_matrix(x.shape[-1], size[1], x)
    return rows @ x @ cols.transpose(0, 1)


def _scaled(n: torch.Tensor | int, scale: float) -> torch.Tensor | int:
    """``max(1, round(n·scale))`` for Python and traced sizes (both round half to even)."""
    if isinstance(n, int):
        return max(1, round(n * scale))
    return torch.clamp(torch.round(n.to(torch.float64) * scale), min=1).to(torch.int64)


class RawImageModel(nn.Module):
    """Raw pixels in, class labels out: the whole inference of a trained model in one graph.

    Steps: uint8 → float / 255 → ``(x - mean) / std`` → shift by ``mask_offset`` (see
    :func:`~pixelwise.data.transforms.shift_image`, when it is not 0) → resize by ``scale`` (antialiased, when it
    is not 1) → network → logits resized back to the input size (bilinear) → labels: argmax over
    classes, or ``logit > 0`` (sigmoid > 0.5) for a single-class model.

    Shape: ``uint8 [N, C, H, W]`` (channels first; an ``[H, W, C]`` image becomes
    ``image.transpose(2, 0, 1)[None]``) → ``int64 [N, H, W]``.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        scale: float = 1.0,
        mask_offset: tuple[float, float] | list[float] = (0.0, 0.0),
    ) -> None:
        super().__init__()
        self.network = ExportableModel(model, activation=False)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.scale = float(scale)
        self.mask_offset = (float(mask_offset[0]), float(mask_offset[1]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.to(torch.float32) / UINT8_MAX - self.mean) / self.std
        height, width = x.shape[-2], x.shape[-1]
        x = shift_image(x, self.mask_offset)
        if self.scale != 1:
            x = antialiased_resize(x, (_scaled(height, self.scale), _scaled(width, self.scale)))
        logits = self.network.logits(x)
        if self.scale != 1:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).to(torch.int64)
        return logits.argmax(1)
