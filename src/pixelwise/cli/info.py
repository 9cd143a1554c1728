"""``pixelwise info``: versions, the compute device and thread settings."""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

from pixelwise.cli._table import table


def add_parser(commands: Any) -> None:
    info = commands.add_parser("info", help="print versions, device and thread settings")
    info.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print versions, the compute device and thread settings."""
    import numpy
    import timm
    import torch
    import torchvision

    from pixelwise._version import __version__

    if torch.cuda.is_available():
        device = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        device = f"cuda ({device})"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    rows = [
        ["pixelwise", __version__],
        ["python", platform.python_version()],
        ["torch", torch.__version__],
        ["torchvision", torchvision.__version__],
        ["timm", timm.__version__],
        ["numpy", numpy.__version__],
        ["platform", platform.platform()],
        ["device", device],
        ["cpu capability", torch.backends.cpu.get_cpu_capability()],
        ["cpu cores", str(os.cpu_count())],
        ["torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"],
    ]
    print(table(rows, ["item", "value"]))
    return 0
