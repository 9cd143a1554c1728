"""Evaluate a trained model on a data split: metrics, confusion matrix, gallery and HTML report.

``evaluate(model_path, data, split)`` accepts a run directory (``runs/<name>``, whose ``model/`` it
loads), a ``save_pretrained`` directory, or a ``.ckpt`` file inside a run directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixelwise.data import ClassInfo, DataError, SegmentationFolder
from pixelwise.data.transforms import shift_image
from pixelwise.errors import ConfigError, WeightsError
from pixelwise.inference.tta import tta_average, tta_transforms
from pixelwise.instances.scoring import InstanceScorer
from pixelwise.instances.targets import TARGETS
from pixelwise.io import atomic_path, load_checkpoint
from pixelwise.metrics import ConfusionMatrix
from pixelwise.models import SegmentationModel, from_pretrained
from pixelwise.models.base import CONFIG_NAME
from pixelwise.models.geometry import forward_mirrored, uses_valid_convolution
from pixelwise.models.registry import load_state
from pixelwise.modes import IGNORE_INDEX
from pixelwise.report import printable
from pixelwise.viz import panel, plot_confusion, save_png

GALLERY_SIZE = 8
METRIC_KEYS = ("iou", "f1", "precision", "recall")
SUMMARY_KEYS = ("mean_iou", "mean_f1", "accuracy", "mean_accuracy", "fw_iou")


@dataclass
class LoadedModel:
    """A model ready for inference with the input normalisation and classes it was trained with."""

    model: SegmentationModel
    mean: torch.Tensor
    std: torch.Tensor
    classes: ClassInfo
    run_dir: Path | None
    scale: float = 1.0
    target: str = "semantic"
    """What the model was trained on: ``semantic`` or ``boundary`` (background / interior / boundary)."""
    separation_gap: int = 0
    """Pixels cut from each side of touching objects in the training target (undone by ``to_instances``)."""
    mask_offset: tuple[float, float] = (0.0, 0.0)
    """``[dy, dx]`` pixels: the images are shifted by this before the network (``TrainConfig.mask_offset``)."""
    mask_values: dict[int, int] | None = None
    """Stored mask values the training data read as other class ids (``{255: 1}`` for 0/255 binary masks;
    None: not recorded, found from the evaluation masks)."""

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, K, H, W]`` logits → probabilities: softmax, or sigmoid for a one-channel (binary) model."""
        return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)

    @torch.inference_mode()
    def predict_logits(self, image: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """``[C, H, W]`` or ``[N, C, H, W]`` image(s) in [0, 1] → ``[N, K, H, W]`` logits (whole image).

        The image is first shifted by ``mask_offset`` (as in training); a model trained at ``scale``
        sees the image resized by it; its scores are upsampled back.
        A valid-convolution model (UNet2015) predicts the mirror-padded image, see
        :func:`~pixelwise.models.geometry.forward_mirrored`.
        With ``tta`` (``"hflip"``, ``"flips"`` or ``"d4"``, see :mod:`pixelwise.inference.tta`) the probabilities
        of the transformed copies are averaged, and the logits returned are those of the average
        (log-probabilities, or the logit of a one-channel model), so that ``probabilities`` and
        ``argmax`` work on them as on plain logits.
        """
        batch = image[None] if image.ndim == 3 else image
        # in the image's own frame, before any flip: the offset is a fact of how the masks were drawn
        batch = shift_image(batch, self.mask_offset)
        if tta is not None:
            mean = tta_average(lambda x: self.probabilities(self._logits(x)), batch, tta)
            return torch.logit(mean, eps=1e-7) if mean.shape[1] == 1 else mean.clamp_min(1e-12).log()
        return self._logits(batch)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[-2:]
        device = next(self.model.parameters()).device
        batch = (batch.to(device) - self.mean.to(device)) / self.std.to(device)
        if self.scale != 1:
            scaled = (max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale)))
            batch = F.interpolate(batch, size=scaled, mode="bilinear", antialias=True)
        model = self.model.eval()
        # a valid-convolution model (UNet2015) sees the image mirror-padded by its border, as the paper tiles
        logits = (forward_mirrored(model, batch, model) if uses_valid_convolution(model) else model(batch)).float()
        if self.scale != 1:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.cpu()


