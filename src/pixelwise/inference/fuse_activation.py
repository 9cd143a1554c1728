"""Run each convolution together with the activation after it, as one oneDNN kernel, for CPU inference.

In eager PyTorch ``relu(conv(x))`` is two passes over the feature map: the convolution writes it, the
activation reads and writes it again. On a CPU the activation is memory-bound and costs about a fifth of a
U-Net-ResNet34's time at 512² (``torch.profiler``: ``clamp_min_`` 19 % against the convolutions' 64 %).
oneDNN applies the activation as a post-op inside the convolution's own output loop; PyTorch exposes it as
``torch.ops.mkldnn._convolution_pointwise`` (the kernel inductor's CPU fusion emits). The result is the same
to the last bit on the tested models: the convolution and the activation are computed as before, only not
stored in between.

Which pairs are fused? Module order says nothing about data flow, so an example input decides, as for
BatchNorm folding (:mod:`pixelwise.inference.fuse`): a pair is fused when the activation received exactly the
tensor the convolution returned (through ``nn.Identity`` left by folding), unchanged since (its version
counter: no in-place addition in between), each called once. The fused model is
then checked against the original on the example and the fusion is undone if they differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from pixelwise.models.base import segmentation_output

FUSED_ACTIVATIONS: dict[type[nn.Module], tuple[str, list[float]]] = {
    nn.ReLU: ("relu", []),
    nn.ReLU6: ("hardtanh", [0.0, 6.0]),
    nn.SiLU: ("swish", []),
}
"""Activation modules oneDNN applies as post-ops: ``(attr, scalars)`` of ``_convolution_pointwise``."""
FUSE_RTOL = 1e-5
"""Largest difference, relative to the output's magnitude, accepted between fused and original models."""


