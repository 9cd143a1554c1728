"""The base classes of pixelwise models.

:class:`SegmentationModel` owns what all architectures share, once: padding the input to the
model's ``input_multiple`` and cropping the logits back, the output activation, and saving
(``save_pretrained``). :class:`EncoderDecoderModel` adds what the encoder-based architectures
share: the constructor arguments of the encoder, input and output (documented there, once),
building the encoder, the head and the activation, ``input_multiple`` from the encoder's
reductions, and encoder freezing. An encoder-based architecture only builds its decoder.

Auxiliary outputs (deep supervision of the U-Net family, the auxiliary FCN head of PSPNet, DeepLab
and UPerNet) are for training only; ``forward`` never returns them::

    forward(x)          → main logits                      (inference, export, Predictor, metrics)
    forward_with_aux(x) → (main logits, [aux logits, ...]) (training losses; finest first, each at
                                                            its own stride; [] without aux heads)
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.errors import ConfigError, InputSizeError, InputTypeError, closest
from pixelwise.io import atomic_path, save_weights
from pixelwise.models.blocks import ClassificationHead, SegmentationHead, make_activation
from pixelwise.models.encoder_names import resolve_encoder_name
from pixelwise.models.encoders import TimmEncoder, WeightsSpec, build_encoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
AUX_HEADS = "aux_heads"
"""The attribute (and state-dict prefix) of a model's auxiliary heads, built only when asked for (deep
supervision or ``aux_head=True``): a model without them has no such weights."""
AUX_FEATURE_INDEX = -2
"""The encoder feature the auxiliary FCN head reads: the second-deepest, as MMSegmentation's
``auxiliary_head`` (``in_index=-2``: ResNet's layer3, stride 16, or 8 when dilated) and torchvision's
``aux_classifier`` (layer3)."""
AUX_HEAD_REDUCTION = 4
"""The auxiliary FCN head's hidden channels are its input channels divided by this (torchvision's FCNHead;
1024 → 256, MMSegmentation's ``channels=256`` for ResNet-50)."""
AUX_HEAD_DROPOUT = 0.1
"""Dropout probability of the auxiliary FCN head (torchvision and MMSegmentation)."""


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


FULL_SCALE = {"uint8": 255, "uint16": 65535}
"""The largest 8- and 16-bit pixel values: dividing by them maps pixels to [0, 1], as the data loader does."""


def _type_name(x: object) -> str:
    """``a numpy.ndarray [1, 3, 64, 64]``: the type of a non-tensor input, and its shape if it has one."""
    name = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
    shape = getattr(x, "shape", None)
    return f"a {name}" + (f" {list(shape)}" if shape is not None else "")


def _described(x: torch.Tensor) -> str:
    """``uint8 [1, 3, 64, 64]``: a tensor's dtype and shape."""
    return f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}"


def _scaled(dtype: object) -> str:
    """`` / 255`` for 8-bit pixels, `` / 65535`` for 16-bit ones, else nothing."""
    scale = FULL_SCALE.get(str(dtype).removeprefix("torch."))
    return f" / {scale}" if scale else ""


def _tensor_hint(x: object) -> str:
    """How to turn a non-tensor ``x`` into the float tensor a model takes."""
    if type(x).__module__ == "numpy":
        return f"convert with torch.from_numpy(x).float(){_scaled(getattr(x, 'dtype', ''))}"
    return "convert with torch.as_tensor(x, dtype=torch.float32)"


def _float_hint(dtype: torch.dtype) -> str:
    """How to turn an integer tensor into floats in [0, 1]."""
    scaled = _scaled(dtype)
    return f"x.float(){scaled}" if scaled else "x.float() (scaled as the training images were)"


def _layout_hint(x: torch.Tensor, channels: int) -> str:
    """How to fix an input with the wrong number of dimensions."""
    if x.ndim == 3 and x.shape[0] == channels:
        return "add the batch dimension with x[None] (or x.unsqueeze(0))"
    return "give a batch of images [N, C, H, W]"


