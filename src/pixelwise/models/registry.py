"""The model registry: architecture names → classes, ``create_model`` and ``from_pretrained``."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pixelwise.errors import ConfigError, WeightsError, unknown_name
from pixelwise.io import load_weights
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


def create_model(arch: str, **options: Any) -> SegmentationModel:
    """Build the architecture ``arch`` with ``options`` (its constructor arguments).

    Example:
        >>> model = create_model("unet", encoder_name="resnet34", classes=3)

    Raises:
        ConfigError: unknown architecture or option (the message lists the closest names).
    """
    return get_model_class(arch)(**options)


def from_pretrained(directory: str | os.PathLike) -> SegmentationModel:
    """Rebuild a model saved with ``model.save_pretrained(directory)``.

    Reads ``config.json`` and loads ``model.safetensors`` strictly; nothing is unpickled.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise WeightsError(
            f"{str(directory)!r} is not a saved pixelwise model: {CONFIG_NAME} is missing "
            "(save one with model.save_pretrained(directory))."
        )
    try:
        config = json.loads(config_path.read_text())
        arch, options = config["arch"], config["options"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise WeightsError(f"{str(config_path)!r} is not a valid pixelwise config ({error}).") from error
    model = create_model(arch, **options)
    state_dict = load_weights(directory / WEIGHTS_NAME)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"{str(directory / WEIGHTS_NAME)!r} does not match the model in {CONFIG_NAME}: "
            f"{str(error).splitlines()[0]} (were the files saved together?)"
        ) from error
    return model


def check_choice(option: str, value: Any, choices: tuple) -> None:
    """Raise a ConfigError naming ``option`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        if isinstance(value, str):
            raise unknown_name(option, value, [str(c) for c in choices])
        raise ConfigError(f"{option}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}.")
