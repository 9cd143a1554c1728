"""The base class every pixelwise model derives from.

It owns what all architectures share, once: padding the input to the model's
``input_multiple`` and cropping the logits back, the output activation, encoder
freezing, and saving (``save_pretrained``). An architecture only builds its
encoder, decoder and head and implements :meth:`SegmentationModel.forward_padded`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError, InputSizeError, closest
from pixelwise.io import atomic_path, save_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``[N, C, H, W]`` at the bottom and right to multiples of ``multiple``.

    Mirror (reflect) padding keeps the border statistics natural; inputs too small to mirror
    (padding ≥ size) are padded by repeating the edge instead.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _option_hint(name: str, options: list[str]) -> str:
    close = closest(name, options, n=2)
    return f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")


def _record_config(init):
    """Wrap an ``__init__`` so the outermost call stores its arguments as ``model.config``.

    Subclasses that inherit ``__init__`` (``FCN8s`` from a shared FCN base) are covered by the
    parent's wrapper. Unknown keyword arguments are answered with the closest valid option names.
    """
    signature = inspect.signature(init)
    options = [p for p in signature.parameters if p != "self"]

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            unknown = [k for k in kwargs if k not in signature.parameters]
            valid = f"Valid options: {', '.join(options)}."
            if unknown:
                hints = "; ".join(_option_hint(name, options) for name in unknown)
                raise ConfigError(f"{type(self).__name__} has no option {hints}. {valid}") from None
            raise ConfigError(f"{type(self).__name__}: {error}. {valid}") from None
        outermost = "_config" not in self.__dict__
        if outermost:
            self.__dict__["_config"] = None
        init(self, *args, **kwargs)
        if outermost:
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop("self")
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name))
            self.__dict__["_config"] = arguments

    return wrapper


class SegmentationModel(nn.Module):
    """Base of all pixelwise models: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Subclasses set ``self.in_channels``, ``self.classes``, ``self.input_multiple`` and
    ``self.activation`` and implement :meth:`forward_padded` on inputs whose height and width
    are multiples of ``input_multiple``.
    """

    arch_name: ClassVar[str] = ""
    input_multiple: int = 1
    in_channels: int
    classes: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_config(cls.__dict__["__init__"])

    # -- forward ---------------------------------------------------------------------------
    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes, H, W]`` for an input whose H, W are multiples of ``input_multiple``."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputSizeError` unless ``x`` is ``[N, in_channels, H, W]``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputSizeError(
                f"{type(self).__name__} expects input [N, {self.in_channels}, H, W], got {list(x.shape)}; "
                f"build the model with in_channels={x.shape[1] if x.ndim == 4 else '...'} or fix the input layout."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` (after the output activation)."""
        self.check_input(x)
        height, width = x.shape[-2:]
        logits = self.forward_padded(pad_to_multiple(x, self.input_multiple))
        return self.activation(logits[..., :height, :width])

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Switch to eval mode and run :meth:`forward` without autograd."""
        if self.training:
            self.eval()
        return self(x)

    # -- encoder freezing --------------------------------------------------------------------
    encoder_frozen: bool = False

    def freeze_encoder(self) -> None:
        """Stop training the encoder: no gradients, and BatchNorm statistics stay as they are
        (the encoder is kept in eval mode even when the model trains)."""
        self.encoder_frozen = True
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder.eval()

    def unfreeze_encoder(self) -> None:
        """Undo :meth:`freeze_encoder`."""
        self.encoder_frozen = False
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(True)
        self.encoder.train(self.training)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    # -- saving ----------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments this model was built with (what ``save_pretrained`` stores)."""
        return dict(self.__dict__.get("_config") or {})

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed).

        :func:`pixelwise.from_pretrained` rebuilds the same model from them. Both files are
        written atomically.
        """
        options = self.config
        if "encoder_weights" in options:
            options["encoder_weights"] = None  # the trained weights are in model.safetensors
        for key, value in options.items():
            if callable(value) and not isinstance(value, type):
                raise ConfigError(
                    f"cannot save option {key}={value!r}: only names and numbers can be stored in "
                    f"config.json (for example activation='softmax')."
                )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from pixelwise import __version__

        config = {"arch": self.arch_name, "options": options, "pixelwise_version": __version__}
        with atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(config, indent=2, default=list) + "\n")
        save_weights(self.state_dict(), directory / WEIGHTS_NAME)
        return directory
