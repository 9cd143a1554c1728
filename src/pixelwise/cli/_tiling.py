"""The options of how images are tiled and where the model runs, shared by ``predict`` and ``evaluate``."""

from __future__ import annotations

import argparse

from pixelwise.errors import check_choice
from pixelwise.inference.predictor import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLEND,
    DEFAULT_OVERLAP,
    RuntimeOptions,
    TilingOptions,
    check_device,
    check_fraction,
    check_int,
)
from pixelwise.inference.tiling import BLEND_MODES
from pixelwise.inference.tta import TTA_MODES


def add_tiling_arguments(parser: argparse.ArgumentParser, tile: int) -> None:
    """``--tile`` (default ``tile``; 0: whole images), ``--overlap``, ``--blend``, ``--batch-size``, ``--tta``."""
    whole = "0: whole images" + (", the default" if tile == 0 else f"; default {tile}")
    parser.add_argument("--tile", type=int, default=tile, help=f"tile size in pixels ({whole})")
    parser.add_argument(
        "--overlap", type=float, default=DEFAULT_OVERLAP, help=f"tile overlap fraction (default {DEFAULT_OVERLAP})"
    )
    parser.add_argument("--blend", default=DEFAULT_BLEND, help=f"gaussian, linear or none (default {DEFAULT_BLEND})")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"tiles per forward pass (default {DEFAULT_BATCH_SIZE}; more on a GPU)",
    )
    parser.add_argument(
        "--tta", choices=TTA_MODES, default=None, help="test-time augmentation, probabilities averaged (default none)"
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")


def check_tiling_arguments(args: argparse.Namespace) -> None:
    """Validate ``--tile``, ``--overlap``, ``--blend``, ``--batch-size`` and ``--device`` before any work.

    Raises:
        ConfigError: names the option, the value and the valid range or choices.
    """
    check_int("--tile", args.tile, 0, " (0: whole images)")
    check_fraction("--overlap", args.overlap)
    check_int("--batch-size", args.batch_size, 1)
    check_choice("--blend", args.blend, BLEND_MODES)
    check_device(args.device, "--device")


def tiling_options(args: argparse.Namespace) -> TilingOptions:
    return TilingOptions(
        tile_size=args.tile or None, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size
    )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """``--device``, and ``--backend`` / ``--precision`` where the command has them."""
    defaults = RuntimeOptions()
    return RuntimeOptions(
        backend=getattr(args, "backend", defaults.backend),
        precision=getattr(args, "precision", defaults.precision),
        device=args.device,
    )
