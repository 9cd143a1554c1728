"""The model registry: architecture names → classes, ``create_model`` and ``from_pretrained``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from pixelwise.errors import ConfigError, WeightsError, check_choice, unknown_name  # noqa: F401  (architectures import check_choice from here)
from pixelwise.io import load_weights, read_json_object
from pixelwise.models.base import CONFIG_NAME, WEIGHTS_NAME, SegmentationModel

_REGISTRY: dict[str, type[SegmentationModel]] = {}
_ALIASES: dict[str, str] = {}

M = TypeVar("M", bound=type[SegmentationModel])


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_model(name: str, *aliases: str) -> Callable[[M], M]:
    """Class decorator: make an architecture available to :func:`create_model` as ``name``.

    Raises:
        ValueError: ``name`` or an alias is already registered.
    """

    def decorator(cls: M) -> M:
        for key in (name, *aliases):
            if _key(key) in _REGISTRY or _key(key) in _ALIASES:
                raise ValueError(f"model name {key!r} is already registered")
        cls.arch_name = name
        _REGISTRY[_key(name)] = cls
        for alias in aliases:
            _ALIASES[_key(alias)] = _key(name)
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return [cls.arch_name for cls in _REGISTRY.values()]


def get_model_class(arch: str) -> type[SegmentationModel]:
    """The class registered as ``arch`` (case, ``-`` and ``_`` do not matter)."""
    key = _key(arch)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise unknown_name("architecture", arch, list_models(), "(see `pixelwise models`)")
    return _REGISTRY[key]


def model_options(arch: str) -> dict[str, Any]:
    """The constructor options of ``arch`` with their defaults."""
    signature = inspect.signature(get_model_class(arch).__init__)
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in signature.parameters.items()
        if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def takes_encoder(arch: str) -> bool:
    """Whether ``arch`` is built on a timm encoder (its constructor takes ``encoder_name``).

    Raises:
        ConfigError: unknown architecture (the message lists the closest names).
    """
    return "encoder_name" in model_options(arch)


def create_model(arch: str, encoder_name: str | None = None, **options: Any) -> SegmentationModel:
    """Build the architecture ``arch`` with ``options`` (its constructor arguments), as
    segmentation_models_pytorch's ``create_model``: the encoder may come second, positionally.

    Args:
        arch: a registered architecture name (case, ``-`` and ``_`` do not matter).
        encoder_name: the encoder (timm, SMP or Keras spelling); ``None`` keeps the architecture's default
            (``"resnet34"`` for most).
        **options: the architecture's constructor options; keywords that are none of them but that the timm
            encoder accepts (``drop_path_rate``, ``img_size``, ...) go to the encoder.

    Example:
        >>> model = create_model("unet", "resnet34", classes=3)

    Raises:
        ConfigError: unknown architecture or option (the message lists the closest names), or an encoder
            for an architecture that takes none.
    """
    cls = get_model_class(arch)
    if encoder_name is not None:
        if "encoder_name" not in model_options(arch):
            raise ConfigError(f"architecture {cls.arch_name!r} takes no encoder; leave out {encoder_name!r}.")
        options["encoder_name"] = encoder_name
    return cls(**options)


def from_pretrained(directory: str | os.PathLike) -> SegmentationModel:
    """Rebuild a model saved with ``model.save_pretrained(directory)``.

    Reads ``config.json`` and loads ``model.safetensors`` strictly; nothing is unpickled.

    Raises:
        WeightsError: a missing or damaged ``config.json`` (invalid JSON, no ``arch``, ``options`` not a
            mapping, an unknown architecture or option), or weights that do not fit the configured model
            (the message names the first missing, unexpected and wrongly shaped keys).
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise WeightsError(
            f"{str(directory)!r} is not a saved pixelwise model: {CONFIG_NAME} is missing "
            "(save one with model.save_pretrained(directory))."
        )
    arch, options = read_config(config_path)
    check_layout_version(arch, read_json_object(config_path, "").get("pixelwise_version"), config_path)
    try:
        model = create_model(arch, **options)
    except ConfigError as error:
        raise WeightsError(f"{str(config_path)!r} describes a model pixelwise cannot build: {error}") from error
    load_state(model, load_weights(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME, CONFIG_NAME)
    return model


LAYOUT_CHANGED = {"fpn": (0, 2, 0), "linknet": (0, 2, 0), "pspnet": (0, 2, 0)}
"""Architectures whose layers changed, and the release that changed them: 0.2.0 gave FPN, Linknet and PSPNet
segmentation_models_pytorch 0.6's exact structure (its head kernels, biases, concatenation order and
corner-aligned upsampling), so their checkpoints convert exactly; weights saved before give other outputs."""


def check_layout_version(arch: str, version: Any, config_path: Path) -> None:
    """Refuse a folder saved by a pixelwise release older than the last change of ``arch``'s layers.

    Such weights may even load, into layers that now compute something else: the outputs would be silently
    wrong.

    Raises:
        WeightsError: names the release that saved the folder, the one that changed the architecture, and
            what to do.
    """
    changed = LAYOUT_CHANGED.get(_key(arch))
    try:
        saved = tuple(int(part) for part in str(version).split(".")[:3])
    except ValueError:
        return  # not a release number (a development build): nothing to compare
    if changed is None or version is None or saved >= changed:
        return
    release = ".".join(map(str, changed))
    raise WeightsError(
        f"{str(config_path)!r} was saved by pixelwise {version}, but pixelwise {release} changed the layers of "
        f"{arch!r} to segmentation_models_pytorch's exact structure, so these weights would give other outputs. "
        f"Use pixelwise {version} with it (pip install pixelwise=={version}), or train the model again."
    )


def read_config(config_path: Path) -> tuple[str, dict[str, Any]]:
    """``(arch, options)`` from a ``config.json`` written by ``save_pretrained``.

    Raises:
        WeightsError: the file is not JSON, not an object, or its ``arch`` is not a name or its
            ``options`` not a mapping of option names.
    """
    where = f"{str(config_path)!r} is damaged"
    fix = "save the model again with model.save_pretrained()"
    config = read_json_object(config_path, fix)
    arch, options = config.get("arch"), config.get("options", {})
    if not isinstance(arch, str):
        raise WeightsError(f"{where}: 'arch' must be an architecture name, got {arch!r}; {fix}.")
    if not isinstance(options, dict) or not all(isinstance(key, str) for key in options):
        raise WeightsError(f"{where}: 'options' must map option names to values, got {_shorten(options)}; {fix}.")
    return arch, options


MISMATCHES_SHOWN = 3
"""How many missing, unexpected or wrongly shaped keys a weights mismatch error names."""


def load_state(model: nn.Module, state_dict: Mapping[str, Any], source: Path, built_from: str) -> None:
    """Load ``state_dict`` into ``model`` after checking that its keys and shapes fit exactly.

    Args:
        model: the freshly built model.
        state_dict: weights read from ``source``.
        source: the file the weights came from (named in the error).
        built_from: what the model was built from (``config.json``), named in the error.

    Raises:
        WeightsError: keys are missing or unexpected, or tensors have other shapes: the weights
            belong to another architecture or class count (the first few keys are named).
    """
    expected = model.state_dict()
    problems = [
        _listed("missing keys", [key for key in expected if key not in state_dict]),
        _listed("unexpected keys", [key for key in state_dict if key not in expected]),
        _listed(
            "values that are not tensors",
            [key for key, value in state_dict.items() if key in expected and not isinstance(value, torch.Tensor)],
        ),
        _listed(
            "wrongly shaped tensors",
            [
                f"{key} {list(value.shape)} (the model has {list(expected[key].shape)})"
                for key, value in state_dict.items()
                if key in expected and isinstance(value, torch.Tensor) and value.shape != expected[key].shape
            ],
        ),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise WeightsError(
            f"{str(source)!r} does not match the model in {built_from}: {'; '.join(problems)}. The weights "
            "belong to another architecture or class count (were the files saved together?)"
        )
    model.load_state_dict(state_dict, strict=True)


def _listed(label: str, keys: list[str]) -> str:
    """``missing keys (5): a, b, c, ...`` (at most ``MISMATCHES_SHOWN`` named), or ``""`` when there are none."""
    if not keys:
        return ""
    shown = ", ".join(keys[:MISMATCHES_SHOWN]) + (", ..." if len(keys) > MISMATCHES_SHOWN else "")
    return f"{label} ({len(keys)}): {shown}"


def _shorten(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, with its type."""
    text = repr(value)
    return f"{type(value).__name__} {text[:limit]}{'...' if len(text) > limit else ''}"