def fusion_available() -> bool:
    """True when this PyTorch build has oneDNN and its fused convolution operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class ConvActivation(nn.Module):
    """``activation(conv(x))`` in one oneDNN call for float32 CPU inference; the two modules otherwise.

    Attributes:
        conv: the ``nn.Conv2d`` (zero padding, numeric ``padding``).
        activation: the activation module, applied separately where the fused kernel does not apply
            (autograd, other devices or dtypes, autocast).
    """

    def __init__(self, conv: nn.Conv2d, activation: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation
        self.attr, self.scalars = FUSED_ACTIVATIONS[type(activation)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if not _fused_path(x, conv):
            return self.activation(conv(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            conv.weight,
            conv.bias,
            *_geometry(conv),
            self.attr,
            self.scalars,
            "",
        )


class FusedBasicBlock(nn.Module):
    """timm's ResNet ``BasicBlock`` with its second convolution, the shortcut addition and the final ReLU as one
    oneDNN call (``_convolution_pointwise.binary``: ``relu(conv2(y) + shortcut)``); the block itself otherwise."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    @staticmethod
    def applies(block: nn.Module) -> bool:
        """A BasicBlock whose BatchNorm after ``conv2`` is folded, with no squeeze-excitation or drop path."""
        return (
            isinstance(block, timm.models.resnet.BasicBlock)
            and _fusable(block.conv2)
            and isinstance(block.bn2, nn.Identity)
            and block.se is None
            and isinstance(block.drop_path, nn.Identity | None)
            and type(block.act2) is nn.ReLU
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if not _fused_path(x, block.conv2):
            return block(x)
        y = block.aa(block.act1(block.drop_block(block.bn1(block.conv1(x)))))
        shortcut = x if block.downsample is None else block.downsample(x)
        layout = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        conv = block.conv2
        return torch.ops.mkldnn._convolution_pointwise.binary(
            y,
            shortcut.contiguous(memory_format=layout),
            conv.weight,
            conv.bias,
            *_geometry(conv),
            "add",
            1.0,
            "relu",
            [],
            "",
        )


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    """``padding, stride, dilation, groups`` as oneDNN's fused convolution operators take them."""
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def _fused_path(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """float32 CPU inference: where oneDNN's fused kernels apply (autograd, autocast and tracing for an
    ONNX export run the modules)."""
    return (
        x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


def _fusable(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.weight.dtype == torch.float32
    )


def _pairs_by_hooks(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """``(conv name, activation name)`` pairs where the activation received the conv's output, and the output.

    A pair qualifies when both modules ran once, the activation's input is the very tensor the convolution
    returned and unchanged since (its version counter: timm's BasicBlock adds the shortcut in place,
    ``x += shortcut``, between ``conv2`` and ``act2``), and no other module read that tensor before it changed.
    """
    named = dict(model.named_modules())
    convs = {name for name, module in named.items() if _fusable(module)}
    leaves = [n for n, m in named.items() if not isinstance(m, nn.Identity) and next(m.children(), None) is None]
    outputs: dict[str, tuple[torch.Tensor, int]] = {}  # the tensors themselves: an id can be reused
    calls: dict[str, int] = {}
    readers: dict[str, list[str]] = {}

    def after_conv(name: str, output: torch.Tensor) -> None:
        outputs[name] = (output, output._version)

    def before_leaf(name: str, inputs: Sequence[Any]) -> None:
        calls[name] = calls.get(name, 0) + 1
        for conv, (out, version) in outputs.items():
            # after an in-place change (an in-place activation: later readers see what fusion gives them too;
            # an in-place addition: the activation no longer reads the conv's output) reads are not the conv's
            if out._version == version and any(x is out for x in inputs):
                readers.setdefault(conv, []).append(name)

    handles = [named[n].register_forward_hook(lambda _m, _i, out, n=n: after_conv(n, out)) for n in convs]
    handles += [named[n].register_forward_pre_hook(lambda _m, i, n=n: before_leaf(n, i)) for n in leaves]
    try:
        with torch.no_grad():  # not inference_mode: its tensors have no version counters
            reference = segmentation_output(model(example))
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for conv, names in readers.items():
        only = names[0] if len(names) == 1 else None
        if type(named.get(only)) in FUSED_ACTIVATIONS and calls.get(conv) == calls.get(only) == 1:
            pairs.append((conv, only))
    return pairs, reference


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fuse_conv_activations(model: nn.Module, example: torch.Tensor) -> int:
    """Fuse, in place, each convolution of ``model`` whose output goes straight into a ReLU, ReLU6 or SiLU, and
    in timm's ResNet basic blocks the second convolution with the shortcut addition and the ReLU after it.

    Args:
        model: an eval-mode module (e.g. after :func:`~pixelwise.inference.fuse.fold_batchnorm`); changed in place.
        example: an input ``[N, C, H, W]`` on the model's device (a small one is enough).

    Returns:
        The number of fusions (0 when oneDNN is missing, nothing matched, or the fused model's output on
        ``example`` differed from the original's by more than ``FUSE_RTOL`` of its magnitude: then the model
        is left as it was).
    """
    if not fusion_available() or example.device.type != "cpu":
        return 0
    pairs, reference = _pairs_by_hooks(model, example)
    undo = []
    for conv_name, activation_name in pairs:
        conv, activation = model.get_submodule(conv_name), model.get_submodule(activation_name)
        undo.append((conv_name, conv, activation_name, activation))
        _set(model, conv_name, ConvActivation(conv, activation))
        _set(model, activation_name, nn.Identity())
    # after the pairs: the blocks' first convolutions are fused already, the second ones with the addition here
    blocks = [name for name, module in model.named_modules() if FusedBasicBlock.applies(module)]
    for name in blocks:
        block = model.get_submodule(name)
        undo.append((name, block, None, None))
        _set(model, name, FusedBasicBlock(block))
    if not undo:
        return 0
    with torch.inference_mode():
        output = segmentation_output(model(example))
    error = (output.float() - reference.float()).abs().max().item()
    if error <= FUSE_RTOL * (1 + reference.float().abs().max().item()):
        return len(undo)
    for conv_name, conv, activation_name, activation in reversed(undo):
        if activation_name is not None:
            _set(model, activation_name, activation)
        _set(model, conv_name, conv)
    return 0
