"""``pixelwise export``: write a trained model as ONNX (optionally int8) or TorchScript, verified.

The file is written atomically, after its outputs have been compared with PyTorch's at a size
other than the traced one; the command prints that difference and the path.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError
from pixelwise.inference.export import DEFAULT_OPSET
from pixelwise.inference.quantize import CALIBRATION_LIMIT

FORMATS = ("onnx", "torchscript")


def add_parser(commands: Any) -> None:
    export = commands.add_parser("export", help="export a trained model to ONNX (fp32 or int8) or TorchScript")
    export.add_argument("--model", required=True, help="run directory (runs/<name>) or save_pretrained directory")
    export.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torchscript")
    export.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    export.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="take raw uint8 [N, C, H, W] pixels, return int64 [N, H, W] labels (normalisation and argmax inside)",
    )
    export.add_argument("--opset", type=int, default=None, help=f"ONNX opset version (default {DEFAULT_OPSET})")
    export.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="traced sample size")
    export.add_argument("--int8", action="store_true", help="also quantize the ONNX model to int8 (static, QDQ)")
    export.add_argument(
        "--calibration-data",
        default=None,
        metavar="DIR",
        help=f"images to calibrate int8 with (a data folder or its images/; up to {CALIBRATION_LIMIT} used; "
        "default random inputs, which are less accurate)",
    )
    export.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, verify, optionally quantize; print the difference to PyTorch and the path written."""
    from pixelwise.inference.export import export_onnx, export_torchscript

    if not Path(args.model).exists():
        raise ConfigError(f"--model {args.model!r} does not exist; pass a run directory (runs/<name>) or saved model.")
    if args.format == "torchscript" and (args.int8 or args.opset is not None):
        raise ConfigError("--int8 and --opset apply to --format onnx only.")
    if args.calibration_data and not args.int8:
        raise ConfigError("--calibration-data is used by --int8 quantization; add --int8.")
    out = check_export_out(args.out, args.format)
    fp32_out = out.with_name(out.stem + ".fp32" + out.suffix) if args.int8 else out
    if fp32_out.is_dir():
        raise ConfigError(f"--int8 keeps the fp32 model at {str(fp32_out)!r}, an existing folder; move it away.")
    options = {"with_preprocessing": args.with_preprocessing, "sample_size": tuple(args.size)}
    if args.format == "torchscript":
        report = export_torchscript(args.model, out, **options)
    else:
        report = export_onnx(args.model, fp32_out, opset=args.opset or DEFAULT_OPSET, **options)
    print(report)
    if args.int8:
        from pixelwise.inference.quantize import calibration_images, quantize_int8

        images = None
        if args.calibration_data:
            images = calibration_images(args.calibration_data, fp32_out, CALIBRATION_LIMIT)
        quantize_int8(fp32_out, out, images)
        source = f"{args.calibration_data}" if images is not None else "random inputs (pass --calibration-data)"
        print(f"int8: {out} (calibrated on {source}; fp32 model kept at {fp32_out})")
    return 0


def check_export_out(option: str, fmt: str) -> Path:
    """The ``--out`` file, checked before exporting: not a folder, its folder created and writable.

    Raises:
        ConfigError: names --out, the reason and the fix.
    """
    out = Path(option).expanduser()
    example = f"model{'.onnx' if fmt == 'onnx' else '.pt'}"
    if out.is_dir():
        raise ConfigError(
            f"--out {option!r} is an existing folder; give the file to write, e.g. {str(out / example)!r}."
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"--out {option!r}: its folder {str(out.parent)!r} cannot be created ({reason}); "
            f"choose a file in a writable place, e.g. {example!r}."
        ) from error
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {option!r}: its folder {str(out.parent)!r} is not writable; choose another place.")
    return out
