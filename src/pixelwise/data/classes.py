"""Class lists: names, ids and colours of the classes of a data set, read from ``classes.yaml`` / ``.json``.

A class file looks like this (``color`` and ``ignore_index`` are optional)::

    ignore_index: 255
    classes:
      - {name: background, id: 0, color: [0, 0, 0]}
      - {name: cell, id: 1, color: [128, 0, 0]}
      - {name: void, id: 255, color: [224, 224, 192]}   # id == ignore_index: this colour is ignored

Masks whose stored values are not the class ids take a value table and ranges to ignore::

    map: {7: 0, 8: 1, 11: 2}      # stored value -> class id
    ignore: [0, [200, 254]]       # stored values (or inclusive ranges) read as ignore_index

A class may also record the id it has in the source annotations (``source_id``: a COCO category
id, a Cityscapes labelId), so that the mapping travels with a trained model's ``classes.yaml``.

``classes: [background, cell]`` (names only, ids in order) is accepted too. Class ids must be
exactly ``0 .. K-1``: a model's output channel ``k`` is class id ``k``, so a gap would be a
channel no pixel can ever belong to. An entry whose id equals ``ignore_index`` names the colour
of void pixels in RGB colour-coded masks; it is not a class.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pixelwise.errors import ConfigError
from pixelwise.io import atomic_path, read_text
from pixelwise.modes import IGNORE_INDEX

CLASS_FILE_NAMES = ("classes.yaml", "classes.yml", "classes.json")
"""File names :meth:`ClassInfo.find` looks for, in this order."""
VOID_COLOR = (224, 224, 192)
"""Palette colour of ``ignore_index`` pixels unless the class file names one (Pascal VOC's void colour)."""
PALETTE_ENTRIES = 256
MAX_CHANNEL_VALUE = 255
MAX_IGNORE_RANGE = 65535
"""Widest ``ignore`` range of a class file, minus one: masks hold 8- or 16-bit values."""
RGB = tuple[int, int, int]


def default_palette(n: int = PALETTE_ENTRIES) -> list[RGB]:
    """Return ``n`` distinct colours: the Pascal VOC colour map (0 black, 1 dark red, 2 dark green, ...).

    The map spreads the bits of the index over the high bits of R, G and B, so neighbouring
    ids get clearly different colours and the first few are the ones people already know.
    """
    return list(_voc_colors(n))


@functools.cache
def _voc_colors(n: int) -> tuple[RGB, ...]:
    """:func:`default_palette` computed once per ``n``: every label PNG written needs it (0.5 ms each)."""
    colors = []
    for index in range(n):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):  # one bit of each channel per round, from the top bit down
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors.append((r, g, b))
    return tuple(colors)


