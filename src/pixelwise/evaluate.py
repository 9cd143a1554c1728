"""Evaluate a trained model on a data split: metrics, confusion matrix, gallery and HTML report.

``evaluate(model_path, data, split)`` accepts a run directory (``runs/<name>``, whose ``model/`` it
loads), a ``save_pretrained`` directory, or a ``.ckpt`` file inside a run directory. Images are
predicted by the same :class:`~pixelwise.inference.Predictor` as ``pixelwise predict``: whole, or in
blended tiles with ``tiling=TilingOptions(tile_size=...)`` for images too large to predict at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.bundle import read_preprocessing as read_preprocessing  # re-exported: its old home
from pixelwise.data import ClassInfo, DataError, SegmentationFolder
from pixelwise.inference.loaded import LoadedModel as LoadedModel  # re-exported: its old home
from pixelwise.inference.loaded import load_model as load_model
from pixelwise.inference.predictor import Predictor, RuntimeOptions, TilingOptions, labels_from_scores
from pixelwise.inference.scoring_data import scoring_dataset
from pixelwise.inference.tta import NO_TTA, check_tta_scales, tta_transforms
from pixelwise.instances.outputs import model_instance_options
from pixelwise.instances.scoring import InstanceScorer
from pixelwise.io import atomic_path
from pixelwise.metrics import ConfusionMatrix, SurfaceDistances
from pixelwise.report import printable, write_report
from pixelwise.viz import panel, plot_confusion, save_png

GALLERY_SIZE = 8
METRIC_KEYS = ("iou", "f1", "precision", "recall")
SUMMARY_KEYS = ("mean_iou", "mean_f1", "accuracy", "mean_accuracy", "fw_iou")


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` measured; :meth:`to_dict` is the content of ``metrics.json``.

    Per-class lists have one entry per class (``None`` for a class absent from both prediction and
    ground truth); summaries are floats in [0, 1]; counts are pixels.
    """

    class_names: list[str]
    iou: list[float | None]
    f1: list[float | None]
    precision: list[float | None]
    recall: list[float | None]
    mean_iou: float
    mean_f1: float
    accuracy: float
    mean_accuracy: float
    fw_iou: float
    confusion_matrix: list[list[int]]
    """``[K, K]`` pixel counts, rows: ground truth, columns: prediction."""
    support: list[int]
    """Ground-truth pixels of each class."""
    images: int
    instances: dict[str, Any] | None = None
    """Object-level means (:class:`~pixelwise.instances.InstanceScores`) when asked for, else None."""
    tta: str = NO_TTA
    """The test-time augmentation the predictions were made with (``none``, ``hflip``, ``flips`` or ``d4``):
    the ``tta`` given, else the one stored with the model."""
    surface: dict[str, Any] | None = None
    """Surface distances when asked for (``surface_tolerance``), else None: per class ``hausdorff``, ``hd95``,
    ``assd`` (pixels) and ``nsd`` (:class:`~pixelwise.metrics.SurfaceDistances`; ``"inf"`` where a class is on
    one side only, None where it is on neither), their means, and ``tolerance``."""
    report: Path | None = None
    """The ``report.html`` written."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of ``metrics.json`` (``instances`` only when scored, no ``report``)."""
        content = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        content.pop("report")
        for optional in ("instances", "surface"):
            if content[optional] is None:
                content.pop(optional)
        return content

    def __getitem__(self, key: str) -> Any:
        """``result["mean_iou"]``: the dict access of earlier releases, deprecated; use ``result.mean_iou``."""
        warnings.warn(
            f"evaluate() returns an EvaluationResult; write result.{key} instead of result[{key!r}] "
            "(dict access will be removed in the next release).",
            DeprecationWarning,
            stacklevel=2,
        )
        if key not in {field.name for field in dataclasses.fields(self)} or getattr(self, key) is None:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict() or (key == "report" and self.report is not None)


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
    tta_scales: str | Sequence[float] | None = None,
    tiling: TilingOptions | None = None,
    runtime: RuntimeOptions | None = None,
    format: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
    surface_tolerance: float | None = None,
    instance_options: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Compute metrics of a trained model on ``data``/``split`` and write the evaluation folder.

    Writes ``metrics.json``, ``confusion.png``, ``gallery/*.png`` and ``report.html`` into
    ``out_dir`` (default ``<run>/eval-<split>``) and returns them as an :class:`EvaluationResult`.

    Every image is predicted by a :class:`~pixelwise.inference.Predictor`: whole by default, or in
    blended tiles with ``tiling`` (e.g. ``TilingOptions(tile_size=512)``), which bounds the memory of
    the forward pass for images too large to predict at once; ``runtime`` picks the device and
    backend. ``tta`` (``"hflip"``, ``"flips"`` or ``"d4"``) averages the probabilities of flipped and
    rotated copies of every image (None: the mode stored with the model, ``TrainConfig.tta``; ``"none"``: no
    TTA; ``result.tta`` and ``metrics.json`` record the one used); ``tta_scales`` (e.g. ``(0.75, 1, 1.25)``)
    also averages over resized copies (each flip at each scale; see :class:`~pixelwise.inference.Predictor`).

    With ``instances``, each image's probabilities also become instances
    (:func:`pixelwise.instances.to_instances` with the options stored with the model by
    ``pixelwise tune-instances``, replaced by ``instance_method`` unless ``"auto"`` and by the
    ``instance_options`` given, e.g. ``{"min_size": 25, "threshold": 0.4}``; without any: watershed for
    a boundary-target model, else components, at the library's defaults), scored against the data's
    ``instances/`` labels (else the connected components of the mask) by
    :class:`pixelwise.instances.InstanceScores`; the means and the ``options`` used go to
    ``result.instances`` and the report. A boundary-target model is scored semantically as background /
    object.

    With ``surface_tolerance`` (pixels), each image's labels are also scored by surface distances
    (Hausdorff, HD95, ASSD and normalised surface Dice at that tolerance, as MONAI computes them) into
    ``result.surface``.

    ``data`` may be any layout of :mod:`pixelwise.data.layouts` (detected, or named by ``format``,
    with ``layout_options``), as for :class:`~pixelwise.data.SegmentationFolder`; when neither is given
    and ``data`` is the run's training data, they are the run's ``data_format`` and ``data_options``.

    Raises:
        ConfigError: an unknown option, or images whose channels differ from the model's.
        DataError: unreadable data, or masks with nothing to score.
    """
    if tta is not None:
        tta_transforms(tta)  # an unknown mode fails before any work
    tta_scales = check_tta_scales(tta_scales)
    loaded = load_model(model_path)
    ignore = loaded.classes.ignore_index if ignore_index is None else ignore_index
    dataset = scoring_dataset(
        loaded,
        data,
        split,
        files=files,
        format=format,
        layout_options=layout_options,
        ignore_index=ignore_index,
        instances=instances,
    )
    boundary = loaded.target == "boundary"
    classes = _object_classes(dataset.classes, ignore) if boundary else loaded.classes
    predictor = Predictor(loaded, tiling=tiling, runtime=runtime, tta=tta, tta_scales=tta_scales)
    explicit = {**(instance_options or {}), "method": instance_method}
    postprocess = model_instance_options(model_path, explicit, loaded.target) if instances else {}
    scorer = (
        InstanceScorer(loaded.target, loaded.separation_gap, postprocess["method"], postprocess) if instances else None
    )
    out = Path(out_dir) if out_dir else (loaded.run_dir or Path(model_path)) / f"eval-{split or 'all'}"
    out.mkdir(parents=True, exist_ok=True)
    surface = None if surface_tolerance is None else SurfaceDistances(len(classes.names), tolerance=surface_tolerance)
    scorers = (scorer, surface)
    total, per_image = _score_images(predictor, dataset, len(classes.names), ignore, boundary, scorers, progress)
    if not int(total.matrix.sum()):
        raise DataError(
            f"every mask pixel of {str(dataset.layout.base)!r} equals ignore_index {ignore}: there is nothing to "
            "score. If that value marks the objects, pass a different --ignore-index (check-data shows the values)."
        )
    results = total.compute()
    result = EvaluationResult(
        class_names=[printable(name) for name in classes.names],  # names are data: UTF-8-safe
        **{key: _as_list(results[key]) for key in METRIC_KEYS},
        **{key: float(results[key]) for key in SUMMARY_KEYS},
        confusion_matrix=total.matrix.tolist(),
        support=total.matrix.sum(1).tolist(),
        images=len(dataset),
        tta=predictor.tta or NO_TTA,
        instances=None if scorer is None else scorer.compute() | {"options": postprocess},
        surface=None if surface is None else _surface_summary(surface, surface_tolerance),
    )
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    plot_confusion(total.matrix.numpy(), classes.names, out / "confusion.png")
    gallery = _write_gallery(dataset, per_image, classes, out, gallery_size)
    notes = [f"model: {model_path}", f"data: {data} (split {split}, {len(dataset)} images)"]
    notes += [f"test-time augmentation: {predictor.tta}"] if predictor.tta else []
    notes += [f"test-time scales: {', '.join(f'{s:g}' for s in tta_scales)}"] if tta_scales else []
    notes += [f"tiles of {predictor.tile_size} px"] if predictor.tile_size else []
    notes += [f"surface distances in pixels, NSD tolerance {surface_tolerance:g} px"] if surface is not None else []
    title = f"pixelwise evaluation: {Path(str(data)).name}/{split or ''}"
    return dataclasses.replace(
        result, report=_write_report(out, title, result, classes, loaded.run_dir, gallery, notes)
    )


def _write_report(
    out: Path,
    title: str,
    result: EvaluationResult,
    classes: ClassInfo,
    run_dir: Path | None,
    gallery: list[dict[str, Any]],
    notes: list[str],
) -> Path:
    """``out/report.html`` with the run's curves and configuration when ``run_dir`` has them."""
    return write_report(
        out,
        title=title,
        metrics=result.to_dict(),
        class_names=list(classes.names),
        palette=classes.color_array(),
        curves_png=_run_file(run_dir, "curves.png"),
        confusion_png=out / "confusion.png",
        gallery=gallery,
        config=_run_config(run_dir),
        notes=notes,
        instance_metrics=result.instances,
    )


def _score_images(
    predictor: Predictor,
    dataset: SegmentationFolder,
    num_classes: int,
    ignore: int,
    boundary: bool,
    scorers: tuple[InstanceScorer | None, SurfaceDistances | None],
    progress: bool,
) -> tuple[ConfusionMatrix, list[tuple[float, int, np.ndarray]]]:
    """Predict every image; return the summed confusion matrix and ``(mIoU, index, labels)`` of each image
    (``scorers``: the object and surface-distance scores to update too, when asked for)."""
    scorer, surface = scorers
    total = ConfusionMatrix(num_classes, ignore_index=ignore)
    per_image: list[tuple[float, int, np.ndarray]] = []
    items = range(len(dataset))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="evaluate", unit="image", leave=False)
    for index in items:
        sample = dataset[index]
        probabilities = predictor.predict(sample["image"])  # float32 [K, H, W]
        labels = torch.from_numpy(labels_from_scores(probabilities)).long()[None]
        target = sample["mask"][None]
        if boundary:  # background / object, from background / interior / boundary
            labels = (labels != 0).long()
            target = torch.where((target != 0) & (target != ignore), 1, target)
        if scorer is not None:
            scorer.update(probabilities, sample.get("instances"), sample["mask"], ignore)
        total.update(labels, target)
        if surface is not None:
            surface.update(labels, target)
        single = ConfusionMatrix(num_classes, ignore_index=ignore)
        single.update(labels, target)
        per_image.append((float(single.compute()["mean_iou"]), index, labels[0].numpy().astype(np.uint8)))
    return total, per_image


def _surface_summary(surface: SurfaceDistances, tolerance: float) -> dict[str, Any]:
    """The surface distances as JSON values: per-class lists (``"inf"`` for infinite, None for NaN) and means."""

    def value(v: float) -> float | str | None:
        return None if math.isnan(v) else ("inf" if math.isinf(v) else float(v))

    found = surface.compute()
    summary: dict[str, Any] = {"tolerance": float(tolerance)}
    for key, scores in found.items():
        summary[key] = [value(v) for v in scores.tolist()] if scores.ndim else value(float(scores))
    return summary


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


def _run_file(run_dir: Path | None, name: str) -> Path | None:
    return run_dir / name if run_dir is not None and (run_dir / name).is_file() else None


def _run_config(run_dir: Path | None) -> dict[str, Any] | None:
    if _run_file(run_dir, "config.yaml") is None:
        return None
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())
