"""A study's records: ``results.csv`` (one row per run), the per-variant summary, ``results.md`` and figures."""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.data import SegmentationFolder, read_mask
from pixelwise.io import atomic_path
from pixelwise.viz import default_palette, number
from pixelwise_experiments.base import Stat, Study, Summary, Verdict
from pixelwise_experiments.figures import bar_chart, sample_panel
from pixelwise_experiments.planning import StudyOptions, plan
from pixelwise_experiments.scoring import column_name

ID_COLUMNS = ("study", "variant", "group", "seed", "budget")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results.csv (values as strings), or ``[]`` when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewrite results.csv with ``rows`` (columns: the union, in first-seen order), atomically."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def stat(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation of the finite ``values`` (NaN mean when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite))


def summarise(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Summary:
    """Per variant (in first-seen order) and metric key: mean ± standard deviation over its runs (seeds)."""
    variants = list(dict.fromkeys(str(r["variant"]) for r in rows))
    return {
        name: {key: stat([number(r.get(key)) for r in rows if str(r["variant"]) == name]) for key in keys}
        for name in variants
    }


def verdicts(study: Study, summary: Summary) -> list[Verdict]:
    return [claim.verdict(summary, study.titles()) for claim in study.claims]


def write_markdown(
    path: str | Path,
    study: Study,
    rows: Sequence[dict[str, Any]],
    setup: Sequence[str],
    figures: Sequence[str],
) -> str:
    """Write ``results.md``: setup, per-variant mean ± s.d. table, per-class IoU, verdicts, figures."""
    columns = [*study.metrics, *study.extra_columns]
    class_keys = [f"iou_{column_name(n)}" for n in study.class_names]
    summary = summarise(rows, [m.key for m in columns] + class_keys + ["steps", "run_seconds"])
    titles = study.titles()
    lines = [f"# Study `{study.name}`", "", f"**Claim** ({study.source}): {study.claim}", "", "## Setup", ""]
    lines += [f"- {item}" for item in setup] + [f"- {note}" for note in study.notes] + [""]
    lines += ["## Results (mean ± sample standard deviation over seeds)", ""]
    header = ["variant", "runs", *[m.label + (" ↑" if m.higher_is_better else " ↓") for m in columns], "steps"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stats in summary.items():
        cells = [titles.get(name, name), str(stats["steps"].n)]
        cells += [_cell(stats[m.key], m.digits) for m in columns]
        cells.append(f"{stats['steps'].mean:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", ""]
    for verdict in verdicts(study, summary):
        lines.append(f"- {verdict.claim}: **{verdict.status}**. {verdict.detail}.")
    lines += ["", "A claim *holds* when the means are ordered as the paper says and every gap is larger than the"]
    lines += ["sum of the two standard deviations (the ±1 s.d. error bars do not overlap); *holds within the seed"]
    lines += ["spread* when the means are ordered but some gap is not that large; *does not hold* otherwise.", ""]
    lines += ["## Per-class IoU (mean over seeds)", ""]
    lines += ["| variant | " + " | ".join(study.class_names) + " |", "|" + "---|" * (len(study.class_names) + 1)]
    for name, stats in summary.items():
        lines.append(
            f"| {titles.get(name, name)} | " + " | ".join(_cell(stats[k], 3, spread=False) for k in class_keys) + " |"
        )
    lines += [""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    text = "\n".join(lines)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


def _cell(value: Stat, digits: int, spread: bool = True) -> str:
    if value.n == 0:
        return "—"
    return value.text(digits) if spread else f"{value.mean:.{digits}f}"


def write_outputs(study: Study, options: StudyOptions, rows: list[dict[str, Any]]) -> None:
    """(Re)write results.md, bars.png and samples.png from the rows so far."""
    out = Path(options.out)
    if not rows:
        return
    figures = ["bars.png"]
    bar_chart(study, rows, out / "bars.png")
    predictions = {v.name: out / "predictions" / f"{v.name}.png" for v in study.variants}
    predictions = {k: read_mask(p) for k, p in predictions.items() if p.is_file()}
    if predictions:
        scored = SegmentationFolder(
            options.data, split=study.eval_split, files=study.eval_files, num_classes=len(study.class_names)
        )
        sample = scored[study.panel_image]
        palette = np.array(study.palette, dtype=np.uint8) if study.palette else default_palette(len(study.class_names))
        labels = {k: np.asarray(v) for k, v in predictions.items()}
        sample_panel(study, sample["image"].numpy(), sample["mask"].numpy(), labels, palette, out / "samples.png")
        figures.append("samples.png")
    first = plan(study, options)[0]
    capped = sum(str(r.get("capped")) == "True" for r in rows)
    cap = options.max_minutes_per_run
    limit = "no wall-clock cap" if cap is None else f"each run capped at {cap:g} min of wall time"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    setup = [
        f"Data: `{study.dataset}`, scored on {rows[-1].get('images', '?')} images ({study.eval_split or ''}"
        f"{' ' + str(study.eval_files) if study.eval_files else ''}) at full resolution, from each run's last "
        "checkpoint; boundary F1/IoU with a 2-pixel tolerance, averaged over classes.",
        f"Budget: equal optimiser steps for every run — {first.planned_steps} steps of batch "
        f"{first.config.batch_size} (`--budget {options.budget}`), {limit}; {capped} of {len(rows)} runs "
        "stopped before their steps were done.",
        f"Seeds: {', '.join(sorted({str(r['seed']) for r in rows}, key=int))}; wall time of all runs "
        f"{sum(number(r.get('run_seconds')) for r in rows) / 60:.1f} min on {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread{'' if torch.get_num_threads() == 1 else 's'}.",
        f"Reproduce: `pixelwise experiment {study.name} --budget {options.budget} --seeds {options.seeds}"
        f"{f' --max-minutes-per-run {cap:g}' if cap is not None else ''}` "
        f"(exact configurations in `configs/`, one row per run in `results.csv`).",
    ]
    write_markdown(out / "results.md", study, rows, setup, figures)