def _whole_number(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} is {value!r}; class ids are whole numbers written as digits, e.g. `id: 1`.")
    return value


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack ``[..., 3]`` uint8 colours into one int32 per pixel (``r << 16 | g << 8 | b``) for fast lookup."""
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass
class ClassInfo:
    """Names, ids and (optionally) colours of the classes of a data set.

    Args:
        names: one name per class, in the order of ``ids``.
        ids: class ids; together exactly ``0 .. K-1``.
        colors: one ``(r, g, b)`` per class, used to decode RGB colour-coded masks and as the
            palette of written masks; ``None`` when the data set has none.
        ignore_index: mask value of void pixels (default 255).
        ignore_color: colour of void pixels in RGB masks, if any.
        source_ids: per class, its id in the source annotations (COCO category id, ...), if any.
        value_map: stored mask value → class id (the class file's ``map``), if the masks need one.
        ignore_values: inclusive ``(low, high)`` ranges of stored values read as ``ignore_index``.

    Raises:
        ConfigError: ids that are not ``0 .. K-1``, or lists of different lengths.

    Example:
        >>> info = ClassInfo.default(3)
        >>> info.names, info.num_classes
        (['class_0', 'class_1', 'class_2'], 3)
    """

    names: list[str]
    ids: list[int]
    colors: list[RGB] | None = None
    ignore_index: int = IGNORE_INDEX
    ignore_color: RGB | None = None
    source_ids: list[int] | None = None
    value_map: dict[int, int] | None = None
    ignore_values: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.ids = [int(i) for i in self.ids]
        if len(self.names) != len(self.ids):
            raise ConfigError(f"class list has {len(self.names)} names but {len(self.ids)} ids; give one id per name.")
        if sorted(self.ids) != list(range(len(self.ids))):
            raise ConfigError(
                f"class ids must be exactly 0..{len(self.ids) - 1} (one output channel per id), "
                f"got {sorted(self.ids)}; "
                "renumber the classes, and map unwanted ids to ignore_index in the masks."
            )
        if self.colors is not None:
            self.colors = [_rgb(c, f"colour of class {n!r}") for n, c in zip(self.names, self.colors, strict=False)]
            if len(self.colors) != len(self.ids):
                raise ConfigError(f"class list has {len(self.ids)} classes but {len(self.colors)} colours.")
        if self.ignore_color is not None:
            self.ignore_color = _rgb(self.ignore_color, "ignore colour")
        # keep classes sorted by id so that names[k] is the name of output channel k
        order = np.argsort(self.ids, kind="stable")
        self.names = [self.names[i] for i in order]
        self.ids = [self.ids[i] for i in order]
        if self.colors is not None:
            self.colors = [self.colors[i] for i in order]
        if self.source_ids is not None:
            if len(self.source_ids) != len(self.ids):
                raise ConfigError(f"class list has {len(self.ids)} classes but {len(self.source_ids)} source ids.")
            self.source_ids = [int(self.source_ids[i]) for i in order]
        if self.value_map is not None:
            self.value_map = {int(k): int(v) for k, v in self.value_map.items()}
        if self.ignore_values is not None:
            self.ignore_values = [(int(low), int(high)) for low, high in self.ignore_values]

    def mask_values(self) -> dict[int, int] | None:
        """``{stored value: class id}`` from ``value_map`` and ``ignore_values`` (None when neither is given).

        Raises:
            ConfigError: a mapped value is negative, or an ignore range spans more than 65,536 values.
        """
        if self.value_map is None and self.ignore_values is None:
            return None
        values: dict[int, int] = {}
        for low, high in self.ignore_values or ():
            if low < 0 or high < low or high - low > MAX_IGNORE_RANGE:
                raise ConfigError(
                    f"ignore range [{low}, {high}] must satisfy 0 <= low <= high and span at most "
                    f"{MAX_IGNORE_RANGE + 1} values (masks hold 8- or 16-bit values)."
                )
            values.update(dict.fromkeys(range(low, high + 1), self.ignore_index))
        for stored, class_id in (self.value_map or {}).items():
            if stored < 0 or not (0 <= class_id < self.num_classes or class_id == self.ignore_index):
                raise ConfigError(
                    f"map entry {stored}: {class_id} is out of range; stored values are >= 0 and class ids "
                    f"0..{self.num_classes - 1} (or ignore_index {self.ignore_index})."
                )
            values[stored] = class_id
        return values

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (void not counted)."""
        return len(self.ids)

    @classmethod
    def default(cls, num_classes: int, ignore_index: int = IGNORE_INDEX) -> ClassInfo:
        """Classes ``class_0 .. class_{K-1}`` coloured with :func:`default_palette`.

        Raises:
            ConfigError: ``num_classes`` below 1.
        """
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}.")
        palette = default_palette()
        n = int(num_classes)
        return cls([f"class_{i}" for i in range(n)], list(range(n)), palette[:n], ignore_index)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassInfo:
        """Read a class file (``.yaml``/``.yml``/``.json``; format in the module docstring).

        Raises:
            ConfigError: the file is missing, not YAML/JSON, or its entries are malformed; the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"class file {str(path)!r} does not exist; check the path.")
        text = read_text(path, "class file")
        try:
            raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read class file {str(path)!r}: {error}") from error
        try:
            return cls._from_mapping(raw)
        except ConfigError as error:
            raise ConfigError(f"class file {str(path)!r}: {error}") from error

    @classmethod
    def _from_mapping(cls, raw: object) -> ClassInfo:
        fix = "expected `classes: [{name: ..., id: ..., color: [r, g, b]}, ...]` (color optional)."
        if isinstance(raw, list):
            raw = {"classes": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list) or not raw["classes"]:
            raise ConfigError(f"no non-empty `classes` list; {fix}")
        ignore_index = _whole_number(raw.get("ignore_index", IGNORE_INDEX), "ignore_index")
        names, ids, colors, ignore_color, source_ids = [], [], [], None, []
        for position, entry in enumerate(raw["classes"]):
            if isinstance(entry, str):
                entry = {"name": entry, "id": position}
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f"entry {position} ({entry!r}) has no name; {fix}")
            class_id = _whole_number(entry.get("id", position), f"the id of class {entry['name']!r}")
            if class_id == ignore_index:  # a void entry: its colour marks ignored pixels in RGB masks
                ignore_color = entry.get("color")
                continue
            names.append(entry["name"])
            ids.append(class_id)
            colors.append(entry.get("color"))
            source = entry.get("source_id")
            source_ids.append(None if source is None else _whole_number(source, f"source_id of {entry['name']!r}"))
        given = [c is not None for c in colors]
        if any(given) and not all(given):
            missing = [n for n, c in zip(names, colors, strict=True) if c is None]
            raise ConfigError(f"classes {missing} have no color while others do; give every class a color or none.")
        return cls(
            names,
            ids,
            colors if all(given) else None,
            ignore_index,
            ignore_color,
            source_ids if all(v is not None for v in source_ids) else None,
            _value_map(raw.get("map")),
            _ignore_ranges(raw.get("ignore")),
        )

    @classmethod
    def find(cls, root: str | os.PathLike) -> ClassInfo | None:
        """Load the first of :data:`CLASS_FILE_NAMES` found in ``root`` or its parent, else return None."""
        root = Path(root)
        for folder in (root, root.parent):
            for name in CLASS_FILE_NAMES:
                if (folder / name).is_file():
                    return cls.load(folder / name)
        return None

    def palette(self) -> list[int]:
        """Flat ``[r0, g0, b0, r1, ...]`` list of 256 colours for ``PIL.Image.putpalette``.

        Entry ``k`` is the colour of class id ``k``, entry ``ignore_index`` the void colour; the
        other entries continue :func:`default_palette`.
        """
        colors = default_palette()
        for class_id, color in zip(self.ids, self.colors or colors, strict=False):
            colors[class_id] = color
        if 0 <= self.ignore_index < PALETTE_ENTRIES:
            colors[self.ignore_index] = self.ignore_color or VOID_COLOR
        return [channel for color in colors for channel in color]

    def color_array(self) -> np.ndarray:
        """``[K, 3]`` uint8 colours of classes ``0..K-1`` (the first K entries of :meth:`palette`), for drawing."""
        return np.asarray(self.palette(), dtype=np.uint8).reshape(-1, 3)[: len(self.ids)]

    def decode_colors(self, rgb: np.ndarray) -> tuple[np.ndarray, list[RGB]]:
        """Map an RGB colour-coded mask to class ids.

        Shape:
            ``rgb``: ``[H, W, 3]`` uint8. Returns ids ``[H, W]`` int64.

        Returns:
            ``(ids, unknown)``: class ids (``ignore_index`` for the void colour) and the colours
            found that belong to no class (their pixels are ``ignore_index`` in ``ids``).
        """
        if self.colors is None:
            raise ConfigError("the class list has no colours, so RGB masks cannot be decoded.")
        keys = [pack_rgb(np.asarray(c, dtype=np.uint8)) for c in self.colors]
        values = list(self.ids)
        if self.ignore_color is not None:
            keys.append(pack_rgb(np.asarray(self.ignore_color, dtype=np.uint8)))
            values.append(self.ignore_index)
        keys_arr = np.asarray(keys, dtype=np.int32)
        order = np.argsort(keys_arr)
        keys_arr, values_arr = keys_arr[order], np.asarray(values, dtype=np.int64)[order]
        packed = pack_rgb(rgb[..., :3])
        position = np.clip(np.searchsorted(keys_arr, packed), 0, len(keys_arr) - 1)
        found = keys_arr[position] == packed
        ids = np.where(found, values_arr[position], self.ignore_index)
        unknown = [] if found.all() else [_unpack(int(k)) for k in np.unique(packed[~found])]
        return ids, unknown

    def to_dict(self) -> dict:
        """The class file content as a plain dict (what :meth:`save` writes)."""
        entries = []
        for k, (name, class_id) in enumerate(zip(self.names, self.ids, strict=True)):
            entry: dict = {"name": name, "id": class_id}
            if self.colors is not None:
                entry["color"] = list(self.colors[k])
            if self.source_ids is not None:
                entry["source_id"] = self.source_ids[k]
            entries.append(entry)
        if self.ignore_color is not None:
            entries.append({"name": "void", "id": self.ignore_index, "color": list(self.ignore_color)})
        data: dict = {"ignore_index": self.ignore_index, "classes": entries}
        if self.value_map is not None:
            data["map"] = dict(self.value_map)
        if self.ignore_values is not None:
            data["ignore"] = [[low, high] for low, high in self.ignore_values]
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the class file (JSON if ``path`` ends in ``.json``, else YAML), atomically; return the path."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2) + "\n"
        else:
            # one flow-style line per class reads like the hand-written files in the docstring
            lines = [f"ignore_index: {data['ignore_index']}", "classes:"]
            for entry in data["classes"]:
                lines.append("  - " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False).strip())
            for key in ("map", "ignore"):
                if key in data:
                    lines.append(f"{key}: " + yaml.safe_dump(data[key], default_flow_style=True).strip())
            text = "\n".join(lines) + "\n"
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return path


def _value_map(raw: object) -> dict[int, int] | None:
    """The class file's ``map: {stored: class id}``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"`map` is {raw!r}; give stored value -> class id, e.g. `map: {{7: 0, 8: 1}}`.")
    # JSON keys are always text: "7" is the stored value 7
    digits = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in raw.items()}
    return {
        _whole_number(k, "a stored value in `map`"): _whole_number(v, f"the class id of map entry {k}")
        for k, v in digits.items()
    }


