"""The geometry of valid-convolution models, in one place: the class flag, cropping and mirrored forwards.

A model whose convolutions are unpadded (:class:`pixelwise.UNet2015`) returns an output smaller than its
input and takes only some input sizes. Such a class sets ``valid_convolution = True`` (the flag every
other module reads, through :func:`uses_valid_convolution`) and provides:

- ``depth``: its number of 2×2 poolings; input windows start on the ``2**depth`` grid;
- ``border()``: pixels lost on each side of the input;
- ``valid_input_size(n)``: the smallest valid input side length ≥ ``n``;
- ``output_size(n)``: the output side length for a valid input side length ``n``;
- ``forward_valid(x)``: the network's logits for a valid-size input, without size checks or activation.

The first four are the model's *tile geometry*: what overlap-tile prediction
(:func:`pixelwise.inference.tiling.valid_axis`) and :func:`forward_mirrored` read. :class:`ValidGeometry`
gives it without building the model (for an ONNX export, from the architecture stored with it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pixelwise.data.transforms import mirror_index
from pixelwise.errors import InputSizeError
from pixelwise.models.registry import get_model_class, model_options


def uses_valid_convolution(model: object) -> bool:
    """Whether ``model`` declares the valid-convolution geometry (its class sets ``valid_convolution = True``).

    Any object may be asked: plain callables and other modules have no flag and answer False.
    """
    return getattr(model, "valid_convolution", False) is True


def is_tracing() -> bool:
    """Whether the forward pass runs under the tracer (``torch.jit.trace``, the ONNX exporter): then the
    models take their branch-free, traceable forms of a few ops (offsets that follow the input's shape,
    SegNet's unpooling without indices), chosen inside ``forward``, never by patching modules."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def center_crop(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The central ``size = (height, width)`` window of ``x`` (``[..., H, W]``).

    This is the "copy and crop" of the U-Net paper: the contracting path's feature is larger than the
    upsampled one because its border pixels were lost to the unpadded convolutions on the way down
    and up, so only its middle lines up with the expanding path. Training crops the labels of an input
    tile to the smaller output tile the same way.

    Raises:
        InputSizeError: ``size`` is larger than ``x`` in either dimension.
    """
    if is_tracing():  # no int() and no check: traced offsets must follow the input's size
        top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
        return x[..., top : top + size[0], left : left + size[1]]
    height, width = x.shape[-2:]
    target_h, target_w = int(size[0]), int(size[1])
    if target_h > height or target_w > width:
        raise InputSizeError(f"cannot center-crop a {height}×{width} map to {target_h}×{target_w}")
    top, left = (height - target_h) // 2, (width - target_w) // 2
    return x[..., top : top + target_h, left : left + target_w]


def forward_mirrored(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, model: Any) -> torch.Tensor:
    """Whole-image scores of a valid-convolution model: one pass over the mirror-padded batch.

    ``forward`` maps a valid-size input to scores ``border`` pixels smaller per side (the model itself,
    or a wrapper that normalises first); ``model`` gives the geometry (``border``, ``valid_input_size``).
    The input window starts ``border`` pixels before the image, on the ``2**depth`` grid, so this equals
    overlap-tile prediction (:func:`~pixelwise.inference.tiling.valid_axis`) with mirror padding.

    Shape: ``[N, C, H, W]`` → ``[N, K, H, W]``.
    """
    height, width = batch.shape[-2:]
    border = model.border()
    rows = mirror_index(-border, model.valid_input_size(height + 2 * border) - border, height)
    cols = mirror_index(-border, model.valid_input_size(width + 2 * border) - border, width)
    index_rows, index_cols = (torch.from_numpy(i).to(batch.device) for i in (rows, cols))
    return forward(batch[..., index_rows, :][..., index_cols])[..., :height, :width]


@dataclass(frozen=True)
class ValidGeometry:
    """The tile geometry of a valid-convolution model class at one ``depth``, without building the model.

    ``model_class`` provides ``border(depth)``, ``valid_input_size(n, depth)`` and ``output_size(n, depth)``
    as class-level functions (as :class:`pixelwise.UNet2015` does).
    """

    model_class: type
    depth: int
    valid_convolution: ClassVar[bool] = True

    @classmethod
    def of(cls, arch: str, options: Mapping[str, Any]) -> ValidGeometry:
        """The geometry of the registered architecture ``arch`` built with ``options`` (its ``depth``, or
        the constructor's default).

        Raises:
            ConfigError: ``arch`` is not a registered architecture.
        """
        depth = options.get("depth", model_options(arch).get("depth"))
        return cls(get_model_class(arch), int(depth))

    def border(self) -> int:
        return self.model_class.border(self.depth)

    def valid_input_size(self, n: int) -> int:
        return self.model_class.valid_input_size(n, self.depth)

    def output_size(self, n: int) -> int:
        return self.model_class.output_size(n, self.depth)