def _channel_hint(x: torch.Tensor, channels: int) -> str:
    """How to fix an input with the wrong number of channels."""
    if x.shape[-1] == channels:
        return "the channels come last; use x.permute(0, 3, 1, 2)"
    return f"give {channels}-channel images, or build the model with in_channels={x.shape[1]}"


def _option_hint(name: str, options: list[str]) -> str:
    close = closest(name, options, n=2)
    return f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_ints(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)


OPTION_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an integer"),
    "int | None": (lambda v: v is None or _is_int(v), "an integer or None"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Sequence[int]": (_is_ints, "a list of integers"),
    "Sequence[int] | None": (lambda v: v is None or _is_ints(v), "a list of integers or None"),
    "int | Sequence[int]": (lambda v: _is_int(v) or _is_ints(v), "an integer or a list of integers"),
}
"""Constructor annotations (as written in the source) → test and description of the values they accept."""


def _check_options(model: str, signature: inspect.Signature, arguments: dict[str, Any]) -> None:
    """Refuse constructor ``arguments`` whose type does not fit their annotation, and integers below 1
    (below 0 for options whose default is 0, which means "off"). Arguments left out are not checked.

    Raises:
        ConfigError: naming the model, the argument, its value and what it accepts.
    """
    for name, value in arguments.items():
        parameter = signature.parameters[name]
        kind = OPTION_KINDS.get(str(parameter.annotation))
        if kind is None:
            continue
        accepts, description = kind
        if not accepts(value):
            raise ConfigError(f"{model}: {name}={value!r} is not valid; give {description}.")
        least = 0 if _is_int(parameter.default) and parameter.default == 0 else 1
        ints = [value] if _is_int(value) else value if _is_ints(value) else []
        if any(v < least for v in ints):
            allowed = "positive integers" if least else "integers >= 0 (0 turns it off)"
            raise ConfigError(f"{model}: {name}={value!r} is not valid; give {allowed}.")


KERAS_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "backbone_name": (("encoder_name",), {}),
    "decoder_filters": (("decoder_channels",), {}),
    "decoder_block_type": (
        ("decoder_upsampling", "decoder_interpolation"),
        {"upsampling": "nearest", "transpose": "transposed"},
    ),
    "pyramid_block_filters": (("decoder_pyramid_channels",), {}),
    "pyramid_dropout": (("decoder_dropout",), {}),
    "pyramid_aggregation": (("decoder_merge_policy",), {"sum": "add", "concat": "cat"}),
}
"""Keras segmentation_models option → (the pixelwise options it may stand for, the first an architecture has
wins; translation of its values). ``input_shape`` is handled apart (see :func:`_keras_options`)."""

ENCODER_KWARGS = "encoder_kwargs"
"""The ``model.config`` entry holding the keyword arguments passed on to the timm encoder."""


