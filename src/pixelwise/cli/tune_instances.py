"""``pixelwise tune-instances RUN --data DIR``: choose the instance post-processing on a labelled split and store
it with the model, so that ``predict --instances`` and ``evaluate --instances`` use it.

Also home of the post-processing options those two commands share (:func:`add_postprocess_arguments`): given
explicitly, they win over the stored ones.
"""

from __future__ import annotations

import argparse
from typing import Any

from pixelwise.cli import _tiling
from pixelwise.cli._data import add_data_arguments
from pixelwise.cli._table import fmt, table
from pixelwise.errors import ConfigError
from pixelwise.instances.postprocess import METHODS as INSTANCE_METHODS
from pixelwise.instances.tuning import DEFAULT_OBJECTIVE, OBJECTIVES

SHOWN = (("map", "mAP@0.5:0.95"), ("ap50", "AP50"), ("ap75", "AP75"), ("aji", "AJI"), ("pq", "PQ"), ("f1", "F1"))
"""Metrics of the printed table: (key, column title)."""
TOP_ROWS = 5
"""Best settings printed below the default and the chosen one."""


def add_parser(commands: Any) -> None:
    tune = commands.add_parser(
        "tune-instances",
        help="choose the instance post-processing (thresholds, minimum size) on a split and store it with the model",
    )
    tune.add_argument("run", metavar="RUN", help="run directory (runs/<name>), model folder or .ckpt")
    tune.add_argument("--data", required=True, help="labelled data set (any layout check-data reads)")
    tune.add_argument("--split", default="val", help="split to tune on (default val)")
    add_data_arguments(tune)
    tune.add_argument("--files", default=None, help="only these files: a glob over file names, e.g. '2[0-4]'")
    tune.add_argument(
        "--objective",
        default=DEFAULT_OBJECTIVE,
        choices=tuple(OBJECTIVES),
        help="what to maximise: ap (mean AP over IoU 0.5:0.95, pooled), pq (panoptic quality) or f1 at IoU 0.5 "
        f"(default {DEFAULT_OBJECTIVE})",
    )
    tune.add_argument("--no-refine", action="store_true", help="only the coarse grid, no refinement around the best")
    tune.add_argument(
        "--dry-run", "--no-save", dest="dry_run", action="store_true", help="print the result, store nothing"
    )
    _tiling.add_tiling_arguments(tune, 0)
    _tiling.add_device_argument(tune)
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")
    tune.set_defaults(func=run)


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """``--instance-method``, ``--instance-threshold``, ``--marker-threshold``, ``--min-size``: explicit
    post-processing options, which win over those stored by ``tune-instances``."""
    parser.add_argument(
        "--instance-method",
        choices=("auto", *INSTANCE_METHODS),
        default="auto",
        help="how probabilities become objects (default auto: as tune-instances stored, else watershed for "
        "--target boundary models and components for others)",
    )
    parser.add_argument(
        "--instance-threshold",
        type=float,
        default=None,
        metavar="P",
        help="foreground where 1 - p(background) > P (default: as stored, else the argmax)",
    )
    parser.add_argument(
        "--marker-threshold",
        type=float,
        default=None,
        metavar="P",
        help="interior probability that seeds a watershed marker (boundary-target models; default: as stored)",
    )
    parser.add_argument(
        "--min-size", type=int, default=None, metavar="PIXELS", help="drop smaller objects (default: as stored)"
    )


def postprocess_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The explicit options of :func:`add_postprocess_arguments` (None: not given), checked.

    Raises:
        ConfigError: a threshold outside (0, 1) or a negative minimum size, naming the option.
    """
    for option, value in (
        ("--instance-threshold", args.instance_threshold),
        ("--marker-threshold", args.marker_threshold),
    ):
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{option} {value} is not a probability; pass a value between 0 and 1, e.g. 0.5.")
    if args.min_size is not None and args.min_size < 0:
        raise ConfigError(
            f"--min-size {args.min_size} is negative; pass a number of pixels >= 0 (0 keeps every object)."
        )
    return {
        "method": args.instance_method,
        "threshold": args.instance_threshold,
        "marker_threshold": args.marker_threshold,
        "min_size": args.min_size,
    }


def run(args: argparse.Namespace) -> int:
    """Tune, print default vs best (and the next best settings), and say where the options were stored."""
    from pixelwise.instances.tuning import tune_instances

    _tiling.check_tiling_arguments(args)
    result = tune_instances(
        args.run,
        args.data,
        args.split,
        objective=args.objective,
        files=args.files,
        format=args.format,
        layout_options=args.data_options,
        tiling=_tiling.tiling_options(args),
        runtime=_tiling.runtime_options(args),
        tta=args.tta,
        tta_scales=_tiling.tta_scales(args),
        refine=not args.no_refine,
        save=not args.dry_run,
        progress=not args.no_progress,
    )
    default = next(row for row in result.table if _options(row) == result.default)
    rows = [_row("default", default), _row("best", result.table[0])]
    rows += [_row(f"#{rank}", row) for rank, row in enumerate(result.table[1 : 1 + TOP_ROWS], start=2)]
    header = ["", "method", "threshold", "markers", "min_size", *(title for _, title in SHOWN)]
    print(table(rows, header))
    gain = result.best_score - result.default_score
    print(f"\n{len(result.table)} settings on {result.images} images; objective {args.objective}: ", end="")
    print(f"default {result.default_score:.4f} -> best {result.best_score:.4f} ({gain:+.4f})")
    print(f"best options: {result.best}")
    if result.saved is not None:
        print(f"stored in {result.saved}; predict --instances and evaluate --instances now use them")
    else:
        print("not stored (--dry-run)")
    return 0


def _options(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("method", "markers", "threshold", "marker_threshold", "h", "min_size")}


def _row(label: str, row: dict[str, Any]) -> list[str]:
    """One printed line: the setting (markers: ``distance h=N`` or ``interior p=N``) and its metrics."""
    markers = "—"
    if row["method"] == "watershed":
        markers = (
            f"distance h={row['h']:g}"
            if row["markers"] == "distance"
            else f"{row['markers']} p={row['marker_threshold']:g}"
        )
    threshold = "argmax" if row["threshold"] is None else f"{row['threshold']:g}"
    return [label, row["method"], threshold, markers, str(row["min_size"]), *(fmt(row[key]) for key, _ in SHOWN)]
