"""``pixelwise plan``: the training plan a data set, a time budget and this machine lead to, with the reason for
every choice (the plan ``pixelwise train --data DIR --max-minutes M`` uses when no recipe option is given)."""

from __future__ import annotations

import argparse
from typing import Any

from pixelwise.cli._data import add_data_arguments


def add_parser(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="derive a training plan from the data (fingerprint), the budget and a measured step time",
        description="Fingerprint the training split, time a few training steps of the candidate sizes on this "
        "machine, and print every planned option with the fact that decided it.",
    )
    plan.add_argument("--data", required=True, help="data set (any layout check-data reads)")
    plan.add_argument("--split", default="train", help="the training split (default train)")
    plan.add_argument("--files", default=None, help="only these training files: a glob over names, e.g. '[01]?'")
    add_data_arguments(plan)
    plan.add_argument("--max-minutes", type=float, default=None, help="the training budget in minutes")
    plan.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto", help="where training will run (default auto)"
    )
    plan.add_argument("--no-measure", action="store_true", help="do not time training steps (plans the largest crop)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (options, symmetry, mask offset)")
    plan.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pixelwise.training.plan import plan_for_data

    fingerprint, plan = plan_for_data(
        args.data,
        split=args.split,
        files=args.files,
        data_format=args.format,
        data_options=args.data_options,
        max_minutes=args.max_minutes,
        accelerator=args.device,
        measure=not args.no_measure,
        progress=not args.json,
    )
    if args.json:
        print(plan.to_json())
        return 0
    print(fingerprint.summary())
    print()
    print(plan.to_text())
    return 0
