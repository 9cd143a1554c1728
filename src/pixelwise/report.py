"""The static HTML evaluation report: one self-contained ``report.html`` next to its pictures.

The page has inline CSS and no scripts, fonts or links to other servers, and it refers to its
pictures by paths relative to its own folder, so the folder can be zipped, moved and opened in
any browser without a server. Pictures that live outside the folder are copied into it.

Example:
    >>> write_report("runs/eval", title="unet · CamVid val", metrics=metrics, class_names=names,
    ...              confusion_png="runs/eval/confusion.png")  # doctest: +SKIP
    PosixPath('runs/eval/report.html')
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from pixelwise._version import __version__
from pixelwise.errors import ConfigError
from pixelwise.io import atomic_path
from pixelwise.viz import CORRECT_COLOR, ERROR_COLOR, IGNORE_COLOR, number

REPORT_NAME = "report.html"
MISSING = "—"
MISSING_NOTE = "class absent from prediction and ground truth"
PANEL_COLUMNS = ("image", "ground truth", "prediction", "errors (red = wrong)")
SUMMARY_CARDS = (
    ("mean_iou", "mean IoU"),
    ("mean_f1", "mean F1"),
    ("accuracy", "pixel accuracy"),
    ("mean_accuracy", "mean class accuracy"),
    ("fw_iou", "frequency-weighted IoU"),
)
PER_CLASS_COLUMNS = (("iou", "IoU"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall"))
DECIMALS = 3
AP_TABLE_KEY = "ap_table"
AP_NOTE = (
    "AP = TP / (TP + FP + FN), counts pooled over the images; a predicted and a true object match when the "
    "optimal one-to-one matching pairs them with IoU ≥ the threshold (StarDist, Cellpose)."
)

CSS = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --bg: #f5f6f8; --card: #fff;
  --accent: #2f6fde; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { margin: 0 0 4px; font-size: 1.6rem; font-weight: 650; overflow-wrap: anywhere; }
header p { margin: 0 0 16px; color: var(--muted); }
h2 { font-size: 1.15rem; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
section > p { color: var(--muted); margin: 0 0 12px; }
img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; }
#summary, #summary tbody, #summary tr { display: flex; flex-wrap: wrap; gap: 12px; width: 100%; }
#summary td { flex: 1 1 160px; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 14px 16px; }
#summary .value { display: block; font-size: 1.7rem; font-weight: 650; font-variant-numeric: tabular-nums; }
#summary .label { display: block; color: var(--muted); font-size: 0.85rem; }
.table-wrap { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.data { width: 100%; font-variant-numeric: tabular-nums; }
.data th, .data td { padding: 6px 12px; text-align: right; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
.data th { font-size: 0.8rem; text-transform: uppercase; letter-spacing: 0.03em; color: var(--muted);
  background: #fafbfc; font-weight: 600; }
.data tbody tr:last-child td { border-bottom: 0; }
.data tbody tr:hover { background: #f3f6fc; }
.data .name { text-align: left; white-space: normal; overflow-wrap: break-word; min-width: 7em; }
.data .swatch-cell { width: 1%; padding-right: 0; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: middle;
  border: 1px solid rgba(0, 0, 0, 0.25); }
.meter { display: inline-block; width: 72px; height: 6px; margin-right: 10px; vertical-align: middle;
  border-radius: 3px; background: #e6e9ef; overflow: hidden; }
.meter > span { display: block; height: 100%; background: var(--accent); opacity: 0.7; }
.missing { color: var(--muted); }
tr.absent td.name { color: var(--muted); }
.footnote { color: var(--muted); font-size: 0.85rem; margin: 6px 2px 0; }
.figures { display: flex; flex-direction: column; gap: 16px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px; }
figure img { margin: 0 auto; }
figcaption { color: var(--muted); font-size: 0.9rem; margin-top: 8px; overflow-wrap: anywhere; }
figcaption strong { color: var(--fg); font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; color: var(--muted); font-size: 0.9rem;
  margin: 0 0 12px; }
.key { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px;
  margin-right: 4px; border: 1px solid rgba(0, 0, 0, 0.25); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 16px; }
.columns { display: grid; grid-template-columns: repeat(4, 1fr); gap: 4px; color: var(--muted);
  font-size: 0.75rem; text-align: center; margin-bottom: 4px; }
.iou { float: right; font-variant-numeric: tabular-nums; }
details { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; }
summary { cursor: pointer; font-weight: 600; }
pre { margin: 10px 0 0; overflow-x: auto; font-size: 0.85rem; line-height: 1.45; }
.notes { margin: 0; padding-left: 20px; }
.notes li { overflow-wrap: anywhere; }
footer { margin-top: 40px; color: var(--muted); font-size: 0.8rem; }
@media (max-width: 560px) {
  .gallery { grid-template-columns: 1fr; }
  main { padding: 16px 10px 32px; }
  .meter { display: none; }
  .data th, .data td { padding: 6px 8px; }
}
"""


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    palette: np.ndarray | None = None,
    curves_png: str | Path | None = None,
    confusion_png: str | Path | None = None,
    gallery: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    instance_metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html``, a static page of the evaluation, and return its path.

    The page holds summary cards (mean IoU, mean F1, pixel accuracy, mean class accuracy,
    frequency-weighted IoU), a per-class table, the training curves and the confusion matrix,
    a gallery of image | ground truth | prediction | error panels, the run's configuration and
    free-text notes. Pictures are referenced by relative paths; any that lie outside ``out_dir``
    are copied into it (curves and confusion matrix to ``out_dir``, panels to ``out_dir/gallery``).

    Args:
        out_dir: folder of the report; created if missing.
        title: page title.
        metrics: ``mean_iou``, ``mean_f1``, ``accuracy``, ``mean_accuracy``, ``fw_iou`` (floats) and
            per-class lists ``iou``, ``f1``, ``precision``, ``recall`` of length K (NaN for a class
            absent from prediction and ground truth, shown as "—"), optionally ``support`` (pixel counts)
            and ``images`` (how many were evaluated; the gallery says "8 of <images> images").
            Missing keys are shown as "—".
        class_names: the K class names.
        palette: ``[K, 3]`` uint8 class colours for the swatches; None leaves the swatch column out.
        curves_png: training curves picture (``viz.plot_curves``), or None.
        confusion_png: confusion matrix picture (``viz.plot_confusion``), or None.
        gallery: panels, each ``{"name": str, "panel": path to a PNG, "iou": float | None}``, worst first.
            Names are data: characters that are not UTF-8 (from file names) are shown as ``\\xff``.
        config: the run's configuration, shown as YAML in a collapsible block.
        notes: free-text lines (command, hardware, time, ...).
        instance_metrics: optional flat ``{name: value}`` table of instance-level metrics; its ``ap_table``
            (rows ``{"iou", "ap", "tp", "fp", "fn"}``, :meth:`~pixelwise.instances.InstanceScores.average_precision`)
            is shown as a table of its own.

    Returns:
        The path of ``report.html``.

    Raises:
        ConfigError: a per-class list or the palette does not have one entry per class, or a
            gallery entry has no ``panel``.
        FileNotFoundError: a picture does not exist.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in class_names]
    _check_lengths(metrics, names, palette)

    sections = [_header(title, metrics), _per_class_section(metrics, names, palette)]
    if instance_metrics:
        sections.append(_instance_section(instance_metrics))
    if curves_png is not None or confusion_png is not None:
        sections.append(_figures_section(curves_png, confusion_png, out_dir))
    if gallery:
        sections.append(_gallery_section(gallery, out_dir, metrics.get("images")))
    if config:
        sections.append(_config_section(config))
    if notes:
        sections.append(_notes_section(notes))
    page = _page(title, sections)
    path = out_dir / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# sections


