"""``pixelwise convert --from smp SRC --out DIR``: a segmentation_models_pytorch model as a pixelwise model folder.

The folder (``config.json``, ``model.safetensors``, ``preprocessing.json``, ``classes.yaml``) is what
``pixelwise predict``, ``evaluate`` and ``export`` read. SMP stores no input normalisation: 3-channel models
get ImageNet's mean and std (what SMP's ``get_preprocessing_params`` gives for ImageNet encoders), others
mean 0 and std 1, unless ``--mean`` / ``--std`` say otherwise; the command prints which it used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError

SOURCES = ("smp",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet's per-channel statistics of images in [0, 1], which SMP's pretrained encoders expect."""


def add_parser(commands: Any) -> None:
    convert = commands.add_parser("convert", help="convert a segmentation_models_pytorch model to a model folder")
    convert.add_argument("source", metavar="SRC", help="the SMP model's save_pretrained folder")
    convert.add_argument("--from", dest="library", required=True, choices=SOURCES, help="the library SRC comes from")
    convert.add_argument("--out", required=True, help="model folder to write")
    convert.add_argument(
        "--mean", type=float, nargs="+", default=None, help="input mean per channel (default ImageNet's)"
    )
    convert.add_argument(
        "--std", type=float, nargs="+", default=None, help="input std per channel (default ImageNet's)"
    )
    convert.set_defaults(func=run)


def normalisation(in_channels: int, mean: list[float] | None, std: list[float] | None) -> tuple[list, list, str]:
    """``(mean, std, where they came from)`` for a model with ``in_channels`` inputs."""
    if mean is not None and std is not None:
        return mean, std, "given"
    if in_channels == len(IMAGENET_MEAN):
        default_mean, default_std, source = list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet's (SMP stores none)"
    else:
        default_mean, default_std = [0.0] * in_channels, [1.0] * in_channels
        source = "none (mean 0, std 1: SMP stores none; pass --mean and --std as in training)"
    return mean or default_mean, std or default_std, source


def run(args: argparse.Namespace) -> int:
    """Convert, write the model folder, print the options set, the normalisation and the folder."""
    from pixelwise.bundle import ModelBundle, Preprocessing
    from pixelwise.convert import from_smp
    from pixelwise.data import ClassInfo

    source = Path(args.source)
    if not source.exists():
        raise ConfigError(f"SRC {args.source!r} does not exist; give an SMP model's save_pretrained folder.")
    if not source.is_dir():
        raise ConfigError(f"SRC {args.source!r} is a file; give the folder SMP's save_pretrained wrote.")
    model = from_smp(source)
    mean, std, origin = normalisation(model.in_channels, args.mean, args.std)
    for option, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, model.in_channels):
            raise ConfigError(f"{option} has {len(values)} values; the model takes {model.in_channels} channels.")
    preprocessing = Preprocessing(mean=list(mean), std=list(std))
    bundle = ModelBundle(model, preprocessing, ClassInfo.default(model.classes))
    out = bundle.save(args.out)
    for note in getattr(model, "conversion_notes", []):
        print(f"  set: {note}")
    print(f"normalisation: mean {list(mean)}, std {list(std)} ({origin})")
    print(f"wrote {out} ({model.arch_name}); use it with `pixelwise predict --model {out}`")
    return 0
