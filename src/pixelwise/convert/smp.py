"""segmentation_models_pytorch (SMP 0.6) models → pixelwise models, weights included.

:func:`from_smp` reads an SMP model (the object, a ``save_pretrained`` folder or a ``state_dict`` with its
options given as keywords), builds the pixelwise architecture of the same name in SMP's configuration and
copies the weights, so the converted model's outputs equal SMP's.

How the weights are matched:

- the encoder **by name**: SMP's ResNet encoders use torchvision's names, which timm's ResNets share; SMP's
  ``tu-`` encoders are timm models under ``encoder.model``; both are compared with ours after dropping the
  wrappers' ``model.`` prefixes (and with ``_`` read as ``.``, as timm's flattened feature modules write
  ``stages_0`` for ``stages.0``). Mix Transformers (``mit_b*``) are renamed by
  :func:`pixelwise.models.mit.mit_state_dict_from_smp`, and a whole DPT by
  :func:`pixelwise.models.dpt.dpt_state_dict_from_smp`.
- the decoder and the heads **by position**: pixelwise's architectures register their parameters in SMP's
  order with SMP's shapes, so SMP's ``decoder`` / ``segmentation_head`` / ``classification_head`` entries
  are zipped with ours in order, every shape checked.

Where an SMP option has no pixelwise counterpart, the value our architecture always uses is accepted
(``SmpArchitecture.implied``) and any other refused; options pixelwise spells differently are renamed
(:data:`RENAMES`); where SMP's structure is one of several a pixelwise architecture offers, the options
giving it are set (``SmpArchitecture.structure``). SMP's own (not ``tu-``) encoders are dilated as SMP
does it, recorded as the encoder option ``dilate_first_block``. The options set away from pixelwise's
defaults are listed in the model's ``conversion_notes`` and logged at INFO level.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.io import load_weights
from pixelwise.models import SegmentationModel, create_model, get_model_class
from pixelwise.models.encoder_names import resolve_encoder_name
from pixelwise.models.encoders import DILATE_FIRST_BLOCK
from pixelwise.models.registry import model_options

logger = logging.getLogger(__name__)

SMP_CONFIG = "config.json"
SMP_WEIGHTS = "model.safetensors"
SMP_CLASS_KEY = "_model_class"
"""The key SMP's ``save_pretrained`` adds to ``config.json``: the model's class name."""


@dataclass(frozen=True)
class SmpArchitecture:
    """How one SMP class maps to pixelwise.

    Attributes:
        arch: the pixelwise registry name.
        implied: SMP options the pixelwise class may lack, with the value its structure always has; an SMP
            model using another value cannot be converted exactly and is refused.
        defaults: SMP's defaults where they differ from pixelwise's, for state dicts given without them.
        structure: pixelwise options that give SMP's structure (set on every conversion).
    """

    arch: str
    implied: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    structure: Mapping[str, Any] = field(default_factory=dict)


COMMON_IMPLIED: dict[str, Any] = {"aux_params": None, "decoder_attention_type": None, "decoder_use_norm": "batchnorm"}
"""Options of several SMP architectures, and their value where a pixelwise class has no such option."""
SMP_ARCHITECTURES: dict[str, SmpArchitecture] = {
    "Unet": SmpArchitecture("unet", {"decoder_interpolation": "nearest"}),
    "UnetPlusPlus": SmpArchitecture("unetplusplus", {"decoder_interpolation": "nearest"}),
    "MAnet": SmpArchitecture("manet", {"decoder_interpolation": "nearest"}),
    "Linknet": SmpArchitecture("linknet"),
    "FPN": SmpArchitecture("fpn", {"decoder_interpolation": "nearest", "upsampling": 4}),
    "PSPNet": SmpArchitecture("pspnet", {"upsampling": 8}, structure={"psp_branch_norm": True}),
    "PAN": SmpArchitecture("pan", {"decoder_interpolation": "bilinear", "upsampling": 4}),
    "DeepLabV3": SmpArchitecture("deeplabv3", {"decoder_aspp_separable": False, "upsampling": None}),
    "DeepLabV3Plus": SmpArchitecture(
        "deeplabv3plus",
        {"upsampling": 4},
        defaults={"decoder_aspp_separable": True},
        structure={
            "decoder_separable": True,
            "decoder_fusion_convs": 1,
            "decoder_aspp_pooling_batchnorm": True,
            "decoder_align_corners": True,
        },
    ),
    "UPerNet": SmpArchitecture("upernet", {"upsampling": 4}),
    "Segformer": SmpArchitecture("segformer", {"upsampling": 4}),
    "DPT": SmpArchitecture("dpt"),
}
"""SMP 0.6's architectures (class names) → the pixelwise architecture and the options it implies."""


