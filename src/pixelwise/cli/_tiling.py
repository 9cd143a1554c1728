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
from pixelwise.inference.tta import MAX_TTA_SCALE, MAX_TTA_SCALES, TTA_MODES, check_tta_scales


def add_tiling_arguments(parser: argparse.ArgumentParser, tile: int) -> None:
    """``--tile`` (default ``tile``; 0: whole images), ``--overlap``, ``--blend``, ``--batch-size``, ``--tta``,
    ``--tta-scales``."""
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
        help=f"tiles (in predict, also whole images of equal size) per forward pass (default {DEFAULT_BATCH_SIZE}; "
        "more on a GPU)",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation, probabilities averaged: hflip, flips, d4, or none (default: the one stored "
        "with the model, else none)",
    )
    parser.add_argument(
        "--tta-scales",
        default=None,
        metavar="S1,S2,...",
        help=f"multi-scale test-time augmentation: input scales, e.g. 0.75,1,1.25 (up to {MAX_TTA_SCALES}, each in "
        f"(0, {MAX_TTA_SCALE:g}]); each tile is resized, predicted and resized back, and the probabilities are "
        "averaged over the scales and the --tta flips (default: none)",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")


def check_tiling_arguments(args: argparse.Namespace) -> None:
    """Validate ``--tile``, ``--overlap``, ``--blend``, ``--batch-size``, ``--tta-scales`` and ``--device`` first.

    Raises:
        ConfigError: names the option, the value and the valid range or choices.
    """
    check_int("--tile", args.tile, 0, " (0: whole images)")
    check_fraction("--overlap", args.overlap)
    check_int("--batch-size", args.batch_size, 1)
    check_choice("--blend", args.blend, BLEND_MODES)
    check_tta_scales(args.tta_scales, "--tta-scales")
    check_device(args.device, "--device")


def tiling_options(args: argparse.Namespace) -> TilingOptions:
    return TilingOptions(
        tile_size=args.tile or None, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size
    )


def tta_scales(args: argparse.Namespace) -> tuple[float, ...] | None:
    """``--tta-scales`` as a tuple of floats (None when not given).

    Raises:
        ConfigError: a bad list (names ``--tta-scales`` and the value).
    """
    return check_tta_scales(args.tta_scales, "--tta-scales")


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """``--device``, and ``--backend`` / ``--precision`` where the command has them."""
    defaults = RuntimeOptions()
    return RuntimeOptions(
        backend=getattr(args, "backend", defaults.backend),
        precision=getattr(args, "precision", defaults.precision),
        device=args.device,
    )
