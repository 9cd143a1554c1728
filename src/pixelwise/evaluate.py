"""Evaluate a trained model on a data split: metrics, confusion matrix, gallery and HTML report.

``evaluate(model_path, data, split)`` accepts a run directory (``runs/<name>``, whose ``model/`` it
loads), a ``save_pretrained`` directory, or a ``.ckpt`` file inside a run directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.bundle import read_preprocessing as read_preprocessing  # re-exported: its old home
from pixelwise.data import ClassInfo, DataError, SegmentationFolder
from pixelwise.errors import ConfigError
from pixelwise.inference.loaded import LoadedModel as LoadedModel  # re-exported: its old home
from pixelwise.inference.loaded import load_model as load_model
from pixelwise.inference.tta import tta_transforms
from pixelwise.instances.scoring import InstanceScorer
from pixelwise.io import atomic_path
from pixelwise.metrics import ConfusionMatrix
from pixelwise.modes import IGNORE_INDEX
from pixelwise.report import printable
from pixelwise.viz import panel, plot_confusion, save_png

GALLERY_SIZE = 8
METRIC_KEYS = ("iou", "f1", "precision", "recall")
SUMMARY_KEYS = ("mean_iou", "mean_f1", "accuracy", "mean_accuracy", "fw_iou")


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
