"""The trained-model bundle: the schema of a model folder (``runs/<name>/model/``) and its only reader.

A model folder holds ``config.json`` + ``model.safetensors`` (the architecture and weights, written by
:meth:`~pixelwise.models.SegmentationModel.save_pretrained`), ``preprocessing.json`` (how images go in
and how outputs become instances: :class:`Preprocessing`) and ``classes.yaml`` (a
:class:`~pixelwise.data.ClassInfo`). :class:`ModelBundle` is that folder in memory:
:meth:`ModelBundle.save` writes it, :meth:`ModelBundle.load` reads and checks it, and
:meth:`ModelBundle.to_onnx_metadata` / :meth:`ModelBundle.from_onnx_metadata` carry the same facts in
an exported ONNX file's string metadata.

Folders written by older runs load: every ``preprocessing.json`` key except ``mean`` and ``std`` is
optional (:data:`PREPROCESSING_DEFAULTS`), and a folder without ``classes.yaml`` gets
:meth:`ClassInfo.default <pixelwise.data.ClassInfo.default>` names.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from pixelwise._version import __version__
from pixelwise.data import ClassInfo
from pixelwise.data.targets import TARGETS
from pixelwise.errors import WeightsError
from pixelwise.io import atomic_path, read_json_object
from pixelwise.models import SegmentationModel, from_pretrained
from pixelwise.models.base import CONFIG_NAME
from pixelwise.models.geometry import uses_valid_convolution
from pixelwise.modes import TTA_MODES

PREPROCESSING_NAME = "preprocessing.json"
CLASSES_NAME = "classes.yaml"
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "scale": 1.0,
    "mask_offset": (0.0, 0.0),
    "target": "semantic",
    "separation_gap": 0,
    "input_range": "unit",
    "ignore_index": None,
    "mask_values": None,
    "instance_options": None,
    "instance_tuning": None,
    "tta": None,
}
"""Values of the optional ``preprocessing.json`` keys when the file leaves them out (older runs)."""
INSTANCE_OPTION_KEYS = ("method", "markers", "threshold", "marker_threshold", "h", "min_size")
"""Keys of ``instance_options``: keyword arguments of :func:`pixelwise.instances.to_instances` (checked for type and
range here; method and marker names are checked by ``to_instances`` itself, which owns their lists)."""
RAW = "uint8-raw"
"""ONNX ``input_format`` of a graph that takes raw ``uint8`` pixels and normalises them itself."""
FLOAT = "float-normalised"
"""ONNX ``input_format`` of a graph that takes normalised float images."""
GRAPH_KEYS = ("in_channels", "input_format", "input_layout", "output", "activation", "input_multiple")
"""ONNX metadata keys that describe the exported graph rather than the model folder."""


@dataclass
class Preprocessing:
    """The checked content of ``preprocessing.json``, in the order the file lists it.

    Attributes:
        mean, std: per-channel normalisation (one value per channel, or one for all) of images in [0, 1].
        input_range: ``unit``: images are scaled to [0, 1] (8-bit / 255, 16-bit / 65535) before mean/std.
        scale: the model predicts on images resized by this factor (> 0).
        mask_offset: ``(dy, dx)`` pixels: images are shifted by this before the network.
        ignore_index: the mask value the training loss ignored (None: not recorded).
        mask_values: ``{stored value: class id}`` the training masks were read with (None: not recorded).
        target: ``semantic`` or ``boundary``: what the model was trained on (see :data:`TARGETS`).
        separation_gap: pixels cut from each side of touching objects in the training target.
        extra: keys the file holds that this schema does not know (kept, and written back).
        instance_options: post-processing chosen for this model (``pixelwise tune-instances``): keyword
            arguments of :func:`~pixelwise.instances.to_instances` (:data:`INSTANCE_OPTION_KEYS`), which
            ``predict --instances`` and ``evaluate --instances`` use unless given explicit options; None: defaults.
        instance_tuning: how ``instance_options`` were chosen (objective, scores, data, split), for the record.
        tta: the test-time augmentation stored with the model (``TrainConfig.tta``: one of
            :data:`~pixelwise.modes.TTA_MODES`), which :class:`~pixelwise.inference.Predictor`, ``evaluate``
            and ``predict`` use unless given another; None: none.
    """

    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    input_range: str = PREPROCESSING_DEFAULTS["input_range"]
    scale: float = PREPROCESSING_DEFAULTS["scale"]
    mask_offset: tuple[float, float] = PREPROCESSING_DEFAULTS["mask_offset"]
    ignore_index: int | None = PREPROCESSING_DEFAULTS["ignore_index"]
    mask_values: dict[int, int] | None = PREPROCESSING_DEFAULTS["mask_values"]
    target: str = PREPROCESSING_DEFAULTS["target"]
    separation_gap: int = PREPROCESSING_DEFAULTS["separation_gap"]
    extra: dict[str, Any] = field(default_factory=dict)
    # after extra: positional construction in the order of earlier releases keeps working
    instance_options: dict[str, Any] | None = PREPROCESSING_DEFAULTS["instance_options"]
    instance_tuning: dict[str, Any] | None = PREPROCESSING_DEFAULTS["instance_tuning"]
    tta: str | None = PREPROCESSING_DEFAULTS["tta"]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """From the dict :func:`read_preprocessing` returns (checked, defaults filled in)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in values.items() if k in known}, extra={k: v for k, v in values.items() if k not in known}
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``preprocessing.json`` (``mask_values`` keys as strings)."""
        values = asdict(self)
        extra = values.pop("extra")
        values["mask_offset"] = list(self.mask_offset)
        if self.mask_values is not None:
            values["mask_values"] = {str(k): v for k, v in self.mask_values.items()}
        return values | extra


@dataclass
class ModelBundle:
    """A trained model folder: the model, its preprocessing, its classes and the version that wrote it.

    Attributes:
        model: the network (None for a bundle read from ONNX metadata, which holds no weights).
        preprocessing: see :class:`Preprocessing`.
        classes: the class names, ids and colours (None: not known).
        version: the pixelwise version that wrote the folder (``config.json``'s ``pixelwise_version``).
        architecture: ``{"arch": name, "options": constructor arguments}``; taken from ``model`` when None.
        in_channels: the input channels (None: ``model.in_channels``).
        graph: facts of an exported graph read from ONNX metadata (``input_format``, ``output``,
            ``activation``, ``input_multiple``, ``valid_convolution``, ...); empty for a folder.

    Example:
        >>> bundle = ModelBundle.load("runs/cells/model")  # doctest: +SKIP
        >>> bundle.preprocessing.scale, bundle.classes.names  # doctest: +SKIP
        (1.0, ['background', 'cell'])
    """

    model: nn.Module | None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    classes: ClassInfo | None = None
    version: str | None = __version__
    architecture: dict[str, Any] | None = None
    in_channels: int | None = None
    graph: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture is None and self.model is not None:
            name = getattr(self.model, "arch_name", type(self.model).__name__)
            self.architecture = {"arch": name, "options": getattr(self.model, "config", {})}
        if self.in_channels is None and self.model is not None:
            channels = getattr(self.model, "in_channels", None)
            self.in_channels = channels if isinstance(channels, int) else None

    # -- the folder ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the folder: ``config.json`` + ``model.safetensors`` (``save_pretrained``),
        ``preprocessing.json`` and ``classes.yaml`` (when ``classes`` is known), each atomically.

        Returns:
            ``directory``.

        Raises:
            ConfigError: the model is not a :class:`~pixelwise.models.SegmentationModel`, or it has an
                option ``config.json`` cannot store.
        """
        from pixelwise.errors import ConfigError

        directory = Path(directory)
        if not isinstance(self.model, SegmentationModel):
            found = type(self.model).__name__
            raise ConfigError(f"a model folder needs a pixelwise SegmentationModel (to save_pretrained), got {found}.")
        self.model.save_pretrained(directory)
        with atomic_path(directory / PREPROCESSING_NAME) as tmp:
            tmp.write_text(json.dumps(self.preprocessing.to_dict(), indent=2) + "\n")
        if self.classes is not None:
            self.classes.save(directory / CLASSES_NAME)
        return directory

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read and check a model folder (or a run directory, whose ``model/`` is read).

        A folder without ``preprocessing.json`` (a bare ``save_pretrained`` model) gets mean 0, std 1
        and the :data:`PREPROCESSING_DEFAULTS`; one without ``classes.yaml`` gets ``class_0 ..``.

        Raises:
            WeightsError: a damaged ``config.json``, weights or ``preprocessing.json`` (the message names
                the file, the key and the fix; see :func:`read_preprocessing`).
            ConfigError: a ``config.json`` naming an unknown architecture or options, or a bad ``classes.yaml``.
        """
        path = Path(path)
        model_dir = path / "model" if (path / "model" / CONFIG_NAME).is_file() else path
        model = from_pretrained(model_dir)
        preprocessing = Preprocessing.from_dict(read_preprocessing(model_dir, model.in_channels))
        classes_path = model_dir / CLASSES_NAME
        classes = ClassInfo.load(classes_path) if classes_path.is_file() else ClassInfo.default(model.classes)
        return cls(model.eval(), preprocessing, classes, _saved_version(model_dir))

    # -- ONNX metadata ---------------------------------------------------------------------
    def to_onnx_metadata(self, raw: bool | None = None) -> dict[str, str]:
        """The string key/value pairs stored with an export (ONNX ``metadata_props``, TorchScript extra file).

        Args:
            raw: the graph takes raw ``uint8`` pixels and returns labels (None: as ``graph`` says, else False).
        """
        graph = self.graph
        raw = graph.get("input_format") == RAW if raw is None else raw
        if self.model is not None:
            activation = getattr(self.model, "activation", nn.Identity())
            plain = raw or isinstance(activation, nn.Identity)
            activation_name = "none" if plain else type(activation).__name__
            multiple, valid = getattr(self.model, "input_multiple", 1), uses_valid_convolution(self.model)
        else:
            activation_name = "none" if raw else graph.get("activation", "none")
            plain = activation_name == "none"
            multiple, valid = graph.get("input_multiple", 1), bool(graph.get("valid_convolution", False))
        pre = self.preprocessing
        return {
            "pixelwise_version": str(self.version if self.version is not None else __version__),
            "architecture": json.dumps(self.architecture or {}, default=str),
            "classes": json.dumps(None if self.classes is None else list(self.classes.names)),
            "in_channels": str(self.in_channels),
            "mean": json.dumps(pre.mean),
            "std": json.dumps(pre.std),
            "scale": repr(float(pre.scale)),
            "mask_offset": json.dumps(list(pre.mask_offset)),
            "input_format": RAW if raw else FLOAT,
            "input_layout": graph.get("input_layout", "NCHW"),
            "output": "labels" if raw else ("logits" if plain else "scores"),
            "activation": activation_name,
            "input_multiple": str(multiple),
            "valid_convolution": json.dumps(valid),
        }

    @classmethod
    def from_onnx_metadata(cls, metadata: dict[str, Any], source: str = "the ONNX metadata") -> ModelBundle:
        """The bundle :meth:`to_onnx_metadata` wrote (no model: an ONNX file's weights are its graph).

        Args:
            metadata: the file's metadata, as strings or with JSON values already parsed.
            source: what to call the metadata in error messages (the file name).

        Raises:
            WeightsError: a stored value of the wrong type or range (naming ``source`` and the key).
        """
        meta = {key: _parse(value) if isinstance(value, str) else value for key, value in metadata.items()}
        channels = meta.get("in_channels")
        channels = channels if isinstance(channels, int) and not isinstance(channels, bool) else None
        values = {key: meta[key] for key in ("mean", "std", "scale", "mask_offset") if meta.get(key) is not None}
        values = PREPROCESSING_DEFAULTS | {"mean": [0.0], "std": [1.0]} | values
        try:
            preprocessing = Preprocessing.from_dict(values | _checked_preprocessing(values, None))
        except ValueError as error:
            raise WeightsError(f"{source} is damaged: {error}; export the model again.") from error
        names = meta.get("classes")
        classes = ClassInfo(list(names), list(range(len(names)))) if names else None
        architecture = meta.get("architecture") if isinstance(meta.get("architecture"), dict) else None
        version = meta.get("pixelwise_version")
        graph = {key: meta[key] for key in (*GRAPH_KEYS, "valid_convolution") if key in meta}
        return cls(
            None, preprocessing, classes, None if version is None else str(version), architecture, channels, graph
        )


def _parse(value: str) -> Any:
    """A metadata string's JSON value, or the string itself when it is not JSON."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _saved_version(model_dir: Path) -> str | None:
    """``config.json``'s ``pixelwise_version`` (None when it has none; the file was checked on loading)."""
    try:
        version = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8")).get("pixelwise_version")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return None if version is None else str(version)


def read_preprocessing(
    model_dir: str | Path, in_channels: int | None = None, require: tuple[str, ...] = ("mean", "std")
) -> dict[str, Any]:
    """The checked ``preprocessing.json`` of a model folder (``runs/<name>/model``), defaults filled in.

    Keys: ``mean`` and ``std`` (lists of floats, one per channel or one for all; mean 0 and std 1
    when left out), ``scale`` (float > 0), ``mask_offset`` (``(dy, dx)`` floats), ``target``
    (``semantic`` or ``boundary``), ``separation_gap`` (int >= 0), ``input_range`` and
    ``ignore_index``, ``tta`` (a name of :data:`~pixelwise.modes.TTA_MODES` or null), with the
    :data:`PREPROCESSING_DEFAULTS`. Unknown keys are kept. A folder without
    the file (a bare ``save_pretrained`` model) gets all the defaults: inputs in [0, 1] go in unchanged.

    Args:
        model_dir: the folder holding ``preprocessing.json``.
        in_channels: the model's input channels, which ``mean`` and ``std`` must fit (None: not checked).
        require: keys the file must have. The normalisation by default: a model folder without it
            would silently feed the network inputs it was not trained on.

    Raises:
        WeightsError: the file is not JSON, not an object, lacks a ``require``d key, or has a value of
            the wrong type or range (the message names the file, the key and the fix).

    Example:
        >>> read_preprocessing("runs/cells/model", in_channels=1)["scale"]  # doctest: +SKIP
        1.0
    """
    path = Path(model_dir) / PREPROCESSING_NAME
    neutral = {"mean": [0.0] * (in_channels or 1), "std": [1.0] * (in_channels or 1)}
    if not path.is_file():
        return PREPROCESSING_DEFAULTS | neutral
    where = f"{str(path)!r} is damaged"
    fix = "fix it, or delete the model folder and export it again from the run's checkpoint"
    facts = read_json_object(path, fix)
    missing = [key for key in require if key not in facts]
    if missing:
        raise WeightsError(f"{where}: the required key {missing[0]!r} is missing; {fix}.")
    values = PREPROCESSING_DEFAULTS | neutral | facts
    try:
        return values | _checked_preprocessing(values, in_channels)
    except ValueError as error:
        raise WeightsError(f"{where}: {error}; {fix}.") from error


def _checked_preprocessing(values: dict[str, Any], in_channels: int | None) -> dict[str, Any]:
    """The known keys of ``values`` converted to their types; a ValueError names a bad one."""
    checked = {key: _floats(values, key) for key in ("mean", "std")}
    mean, std = len(checked["mean"]), len(checked["std"])
    channels = in_channels or max(mean, std)
    if not {mean, std} <= {1, channels}:  # one value per channel, or one for all
        wanted = f"the model takes {in_channels} channels" if in_channels else "they must agree"
        raise ValueError(f"'mean' has {mean} values and 'std' {std} but {wanted}")
    if min(checked["std"]) <= 0:
        raise ValueError(f"'std' must be positive, got {values['std']!r}")
    scale = _floats(values, "scale", scalar=True)[0]
    if scale <= 0:
        raise ValueError(f"'scale' must be positive, got {values['scale']!r}")
    target = values["target"]
    if target not in TARGETS:
        raise ValueError(f"'target' must be one of {', '.join(map(repr, TARGETS))}, got {target!r}")
    gap = values["separation_gap"]
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"'separation_gap' must be an integer >= 0, got {gap!r}")
    offset = _floats(values, "mask_offset")
    if len(offset) != len(PREPROCESSING_DEFAULTS["mask_offset"]):
        raise ValueError(f"'mask_offset' must be [dy, dx], got {values['mask_offset']!r}")
    mask_values = values["mask_values"]
    if mask_values is not None:
        pairs = mask_values.items() if isinstance(mask_values, dict) else None
        if pairs is None or not all(str(k).isdigit() and isinstance(v, int) for k, v in pairs):
            raise ValueError(
                f"'mask_values' must map stored values to class ids, e.g. {{\"255\": 1}}; got {mask_values!r}"
            )
        mask_values = {int(k): v for k, v in pairs}
    fixed = {"scale": scale, "target": target, "separation_gap": gap, "mask_offset": tuple(offset)}
    tuning = values.get("instance_tuning")
    if tuning is not None and not isinstance(tuning, dict):
        raise ValueError(f"'instance_tuning' must be an object, got {tuning!r}")
    instances = {"instance_options": _instance_options(values.get("instance_options")), "instance_tuning": tuning}
    return checked | fixed | {"mask_values": mask_values, "tta": _tta(values.get("tta"))} | instances


def _tta(mode: Any) -> str | None:
    """``tta`` checked: None or a name of :data:`~pixelwise.modes.TTA_MODES`.

    Raises:
        ValueError: naming the key, the valid names and the value.
    """
    if mode is not None and (not isinstance(mode, str) or mode not in TTA_MODES):
        raise ValueError(f"'tta' must be null or one of {', '.join(map(repr, TTA_MODES))}, got {mode!r}")
    return mode


def _instance_options(options: Any) -> dict[str, Any] | None:
    """``instance_options`` checked: None, or an object of :data:`INSTANCE_OPTION_KEYS` with values of their type.

    Raises:
        ValueError: naming the key, what it must be and the value.
    """
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ValueError(f"'instance_options' must be an object such as {{\"min_size\": 10}}, got {options!r}")
    unknown = sorted(set(options) - set(INSTANCE_OPTION_KEYS))
    if unknown:
        known = ", ".join(INSTANCE_OPTION_KEYS)
        raise ValueError(f"'instance_options' has the unknown key {unknown[0]!r} (known: {known})")
    checked = dict(options)
    for key in ("method", "markers"):
        if key in options and not isinstance(options[key], str):
            raise ValueError(f"'instance_options.{key}' must be a name, got {options[key]!r}")
    for key in ("threshold", "marker_threshold", "h"):
        if options.get(key) is None:  # threshold None: the argmax decides the foreground
            if key in options and key != "threshold":
                raise ValueError(f"'instance_options.{key}' must be a number, got None")
            continue
        number = _floats(options, key, scalar=True)[0]
        if (key == "h" and number <= 0) or (key != "h" and not 0 <= number <= 1):
            wanted = "a number > 0" if key == "h" else "a probability in [0, 1]"
            raise ValueError(f"'instance_options.{key}' must be {wanted}, got {options[key]!r}")
        checked[key] = number
    size = options.get("min_size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"'instance_options.min_size' must be an integer >= 0, got {size!r}")
    return checked


def save_instance_options(
    model_dir: str | Path, options: dict[str, Any] | None, tuning: dict[str, Any] | None = None
) -> Path:
    """Store post-processing options (and how they were chosen) in a model folder's ``preprocessing.json``,
    atomically, keeping every other key; ``options=None`` removes them again.

    Args:
        model_dir: the model folder (``runs/<name>/model``) or its run directory.
        options: :data:`INSTANCE_OPTION_KEYS` values (see :attr:`Preprocessing.instance_options`).
        tuning: a JSON-ready record of how they were chosen.

    Returns:
        The ``preprocessing.json`` written.

    Raises:
        WeightsError: the existing file is damaged, or ``options`` has a bad key or value (nothing is written).
    """
    model_dir = Path(model_dir)
    if (model_dir / "model" / CONFIG_NAME).is_file():
        model_dir = model_dir / "model"
    facts = Preprocessing.from_dict(read_preprocessing(model_dir, require=()))
    try:
        facts.instance_options = _instance_options(options)
    except ValueError as error:
        raise WeightsError(f"cannot store instance options in {str(model_dir)!r}: {error}.") from error
    facts.instance_tuning = None if options is None else tuning
    path = model_dir / PREPROCESSING_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(facts.to_dict(), indent=2) + "\n")
    return path


def _floats(values: dict[str, Any], key: str, scalar: bool = False) -> list[float]:
    """``values[key]``, a non-empty list of finite numbers (one number if ``scalar``), as floats.

    Raises:
        ValueError: naming ``key``, what it must be and what it is.
    """
    value = values[key]
    items = [value] if scalar else value
    numbers = isinstance(items, (list, tuple)) and len(items) > 0
    if not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{key!r} must be {'a number' if scalar else 'a list of numbers'}, got {value!r}")
    if not all(math.isfinite(v) for v in items):
        raise ValueError(f"{key!r} must be finite, got {value!r}")
    return [float(v) for v in items]
