"""Type checks of configuration values read from YAML or given in Python, against the field annotations.

A value of the wrong type gets a message naming the option, the value, its type and what is
expected, instead of failing later inside the model or Lightning. One conversion is made: a number
that YAML 1.1 reads as text (``lr: 1e-3``: no dot in the mantissa) becomes the number meant.
A ``Literal[...]`` annotation lists the choices: a value of their type outside them gets
"unknown <option> ...; did you mean ...", other values the type message (the choices' type).
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pixelwise.errors import ConfigError, unknown_name

SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
"""Numbers such as ``1e-3`` that PyYAML (YAML 1.1) leaves as text."""
TYPE_NAMES = {bool: "true/false", int: "a whole number", float: "a number", str: "text", type(None): "null"}


def describe(hint: Any) -> str:
    """A reader's name for a type annotation: ``int | None`` → "a whole number or null"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(dict.fromkeys(describe(type(arg)) for arg in typing.get_args(hint)))
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return f"a list of {describe(args[0]).removeprefix('a ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if hint is typing.Any:
        return "any value"
    return TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _kind(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        return describe(type(value)).removeprefix("a ")
    return type(value).__name__


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(fits, value)``: whether ``value`` fits ``hint``, and the value to keep (converted if needed)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            fits, converted = _convert(value, arg)
            if fits:
                return True, converted
        return False, value
    if hint is typing.Any:
        return True, value
    if origin is typing.Literal:
        return any(type(value) is type(arg) and value == arg for arg in typing.get_args(hint)), value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str) and SCIENTIFIC.match(value.strip()):
            return True, float(value)
        return isinstance(value, int | float) and not isinstance(value, bool), value
    if hint is str:
        return isinstance(value, str), value
    if origin is list or hint is list:
        return _convert_list(value, typing.get_args(hint))
    if origin is dict or hint is dict:
        return _convert_dict(value, typing.get_args(hint))
    return isinstance(value, hint), value


def _convert_list(value: Any, args: tuple) -> tuple[bool, Any]:
    if not isinstance(value, list | tuple):
        return False, value
    if not args:
        return True, list(value)
    items = [_convert(item, args[0]) for item in value]
    return all(fits for fits, _ in items), [item for _, item in items]


def _convert_dict(value: Any, args: tuple) -> tuple[bool, Any]:
    if not isinstance(value, dict):
        return False, value
    if not args:
        return True, value
    keys = [_convert(key, args[0]) for key in value]
    items = [_convert(item, args[1]) for item in value.values()]
    fits = all(ok for ok, _ in keys) and all(ok for ok, _ in items)
    return fits, {key: item for (_, key), (_, item) in zip(keys, items, strict=True)}


def literal_choices(hint: Any) -> tuple:
    """The values of the ``Literal[...]`` in ``hint`` (itself, or a member of a union); ``()`` if none."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(choice for arg in typing.get_args(hint) for choice in literal_choices(arg))
    return ()


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Return ``value`` if it fits the annotation ``hint`` (converted as the module docstring says).

    Raises:
        ConfigError: names the option, the value, its type and the expected type; or, for a value
            of the right type outside a ``Literal``'s choices, the closest choices.
    """
    fits, converted = _convert(value, hint)
    if fits:
        return converted
    choices = literal_choices(hint)
    if choices and any(type(value) is type(choice) for choice in choices):
        raise unknown_name(name, str(value), choices)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    fix = " (write numbers without quotes)" if isinstance(value, str) else ""
    raise ConfigError(f"option {name}: {shown} is {_kind(value)}; expected {describe(hint)}{fix}.")
