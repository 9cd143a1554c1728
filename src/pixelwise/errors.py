"""Every error type pixelwise raises on purpose, and the "did you mean" helpers they share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class PixelwiseError(Exception):
    """Base class of every error pixelwise raises on purpose for bad input."""


class ConfigError(PixelwiseError, ValueError):
    """An option, name or value that pixelwise cannot accept (names the option and the fix)."""


class InputSizeError(PixelwiseError, ValueError):
    """An input tensor whose shape the model cannot take."""


class InputTypeError(InputSizeError, TypeError):
    """An input that is not a float tensor (a NumPy array, or integer pixel values); names the conversion."""


class ShapeError(PixelwiseError, ValueError):
    """Predictions and target whose shapes do not fit the segmentation mode (names both shapes)."""


class WeightsError(PixelwiseError, OSError):
    """Weights that cannot be loaded: missing, unreachable, corrupt or mismatched."""


class DataError(PixelwiseError):
    """A data folder or file pixelwise cannot use: missing, unreadable, or inconsistent (names the file and the fix)."""


class ExportError(PixelwiseError, RuntimeError):
    """An exported model that does not reproduce the PyTorch model (the message gives the difference)."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look most like ``name``."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not hits:  # fall back to substring matches: "resnet" -> resnet18, resnet34, ...
        hits = [c for c in lowered if name.lower() in c][:n]
    return [lowered[h] for h in hits]


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> ConfigError:
    """Build the error for an unknown ``kind`` called ``name``, naming the closest valid choices."""
    choices = list(choices)
    close = closest(name, choices)
    if close:
        message = f"unknown {kind} {name!r}; did you mean {', '.join(map(repr, close))}?"
    else:
        shown = ", ".join(map(repr, choices[:12])) + (", ..." if len(choices) > 12 else "")
        message = f"unknown {kind} {name!r}; valid choices: {shown}."
    return ConfigError(message + (f" {hint}" if hint else ""))


def check_choice(option: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise unless ``value`` is one of ``choices``; the one check of an option against a fixed set.

    Args:
        option: the option's name as the user wrote it (``blend``, ``--blend``, ``decoder_merge_policy``).
        value: the value given.
        choices: the accepted values (strings, or numbers such as output strides).

    Raises:
        ConfigError: names ``option``, ``value`` and the closest choices ("did you mean ...") for a string,
            or every choice for a value of another type.

    Example:
        >>> check_choice("blend", "gausian", ("gaussian", "mean"))
        Traceback (most recent call last):
        ...
        pixelwise.errors.ConfigError: unknown blend option 'gausian'; did you mean 'gaussian'?
    """
    choices = tuple(choices)
    if value in choices:
        return
    if isinstance(value, str):
        raise unknown_name(f"{option} option", value, [str(c) for c in choices])
    raise ConfigError(f"{option}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}.")
