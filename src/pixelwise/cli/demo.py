"""``pixelwise demo``: generate data, train, evaluate and predict, offline, in a few minutes."""

from __future__ import annotations

import argparse
from typing import Any

from pixelwise.demo import DEMO_MINUTES, DEMO_OUT


def add_parser(commands: Any) -> None:
    demo = commands.add_parser("demo", help="offline demo: synthetic data → training → evaluation → report")
    demo.add_argument("--out", default=DEMO_OUT, help=f"output folder (default {DEMO_OUT})")
    demo.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help=f"training budget in minutes (default {DEMO_MINUTES:g}); the plan from the data decides the rest",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo into ``--out``."""
    from pixelwise.demo import run_demo

    run_demo(args.out, max_minutes=args.max_minutes, progress=not args.no_progress)
    return 0
