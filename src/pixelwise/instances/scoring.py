"""Scoring a model's predictions as instances, image by image (``pixelwise evaluate --instances``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pixelwise.data.weights import instances_from_mask
from pixelwise.errors import unknown_name
from pixelwise.instances.metrics import InstanceScores
from pixelwise.instances.postprocess import METHODS, to_instances
from pixelwise.modes import IGNORE_INDEX


def default_method(target: str) -> str:
    """The post-processing that suits a training target: watershed from the interior for the boundary
    target, connected components otherwise (a model trained with separation gaps leaves them open)."""
    return "watershed" if target == "boundary" else "components"


class InstanceScorer:
    """Turn each image's class probabilities into instances and score them against the true instances.

    Args:
        target: what the model was trained on (``semantic`` or ``boundary``).
        separation_gap: the training target's separation gap, closed again after post-processing.
        method: ``components``, ``watershed`` or ``auto`` (:func:`default_method`).
        options: the other post-processing options of :func:`~pixelwise.instances.postprocess.to_instances`
            (``threshold``, ``marker_threshold``, ``h``, ``min_size``, ``markers``; e.g. the tuned ones that
            :func:`~pixelwise.instances.model_instance_options` resolves); a ``method`` key there is ignored.
    """

    def __init__(
        self,
        target: str = "semantic",
        separation_gap: int = 0,
        method: str = "auto",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if method == "auto":
            method = default_method(target)
        if method not in METHODS:
            raise unknown_name("instance method", method, (*METHODS, "auto"))
        self.target, self.separation_gap, self.method = target, separation_gap, method
        self.options = {k: v for k, v in (options or {}).items() if k != "method"}
        self.scores = InstanceScores()

    def update(
        self,
        probs: torch.Tensor | np.ndarray,
        true: torch.Tensor | np.ndarray | None,
        mask: torch.Tensor | np.ndarray | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> dict[str, float]:
        """Score one image and return its metrics.

        Shape:
            ``probs`` ``[K, H, W]``; ``true`` int ``[H, W]`` instance labels, or None: then the connected
            components of ``mask`` (int ``[H, W]`` class ids) stand in for them.
        """
        pred = to_instances(probs, self.method, target=self.target, close_gap=self.separation_gap, **self.options)
        if true is None:
            true = instances_from_mask(np.asarray(mask), ignore_index)
        return self.scores.update(pred, np.asarray(true))

    def compute(self) -> dict[str, Any]:
        """The results of :meth:`InstanceScores.compute` (NaN as None, also inside the ``ap_table`` rows, for
        JSON) and the method used: means at IoU 0.5, the DSB score, panoptic quality, ``map`` / ``ap50`` /
        ``ap75`` / ``ap_table`` (StarDist's pooled average precision) and ``aji`` (Kumar et al. 2017)."""
        return {"method": self.method} | _json_ready(self.scores.compute())


def _json_ready(value: Any) -> Any:
    """``value`` with every NaN float, however deeply nested in dicts and lists, replaced by None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value
