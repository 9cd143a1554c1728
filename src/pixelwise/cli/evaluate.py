"""``pixelwise evaluate``: metrics.json, a confusion matrix and report.html for a trained model on a data split."""

from __future__ import annotations

import argparse
from typing import Any

from pixelwise.cli import _tiling
from pixelwise.cli._data import add_data_arguments
from pixelwise.cli._table import fmt, table
from pixelwise.cli.tune_instances import add_postprocess_arguments, postprocess_overrides
from pixelwise.evaluate import GALLERY_SIZE
from pixelwise.inference.tta import NO_TTA
from pixelwise.metrics.surface import DEFAULT_TOLERANCE


def add_parser(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics, confusion matrix and report.html for a trained model")
    evaluate.add_argument("--checkpoint", required=True, help="run directory (runs/<name>), saved model or .ckpt")
    evaluate.add_argument("--data", required=True, help="data set (any layout check-data reads)")
    evaluate.add_argument("--split", default="val", help="split to evaluate (default val)")
    add_data_arguments(evaluate)
    evaluate.add_argument("--out", default=None, help="output folder (default <run>/eval-<split>)")
    evaluate.add_argument("--gallery", type=int, default=GALLERY_SIZE, help="number of example panels in the report")
    evaluate.add_argument("--files", default=None, help="only these files: a glob over file names, e.g. '2[0-4]'")
    evaluate.add_argument(
        "--instances",
        action="store_true",
        help="also score objects: precision/recall/F1 at IoU 0.5, DSB score, panoptic quality, AP at IoU 0.5:0.95 "
        "(AP50, AP75, mAP) and AJI (true objects from the data's instance labels, else connected components "
        "of the masks)",
    )
    add_postprocess_arguments(evaluate)
    _tiling.add_tiling_arguments(evaluate, 0)
    _tiling.add_device_argument(evaluate)
    evaluate.add_argument(
        "--surface-distances",
        nargs="?",
        const=DEFAULT_TOLERANCE,
        default=None,
        type=float,
        metavar="TOLERANCE",
        help="also score per-class Hausdorff, HD95, ASSD and normalised surface Dice (as MONAI), in pixels; "
        f"TOLERANCE: the surface Dice tolerance (default {DEFAULT_TOLERANCE:g} px)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate a trained model on a data split; print per-class metrics and the report's path."""
    from pixelwise.evaluate import evaluate

    _tiling.check_tiling_arguments(args)
    postprocess = postprocess_overrides(args)
    result = evaluate(
        args.checkpoint,
        args.data,
        split=args.split,
        out_dir=args.out,
        gallery_size=args.gallery,
        files=args.files,
        instances=args.instances,
        instance_method=postprocess.pop("method"),
        instance_options=postprocess,
        tta=args.tta,
        tta_scales=_tiling.tta_scales(args),
        tiling=_tiling.tiling_options(args),
        runtime=_tiling.runtime_options(args),
        progress=not args.no_progress,
        format=args.format,
        layout_options=args.data_options,
        surface_tolerance=args.surface_distances,
    )
    columns = (result.class_names, result.iou, result.f1, result.precision, result.recall)
    rows = [[name, fmt(iou), fmt(f1), fmt(p), fmt(r)] for name, iou, f1, p, r in zip(*columns, strict=True)]
    print(table(rows, ["class", "IoU", "F1", "precision", "recall"]))
    summary = f"mean IoU {result.mean_iou:.4f}  mean F1 {result.mean_f1:.4f}"
    print(f"\n{summary}  pixel accuracy {result.accuracy:.4f}")
    if result.tta != NO_TTA:  # --tta, else the mode stored with the model
        print(f"test-time augmentation: {result.tta}" + ("" if args.tta else " (stored with the model)"))
    if result.instances is not None:
        found = result.instances
        keys = ("dsb_score", "pq", "sq", "rq", "f1", "precision", "recall", "count_error")
        print(f"instances ({found['method']}): " + "  ".join(f"{k} {fmt(found[k])}" for k in keys))
        ap_keys = (("ap50", "AP50"), ("ap75", "AP75"), ("map", "mAP@0.5:0.95"), ("aji", "AJI"))
        print("instance AP (IoU >= t, pooled): " + "  ".join(f"{label} {fmt(found.get(k))}" for k, label in ap_keys))
    if result.surface is not None:
        means = {k: result.surface[f"mean_{k}"] for k in ("hausdorff", "hd95", "assd", "nsd")}
        shown = "  ".join(f"{k} {v if isinstance(v, str) else fmt(v)}" for k, v in means.items())  # "inf" as text
        print(f"surface distances (px, mean over classes): {shown}")
    print(f"report: {result.report}")
    return 0