def load_model(path: str | Path) -> LoadedModel:
    """Load a run directory, a ``save_pretrained`` directory, or a run's ``.ckpt`` file.

    A ``.ckpt`` is read with the ``model/`` folder of its run directory (``runs/<name>/model``), which
    gives the architecture, normalisation and classes; the checkpoint gives the weights.

    Raises:
        ConfigError: the path does not exist or is none of the above.
        WeightsError: a damaged ``config.json``, ``preprocessing.json``, weights or checkpoint (the message
            names the file and what is wrong with it).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model path {str(path)!r} does not exist; pass a run directory (runs/<name>).")
    checkpoint = path if path.suffix == ".ckpt" else None
    run_dir = path.parent if checkpoint else (path if (path / "model" / CONFIG_NAME).is_file() else None)
    model_dir = run_dir / "model" if run_dir else path
    if not (model_dir / CONFIG_NAME).is_file():
        raise ConfigError(
            f"{str(path)!r} is neither a run directory (with model/) nor a saved model (with {CONFIG_NAME}); "
            "pass runs/<name> from `pixelwise train` or a folder written by model.save_pretrained()"
            + (f" (a .ckpt is read with {str(model_dir / CONFIG_NAME)!r}, which is missing)." if checkpoint else ".")
        )
    model = from_pretrained(model_dir)
    if checkpoint:
        load_state(model, _checkpoint_weights(checkpoint), checkpoint, repr(str(model_dir / CONFIG_NAME)))
    preprocessing = read_preprocessing(model_dir, model.in_channels)
    classes_path = model_dir / "classes.yaml"
    classes = ClassInfo.load(classes_path) if classes_path.is_file() else ClassInfo.default(model.classes)
    shape = (1, -1, 1, 1)
    return LoadedModel(
        model.eval(),
        torch.tensor(preprocessing["mean"]).view(shape),
        torch.tensor(preprocessing["std"]).view(shape),
        classes,
        run_dir,
        preprocessing["scale"],
        target=preprocessing["target"],
        separation_gap=preprocessing["separation_gap"],
        mask_offset=preprocessing["mask_offset"],
        mask_values=preprocessing["mask_values"],
    )


def _checkpoint_weights(checkpoint: Path) -> dict[str, Any]:
    """The model's weights in a training checkpoint: its ``state_dict`` entries ``model.*``, unprefixed.

    Raises:
        WeightsError: the file is not a dict with a ``state_dict`` holding ``model.*`` entries.
    """
    content = load_checkpoint(checkpoint)
    state = content.get("state_dict") if isinstance(content, dict) else None
    where = f"checkpoint {str(checkpoint)!r} is not a pixelwise training checkpoint"
    fix = "pass the run directory, or its last.ckpt / best.ckpt"
    if not isinstance(state, dict):
        found = f"keys {sorted(map(str, content))[:5]}" if isinstance(content, dict) else f"a {type(content).__name__}"
        raise WeightsError(f"{where}: it has no 'state_dict' (it holds {found}); {fix}.")
    weights = {key.removeprefix("model."): value for key, value in state.items() if str(key).startswith("model.")}
    if not weights:
        raise WeightsError(f"{where}: its 'state_dict' has no 'model.*' weights; {fix}.")
    return weights


PREPROCESSING_NAME = "preprocessing.json"
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "scale": 1.0,
    "mask_offset": (0.0, 0.0),
    "target": "semantic",
    "separation_gap": 0,
    "input_range": "unit",
    "ignore_index": None,
    "mask_values": None,
}
"""Values of the optional ``preprocessing.json`` keys when the file leaves them out (older runs)."""


def read_preprocessing(
    model_dir: str | Path, in_channels: int | None = None, require: tuple[str, ...] = ("mean", "std")
) -> dict[str, Any]:
    """The checked ``preprocessing.json`` of a model folder (``runs/<name>/model``), defaults filled in.

    Keys: ``mean`` and ``std`` (lists of floats, one per channel or one for all; mean 0 and std 1
    when left out), ``scale`` (float > 0), ``mask_offset`` (``(dy, dx)`` floats), ``target``
    (``semantic`` or ``boundary``), ``separation_gap`` (int >= 0), ``input_range`` and
    ``ignore_index``, with the :data:`PREPROCESSING_DEFAULTS`. Unknown keys are kept. A folder without
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
    try:
        facts = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{where}: it is not valid JSON ({error}); {fix}.") from error
    if not isinstance(facts, dict):
        raise WeightsError(f"{where}: it holds a JSON {type(facts).__name__}, not an object; {fix}.")
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
    return checked | fixed | {"mask_values": mask_values}


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