def _keras_options(model: str, parameters: Mapping[str, inspect.Parameter], kwargs: dict[str, Any]) -> None:
    """Rename Keras segmentation_models options in ``kwargs`` to pixelwise's, in place.

    ``input_shape=(H, W, C)`` sets ``in_channels=C``; H and W are not needed (any size works), and a
    warning says so when they are given.

    Raises:
        ConfigError: an option is given in both spellings with different values.
    """
    renamed: dict[str, Any] = {}
    for key in [k for k in kwargs if k not in parameters and k in KERAS_OPTIONS]:
        targets, values = KERAS_OPTIONS[key]
        target = next((t for t in targets if t in parameters), None)
        if target is not None:
            value = kwargs.pop(key)
            renamed[target] = values.get(value, value) if isinstance(value, str) else value
    if "input_shape" in kwargs and "input_shape" not in parameters and "in_channels" in parameters:
        shape = kwargs.pop("input_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise ConfigError(f"{model}: input_shape={shape!r} must be (height, width, channels): (None, None, 3).")
        if shape[2] is not None:
            renamed["in_channels"] = shape[2]
        if shape[0] is not None or shape[1] is not None:
            warnings.warn(
                f"{model}: input_shape's height and width {tuple(shape[:2])} are not needed: pixelwise models take "
                "any height and width (only the channels are used).",
                UserWarning,
                stacklevel=4,
            )
    for key, value in renamed.items():
        if key in kwargs and kwargs[key] != value:
            raise ConfigError(f"{model}: {key}={kwargs[key]!r} contradicts its Keras spelling ({value!r}); give one.")
        kwargs[key] = value


def _timm_accepts(encoder_name: Any, key: str, value: Any) -> bool:
    """Whether timm's constructor of ``encoder_name`` takes the keyword ``key`` (tried on the meta device)."""
    if not isinstance(encoder_name, str):
        return False
    name = resolve_encoder_name(encoder_name)
    if not timm.is_model(name):
        return False
    try:
        with torch.device("meta"):
            timm.create_model(name, features_only=True, pretrained=False, **{key: value})
    except TypeError as error:
        return "unexpected keyword" not in str(error)
    except (RuntimeError, AssertionError, ValueError, NotImplementedError, AttributeError, KeyError):
        return True  # the model takes the keyword but not this value: building it says why
    return True


def _encoder_kwargs(model: str, signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take from ``kwargs`` (in place) the keywords that are not constructor options but that the timm
    encoder's constructor accepts (``drop_path_rate``, ``img_size``, ...), and ``encoder_kwargs`` itself.

    Raises:
        ConfigError: ``encoder_kwargs`` is not a dict.
    """
    if "encoder_name" not in signature.parameters:
        return {}
    encoder_kwargs = kwargs.pop(ENCODER_KWARGS, None) or {}
    if not isinstance(encoder_kwargs, Mapping):
        raise ConfigError(f"{model}: {ENCODER_KWARGS}={encoder_kwargs!r} must be a dict of timm options.")
    encoder_kwargs = dict(encoder_kwargs)
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown:
        known = {k: v for k, v in kwargs.items() if k in signature.parameters}
        bound = signature.bind_partial(*args, **known).arguments
        encoder_name = bound.get("encoder_name", signature.parameters["encoder_name"].default)
        for key in unknown:
            if _timm_accepts(encoder_name, key, kwargs[key]):
                encoder_kwargs[key] = kwargs.pop(key)
    return encoder_kwargs


def _record_config(init):
    """Wrap an ``__init__`` so the outermost call stores its arguments as ``model.config``.

    Subclasses that inherit ``__init__`` (``FCN8s`` from a shared FCN base) are covered by the
    parent's wrapper. Keras segmentation_models spellings (``backbone_name=``, ``input_shape=``, see
    :data:`KERAS_OPTIONS`) are renamed; keywords that are no option of the architecture but that its
    timm encoder accepts (``drop_path_rate=0.1``, ``img_size=512``) go to the encoder and are recorded as
    ``config["encoder_kwargs"]``. Other unknown keyword arguments are answered with the closest valid
    option names; values of the wrong type, and impossible counts (``classes=0``), with a ConfigError
    naming them.
    """
    signature = inspect.signature(init)
    options = [p for p in signature.parameters if p != "self"]

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        model = type(self).__name__
        outermost = "_config" not in self.__dict__
        encoder_kwargs: dict[str, Any] = {}
        if outermost:
            _keras_options(model, signature.parameters, kwargs)
            encoder_kwargs = _encoder_kwargs(model, signature, (self, *args), kwargs)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            unknown = [k for k in kwargs if k not in signature.parameters]
            valid = f"Valid options: {', '.join(options)}."
            if unknown:
                hints = "; ".join(_option_hint(name, options) for name in unknown)
                raise ConfigError(f"{model} has no option {hints}. {valid}") from None
            raise ConfigError(f"{model}: {error}. {valid}") from None
        if outermost:
            _check_options(model, signature, {k: v for k, v in bound.arguments.items() if k != "self"})
            self.__dict__["_config"] = None
            self.__dict__["_encoder_kwargs"] = encoder_kwargs  # read by EncoderDecoderModel.__init__
        init(self, *args, **kwargs)
        if outermost:
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop("self")
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name))
            if encoder_kwargs:
                arguments[ENCODER_KWARGS] = encoder_kwargs
            self.__dict__["_config"] = arguments

    return wrapper


class SegmentationModel(nn.Module):
    """Base of all pixelwise models: ``[N, in_channels, H, W] → [N, classes, H, W]`` for any H, W.

    Subclasses set ``self.in_channels``, ``self.classes``, ``self.input_multiple`` and
    ``self.activation`` and implement :meth:`forward_padded` on inputs whose height and width
    are multiples of ``input_multiple``. Encoder-based architectures derive from
    :class:`EncoderDecoderModel`, which does all of that but build the decoder.
    """

    arch_name: ClassVar[str] = ""
    valid_convolution: ClassVar[bool] = False
    """True for a model whose unpadded convolutions make its output smaller than its input (UNet2015): it
    does not pad, and provides ``depth``, ``border()``, ``valid_input_size(n)``, ``output_size(n)`` and
    ``forward_valid(x)`` instead (see :mod:`pixelwise.models.geometry`)."""
    input_multiple: int = 1
    in_channels: int
    classes: int
    aux_strides: tuple[int, ...] = ()
    """The stride of each auxiliary output of :meth:`forward_with_aux` (finest first); empty without them."""
    aux_heads: nn.ModuleList
    """The auxiliary heads (see :data:`AUX_HEADS`), registered only in a model built with them (no class
    default: a class attribute would hide the registered module)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_config(cls.__dict__["__init__"])

    # -- forward ---------------------------------------------------------------------------
    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes, H, W]`` for an input whose H, W are multiples of ``input_multiple``."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is a float tensor ``[N, in_channels, H, W]`` with H, W ≥ 1.

        Looks at the type, dtype and shape only (no data). While tracing or compiling, sizes may be
        symbolic, so only the type, dtype and number of dimensions are checked then.

        Raises:
            InputTypeError: ``x`` is not a tensor (e.g. a NumPy array), holds integers (e.g. uint8), or
                floats of another precision than the model's weights (float64; unless autocast is on).
            InputSizeError: wrong number of dimensions or channels, or an empty image.
        """
        expected = f"{type(self).__name__} expects input [N, {self.in_channels}, H, W] of floats"
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{expected}; got {_type_name(x)}: {_tensor_hint(x)}")
        if not x.is_floating_point():
            raise InputTypeError(f"{expected}; got {_described(x)}: convert with {_float_hint(x.dtype)}")
        weights = next((p.dtype for p in self.parameters() if p.is_floating_point()), x.dtype)
        if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
            convert = "x.float()" if weights == torch.float32 else f"x.to({weights})"
            computes = str(weights).removeprefix("torch.")
            raise InputTypeError(f"{expected}; got {_described(x)}: the model computes in {computes}; use {convert}")
        if x.ndim != 4:
            raise InputSizeError(f"{expected}; got {_described(x)}: {_layout_hint(x, self.in_channels)}")
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return  # the sizes may be symbolic here: never raise on them
        channels, height, width = x.shape[1:]
        if channels != self.in_channels:
            raise InputSizeError(f"{expected}; got {_described(x)}: {_channel_hint(x, self.in_channels)}")
        if height == 0 or width == 0:
            raise InputSizeError(
                f"{expected}; got {_described(x)}: the image is empty (height and width must be at least 1)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``[N, in_channels, H, W] → [N, classes, H, W]`` (after the output activation)."""
        self.check_input(x)
        height, width = x.shape[-2:]
        output = self.forward_padded(pad_to_multiple(x, self.input_multiple))
        if isinstance(output, tuple):  # (masks, image labels) of a model with aux_params
            masks, labels = output
            return self.activation(masks[..., :height, :width]), labels
        return self.activation(output[..., :height, :width])

    @property
    def has_aux_outputs(self) -> bool:
        """Whether the model was built with auxiliary heads (deep supervision or an auxiliary FCN head)."""
        return AUX_HEADS in self._modules

    def forward_padded_with_aux(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        """:meth:`forward_padded`'s output and the auxiliary logits, finest first (none here: a model with
        auxiliary heads overrides this)."""
        return self.forward_padded(x), []

    def forward_with_aux(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        """The main output (what :meth:`forward` returns) and the auxiliary logits, for training losses.

        A model built without auxiliary heads returns ``(self(x), [])``. Otherwise each auxiliary output is
        at its own stride ``s`` (cropped to ``ceil(H / s) × ceil(W / s)`` as the main output is to ``H × W``),
        finest first, after the model's output activation, as the main output.

        Shape: ``[N, in_channels, H, W]`` → ``([N, classes, H, W], [[N, classes, H / s_i, W / s_i], ...])``.

        Raises:
            InputTypeError, InputSizeError: as :meth:`forward`.
        """
        if not self.has_aux_outputs:
            return self(x), []
        self.check_input(x)
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.input_multiple)
        output, aux = self.forward_padded_with_aux(padded)
        if isinstance(output, tuple):  # (masks, image labels) of a model with aux_params
            main: Any = (self.activation(output[0][..., :height, :width]), output[1])
        else:
            main = self.activation(output[..., :height, :width])
        cropped = []
        for logits in aux:
            stride_h, stride_w = padded.shape[-2] // logits.shape[-2], padded.shape[-1] // logits.shape[-1]
            cropped.append(self.activation(logits[..., : -(-height // stride_h), : -(-width // stride_w)]))
        return main, cropped

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; with ``strict=False`` entries whose shape differs from the model's
        (a head for another number of classes, when fine-tuning) are also dropped, with a warning naming them,
        instead of failing: those layers keep their fresh initialisation (as segmentation_models_pytorch does).
        """
        if not strict:
            own = self.state_dict()
            mismatched = {
                key: (tuple(value.shape), tuple(own[key].shape))
                for key, value in state_dict.items()
                if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape)
            }
            if mismatched:
                listed = "; ".join(f"{key} {found} → model {wanted}" for key, (found, wanted) in mismatched.items())
                warnings.warn(
                    f"{len(mismatched)} weight(s) of another shape were not loaded and keep their initial values "
                    f"(train the model before using it): {listed}",
                    UserWarning,
                    stacklevel=2,
                )
                state_dict = {key: value for key, value in state_dict.items() if key not in mismatched}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Switch to eval mode and run :meth:`forward` without autograd."""
        if self.training:
            self.eval()
        return self(x)

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
        from pixelwise._version import __version__

        config = {"arch": self.arch_name, "options": options, "pixelwise_version": __version__}
        with atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(config, indent=2, default=list) + "\n")
        save_weights(self.state_dict(), directory / WEIGHTS_NAME)
        return directory


class EncoderFreezing(nn.Module):
    """Freezing of a model's ``encoder`` (a mixin: :class:`EncoderDecoderModel`, DPT)."""

    encoder: nn.Module
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

    def train(self, mode: bool = True) -> EncoderFreezing:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self


class EncoderDecoderModel(EncoderFreezing, SegmentationModel):
    """Base of the encoder-based architectures: timm encoder → decoder → head → activation.

    It builds the encoder, pads inputs to ``2**encoder_depth`` (``input_multiple``: the deepest
    stride of the undilated encoder, kept when the encoder is dilated; larger where the encoder needs
    it, e.g. stride × attention window for MaxViT),
    builds the decoder with the architecture's ``decoder`` factory, the head (a convolution to
    ``classes`` channels, upsampled by the decoder's ``output_stride``) and the output activation,
    and freezes the encoder if asked. An architecture's constructor keeps its own signature (its
    defaults, and what ``model.config`` records) and passes the shared arguments on.

    Args:
        decoder: builds the architecture's decoder from the encoder. The decoder maps the encoder's
            features (shallow to deep) to one map with ``out_channels`` channels at stride
            ``output_stride`` (attributes; 1 when absent), which the head turns into class scores.
        encoder_name: any timm model with feature_info (e.g. ``"resnet34"``, ``"convnext_tiny"``,
            ``"swin_tiny_patch4_window7_224"``); an ``smp``-style ``"tu-"`` prefix, SMP's encoder names
            (``"efficientnet-b0"``, ``"se_resnext50_32x4d"``) and Keras segmentation_models' backbone names
            (``"efficientnetb0"``, ``"seresnet18"``) are accepted (:mod:`pixelwise.models.encoder_names`).
            Positional first, as in the Keras spelling (``Unet("resnet34")``; ``backbone_name=`` works too).
            Transformers take any input size: plain ViTs (one stride) get a feature pyramid at strides 4 … 32
            (:class:`~pixelwise.models.encoders.SimplePyramid`), windowed ones (MaxViT) pad to a multiple of
            their window, fixed-size ones (CoAtNet, Hiera) run on tiles of their size (see
            :class:`~pixelwise.models.encoders.TimmEncoder`).
        encoder_depth: number of stride-2 stages used; the input is padded to the encoder's deepest
            stride (``2**depth`` for an undilated encoder).
        encoder_weights: ``None``, ``"imagenet"``, or a local ``.safetensors``/``.pth`` path.
        encoder_freeze: keep the encoder's weights and BatchNorm statistics fixed (see
            :meth:`freeze_encoder`).
        in_channels: input image channels.
        classes: output channels (class scores).
        activation: ``None`` (logits), ``"sigmoid"``, ``"softmax"``, ... or a callable.
        encoder_output_stride: dilate the encoder's last stages so its deepest stride is this (8 or
            16); an encoder that cannot be dilated is used undilated, with a warning.
        aux_params: adds a classification head on the deepest encoder features
            (:class:`~pixelwise.models.blocks.ClassificationHead`): a dict with ``classes`` (required),
            ``pooling`` (``"avg"`` or ``"max"``), ``dropout`` and ``activation``. The model then returns
            ``(mask, labels)``, ``labels`` ``[N, classes]``, as segmentation_models_pytorch's models do.
        encoder_kwargs: keyword arguments for ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...).
            Architectures receive them as extra keywords (``Unet("convnext_tiny", drop_path_rate=0.1)``), which
            the config-recording wrapper sets aside and records as ``config["encoder_kwargs"]``.
        head_upsampling: the head's bilinear upsampling factor; None (default): the decoder's
            ``output_stride``, which brings the scores back to the input size.
        head_align_corners: whether the head's upsampling aligns corners, for architectures where it is an
            option (DeepLabV3+); None (default): the class's :attr:`head_align_corners`.
        aux_head: add an auxiliary FCN head (:class:`AuxiliaryFCNHead`) on the second-deepest encoder feature,
            for training (``forward_with_aux``; ``forward`` ignores it), as torchvision's ``aux_classifier`` and
            MMSegmentation's ``auxiliary_head``. Not to be confused with ``aux_params`` (image labels).
    """

    head_kernel_size: ClassVar[int | None] = 3
    """Kernel size of the head's convolution; ``None`` for no head (the decoder already outputs the
    class scores, and :meth:`forward_padded` is overridden)."""
    head_align_corners: ClassVar[bool] = False
    """Whether the head's bilinear upsampling aligns corners: True where segmentation_models_pytorch's head
    upsamples (its heads align corners), so that converted SMP checkpoints give SMP's outputs."""
    encoder: TimmEncoder
    decoder: nn.Module
    head: nn.Module | None

    def __init__(
        self,
        decoder: Callable[[TimmEncoder], nn.Module],
        encoder_name: str,
        encoder_depth: int,
        encoder_weights: WeightsSpec,
        encoder_freeze: bool,
        in_channels: int,
        classes: int,
        activation: str | Callable | None,
        encoder_output_stride: int | None = None,
        aux_params: Mapping[str, Any] | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
        head_upsampling: int | None = None,
        head_align_corners: bool | None = None,
        aux_head: bool = False,
    ) -> None:
        # keywords the config-recording wrapper set aside for the encoder (see _record_config)
        encoder_kwargs = {**self.__dict__.pop("_encoder_kwargs", {}), **(encoder_kwargs or {})}
        super().__init__()
        self.in_channels, self.classes = in_channels, classes
        self.encoder = build_encoder(
            encoder_name, in_channels, encoder_depth, encoder_weights, encoder_output_stride, encoder_kwargs
        )
        # windowed transformers may need more than the deepest stride (MaxViT: stride × window)
        self.input_multiple = math.lcm(2**encoder_depth, getattr(self.encoder, "input_multiple", 1))
        self.decoder = decoder(self.encoder)
        # the segmentation head before the classification head: SMP's order, so state dicts line up
        self.head = None
        if head_upsampling is None:
            head_upsampling = getattr(self.decoder, "output_stride", 1)
        if self.head_kernel_size is not None:
            self.head = SegmentationHead(
                self.decoder.out_channels,
                classes,
                kernel_size=self.head_kernel_size,
                upsampling=head_upsampling,
                align_corners=self.head_align_corners if head_align_corners is None else head_align_corners,
            )
        self.classification_head = _classification_head(aux_params, self.encoder.out_channels[-1])
        if aux_head:
            self.aux_heads = nn.ModuleList([_auxiliary_fcn_head(type(self).__name__, self.encoder, classes)])
            self.aux_strides = (self.encoder.reductions[AUX_FEATURE_INDEX],)
        self.activation = make_activation(activation)
        if encoder_freeze:
            self.freeze_encoder()

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        masks = self.head(self.decoder(features))
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(features[-1])

    def forward_padded_with_aux(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
        """With ``aux_head``: the main output and the auxiliary FCN head's logits on the second-deepest feature."""
        if not self.has_aux_outputs:
            return super().forward_padded_with_aux(x)
        features = self.encoder(x)
        masks = self.head(self.decoder(features))
        aux = [self.aux_heads[0](features[AUX_FEATURE_INDEX])]
        if self.classification_head is None:
            return masks, aux
        return (masks, self.classification_head(features[-1])), aux


class AuxiliaryFCNHead(nn.Sequential):
    """The auxiliary head of torchvision's segmentation models and MMSegmentation's ``auxiliary_head``:
    3×3 conv (no bias) → BatchNorm → ReLU → Dropout(0.1) → 1×1 conv to ``classes``.

    Shape: ``[N, in_channels, h, w] → [N, classes, h, w]``.
    """

    def __init__(self, in_channels: int, classes: int) -> None:
        hidden = max(in_channels // AUX_HEAD_REDUCTION, 1)
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(AUX_HEAD_DROPOUT),
            nn.Conv2d(hidden, classes, 1),
        )


def _auxiliary_fcn_head(model: str, encoder: nn.Module, classes: int) -> AuxiliaryFCNHead:
    """The auxiliary FCN head on ``encoder``'s second-deepest feature.

    Raises:
        ConfigError: the encoder has a single feature level.
    """
    channels = list(encoder.out_channels)
    if len(channels) < -AUX_FEATURE_INDEX:
        raise ConfigError(
            f"{model}: aux_head=True reads the second-deepest encoder feature, but the encoder has "
            f"{len(channels)} feature level; use encoder_depth >= 2 or aux_head=False."
        )
    return AuxiliaryFCNHead(channels[AUX_FEATURE_INDEX], classes)


def _classification_head(aux_params: Mapping[str, Any] | None, in_channels: int) -> ClassificationHead | None:
    """The head ``aux_params`` describes, or None.

    Raises:
        ConfigError: ``aux_params`` is not a dict with ``classes``, or holds an unknown key.
    """
    if aux_params is None:
        return None
    keys = ("classes", "pooling", "dropout", "activation")
    if not isinstance(aux_params, Mapping) or "classes" not in aux_params:
        raise ConfigError(f"aux_params={aux_params!r} must be a dict with 'classes' (and optionally {keys[1:]}).")
    unknown = sorted(set(aux_params) - set(keys))
    if unknown:
        raise ConfigError(f"aux_params has no option {unknown[0]!r}; valid options: {', '.join(keys)}.")
    return ClassificationHead(in_channels, **aux_params)


def segmentation_output(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The masks of a model's output: the output itself, or the first of ``(masks, labels)`` (aux_params)."""
    return output[0] if isinstance(output, tuple) else output