def _page(title: str, sections: Sequence[str]) -> str:
    """The whole HTML document: head with the CSS, the ``sections`` in order, and the footer."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(sections)
        + f"\n<footer>Written by pixelwise {_esc(__version__)}.</footer>\n</main>\n</body>\n</html>\n"
    )


def _figures_section(curves_png: str | Path | None, confusion_png: str | Path | None, out_dir: Path) -> str:
    """The training curves and confusion matrix (those given), placed in ``out_dir``."""
    figures = []
    if curves_png is not None:
        figures.append(_figure(_place(curves_png, out_dir, out_dir), "training curves", "Training curves"))
    if confusion_png is not None:
        figures.append(
            _figure(
                _place(confusion_png, out_dir, out_dir),
                "confusion matrix",
                "Confusion matrix, normalised per row (rows: ground truth, columns: prediction)",
            )
        )
    return f'<section id="figures">\n<h2>Figures</h2>\n<div class="figures">\n{"".join(figures)}</div>\n</section>'


def _notes_section(notes: Sequence[str]) -> str:
    """The free-text notes as a list."""
    items = "".join(f"<li>{_esc(line)}</li>\n" for line in notes)
    return f'<section id="notes">\n<h2>Notes</h2>\n<ul class="notes">\n{items}</ul>\n</section>'


def _header(title: str, metrics: Mapping[str, Any]) -> str:
    cells = "".join(
        f'<td><span class="value">{_fmt(metrics.get(key))}</span><span class="label">{label}</span></td>'
        for key, label in SUMMARY_CARDS
    )
    return (
        f"<header>\n<h1>{_esc(title)}</h1>\n<p>Segmentation evaluation report</p>\n"
        f'<table id="summary" aria-label="summary metrics"><tbody><tr>{cells}</tr></tbody></table>\n</header>'
    )


def _per_class_section(metrics: Mapping[str, Any], names: list[str], palette: np.ndarray | None) -> str:
    columns = [(key, label) for key, label in PER_CLASS_COLUMNS if metrics.get(key) is not None]
    support = metrics.get("support")
    head = '<th class="swatch-cell" aria-label="colour"></th>' if palette is not None else ""
    head += '<th class="name">class</th>' + "".join(f"<th>{label}</th>" for _, label in columns)
    if support is not None:
        head += "<th>support</th>"
    rows = []
    any_missing = False
    for k, name in enumerate(names):
        cells = ""
        absent = all(not math.isfinite(number(metrics[key][k])) for key, _ in columns) and bool(columns)
        if palette is not None:
            r, g, b = (int(c) for c in np.asarray(palette)[k][:3])
            cells += f'<td class="swatch-cell"><span class="swatch" style="background:rgb({r},{g},{b})"></span></td>'
        cells += f'<td class="name">{_esc(name)}</td>'
        for key, _ in columns:
            value = number(metrics[key][k])
            any_missing |= not math.isfinite(value)
            cells += _value_cell(value, bar=key == "iou")
        if support is not None:
            cells += f"<td>{_fmt_count(support[k])}</td>"
        rows.append(f'<tr class="absent">{cells}</tr>' if absent else f"<tr>{cells}</tr>")
    footnote = f'<p class="footnote">{MISSING} {MISSING_NOTE}</p>\n' if any_missing else ""
    return (
        '<section id="classes">\n<h2>Per-class metrics</h2>\n<div class="table-wrap">\n'
        f'<table id="per-class" class="data">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + f"\n</tbody>\n</table>\n</div>\n{footnote}</section>"
    )


def _instance_section(instance_metrics: Mapping[str, Any]) -> str:
    """The flat table of instance metrics, then the average precision table when there is one."""
    rows = "\n".join(
        f'<tr><td class="name">{_esc(key)}</td><td>{_fmt_any(value)}</td></tr>'
        for key, value in instance_metrics.items()
        if key != AP_TABLE_KEY
    )
    return (
        '<section id="instances">\n<h2>Instance metrics</h2>\n<div class="table-wrap">\n'
        '<table id="instance" class="data">\n<thead><tr><th class="name">metric</th><th>value</th></tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody>\n</table>\n</div>\n"
        + _ap_table(instance_metrics.get(AP_TABLE_KEY) or ())
        + "</section>"
    )


def _ap_table(table: Sequence[Mapping[str, Any]]) -> str:
    """Average precision at each IoU threshold (``{"iou", "ap", "tp", "fp", "fn"}`` rows), or "" for none."""
    if not table:
        return ""
    head = '<th class="name">IoU ≥</th>' + "".join(f"<th>{label}</th>" for label in ("AP", "TP", "FP", "FN"))
    rows = "\n".join(
        f'<tr><td class="name">{_fmt(row.get("iou"))}</td>{_value_cell(number(row.get("ap")), bar=True)}'
        + "".join(f"<td>{_fmt_count(row.get(key))}</td>" for key in ("tp", "fp", "fn"))
        + "</tr>"
        for row in table
    )
    return (
        f'<h3>Average precision by IoU threshold</h3>\n<p class="footnote">{_esc(AP_NOTE)}</p>\n'
        '<div class="table-wrap">\n<table id="ap-table" class="data">\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n"
        "</tbody>\n</table>\n</div>\n"
    )


def _figure(src: str, alt: str, caption: str, extra: str = "") -> str:
    return f'<figure>{extra}<img {src} alt="{_esc(alt)}"><figcaption>{caption}</figcaption></figure>\n'


def _gallery_section(gallery: Sequence[Mapping[str, Any]], out_dir: Path, images: int | None = None) -> str:
    """The gallery of panels, under a line saying how many of the ``images`` evaluated it shows."""
    labels = "".join(f"<span>{c}</span>" for c in PANEL_COLUMNS)
    columns = f'<div class="columns" aria-hidden="true">{labels}</div>'
    figures = []
    for i, item in enumerate(gallery):
        if item.get("panel") is None:
            raise ConfigError(f"gallery entry {i} ({item!r}) has no 'panel'; give the path of its PNG.")
        name = str(item.get("name", Path(item["panel"]).stem))
        src = _place(item["panel"], out_dir, out_dir / "gallery")
        iou = item.get("iou")
        score = f'<span class="iou">IoU {_fmt(iou)}</span>' if iou is not None else ""
        alt = f"{name}: image, ground truth, prediction, errors"
        figures.append(_figure(src, alt, f"{score}<strong>{_esc(name)}</strong>", columns))
    legend = (
        '<p class="legend"><span>Each panel: ' + " | ".join(PANEL_COLUMNS) + "</span>"
        f'<span><span class="key" style="background:{_rgb(ERROR_COLOR)}"></span>wrong</span>'
        f'<span><span class="key" style="background:{_rgb(CORRECT_COLOR)}"></span>right</span>'
        f'<span><span class="key" style="background:{_rgb(IGNORE_COLOR)}"></span>ignored</span></p>\n'
    )
    shown = f"{len(gallery)} of {images} images" if isinstance(images, int) else f"{len(gallery)} images"
    count = f'<p id="gallery-count">{shown}, from the worst to the best mean IoU.</p>\n'
    return (
        f'<section id="gallery-section">\n<h2>Gallery</h2>\n{count}{legend}'
        f'<div class="gallery" id="gallery">\n{"".join(figures)}</div>\n</section>'
    )


def _config_section(config: Mapping[str, Any]) -> str:
    import yaml

    try:
        text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError:
        text = json.dumps(config, indent=2, default=str, ensure_ascii=False)
    return (
        '<section id="config">\n<h2>Configuration</h2>\n'
        f"<details><summary>configuration of the run</summary><pre>{_esc(text)}</pre></details>\n</section>"
    )


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _check_lengths(metrics: Mapping[str, Any], names: list[str], palette: np.ndarray | None) -> None:
    for key in (*(k for k, _ in PER_CLASS_COLUMNS), "support"):
        values = metrics.get(key)
        if values is not None and len(values) != len(names):
            raise ConfigError(
                f"metrics[{key!r}] has {len(values)} entries but there are {len(names)} class names; "
                "give one value per class."
            )
    if palette is not None and len(palette) < len(names):
        raise ConfigError(f"the palette has {len(palette)} colours but there are {len(names)} classes.")


def _place(picture: str | Path, out_dir: Path, copy_to: Path) -> str:
    """Return the ``src``/``width``/``height`` attributes of ``picture``, copying it into ``copy_to``
    when it lies outside ``out_dir``."""
    picture = Path(picture)
    if not picture.is_file():
        raise FileNotFoundError(f"report picture {str(picture)!r} does not exist; write it before the report.")
    root = out_dir.resolve()
    resolved = picture.resolve()
    if not resolved.is_relative_to(root):
        target = _free_name(copy_to / picture.name, resolved)
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copy2(resolved, tmp)
        resolved = target.resolve()
    relative = resolved.relative_to(root).as_posix()
    attrs = f'src="{_esc(quote(os.fsencode(relative)))}"'  # the file name's own bytes, %-encoded
    size = _png_size(resolved)
    if size is not None:
        attrs += f' width="{size[0]}" height="{size[1]}"'
    return attrs


def _free_name(target: Path, source: Path) -> Path:
    """``target``, or ``target`` with a numbered stem when another file already has that name."""
    candidate, n = target, 1
    while candidate.exists() and not _same_bytes(candidate, source):
        candidate = target.with_stem(f"{target.stem}-{n}")
        n += 1
    return candidate


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _png_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def printable(text: Any) -> str:
    """``str(text)``, safe to write as UTF-8: the bytes of a file name that are not UTF-8 (which Python
    gives as lone surrogates, ``os.fsdecode(b"img\\xff") == "img\\udcff"``) are shown as ``\\xff``.

    Example:
        >>> printable(os.fsdecode(b"img\\xff.png"))
        'img\\\\xff.png'
    """
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _esc(text: Any) -> str:
    """``text`` for HTML: printable (see :func:`printable`), with ``<>&"'`` escaped."""
    return html.escape(printable(text), quote=True)


def _fmt(value: Any) -> str:
    x = number(value)
    return f"{x:.{DECIMALS}f}" if math.isfinite(x) else MISSING


def _fmt_count(value: Any) -> str:
    x = number(value)
    return f"{int(x):,}" if math.isfinite(x) else MISSING


def _fmt_any(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return _esc(value)
    if isinstance(value, (int, np.integer)):
        return _fmt_count(value)
    return _fmt(value)


def _value_cell(value: float, bar: bool) -> str:
    if not math.isfinite(value):
        return f'<td class="missing" title="{MISSING_NOTE}">{MISSING}</td>'
    if bar:
        width = 100 * min(max(value, 0.0), 1.0)
        return f'<td><span class="meter"><span style="width:{width:.1f}%"></span></span>{value:.{DECIMALS}f}</td>'
    return f"<td>{value:.{DECIMALS}f}</td>"


def _rgb(color: Sequence[int]) -> str:
    return "rgb({},{},{})".format(*color)