def _as_list(value: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in value.double().tolist()]


def evaluate(
    model_path: str | Path,
    data: str | Path,
    split: str | None = "val",
    out_dir: str | Path | None = None,
    gallery_size: int = GALLERY_SIZE,
    ignore_index: int | None = None,
    progress: bool = True,
    files: str | list[str] | None = None,
    instances: bool = False,
    instance_method: str = "auto",
    tta: str | None = None,
) -> dict[str, Any]:
    """Compute metrics of a trained model on ``data``/``split`` and write the evaluation folder.

    Writes ``metrics.json``, ``confusion.png``, ``gallery/*.png`` and ``report.html`` into
    ``out_dir`` (default ``<run>/eval-<split>``) and returns the metrics dict (per-class lists
    with ``None`` for classes absent from both prediction and ground truth).

    With ``instances``, each image's probabilities also become instances
    (:func:`pixelwise.instances.to_instances` with ``instance_method``; ``"auto"``: watershed for a
    boundary-target model, else components), scored against the data's ``instances/`` labels (else
    the connected components of the mask) by :class:`pixelwise.instances.InstanceScores`; the means
    go to ``metrics["instances"]`` and the report. A boundary-target model is scored semantically as
    background / object. ``tta`` (``"hflip"``, ``"flips"`` or ``"d4"``) averages the probabilities of flipped and
    rotated copies of every image.
    """
    if tta is not None:
        tta_transforms(tta)  # an unknown mode fails before any work
    loaded = load_model(model_path)
    ignore = loaded.classes.ignore_index if ignore_index is None else ignore_index
    boundary = loaded.target == "boundary"
    # a boundary model's 3 outputs are not the data's classes: read the masks with their own class list
    dataset = SegmentationFolder(
        data,
        split=split,
        num_classes=None if boundary else len(loaded.classes.names),
        # an ignore value chosen by the user or the model; else 255, which binary 0/255 masks read as class 1
        ignore_index=None if ignore_index is None and ignore == IGNORE_INDEX else ignore,
        files=files,
        instances=instances,
        mask_values=loaded.mask_values,
    )
    classes = _object_classes(dataset.classes, ignore) if boundary else loaded.classes
    scorer = InstanceScorer(loaded.target, loaded.separation_gap, instance_method) if instances else None
    if dataset.in_channels != loaded.model.in_channels:
        raise ConfigError(
            f"the images in {str(data)!r} have {dataset.in_channels} channels but the model expects "
            f"{loaded.model.in_channels}; evaluate on data like the training data."
        )
    out = Path(out_dir) if out_dir else (loaded.run_dir or Path(model_path)) / f"eval-{split or 'all'}"
    out.mkdir(parents=True, exist_ok=True)
    total = ConfusionMatrix(len(classes.names), ignore_index=ignore)
    per_image: list[tuple[float, int, np.ndarray]] = []
    items = range(len(dataset))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="evaluate", unit="image", leave=False)
    for index in items:
        sample = dataset[index]
        logits = loaded.predict_logits(sample["image"], tta=tta)
        target = sample["mask"][None]
        if boundary:  # background / object, from background / interior / boundary
            labels = (logits.argmax(1) != 0).long()
            target = torch.where((target != 0) & (target != ignore), 1, target)
        else:
            labels = logits.argmax(1)
        if scorer is not None:
            scorer.update(loaded.probabilities(logits)[0], sample.get("instances"), sample["mask"], ignore)
        total.update(labels, target)
        single = ConfusionMatrix(len(classes.names), ignore_index=ignore)
        single.update(labels, target)
        per_image.append((float(single.compute()["mean_iou"]), index, labels[0].numpy().astype(np.uint8)))

    if not int(total.matrix.sum()):
        raise DataError(
            f"every mask pixel of {str(dataset.layout.base)!r} equals ignore_index {ignore}: there is nothing to "
            "score. If that value marks the objects, pass a different --ignore-index (check-data shows the values)."
        )
    results = total.compute()
    metrics: dict[str, Any] = {key: _as_list(results[key]) for key in METRIC_KEYS}
    metrics |= {key: float(results[key]) for key in SUMMARY_KEYS}
    metrics["class_names"] = [printable(name) for name in classes.names]  # names are data: UTF-8-safe
    metrics["confusion_matrix"] = total.matrix.tolist()
    metrics["support"] = total.matrix.sum(1).tolist()
    metrics["images"] = len(dataset)
    if scorer is not None:
        metrics["instances"] = scorer.compute()
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion(total.matrix.numpy(), classes.names, out / "confusion.png")
    gallery = _write_gallery(dataset, per_image, classes, out, gallery_size)

    from pixelwise.report import write_report

    curves = loaded.run_dir / "curves.png" if loaded.run_dir and (loaded.run_dir / "curves.png").is_file() else None
    config = _run_config(loaded.run_dir)
    metrics["report"] = write_report(
        out,
        title=f"pixelwise evaluation: {Path(str(data)).name}/{split or ''}",
        metrics=metrics,
        class_names=list(classes.names),
        palette=classes.color_array(),
        curves_png=curves,
        confusion_png=out / "confusion.png",
        gallery=gallery,
        config=config,
        notes=[f"model: {model_path}", f"data: {data} (split {split}, {len(dataset)} images)"]
        + ([f"test-time augmentation: {tta}"] if tta else []),
        instance_metrics=metrics.get("instances"),
    )
    return metrics


