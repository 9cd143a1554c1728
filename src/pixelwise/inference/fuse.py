"""Fold BatchNorm into the convolution before it, for inference.

In eval mode ``BatchNorm2d`` is a per-channel affine map, ``y = γ·(x - μ)/√(σ² + ε) + β``; after a
convolution it can be merged into the convolution's weights and bias, saving one pass over every
feature map. The BatchNorm is then replaced by ``nn.Identity``.

Which pairs are safe? A convolution immediately followed by a BatchNorm among the children of an
``nn.Sequential`` (``ConvBnAct``, timm's ``downsample``) always feeds it. Elsewhere (timm's
``BasicBlock.conv1``/``bn1``, the ResNet stem) child order is only a hint, so such pairs are folded
only when an example input shows, by forward hooks, that the BatchNorm receives exactly the
convolution's output tensor; the folded model is then checked against the original on that input.
"""

from __future__ import annotations

import copy
import itertools
import warnings

import torch
from torch import nn

from pixelwise.models.base import segmentation_output

FOLD_RTOL = 1e-3
"""Largest difference, relative to the output's magnitude, accepted between folded and original models."""


def _candidates(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv child name, bn child name)`` for each Conv2d directly followed by a matching BatchNorm2d."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
            if (
                type(conv) is nn.Conv2d
                and isinstance(bn, nn.BatchNorm2d)
                and bn.num_features == conv.out_channels
                and bn.running_mean is not None
                and bn.running_var is not None
            ):
                pairs.append((parent, conv_name, bn_name))
    return pairs


def _confirmed_by_hooks(model: nn.Module, pairs: list, example: torch.Tensor) -> tuple[set[int], torch.Tensor]:
    """Indices of ``pairs`` whose BatchNorm received its convolution's output on ``example``, and the output."""
    outputs: dict[int, torch.Tensor] = {}  # the tensors themselves, not ids: an id can be reused
    confirmed: set[int] = set()
    handles = []
    for index, (parent, conv_name, bn_name) in enumerate(pairs):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        handles.append(conv.register_forward_hook(lambda _m, _i, out, index=index: outputs.__setitem__(index, out)))
        handles.append(
            bn.register_forward_pre_hook(
                lambda _m, inputs, index=index: confirmed.add(index) if outputs.get(index) is inputs[0] else None
            )
        )
    try:
        with torch.inference_mode():
            reference = segmentation_output(model(example))
    finally:
        for handle in handles:
            handle.remove()
    return confirmed, reference


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Merge ``bn`` into ``conv`` in place (computed in float64, stored in the conv's dtype).

    Returns ``(scale, shift, had_bias)``, what :func:`_unfold_pair` needs to undo it.
    """
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        had_bias = conv.bias is not None
        bias = conv.bias.double() if had_bias else torch.zeros_like(shift)
        conv.weight.copy_((conv.weight.double() * _per_channel(scale, conv)).to(conv.weight.dtype))
        conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype), requires_grad=False)
    return scale, shift, had_bias


def _per_channel(values: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return values.view(-1, *([1] * (conv.weight.ndim - 1)))


def _unfold_pair(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor, had_bias: bool) -> None:
    """Undo :func:`_fold_pair` (exact up to one rounding of the weights)."""
    with torch.no_grad():
        conv.weight.copy_((conv.weight.double() / _per_channel(scale, conv)).to(conv.weight.dtype))
        bias = (conv.bias.double() - shift) / scale
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False) if had_bias else None


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None, inplace: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm2d merged into the Conv2d that feeds it.

    Args:
        model: any module; it is not changed unless ``inplace``.
        example: an input ``[N, C, H, W]`` for the model (any valid size; a small one is enough).
            Without it only pairs inside ``nn.Sequential`` containers are folded.
        inplace: fold ``model`` itself instead of a copy (saves the memory of a copy; for models
            nobody else uses, e.g. one just loaded from disk).

    Returns:
        The folded model (eval mode). If its output on ``example`` differs from the original's by
        more than ``FOLD_RTOL`` of its magnitude, a warning is given and the unfolded model is
        returned instead (a fresh copy, or with ``inplace`` the model restored up to rounding).

    Example:
        >>> fast = fold_batchnorm(model, torch.rand(1, 3, 64, 64))  # doctest: +SKIP
    """
    folded = (model if inplace else copy.deepcopy(model)).eval()
    pairs = _candidates(folded)
    reference = None
    if example is not None:
        confirmed, reference = _confirmed_by_hooks(folded, pairs, example)
        pairs = [pair for index, pair in enumerate(pairs) if index in confirmed or isinstance(pair[0], nn.Sequential)]
    else:
        pairs = [pair for pair in pairs if isinstance(pair[0], nn.Sequential)]
    undo = []
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        undo.append((parent, bn_name, bn, conv, *_fold_pair(conv, bn)))
        setattr(parent, bn_name, nn.Identity())
    if reference is not None and undo:
        with torch.inference_mode():
            output = segmentation_output(folded(example))
        error = (output.float() - reference.float()).abs().max().item()
        if error > FOLD_RTOL * (1 + reference.float().abs().max().item()):
            warnings.warn(
                f"folding BatchNorm changed the model's output by {error:.3g}; using the unfolded model.",
                RuntimeWarning,
                stacklevel=2,
            )
            if not inplace:
                return copy.deepcopy(model).eval()
            for parent, bn_name, bn, conv, scale, shift, had_bias in undo:
                _unfold_pair(conv, scale, shift, had_bias)
                setattr(parent, bn_name, bn)
    return folded
