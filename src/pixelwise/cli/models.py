"""``pixelwise models``: the architectures with their default encoder and their own options."""

from __future__ import annotations

import argparse
from typing import Any

from pixelwise.cli._table import table

COMMON_OPTIONS = {
    "encoder_name",
    "encoder_depth",
    "encoder_weights",
    "encoder_freeze",
    "in_channels",
    "classes",
    "activation",
}
"""Options every architecture takes; the table lists only the others."""


def add_parser(commands: Any) -> None:
    models = commands.add_parser("models", help="list the architectures and their options")
    models.add_argument(
        "--encoders", nargs="?", const="", metavar="PATTERN", help="list timm encoder names instead (e.g. 'resnet*')"
    )
    models.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the architectures with their default encoder and their own options."""
    import timm

    from pixelwise.models import get_model_class, list_models
    from pixelwise.models.registry import model_options

    if args.encoders is not None:
        names = timm.list_models(args.encoders or "*")
        print("\n".join(names) if names else f"no timm encoder matches {args.encoders!r}")
        return 0
    rows = []
    for arch in list_models():
        options = model_options(arch)
        own = [f"{k}={v!r}" for k, v in options.items() if k not in COMMON_OPTIONS]
        cls = get_model_class(arch)
        rows.append([arch, cls.__name__, str(options.get("encoder_name", "-")), ", ".join(own)])
    print(table(rows, ["arch", "class", "default encoder", "architecture options"]))
    print(
        "\nEvery architecture also takes in_channels, classes, activation and (except unet2015) "
        "encoder_name, encoder_depth, encoder_weights, encoder_freeze.\n"
        "Encoders: any timm model with feature_info; list them with `pixelwise models --encoders 'resnet*'`."
    )
    return 0