def _ignore_ranges(raw: object) -> list[tuple[int, int]] | None:
    """The class file's ``ignore: [v, [low, high], ...]`` as inclusive ranges."""
    if raw is None:
        return None
    fix = "give values or inclusive [low, high] ranges, e.g. `ignore: [0, [200, 254]]`"
    if not isinstance(raw, list):
        raw = [raw]
    ranges = []
    for item in raw:
        if isinstance(item, list) and len(item) == 2:
            ranges.append(
                (_whole_number(item[0], f"`ignore` entry {item}"), _whole_number(item[1], f"`ignore` entry {item}"))
            )
        elif isinstance(item, int) and not isinstance(item, bool):
            ranges.append((item, item))
        else:
            raise ConfigError(f"`ignore` entry {item!r} is not a value or a [low, high] range; {fix}.")
    return ranges


def _rgb(value: object, what: str) -> RGB:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise ConfigError(f"{what} must be [r, g, b] with values 0..255, got {value!r}.")
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what} must be [r, g, b] with values 0..255, got {value!r}.") from error
    if not all(0 <= v <= MAX_CHANNEL_VALUE for v in rgb):
        raise ConfigError(f"{what} must be [r, g, b] with values 0..255, got {value!r}.")
    return rgb  # type: ignore[return-value]


def _unpack(key: int) -> RGB:
    return ((key >> 16) & 0xFF, (key >> 8) & 0xFF, key & 0xFF)