def _object_classes(data_classes: ClassInfo, ignore: int) -> ClassInfo:
    """Background / object classes for scoring a boundary-target model (the data's names when it has two)."""
    if data_classes.num_classes == 2:
        return data_classes
    return ClassInfo(["background", "object"], [0, 1], ignore_index=ignore)


def _write_gallery(dataset, per_image, classes, out: Path, size: int) -> list[dict[str, Any]]:
    """Panels for ``size`` images (all of them when there are fewer) spread evenly from the worst to the
    best per-image mIoU, worst first."""
    ranked = sorted(per_image, key=lambda item: (math.isnan(item[0]), item[0]))
    count = min(size, len(ranked))
    if count <= 0:
        return []
    # evenly spaced ranks, first and last included; distinct because count <= len(ranked)
    picks = [round(i * (len(ranked) - 1) / max(count - 1, 1)) for i in range(count)]
    (out / "gallery").mkdir(exist_ok=True)
    gallery = []
    for rank in picks:
        score, index, labels = ranked[rank]
        sample = dataset[index]
        path = out / "gallery" / f"{sample['name']}.png"
        save_png(panel(sample["image"].numpy(), sample["mask"].numpy(), labels, classes.color_array()), path)
        gallery.append({"name": sample["name"], "panel": path, "iou": None if math.isnan(score) else score})
    return gallery


def _run_config(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return None
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())
