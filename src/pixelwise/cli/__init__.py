"""The ``pixelwise`` command line: ``pixelwise --help`` lists the commands.

One module per command (:mod:`~pixelwise.cli.models`, :mod:`~pixelwise.cli.train`, ...), each with
``add_parser(commands)`` registering its options and ``run(args)``: parse → call the library → print.
Option defaults come from the library's named constants, never restated here. Other distributions add
commands through the ``pixelwise.commands`` entry point group (:data:`PLUGIN_GROUP`): each entry point is an
``add_parser(commands)`` function, called after the built-in commands (``pixelwise experiment`` comes from
``pixelwise-experiments``, the repository's ``experiments/`` folder). :func:`main` owns
what every command shares: the exit status of an error, Ctrl-C, SIGTERM and a closed pipe.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import entry_points

from pixelwise.errors import PixelwiseError

COMMANDS = (
    "models",
    "info",
    "bench",
    "check_data",
    "plan",
    "train",
    "evaluate",
    "tune_instances",
    "predict",
    "export",
    "convert",
    "demo",
)
"""The command modules of this package, in the order ``pixelwise --help`` lists them."""
PLUGIN_GROUP = "pixelwise.commands"
"""Entry point group of commands from other distributions; ``pixelwise --help`` lists them after the built-in ones."""


def build_parser() -> argparse.ArgumentParser:
    """The ``pixelwise`` parser with every command's subparser; ``args.func(args)`` runs the command."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="pixelwise",
        description="Image segmentation on PyTorch: models, training, metrics and tiled inference.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pixelwise.cli.{name}").add_parser(commands)
    for plugin in entry_points(group=PLUGIN_GROUP):
        try:
            plugin.load()(commands)
        except Exception as error:  # a broken add-on must not take the built-in commands down with it
            reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line
            print(f"pixelwise: command plugin {plugin.name!r} ({plugin.value}) not loaded: {reason}", file=sys.stderr)
    return parser


def _version() -> str:
    from pixelwise._version import __version__

    return f"pixelwise {__version__}"


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a batch scheduler's time limit) unwinds like Ctrl-C, so that every
    temporary file being written is removed on the way out."""
    raise SystemExit(128 + signum)


def _printable_names() -> None:
    """File names are data: one that is not valid UTF-8 prints with backslash escapes instead of
    failing on a strict terminal."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pixelwise ARGV``; the exit status (2: a PixelwiseError, 130: interrupted, 141: closed pipe)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _printable_names()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.func(args)
    except PixelwiseError as error:
        print(f"pixelwise {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixelwise {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`pixelwise check-data DIR | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["build_parser", "main"]