def _norm_as_bool(option: str, value: Any) -> bool:
    """SMP's ``decoder_use_norm`` as the bool of a pixelwise ``*_use_batchnorm`` option."""
    if value in ("batchnorm", True):
        return True
    if value in ("identity", False, None):
        return False
    raise ConfigError(
        f"the SMP model uses {option}={value!r}, which this pixelwise architecture does not offer "
        "(it has BatchNorm or none); it cannot be converted exactly."
    )


RENAMES: dict[str, tuple[tuple[str, Callable[[str, Any], Any]], ...]] = {
    "decoder_use_norm": (("decoder_use_batchnorm", _norm_as_bool), ("psp_use_batchnorm", _norm_as_bool)),
    "decoder_interpolation": (("decoder_upsampling", lambda option, value: value),),
}
"""SMP options a pixelwise class may spell otherwise: the candidate names, first match used, and how the
value translates."""

SMP_BY_NAME = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext101_32x16d",
    "resnext101_32x32d",
)
"""SMP's own encoders whose weights the converter matches by name: torchvision-style ResNets, which timm
builds under the same name (:func:`~pixelwise.models.encoder_names.resolve_encoder_name` leaves them as
they are) with the same parameter names."""
SMP_MIT = re.compile(r"mit_b[0-5]")
SMP_EFFICIENTNET = re.compile(r"(timm-)?efficientnet-(b\d|l2)")
"""SMP's own EfficientNets (lukemelas' efficientnet-pytorch and SMP's timm-based copy)."""


def encoder_name_from_smp(name: str) -> str:
    """The pixelwise (timm) encoder name of the SMP encoder ``name``, as
    :func:`~pixelwise.models.encoder_names.resolve_encoder_name` gives it, for the encoders whose weights
    the converter can map.

    Raises:
        ConfigError: an SMP encoder whose converted model could not reproduce SMP's outputs, or one the
            converter does not know (the message lists the families it converts).
    """
    match = SMP_EFFICIENTNET.fullmatch(name)
    if match:
        raise ConfigError(
            f"SMP encoder {name!r} cannot be converted exactly: its stride-2 feature is the stem's output "
            f"({'32' if match.group(2) == 'b0' else 'more'} channels) where timm's efficientnet_{match.group(2)} "
            "gives the first block's, so the decoder differs. Train with encoder_name="
            f"'tu-efficientnet_{match.group(2)}' in SMP (a timm encoder), which converts exactly."
        )
    if name.startswith("tu-") or name in SMP_BY_NAME or SMP_MIT.fullmatch(name):
        return resolve_encoder_name(name, known={name} if SMP_MIT.fullmatch(name) else frozenset())
    raise ConfigError(
        f"SMP encoder {name!r} is not supported by from_smp yet; it converts SMP's ResNets "
        f"({', '.join(SMP_BY_NAME[:3])}, ...), 'tu-' timm encoders and mit_b0 ... mit_b5."
    )


def dilated_as_smp(smp_encoder: str) -> bool:
    """Whether SMP dilates the encoder ``smp_encoder`` itself (its own encoders: every convolution of a
    dilated stage at the stage's rate) rather than through timm (``tu-``: timm's ``output_stride``)."""
    return not (smp_encoder.startswith("tu-") or SMP_MIT.fullmatch(smp_encoder))


