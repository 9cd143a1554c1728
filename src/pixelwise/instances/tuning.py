"""Tuning the instance post-processing of a trained model on a labelled split (``pixelwise tune-instances``).

The network runs once per image; only the cheap post-processing (:func:`~pixelwise.instances.to_instances`)
is repeated for every setting of a small grid, and every setting is scored on the whole split::

    model + split ──Predictor (once per image)──► probs [K, H, W] + true instances (cached)
        ├─ coarse grid: method × threshold × (h | marker_threshold)  ─► labels with min_size 0
        │        └─ × min_size (:func:`clean_instances` on those labels: same result as to_instances(min_size))
        ├─ refinement around the best: threshold ± REFINE_THRESHOLD_STEP, min_size × REFINE_MIN_SIZE_FACTORS
        └─ best mean objective (pooled AP over IoU 0.5:0.95, PQ or F1 at IoU 0.5), never below the defaults'
    ──► TuningResult (best, default, full table) ──save──► the model folder's preprocessing.json

The library defaults are scored first and replaced only by a strictly better setting, so the best score is
never below the default's. ``predict --instances`` and ``evaluate --instances`` then use the stored options
unless given explicit ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise._version import __version__
from pixelwise.bundle import save_instance_options
from pixelwise.data.weights import instances_from_mask
from pixelwise.errors import ConfigError, check_choice
from pixelwise.inference.loaded import LoadedModel, load_model
from pixelwise.inference.predictor import Predictor, RuntimeOptions, TilingOptions
from pixelwise.inference.scoring_data import scoring_dataset
from pixelwise.instances.metrics import InstanceScores
from pixelwise.instances.outputs import default_options
from pixelwise.instances.postprocess import clean_instances, to_instances

OBJECTIVES = {"ap": "map", "pq": "pq", "f1": "f1"}
"""Objective name → key of :meth:`InstanceScores.compute <pixelwise.instances.InstanceScores.compute>`: ``ap``
the mean over IoU 0.5:0.95 of the AP pooled over the images (``evaluate --instances``' mAP), ``pq`` and ``f1``
the per-image means of panoptic quality and F1 at IoU 0.5."""
DEFAULT_OBJECTIVE = "ap"
REPORTED = ("map", "ap50", "ap75", "aji", "pq", "f1")
"""Metrics kept in each row of the table."""
COARSE_THRESHOLDS: tuple[float | None, ...] = (None, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Foreground probability thresholds (None: the argmax decides, the default)."""
COARSE_MIN_SIZES = (0, 10, 25, 50, 100, 200, 400)
"""Smallest object kept, in pixels."""
COARSE_MARKER_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
"""Interior probabilities that seed watershed markers (boundary-target models)."""
COARSE_H = (1.0, 2.0, 4.0, 8.0)
"""Depths (pixels) a distance-transform maximum needs to seed its own object (watershed on distance)."""
REFINE_THRESHOLD_STEP = 0.05
REFINE_MIN_SIZE_FACTORS = (0.7, 1.4)
DECIMALS = 4
"""Grid values are rounded to this many decimals (0.35, not 0.35000000000000003)."""


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """What :func:`tune_instances` found.

    Attributes:
        objective: ``ap``, ``pq`` or ``f1`` (:data:`OBJECTIVES`).
        best: the chosen :func:`~pixelwise.instances.to_instances` keyword arguments.
        best_score: the objective with ``best`` on the split.
        default: the library's default options for this model.
        default_score: the objective with ``default``.
        table: one row per setting tried: its options, its :data:`REPORTED` metrics and ``score``, best first.
        images: images scored.
        saved: the ``preprocessing.json`` written (None: not saved).
    """

    objective: str
    best: dict[str, Any]
    best_score: float
    default: dict[str, Any]
    default_score: float
    table: list[dict[str, Any]]
    images: int
    saved: Path | None = None


def tune_instances(
    model: str | Path,
    data: str | Path,
    split: str | None = "val",
    *,
    objective: str = DEFAULT_OBJECTIVE,
    files: str | list[str] | None = None,
    format: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
    tiling: TilingOptions | None = None,
    runtime: RuntimeOptions | None = None,
    tta: str | None = None,
    tta_scales: Sequence[float] | None = None,
    refine: bool = True,
    save: bool = True,
    progress: bool = True,
) -> TuningResult:
    """Choose the instance post-processing (method, probability and marker thresholds, minimum size) that
    scores best on a labelled split, and store it with the model.

    Args:
        model: a run directory, a model folder or a run's ``.ckpt`` (the options go into its ``model/``).
        data, split, files, format, layout_options: the labelled images, as for :func:`pixelwise.evaluate`
            (the run's own ``data_format`` / ``data_options`` when ``data`` is its training data).
        objective: ``ap`` (pooled AP over IoU 0.5:0.95), ``pq`` or ``f1`` (see :data:`OBJECTIVES`).
        tiling, runtime, tta, tta_scales: how the :class:`~pixelwise.inference.Predictor` predicts each image
            (tune with the test-time augmentation ``predict`` will use: it changes the probabilities).
        refine: after the coarse grid, also try values around the best threshold and minimum size.
        save: write the best options into the model folder's ``preprocessing.json``.
        progress: show progress bars.

    Returns:
        A :class:`TuningResult`.

    Raises:
        ConfigError: an unknown objective, a model that is not a run directory or model folder (an ``.onnx``
            file cannot hold the options), or a split without any object to match.
        DataError: unreadable data or no such split.

    Example:
        >>> result = tune_instances("runs/cells", "data/cells", "val")  # doctest: +SKIP
        >>> result.best["min_size"], result.default_score <= result.best_score  # doctest: +SKIP
        (25, True)
    """
    check_choice("objective", objective, tuple(OBJECTIVES))
    if Path(model).suffix == ".onnx":
        raise ConfigError(
            f"tune-instances needs a run directory or model folder to store the options in, not {str(model)!r}; "
            "tune the run the ONNX file was exported from, then export it again."
        )
    loaded = load_model(model)
    predictor = Predictor(loaded, tiling=tiling, runtime=runtime, tta=tta, tta_scales=tta_scales)
    probs, trues = _predict_split(loaded, predictor, data, split, files, format, layout_options, progress)
    if not any(int(true.max(initial=0)) > 0 for true in trues):
        raise ConfigError(
            f"split {split!r} of {str(data)!r} has no objects (no instance labels and no foreground in the masks): "
            "there is nothing to tune the instance post-processing on; pass a labelled split with --split."
        )
    search = _Search(probs, trues, loaded.target, loaded.separation_gap, OBJECTIVES[objective], progress)
    default = default_options(loaded.target)
    search.run([default])
    search.run(coarse_grid(loaded.target))
    if refine:
        search.run(refined(search.best, loaded.target))
    table = sorted(search.rows, key=lambda row: -row["score"])
    best = {key: value for key, value in search.best.items() if key in default}
    result = TuningResult(objective, best, search.best["score"], default, search.rows[0]["score"], table, len(trues))
    if save:
        record = {"objective": objective, "score": result.best_score, "default_score": result.default_score}
        record |= {"data": str(data), "split": split, "images": len(trues), "pixelwise_version": __version__}
        result = dataclasses.replace(result, saved=save_instance_options(_model_dir(loaded, model), best, record))
    return result


def coarse_grid(target: str) -> list[dict[str, Any]]:
    """The settings of the coarse search: components, and watershed seeded by distance maxima (every model) or
    by the interior probability (boundary-target models), at every :data:`COARSE_THRESHOLDS` and
    :data:`COARSE_MIN_SIZES`."""
    shapes = [{"method": "components"}]
    shapes += [{"method": "watershed", "markers": "distance", "h": h} for h in COARSE_H]
    if target == "boundary":
        shapes += [
            {"method": "watershed", "markers": "interior", "marker_threshold": t} for t in COARSE_MARKER_THRESHOLDS
        ]
    base = default_options(target)
    return [
        base | shape | {"threshold": threshold, "min_size": size}
        for shape, threshold, size in itertools.product(shapes, COARSE_THRESHOLDS, COARSE_MIN_SIZES)
    ]


def refined(best: Mapping[str, Any], target: str) -> list[dict[str, Any]]:
    """Settings around ``best``: its threshold ± :data:`REFINE_THRESHOLD_STEP` (0.5 ± the step for the argmax,
    which a two-class softmax equals) and its minimum size times :data:`REFINE_MIN_SIZE_FACTORS`."""
    threshold = 0.5 if best["threshold"] is None else best["threshold"]
    thresholds = {best["threshold"]} | {
        round(threshold + sign * REFINE_THRESHOLD_STEP, DECIMALS)
        for sign in (-1, 1)
        if 0 < threshold + sign * REFINE_THRESHOLD_STEP < 1
    }
    sizes = {best["min_size"]} | {round(best["min_size"] * f) for f in REFINE_MIN_SIZE_FACTORS}
    options = {key: value for key, value in best.items() if key in default_options(target)}
    return [options | {"threshold": t, "min_size": s} for t in thresholds for s in sorted(sizes)]


class _Search:
    """Scores settings on cached probabilities; keeps every row and the best one (first best on a tie)."""

    def __init__(
        self, probs: list[np.ndarray], trues: list[np.ndarray], target: str, gap: int, key: str, progress: bool
    ) -> None:
        self.probs, self.trues, self.target, self.gap = probs, trues, target, gap
        self.key, self.progress = key, progress
        self.rows: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self._seen: set[tuple] = set()

    def run(self, settings: Iterable[dict[str, Any]]) -> None:
        """Score every new setting: labels once per shape (everything but ``min_size``), then each size."""
        shapes: dict[tuple, list[dict[str, Any]]] = {}
        for options in settings:
            signature = tuple(sorted(options.items()))
            if signature not in self._seen:
                self._seen.add(signature)
                shape = tuple(sorted((k, v) for k, v in options.items() if k != "min_size"))
                shapes.setdefault(shape, []).append(options)
        groups: Iterable = shapes.values()
        if self.progress:
            from tqdm import tqdm

            groups = tqdm(list(groups), desc="tune-instances", unit="setting", leave=False)
        for group in groups:
            shape = {k: v for k, v in group[0].items() if k != "min_size"}
            bases = [to_instances(p, target=self.target, close_gap=self.gap, **shape, min_size=0) for p in self.probs]
            for options in group:
                preds = [clean_instances(b, options["min_size"], fill_holes=False) for b in bases]
                self._add(options, preds)

    def _add(self, options: dict[str, Any], preds: list[np.ndarray]) -> None:
        scores = InstanceScores()
        for pred, true in zip(preds, self.trues, strict=True):
            scores.update(pred, true)
        found = scores.compute()
        row = options | {key: found[key] for key in REPORTED}
        row["score"] = -math.inf if math.isnan(found[self.key]) else float(found[self.key])
        self.rows.append(row)
        if not self.best or row["score"] > self.best["score"]:
            self.best = row


def _predict_split(
    loaded: LoadedModel,
    predictor: Predictor,
    data: str | Path,
    split: str | None,
    files: str | list[str] | None,
    format: str | None,
    layout_options: Mapping[str, Any] | None,
    progress: bool,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The probabilities ``float32 [K, H, W]`` and true instance labels ``int32 [H, W]`` of every image of the
    split (true objects: the data's instance labels, else the connected components of each mask class)."""
    ignore = loaded.classes.ignore_index
    dataset = scoring_dataset(
        loaded,
        data,
        split,
        files=files,
        format=format,
        layout_options=layout_options,
        instances=True,
        purpose="tune",
    )
    items: Iterable[int] = range(len(dataset))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="predict", unit="image", leave=False)
    probs, trues = [], []
    for index in items:
        sample = dataset[index]
        probs.append(predictor.predict(sample["image"]))
        true = sample.get("instances")
        true = instances_from_mask(sample["mask"].numpy(), ignore) if true is None else true
        trues.append(np.asarray(true))
    return probs, trues


def _model_dir(loaded: LoadedModel, model: str | Path) -> Path:
    """The model folder the options go into: the run's ``model/``, else the folder given."""
    return loaded.run_dir / "model" if loaded.run_dir is not None else Path(model)
