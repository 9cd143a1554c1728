"""The data set options shared by ``check-data`` and ``evaluate`` (``train`` has the same two, generated
from TrainConfig's ``data_format`` and ``data_options``)."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from pixelwise.data.layouts import LAYOUTS


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--format NAME`` and ``--data-options YAML``."""
    parser.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help=f"the data set's layout: {', '.join(LAYOUTS)} (default: detected)",
    )
    parser.add_argument(
        "--data-options",
        type=data_options,
        default=None,
        metavar="YAML",
        help='options of the layout as a YAML mapping, e.g. "{overlap: smaller}" for COCO',
    )


def data_options(text: str) -> dict[str, Any]:
    """Parse ``--data-options``: a YAML mapping of option names to values."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not valid YAML: {text!r} ({error})") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'{text!r} is not a mapping; write e.g. "{{overlap: smaller}}"')
    return value