# -- reading the source ------------------------------------------------------------------------------
def _read_folder(folder: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(class name, init options, state dict)`` of an SMP ``save_pretrained`` folder (no pickles read).

    Raises:
        ConfigError: the folder is missing, or is not an SMP folder (no config.json with ``_model_class``,
            or no model.safetensors).
    """
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} does not exist; give an SMP save_pretrained folder.")
    config_path = folder / SMP_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"{str(folder)!r} is not an SMP save_pretrained folder: cannot read {SMP_CONFIG} ({error})."
        ) from error
    if not isinstance(config, dict) or SMP_CLASS_KEY not in config:
        hint = " (it is a pixelwise model folder already)" if isinstance(config, dict) and "arch" in config else ""
        raise ConfigError(f"{str(config_path)!r} has no {SMP_CLASS_KEY!r}: not an SMP save_pretrained folder{hint}.")
    weights = folder / SMP_WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{str(folder)!r} has no {SMP_WEIGHTS}: save the SMP model with model.save_pretrained().")
    name = _smp_class_name(str(config.pop(SMP_CLASS_KEY)))
    return name, config, in_registration_order(load_weights(weights), name, config)


def in_registration_order(
    state: dict[str, torch.Tensor], smp_class: str, config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """``state`` in the order SMP's model registers its weights (safetensors files sort their keys; the
    decoder is matched by position), found by building the SMP model's skeleton on the meta device.

    Raises:
        ConfigError: segmentation_models_pytorch is not installed, or cannot build ``config``.
    """
    try:
        import segmentation_models_pytorch as smp  # deferred: an optional dependency, needed here only
    except ImportError as error:
        raise ConfigError(
            "converting an SMP folder needs segmentation_models_pytorch installed (pip install "
            "segmentation-models-pytorch): the order of its weights comes from SMP's model."
        ) from error
    options = {k: v for k, v in config.items() if not k.startswith("_")} | {"encoder_weights": None}
    try:
        with torch.device("meta"):
            order = list(getattr(smp, smp_class)(**options).state_dict())
    except (AttributeError, TypeError, ValueError, KeyError) as error:
        raise ConfigError(
            f"segmentation_models_pytorch cannot build the {smp_class} in config.json: {error}"
        ) from error
    return {key: state[key] for key in order if key in state} | {k: v for k, v in state.items() if k not in order}


def _smp_class_name(arch: str) -> str:
    """The SMP class name for ``arch`` given as SMP spells it or as pixelwise does (``"deeplabv3plus"``)."""
    for name, entry in SMP_ARCHITECTURES.items():
        if arch.lower().replace("-", "").replace("_", "") in (name.lower(), entry.arch):
            return name
    raise ConfigError(f"unknown SMP architecture {arch!r}; SMP 0.6 has {', '.join(SMP_ARCHITECTURES)}.")


def read_smp(source: Any, options: Mapping[str, Any]) -> tuple[str, dict[str, Any], Mapping[str, torch.Tensor]]:
    """``(SMP class name, init options, state dict)`` of ``source``: an SMP model, folder or state dict.

    ``options`` override the recorded init options; for a state dict they are the init options, with
    ``arch`` naming the architecture.

    Raises:
        ConfigError: a state dict without ``arch``, or a source of another kind.
    """
    options = dict(options)
    if isinstance(source, (str, os.PathLike)):
        name, config, state = _read_folder(Path(source))
    elif isinstance(source, nn.Module):
        name = type(source).__name__
        config = dict(getattr(source, "config", None) or {})
        if not config and hasattr(source, "encoder"):
            raise ConfigError(f"{name} records no init options (SMP < 0.4?); pass its state_dict with arch=... .")
        state = source.state_dict()
    elif isinstance(source, Mapping):
        if "arch" not in options:
            raise ConfigError(
                "from_smp(state_dict) needs the architecture and its options as keywords, e.g. "
                "from_smp(state_dict, arch='Unet', encoder_name='resnet34', classes=3)."
            )
        name, config, state = options.pop("arch"), {}, source
    else:
        raise ConfigError(
            f"from_smp takes an SMP model, its save_pretrained folder or its state_dict; got {type(source).__name__}."
        )
    name = _smp_class_name(str(name))
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    return name, config | options, state


# -- options -----------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Tuples as lists, for comparing options that came from JSON with options that did not."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def translate_options(smp_class: str, smp_options: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """``(pixelwise arch, constructor options, notes)`` building the equivalent of an SMP model.

    Raises:
        ConfigError: pixelwise lacks the architecture, or the SMP model uses an option value the
            pixelwise architecture cannot reproduce.
    """
    entry = SMP_ARCHITECTURES[smp_class]
    smp_options = dict(entry.defaults) | dict(smp_options)
    try:
        get_model_class(entry.arch)
    except ConfigError:
        raise ConfigError(
            f"SMP's {smp_class} has no pixelwise architecture ({entry.arch!r}) in this version; see `pixelwise models`."
        ) from None
    ours = model_options(entry.arch)
    implied = COMMON_IMPLIED | dict(entry.implied)
    options: dict[str, Any] = {}
    for name, value in smp_options.items():
        if name == "encoder_weights":
            continue  # the weights come with the model
        if name == "encoder_name":
            value = encoder_name_from_smp(value)
        if name in ours:
            options[name] = value
            continue
        target = next(((t, fn) for t, fn in RENAMES.get(name, ()) if t in ours), None)
        if target is not None:
            options[target[0]] = target[1](name, value)
        elif name in implied:
            if _plain(value) != _plain(implied[name]):
                raise ConfigError(
                    f"the SMP {smp_class} uses {name}={value!r}; pixelwise's {entry.arch} has no option {name!r} "
                    f"(it always does what {name}={implied[name]!r} does), so it cannot be converted exactly."
                )
        else:
            raise ConfigError(
                f"the SMP {smp_class} option {name}={value!r} has no counterpart in pixelwise's {entry.arch}."
            )
    options |= entry.structure
    notes = [
        f"{name}={value!r} (pixelwise's default: {ours[name]!r})"
        for name, value in options.items()
        if name in ours and _plain(value) != _plain(ours[name])
    ]
    if _is_dilated(options, ours) and dilated_as_smp(str(smp_options.get("encoder_name", ours.get("encoder_name")))):
        options["encoder_kwargs"] = {DILATE_FIRST_BLOCK: True}
        notes.append(f"encoder_kwargs={{{DILATE_FIRST_BLOCK!r}: True}} (dilated as SMP's own encoders are)")
    return entry.arch, options, notes


def _is_dilated(options: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    """Whether the model ``options`` build dilates its encoder (an output stride below its deepest stride)."""
    output_stride = options.get("encoder_output_stride", ours.get("encoder_output_stride"))
    depth = options.get("encoder_depth", ours.get("encoder_depth", 5))
    return isinstance(output_stride, int) and isinstance(depth, int) and output_stride < 2**depth


# -- weights -----------------------------------------------------------------------------------------
def _canonical(key: str) -> str:
    """An encoder key without the wrappers' prefixes, ``_`` read as ``.``: ``encoder.model.model.layer1.0``
    and ``encoder.layer1.0`` (SMP's ResNet) both give ``layer1.0``."""
    key = key.removeprefix("encoder.")
    while key.startswith("model."):
        key = key.removeprefix("model.")
    return key.replace("_", ".")


def _encoder_by_name(smp_state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Our encoder entries taken from SMP's by canonical name; notes on SMP entries left unused."""
    smp_by_name = {_canonical(k): k for k in smp_state if k.startswith("encoder.")}
    converted: dict[str, torch.Tensor] = {}
    for key in (k for k in own if k.startswith("encoder.")):
        source = smp_by_name.pop(_canonical(key), None)
        if source is None:
            raise ConfigError(f"the SMP encoder has no weight for {key!r} (looked for {_canonical(key)!r}).")
        converted[key] = _checked(smp_state[source], source, own[key], key)
    notes = []
    if smp_by_name:
        unused = sorted(smp_by_name.values())
        notes.append(f"{len(unused)} SMP encoder weights its forward never uses were dropped (e.g. {unused[0]})")
    return converted, notes


def _checked(value: torch.Tensor, source: str, wanted: torch.Tensor, key: str) -> torch.Tensor:
    if tuple(value.shape) != tuple(wanted.shape):
        raise ConfigError(
            f"SMP weight {source!r} {list(value.shape)} does not fit pixelwise's {key!r} {list(wanted.shape)}: "
            "the architectures differ in this configuration."
        )
    return value


def _rest_by_position(smp_state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict:
    """Our decoder and head entries zipped in order with SMP's ``decoder``, ``segmentation_head`` and
    ``classification_head`` entries (the aux head last on both sides), shapes checked."""
    smp_keys = [k for k in smp_state if not k.startswith("encoder.")]
    rest = [k for k in own if not k.startswith("encoder.")]
    own_keys = [k for k in rest if not k.startswith("classification_head.")]
    own_keys += [k for k in rest if k.startswith("classification_head.")]
    for smp_key, key in zip(smp_keys, own_keys, strict=False):
        _checked(smp_state[smp_key], smp_key, own[key], key)
    if len(smp_keys) != len(own_keys):
        first = (smp_keys + own_keys)[min(len(smp_keys), len(own_keys))]
        raise ConfigError(
            f"the SMP model has {len(smp_keys)} decoder and head weights, pixelwise's {len(own_keys)} "
            f"(first unmatched: {first!r}): the architectures differ in this configuration."
        )
    return {key: smp_state[smp_key] for smp_key, key in zip(smp_keys, own_keys, strict=True)}


def _hook(module: str, name: str) -> Callable | None:
    """A conversion function an architecture module offers, or None when it is not there (yet)."""
    try:
        return getattr(import_module(module), name, None)
    except ImportError:
        return None


def convert_state_dict(
    smp_state: Mapping[str, torch.Tensor], model: SegmentationModel, smp_encoder: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SMP's weights under ``model``'s names, every shape checked; notes on what was dropped.

    Raises:
        ConfigError: a weight pixelwise needs is missing, or a shape differs (naming both keys and shapes).
    """
    own = model.state_dict()
    dpt = _hook("pixelwise.models.dpt", "dpt_state_dict_from_smp")
    if model.arch_name == "dpt" and dpt is not None:
        converted = dpt(smp_state, model)
        unused = len(smp_state) - len(converted)
        return converted, [f"{unused} SMP encoder weights its forward never uses were dropped"] if unused else []
    if smp_encoder.startswith("mit_b"):
        mit = _hook("pixelwise.models.mit", "mit_state_dict_from_smp")
        if mit is None:
            raise ConfigError("this pixelwise version has no Mix Transformer encoders: cannot convert a mit_b* model.")
        renamed = mit({k: v for k, v in smp_state.items() if k.startswith("encoder.")}, prefix="encoder.")
        encoder = {key: _checked(renamed[key], key, own[key], key) for key in own if key.startswith("encoder.")}
        notes: list[str] = []
    else:
        encoder, notes = _encoder_by_name(smp_state, own)
    return encoder | _rest_by_position(smp_state, own), notes


# -- the entry point ---------------------------------------------------------------------------------
def from_smp(source: Any, **options: Any) -> SegmentationModel:
    """The pixelwise model equivalent to a segmentation_models_pytorch (0.6) model, weights included.

    Args:
        source: an SMP model object (e.g. ``smp.Unet(...)``), the folder its ``save_pretrained`` wrote
            (``config.json`` + ``model.safetensors``; nothing is unpickled), or its ``state_dict`` (then
            give ``arch=`` and the options it was built with as keywords).
        **options: for a state dict, ``arch`` (``"Unet"``, ``"DeepLabV3Plus"``, ...) and SMP's init
            options (left out: pixelwise's defaults, which equal SMP's except ``encoder_weights``); for a
            model or folder, init options to override (e.g. ``activation="softmax"``).

    Returns:
        The pixelwise model in eval mode, built in SMP's configuration (``model.config``), with
        ``model.conversion_notes``: the options set away from pixelwise's defaults and what was dropped
        (also logged at INFO level). Its outputs equal SMP's (to float rounding) on any input SMP accepts.

    Raises:
        ConfigError: an unknown architecture or encoder, an option pixelwise cannot reproduce, or
            weights that do not fit (naming the first differing key and both shapes).

    Example:
        >>> import segmentation_models_pytorch as smp  # doctest: +SKIP
        >>> model = from_smp(smp.Unet("resnet18", encoder_weights=None, classes=3))  # doctest: +SKIP
    """
    smp_class, smp_options, smp_state = read_smp(source, options)
    arch, model_kwargs, notes = translate_options(smp_class, smp_options)
    model = create_model(arch, **model_kwargs)
    state, dropped = convert_state_dict(smp_state, model, str(smp_options.get("encoder_name", "")))
    model.load_state_dict(state, strict=True)
    notes += dropped
    model.conversion_notes = notes
    logger.info("converted SMP %s to pixelwise %s; %s", smp_class, arch, "; ".join(notes) or "no options changed")
    return model.eval()
