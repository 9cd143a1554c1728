"""What a study is: variants × seeds of training runs on one data set, and the claims their numbers test.

A :class:`Study` is declarative: shared :class:`~pixelwise.training.config.TrainConfig` values, a tuple of
:class:`Variant` overrides, the metrics to tabulate and plot, and the :class:`Ordered` / :class:`LargerGain`
claims whose verdicts are computed from the per-variant means and seed spreads.

Budget: every run of a study trains for the same number of optimiser steps (``steps`` × ``--budget``), so
architectures are compared at equal training, as the papers compare them. The budget is steps only: how long
they take depends on the machine, so no time limit is part of a study. ``pixelwise experiment
--max-minutes-per-run`` adds an opt-in wall-clock cap per run; a run stopped by it before its steps are done is
marked ``capped`` in the results, because its comparison is then no longer at equal steps. ``measured`` records
how long a study once took (documentation of a measurement, not a budget).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SEEDS = 3


@dataclass(frozen=True)
class Variant:
    """One arm of a study.

    Args:
        name: short identifier used in run names, the CSV and the tables (``"fcn8s"``).
        overrides: TrainConfig values of this arm (they replace the study's ``base`` values).
        label: name shown in plots (default ``name``).
        group: a second factor (e.g. ``"5 slices"``): groups are the x axis of the bar charts and the
            rows of the sample panel.
    """

    name: str
    overrides: dict[str, Any]
    label: str | None = None
    group: str | None = None

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Metric:
    """A column of the results table (key of a results row, display label, which direction is better)."""

    key: str
    label: str
    higher_is_better: bool = True
    digits: int = 3


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof 1; 0 for a single run) of one metric over seeds."""

    mean: float
    std: float
    n: int

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


Summary = dict[str, dict[str, Stat]]
"""variant name → metric key → Stat."""


@dataclass(frozen=True)
class Verdict:
    """``status``: ``"holds"``, ``"holds within the seed spread"``, ``"does not hold"`` or ``"not tested"``;
    ``detail``: the numbers behind it."""

    claim: str
    status: str
    detail: str


def separated(a: Stat, b: Stat) -> bool:
    """True when two means differ by more than the sum of their standard deviations (the ±1 s.d. error
    bars of the bar charts do not overlap)."""
    return abs(a.mean - b.mean) > a.std + b.std


@dataclass(frozen=True)
class Ordered:
    """Claim: the means of ``metric`` rank the variants as ``order`` says, best first."""

    text: str
    metric: Metric
    order: tuple[str, ...]

    def verdict(self, summary: Summary, titles: dict[str, str]) -> Verdict:
        stats = [summary.get(name, {}).get(self.metric.key) for name in self.order]
        if any(s is None or math.isnan(s.mean) for s in stats):
            return Verdict(self.text, "not tested", "some variants have no results yet")
        sign = 1 if self.metric.higher_is_better else -1
        ordered, clear, parts = True, True, []
        for (name_a, a), (name_b, b) in itertools.pairwise(zip(self.order, stats, strict=True)):
            better = sign * (a.mean - b.mean) > 0
            ordered &= better
            clear &= better and separated(a, b)
            spread = "beyond" if separated(a, b) else "within"
            relation = (">" if better else "≤") if sign > 0 else ("<" if better else "≥")
            parts.append(
                f"{titles[name_a]} {a.text(self.metric.digits)} {relation} "
                f"{titles[name_b]} {b.text(self.metric.digits)} (gap {a.mean - b.mean:+.{self.metric.digits}f}, "
                f"{spread} the spread)"
            )
        status = "holds" if clear else "holds within the seed spread" if ordered else "does not hold"
        better_word = "higher" if self.metric.higher_is_better else "lower"
        return Verdict(self.text, status, f"{self.metric.label} ({better_word} is better): " + "; ".join(parts))


@dataclass(frozen=True)
class LargerGain:
    """Claim: ``first[0]`` gains more over ``first[1]`` than ``second[0]`` over ``second[1]`` in ``metric``
    (e.g. strong augmentation helps more with 5 training slices than with 20). The first gain must be
    positive: a smaller loss is not a larger gain."""

    text: str
    metric: Metric
    first: tuple[str, str]
    second: tuple[str, str]

    def verdict(self, summary: Summary, titles: dict[str, str]) -> Verdict:
        pairs = [[summary.get(name, {}).get(self.metric.key) for name in pair] for pair in (self.first, self.second)]
        if any(s is None or math.isnan(s.mean) for pair in pairs for s in pair):
            return Verdict(self.text, "not tested", "some variants have no results yet")
        sign = 1 if self.metric.higher_is_better else -1
        gains = [sign * (a.mean - b.mean) for a, b in pairs]
        spreads = [a.std + b.std for a, b in pairs]
        d = self.metric.digits
        detail = "; ".join(
            f"{titles[x]} vs {titles[y]}: gain {g:+.{d}f} (spread {s:.{d}f})"
            for (x, y), g, s in zip((self.first, self.second), gains, spreads, strict=True)
        )
        # a gain must be a gain: "hurts less with fewer images" does not support "helps more"
        larger = gains[0] > max(gains[1], 0.0)
        clear = larger and gains[0] - max(gains[1], 0.0) > spreads[0] + spreads[1]
        status = "holds" if clear else "holds within the seed spread" if larger else "does not hold"
        if gains[0] <= 0:
            detail += f"; {titles[self.first[0]]} does not beat {titles[self.first[1]]} at all"
        return Verdict(self.text, status, f"{self.metric.label}: {detail}")


Claim = Ordered | LargerGain


@dataclass(frozen=True)
class Study:
    """A fixed-step experiment: ``variants`` × seeds training runs on the ``dataset`` folder.

    Args:
        name: the ``pixelwise experiment NAME``.
        claim: the paper's claim in one sentence; ``source``: where it is made.
        dataset: folder name under the data root (``camvid``, ``isbi2012-em``).
        layout: subfolders the data folder must have (checked before anything runs).
        base: TrainConfig values shared by all runs (``data``, ``name``, budget fields are filled in).
        variants: the arms; ``steps``: optimiser steps per run at budget 1; ``epochs``: how many times the
            in-training monitor (``base["val_files"]``) runs; the steps are spread over these epochs.
        metrics: columns of the results table and panels of the bar chart (first = headline).
        claims: what the numbers are checked against.
        class_names: names of the classes, for per-class columns (``iou_<name>``).
        eval_split, eval_files: the validation images every run is scored on (full resolution).
        measured: how long the study took once, with the machine it ran on (``"18 min for all runs at
            --budget 1 on a 2-core CPU"``): documentation for ``--list``, nothing depends on it.
        panel_image: index (in the scored images) of the image of the sample-prediction figure;
            ``panel_crop``: show only a centred square of this side (thin structures stay visible).
        extra_columns: further table columns (e.g. ``params``, ``ms_per_image``).
        palette: RGB colour per class for the sample panel (default: :func:`pixelwise.viz.default_palette`).
        notes: sentences for results.md (design choices, deviations from the paper).
    """

    name: str
    claim: str
    source: str
    dataset: str
    layout: tuple[str, ...]
    base: dict[str, Any]
    variants: tuple[Variant, ...]
    steps: int
    epochs: int
    metrics: tuple[Metric, ...]
    claims: tuple[Claim, ...]
    class_names: tuple[str, ...]
    eval_split: str | None = "val"
    eval_files: str | list[str] | None = None
    measured: str | None = None
    panel_image: int = 0
    panel_crop: int | None = None
    extra_columns: tuple[Metric, ...] = ()
    palette: tuple[tuple[int, int, int], ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def titles(self) -> dict[str, str]:
        return {v.name: v.title + (f" ({v.group})" if v.group else "") for v in self.variants}
