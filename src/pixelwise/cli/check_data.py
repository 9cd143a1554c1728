"""``pixelwise check-data``: read every image/mask pair once; print what is wrong per file and the class statistics."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pixelwise.cli._data import add_data_arguments
from pixelwise.data.layouts import layouts_help
from pixelwise.modes import IGNORE_INDEX


def add_parser(commands: Any) -> None:
    check = commands.add_parser(
        "check-data",
        help="check a data set: the layout found, unpaired, unreadable or mismatched files, class frequencies",
        epilog=layouts_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "path",
        help="data set: a folder (images/ + masks/, VOC, Cityscapes, ADE20K, CVAT, generic folders) or an "
        "annotation file (COCO or Label Studio JSON)",
    )
    check.add_argument("--split", default=None, help="split to check, e.g. train (default: every split)")
    add_data_arguments(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    check.add_argument(
        "--fingerprint",
        action="store_true",
        help="print the data fingerprint a training plan is derived from (sizes, intensities, class shares, "
        "object sizes and widths, orientation, mask offset) instead of the report; of --split, default: the "
        "training split",
    )
    check.add_argument(
        "--classes",
        default=None,
        metavar="K|FILE",
        help="number of classes, or a classes.yaml/.json (default: the folder's class file, else inferred)",
    )
    check.add_argument(
        "--ignore-index",
        type=int,
        default=None,  # None: check_dataset decides, as 0/255 masks read 255 as the foreground
        help=f"mask value of void pixels (default {IGNORE_INDEX}; masks holding only 0 and {IGNORE_INDEX} read "
        f"{IGNORE_INDEX} as the foreground)",
    )
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the folder and print its report; exit status 1 if anything is wrong."""
    from pixelwise.data import ClassInfo, check_dataset

    classes, num_classes = None, None
    if args.classes is not None:
        if args.classes.isdigit():
            num_classes = int(args.classes)
        else:
            classes = ClassInfo.load(args.classes)
    if args.fingerprint:
        return _print_fingerprint(args, classes, num_classes)
    report = check_dataset(
        args.path,
        split=args.split,
        num_classes=num_classes,
        classes=classes,
        ignore_index=args.ignore_index,
        format=args.format,
        layout_options=args.data_options,
        progress=False if args.json else None,
    )
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else report.format(max_problems=None))
    return 0 if report.ok else 1


def _print_fingerprint(args: argparse.Namespace, classes: Any, num_classes: int | None) -> int:
    """Compute the fingerprint of one split and print its summary (or all of it as JSON)."""
    from pixelwise.data.fingerprint import compute_fingerprint, default_split

    split = args.split if args.split is not None else default_split(args.path, args.format, args.data_options)
    fingerprint = compute_fingerprint(
        args.path,
        split,
        num_classes=num_classes,
        classes=classes,
        ignore_index=args.ignore_index,
        format=args.format,
        layout_options=args.data_options,
        progress=False if args.json else None,
    )
    print(json.dumps(fingerprint.to_dict(), indent=2, ensure_ascii=False) if args.json else fingerprint.summary())
    return 0
