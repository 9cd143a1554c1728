"""Training configuration: defaults, YAML files, command-line overrides, validation.

Precedence, lowest first: the defaults below, a YAML file (``--config run.yaml``), then command-line
flags. The resolved configuration is saved as ``runs/<name>/config.yaml`` and is all that
``--resume`` needs.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from pixelwise.data.targets import BOUNDARY_CLASSES, Target, TargetOptions
from pixelwise.data.transforms import DEFAULT_CROP_SAMPLING_RATIO, CropSampling
from pixelwise.errors import ConfigError, check_choice, unknown_name
from pixelwise.io import atomic_path, read_text
from pixelwise.models.registry import list_models, model_options
from pixelwise.modes import IGNORE_INDEX, TTA_MODES, Mode
from pixelwise.training.checks import coerce

Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["cosine", "poly", "onecycle", "none"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Precision = Literal[
    "auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "bf16-true", "16-true", "64-true", "64"
]
AugmentPreset = Literal["none", "light", "strong"]
"""The choice options' values; the field annotations below use them, and :mod:`~pixelwise.training.checks`
answers a value outside them with "unknown ...; did you mean"."""
OPTIMIZERS: tuple[Optimizer, ...] = typing.get_args(Optimizer)
SCHEDULERS: tuple[Scheduler, ...] = typing.get_args(Scheduler)
ACCELERATORS: tuple[Accelerator, ...] = typing.get_args(Accelerator)
PRECISIONS: tuple[Precision, ...] = typing.get_args(Precision)
AUGMENT_PRESETS: tuple[AugmentPreset, ...] = typing.get_args(AugmentPreset)
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
"""The Lightning loggers ``logger`` may name (see :mod:`pixelwise.training.loggers`)."""
MIN_CROP = 8
"""Smallest training crop side, in pixels."""
RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "classes": (1, None, "3"),
    "epochs": (1, None, "50"),
    "max_minutes": (0, None, "30"),
    "samples_per_epoch": (1, None, "400"),
    "batch_size": (1, None, "8"),
    "crop": (MIN_CROP, None, "256"),
    "crop_sampling_ratio": (0, 1, str(DEFAULT_CROP_SAMPLING_RATIO)),
    "lr": (0, None, "1e-3"),
    "weight_decay": (0, None, "1e-4"),
    "momentum": (0, 1, "0.9"),
    "warmup_epochs": (0, None, "1"),
    "gradient_clip": (0, None, "1.0"),
    "ema_decay": (0, 1, "0.998"),
    "aux_loss_weight": (0, None, "0.4"),
    "weight_map_w0": (0, None, "10"),
    "weight_map_sigma": (0, None, "5"),
    "separation_gap": (0, None, "1"),
    "boundary_width": (1, None, "2"),
    "devices": (1, None, "2"),
    "num_nodes": (1, None, "1"),
    "num_workers": (0, None, "4"),
}
"""``(lowest, highest, example)`` of the numeric options (None: unbounded)."""
EXCLUSIVE = {"max_minutes", "lr", "gradient_clip", "ema_decay", "weight_map_sigma"}
"""Options whose bounds are excluded (they must lie strictly between them)."""
CLASS_WEIGHTINGS = ("median", "sqrt_median")
BOUNDARY_NUM_CLASSES = len(BOUNDARY_CLASSES)
ALIASES = {"weight_map": "loss_weight_map"}
"""Older or shorter YAML keys and the fields they set."""
AUX_OPTIONS = ("deep_supervision", "aux_head")
"""The model options that add auxiliary outputs (U-Net family; PSPNet, DeepLab, UPerNet); ``aux_loss_weight``
turns on the one the architecture has."""


def aux_option(arch: str) -> str:
    """The option of architecture ``arch`` that adds auxiliary outputs (an entry of :data:`AUX_OPTIONS`).

    Raises:
        ConfigError: ``arch`` has none (the message lists the architectures that have one).
    """
    option = next((name for name in AUX_OPTIONS if name in model_options(arch)), None)
    if option is None:
        supported = [name for name in list_models() if any(o in model_options(name) for o in AUX_OPTIONS)]
        raise ConfigError(
            f"aux_loss_weight needs a model with auxiliary outputs, but model={arch!r} has none; use one of "
            f"{', '.join(supported)}, or aux_loss_weight=0."
        )
    return option


@dataclass
class TrainConfig:
    """Everything a training run needs; every field can come from YAML or a ``--flag``.

    Sizes are in pixels, learning rates per optimiser step, budgets in epochs or minutes.
    """

    data: str = ""
    """The data set: a folder with ``train/`` and ``val/`` splits, or any layout of
    :mod:`pixelwise.data.layouts` (COCO JSON, Pascal VOC, Cityscapes, ADE20K, ...): see SegmentationFolder."""
    data_format: str | None = None
    """The data set's layout (``folder``, ``coco``, ``voc``, ...; None: detected)."""
    data_options: dict[str, Any] = field(default_factory=dict)
    """Options of the layout, e.g. ``{"overlap": "smaller"}`` for COCO (see ``pixelwise check-data --help``)."""
    name: str | None = None
    """Run name: the run is written to ``<runs_dir>/<name>/`` (None: model-encoder-timestamp)."""
    runs_dir: str = "runs"
    """Parent folder of the run directories."""
    train_split: str | None = "train"
    """Split of ``data`` to train on (``training``, ``train2017`` and the like are found as aliases;
    ``None``: an unsplit data set, e.g. a folder that itself holds images/ and masks/)."""
    val_split: str | None = "val"
    """Split of ``data`` to validate on (may equal ``train_split`` when ``val_files`` picks files)."""
    train_files: str | list[str] | None = None
    """Only these training files: a glob over file stems (``"[01]?"``) or a list; default all."""
    val_files: str | list[str] | None = None
    """Only these validation files (e.g. the same split folder as training with ``"2[0-4]"``)."""
    classes: int | None = None
    """Number of classes K (inferred from classes.yaml or the masks when omitted)."""
    ignore_index: int | None = None
    """Mask value excluded from the loss and the metrics (None: 255, which binary masks stored as 0/255
    read as their foreground instead; see mask_values)."""
    mask_values: dict[int, int] | None = None
    """Mask values read as other class ids, e.g. ``{255: 1}`` (None: found by the data check: masks
    holding only 0 and one other value, such as 0/255 or 0/65535 binary exports, read it as class 1;
    ``{}``: the values are class ids as stored)."""
    mode: Mode = "multiclass"
    """``multiclass`` (softmax over K), ``binary`` (one sigmoid channel) or ``multilabel``."""

    model: str = "unet"
    """Architecture name (``pixelwise models`` lists them)."""
    encoder: str | None = "resnet34"
    """timm encoder name, e.g. ``resnet34`` (ignored by models without one, e.g. ``unet2015``)."""
    encoder_weights: str | None = None
    """Pretrained encoder weights: a timm tag (needs network) or a local ``.pth``/``.safetensors`` file."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Extra architecture options, e.g. ``{decoder_channels: [128, 64, 32, 16, 16]}``."""
    init: str | None = None
    """Start from the weights of a model folder (``runs/<name>/model``, a run directory, or one written by
    ``pixelwise convert``) instead of random or ``encoder_weights``: its architecture and encoder must be
    ``model`` and ``encoder``; layers of another shape (the head, for another number of ``classes``) keep
    their fresh initialisation. Not with ``--resume`` (the checkpoint holds the weights)."""

    epochs: int = 50
    """Number of passes over ``samples_per_epoch`` training crops."""
    max_minutes: float | None = None
    """Stop after this much training time, whatever ``epochs`` says (fixed-budget runs)."""
    samples_per_epoch: int | None = None
    """Random crops drawn per epoch (default: one per training image, and at least
    ``MIN_EPOCH_STEPS`` batches, so that a small data set's epochs do not shrink to a few steps)."""
    batch_size: int = 8
    """Images per optimiser step (per process under DDP)."""
    scale: float = 1.0
    """Resize images (bilinear) and masks (nearest) by this factor before cropping; the model then
    predicts at this scale and evaluation upsamples its scores to the full resolution."""
    mask_offset: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """Where the masks sit relative to the structures in the images, ``[dy, dx]`` in pixels (negative:
    up / left), for labels drawn a sub-pixel step off (the ISBI 2012 masks: ``[-0.5, 0]``). Every image is
    shifted onto its mask's grid (linear interpolation) before augmentation, and the saved model does
    the same when it predicts, so flips and rotations keep image and mask consistent."""
    crop: int | None = 256
    """Side of the random training crops in pixels (``None``: whole images, which must share a size).
    For ``unet2015`` the input tile, rounded up to a valid size (572 in the paper) and cut from the
    image mirror-padded by the network's border; the loss sees the smaller output tile (388)."""
    crop_sampling: CropSampling = "uniform"
    """Where training crops are cut: ``uniform`` (anywhere); ``class_balanced`` (in ``crop_sampling_ratio``
    of the crops: a class drawn uniformly over the training set, an image holding it, the crop centred on
    one of its pixels); ``rare_class`` (the same, classes drawn by DAFormer's rare class sampling,
    exp((1 - pixel share) / 0.01): mostly classes under 1 % of the pixels); or ``foreground`` (centred on
    a pixel of any class but 0, as MONAI's RandCropByPosNegLabel). Needs ``crop``."""
    crop_sampling_ratio: float = DEFAULT_CROP_SAMPLING_RATIO
    """Share of training crops centred on a chosen pixel with ``crop_sampling`` ``class_balanced``,
    ``rare_class`` or ``foreground``, in [0, 1]; the others are uniform."""
    augment: AugmentPreset | list = "light"
    """Preset ``none``, ``light`` or ``strong``, or a list of presets and transforms (see data.transforms)."""
    loss: str | dict[str, float] = "ce+dice"
    """A loss name or weighted sum, e.g. ``ce+dice`` or ``"ce + 0.5*dice"`` (see pixelwise.losses)."""
    loss_options: dict[str, Any] = field(default_factory=dict)
    """Extra loss options, e.g. ``{gamma: 2}`` for focal."""
    class_weights: str | list[float] | None = None
    """``None``, ``"median"`` (median-frequency balancing from the training masks), ``"sqrt_median"``
    (their square roots: a milder balance, better when the loss has a Dice term, which already
    weighs classes equally) or one weight per class. They weight the loss's cross-entropy term
    (``ce``) when it has one, else every term that takes class weights (``dice``, ``jaccard``, ...)."""
    aux_loss_weight: float = 0.0
    """Weight of the auxiliary losses (0: none). Above 0 the model is built with its auxiliary outputs (U-Net,
    U-Net++: ``deep_supervision``, nnU-Net's losses on intermediate decoder stages; PSPNet, DeepLabV3(+),
    UPerNet: ``aux_head``, an FCN head on the second-deepest encoder feature, as torchvision and MMSegmentation)
    and the training loss is ``loss(main) + aux_loss_weight × weighted mean of loss(aux_i)``; validation,
    metrics and prediction use the main output only. Typical: 0.4 (MMSegmentation), 0.5 (torchvision)."""
    loss_weight_map: str | None = None
    """Per-pixel loss weights: ``None`` or ``"unet"``, the U-Net border weight map, computed on every augmented
    crop from the instance labels (the data's ``instances/`` folder, else connected components of the mask);
    YAML also accepts the key ``weight_map``."""
    weight_map_w0: float = 10.0
    """``w0`` of the U-Net weight map: the weight added in the gaps between touching objects."""
    weight_map_sigma: float = 5.0
    """``sigma`` of the U-Net weight map, in pixels (at the training ``scale``)."""
    separation_gap: int | None = None
    """Pixels cut from each side of a contact between objects, in the target (``None``: 1 with
    ``loss_weight_map: unet`` and a semantic target, else 0): the U-Net paper's separation borders."""
    target: Target = "semantic"
    """``semantic`` (the masks) or ``boundary``: three classes background / interior / boundary built
    from the instance labels (every object class becomes "object"; the model then predicts 3 classes)."""
    boundary_width: int = 2
    """Width of the ``boundary`` class in pixels."""

    optimizer: Optimizer = "adamw"
    """``adamw`` or ``sgd`` (with momentum)."""
    lr: float = 1e-3
    """Peak learning rate (after warm-up)."""
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW) or L2 penalty (SGD)."""
    momentum: float = 0.9
    """SGD momentum."""
    scheduler: Scheduler = "cosine"
    """Learning-rate decay after warm-up: ``cosine``, ``poly``, ``onecycle`` or ``none``."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs (fractions allowed)."""
    gradient_clip: float | None = None
    """Clip the gradient norm to this value (``None``: no clipping)."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights (and BatchNorm statistics), updated after
    every step with this decay, e.g. 0.998 (an average over roughly the last 1 / (1 - decay) steps;
    the decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n steps); validation,
    ``best.ckpt``/``last.ckpt`` and the saved model then use the averaged weights (``None``: no
    averaging)."""
    tta: str | None = None
    """Test-time augmentation stored with the model: ``hflip``, ``flips`` or ``d4`` (the flips the labels allow);
    ``evaluate``, ``predict`` and ``Predictor`` use it unless given ``--tta`` (``none`` switches it off);
    ``None``: none."""

    accelerator: Accelerator = "auto"
    """``auto``, ``cpu``, ``gpu`` (``cuda``) or ``mps`` (Lightning accelerator)."""
    devices: int | str = 1
    """Devices (processes) per node, e.g. 2 with ``strategy: ddp``."""
    strategy: str = "auto"
    """Lightning strategy, e.g. ``ddp`` (gloo on CPU, NCCL on GPU)."""
    num_nodes: int = 1
    """Nodes for multi-node DDP (launch with torchrun or SLURM)."""
    precision: Precision = "auto"
    """``"auto"`` (bf16 mixed precision on GPUs that support it, else 32-bit), or a Lightning precision."""
    channels_last: bool = True
    """Train in the channels-last (NHWC) memory layout: about 1.3× faster per step on CPU (oneDNN)
    and on GPUs with tensor cores; the saved weights are the same either way."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    seed: int = 0
    """Random seed for weights, crops and augmentation; CPU runs repeat exactly."""
    deterministic: bool = False
    """Ask PyTorch for deterministic kernels (slower; for GPU repeatability)."""
    progress: bool = True
    """Show the progress bar."""
    logger: str | list[str] | None = None
    """Lightning loggers besides the run's own ``metrics.csv`` and ``curves.png`` (``None``: none): ``csv``,
    ``tensorboard`` (with images of validation predictions), ``mlflow`` (a file store, no server) or
    ``wandb`` (offline), written under the run directory; several as a list or ``csv,tensorboard``."""

    def validate(self) -> TrainConfig:
        """Check types, choices (the ``Literal`` fields) and ranges; raise ConfigError naming the option and the fix."""
        check_types(self)
        if not self.data:
            raise ConfigError("no training data given: pass --data DIR (a folder with train/ and val/ splits).")
        check_ranges(self)
        check_device(self.accelerator)
        if not 0 < self.scale <= 4:
            raise ConfigError(f"scale={self.scale} must be in (0, 4]; e.g. 0.5 trains at half resolution.")
        if (
            not isinstance(self.mask_offset, list | tuple)
            or len(self.mask_offset) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= 8 for v in self.mask_offset)
        ):
            raise ConfigError(
                f"mask_offset={self.mask_offset!r}: give [dy, dx] in pixels, each within ±8 (e.g. [-0.5, 0])."
            )
        self.mask_offset = [float(v) for v in self.mask_offset]
        if isinstance(self.class_weights, str) and self.class_weights not in CLASS_WEIGHTINGS:
            raise ConfigError(
                f"class_weights={self.class_weights!r}: use {' or '.join(map(repr, CLASS_WEIGHTINGS))} "
                "or a list of numbers, one per class."
            )
        if self.crop is None and self.crop_sampling != "uniform":
            raise ConfigError(
                f"crop_sampling={self.crop_sampling!r} chooses where crops are cut, but crop=None trains on whole "
                "images: give --crop (e.g. 256) or use --crop-sampling uniform."
            )
        self._validate_targets()
        if self.tta is not None:
            check_choice("tta", self.tta, TTA_MODES)
        if self.aux_loss_weight > 0:
            aux_option(self.model)  # an architecture without auxiliary outputs fails here, before any run folder
        self.logger = logger_names(self.logger) or None
        return self

    def _validate_targets(self) -> None:
        if isinstance(self.loss_weight_map, str) and self.loss_weight_map.lower() in ("none", "null", ""):
            self.loss_weight_map = None  # `--loss-weight-map none` on the command line
        self.target_options()  # checks the names and ranges
        if self.target == "boundary":
            if self.mode != "multiclass":
                raise ConfigError(f"target=boundary needs mode=multiclass (3 classes); got mode={self.mode!r}.")
            if self.classes not in (None, BOUNDARY_NUM_CLASSES):
                raise ConfigError(
                    f"target=boundary predicts {BOUNDARY_NUM_CLASSES} classes (background, interior, boundary); "
                    f"got classes={self.classes}: leave --classes out."
                )
            if self.class_weights in CLASS_WEIGHTINGS:
                raise ConfigError(
                    f"class_weights={self.class_weights!r} is computed from the masks, not the boundary target; "
                    "give three weights (background, interior, boundary) or none."
                )

    def target_options(self) -> TargetOptions:
        """The per-crop target settings (:class:`pixelwise.instances.TargetOptions`) of this run."""
        return TargetOptions(
            target=self.target,
            weight_map=self.loss_weight_map,
            gap=self.separation_gap,
            boundary_width=self.boundary_width,
            w0=self.weight_map_w0,
            sigma=self.weight_map_sigma,
            ignore_index=IGNORE_INDEX if self.ignore_index is None else self.ignore_index,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def logger_names(logger: str | list[str] | None) -> list[str]:
    """The logger names of a ``logger`` option: a list, or text separated by commas (``csv,tensorboard``);
    ``none`` or an empty text is no logger.

    Raises:
        ConfigError: a name not in :data:`LOGGERS` ("did you mean ...").
    """
    items = logger.split(",") if isinstance(logger, str) else list(logger or [])
    names = [str(item).strip().lower() for item in items]
    names = [name for name in names if name and name not in ("none", "null")]
    for name in names:
        check_choice("logger", name, LOGGERS)
    return list(dict.fromkeys(names))  # each logger once, in the order given


def check_types(config: TrainConfig) -> None:
    """Check every field's value against its annotation (see :mod:`pixelwise.training.checks`); a
    number YAML 1.1 left as text (``lr: 1e-3``) is converted."""
    hints = typing.get_type_hints(TrainConfig)
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        setattr(config, item.name, coerce(item.name, value, hints[item.name]))


def check_ranges(config: TrainConfig) -> None:
    """Check the numeric fields against :data:`RANGES`."""
    for name, (low, high, example) in RANGES.items():
        value = getattr(config, name)
        if value is None or (name == "devices" and isinstance(value, str)):
            continue
        low_ok = low is None or (value > low if name in EXCLUSIVE else value >= low)
        high_ok = high is None or (value < high if name in EXCLUSIVE else value <= high)
        if not (low_ok and high_ok):
            allowed = _range_text(name, low, high)
            raise ConfigError(f"{name}={value!r} is out of range: it must be {allowed} (e.g. {name}: {example}).")


def _range_text(name: str, low: float | None, high: float | None) -> str:
    lower = f"greater than {low}" if name in EXCLUSIVE else f"at least {low}"
    upper = f"less than {high}" if name in EXCLUSIVE else f"at most {high}"
    return lower if high is None else f"{lower} and {upper}"


def check_device(accelerator: str) -> None:
    """Refuse a GPU accelerator on a machine where none is visible (before any run folder is made)."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"accelerator={accelerator!r} but no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "pass --accelerator cpu, or auto to use a GPU only where there is one."
        )
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("accelerator='mps' but Apple's MPS device is not available here; pass --accelerator cpu.")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from a mapping; unknown keys are an error naming the closest fields."""
    names = field_names()
    values = {ALIASES.get(key, key): value for key, value in values.items()}
    for key in values:
        if key not in names:
            raise unknown_name(f"option in {source}", key, names)
    return TrainConfig(**values)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of training options."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the --config path.")
    try:
        values = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of options, not {type(values).__name__}.")
    return values


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← YAML file ← overrides (``None`` values in overrides mean "not given")."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_yaml(config_file))
        from_dict(values, source=str(config_file))  # report unknown keys against the file's name
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(values).validate()
