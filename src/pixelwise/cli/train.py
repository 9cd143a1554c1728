"""``pixelwise train``: flags override the YAML config; ``--resume`` continues a run.

The flags are generated from the :class:`~pixelwise.training.config.TrainConfig` fields (one source of
truth): one ``--flag`` per field, its help the field's docstring, its default shown from the field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import types
import typing
from typing import Any

import yaml

from pixelwise.training.config import TrainConfig


def add_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train a model on a data folder (Lightning; CPU, GPU, DDP)")
    train.add_argument("--config", help="YAML file of training options (flags override it)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.ckpt")
    train.add_argument(
        "--plan",
        choices=PLAN_MODES,
        default="auto",
        help="derive the recipe from the data, the budget and a measured step time (pixelwise plan; the run gets "
        "fingerprint.json, plan.md and plan.json): auto = when neither --config nor a recipe option (model, "
        "encoder, crop, batch size, scale, augment, loss, lr, epochs, ...) is given; on = also then, the options "
        "given kept as they are; off = the library defaults (default auto)",
    )
    add_train_arguments(train)
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train a model; flags override the YAML config; --resume continues a run."""
    from pathlib import Path

    from pixelwise.errors import ConfigError
    from pixelwise.training.config import resolve
    from pixelwise.training.run import process_start, train

    overrides = overrides_from(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there; pass a run directory (runs/<name>).")
        config = resolve(
            str(run_dir / "config.yaml"), overrides | {"runs_dir": str(run_dir.parent), "name": run_dir.name}
        )
        artifacts = None
    else:
        config = resolve(args.config, overrides)
        config, artifacts = planned(config, args, overrides) if wants_plan(args, overrides) else (config, None)
    start = process_start()  # the budget covers the whole command, fingerprint and plan included
    result = train(config, resume=bool(args.resume), start=start, artifacts=artifacts)
    best = f"{result.best_miou:.4f}" if result.best_miou is not None else "n/a"
    print(f"run: {result.run_dir}  best val mIoU: {best}  epochs: {result.epochs}  time: {result.seconds:.0f} s")
    return 0


PLAN_MODES = ("auto", "on", "off")


def wants_plan(args: argparse.Namespace, overrides: dict[str, Any]) -> bool:
    """``--plan on``, or ``auto`` with neither a config file nor a recipe option on the command line."""
    from pixelwise.training.plan import RECIPE_OPTIONS

    if args.plan == "auto":
        return not args.config and not set(overrides) & RECIPE_OPTIONS
    return args.plan == "on"


def planned(config: TrainConfig, args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[TrainConfig, dict]:
    """The config with the plan's options under the user's (command line and config file), and the run's
    ``fingerprint.json``, ``plan.md`` and ``plan.json``."""
    from pixelwise.training.config import load_yaml
    from pixelwise.training.plan import plan_config

    given = {**(load_yaml(args.config) if args.config else {}), **overrides}
    config, plan, artifacts = plan_config(config, given)
    print(plan.to_text())
    if "max_minutes" in plan.options():
        print(f"budget: {plan.options()['max_minutes']:g} minutes, chosen by the plan (--max-minutes sets another)")
    if plan.tta:
        print(
            f"test-time augmentation {plan.tta} is stored with the model: evaluate and predict use it (--tta none: off)"
        )
    return config, artifacts


@functools.cache
def field_help() -> dict[str, str]:
    """Each TrainConfig field's docstring, so that ``--help`` and the code say the same thing."""
    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    helps = {}
    for field_node, doc_node in itertools.pairwise(body):
        if isinstance(field_node, ast.AnnAssign) and isinstance(doc_node, ast.Expr):
            text = " ".join(str(doc_node.value.value).split()).replace("``", "")  # type: ignore[attr-defined]
            # argparse formats help with %: a literal percent sign must be doubled
            helps[field_node.target.id] = text.rstrip(".").replace("%", "%%")  # type: ignore[attr-defined]
    return helps


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not valid YAML: {text!r} ({error})") from error


def _number_or_text(text: str) -> Any:
    value = _parse_yaml(text)
    return value if isinstance(value, int | float | list) else text


def _text_or_text_list(text: str) -> str | list[str]:
    """A file selection: a YAML list keeps every item as text (stems such as ``00`` keep their zeros);
    anything else, e.g. the glob ``[01]?`` (not valid YAML), is the text itself."""
    try:
        value = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, list) else text


def _converter(annotation: Any) -> Any:
    """The argparse ``type`` for a field annotation (``X | None`` converts like X; a ``Literal`` of texts
    like str, its choices being checked with the rest of the config)."""
    base = annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base = args[0] if len(args) == 1 else annotation
    if typing.get_origin(base) is typing.Literal:
        base = type(typing.get_args(base)[0])
    if base in (int, float, str):
        return base
    if typing.get_origin(base) is dict or base is dict:
        return _parse_yaml
    if set(typing.get_args(annotation)) - {type(None)} == {str, list[str]}:
        return _text_or_text_list
    return _number_or_text  # unions such as str | list[float], int | str


FLAG_ALIASES = {"data_format": ("--format",)}
"""Extra spellings of some flags (``--format``, as check-data and evaluate spell it)."""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field (``--batch-size`` for ``batch_size``); defaults are None so that
    only the flags given override the YAML file."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flags = ("--" + field.name.replace("_", "-"), *FLAG_ALIASES.get(field.name, ()))
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        help_text = field_help().get(field.name, field.name.replace("_", " "))
        if hints[field.name] is bool:
            parser.add_argument(
                *flags, action=argparse.BooleanOptionalAction, default=None, help=f"{help_text} (default {default})"
            )
            continue
        parser.add_argument(
            *flags,
            dest=field.name,
            type=_converter(hints[field.name]),
            default=None,
            metavar=field.name.upper(),
            help=f"{help_text} (default {default!r})",
        )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values given on the command line."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
