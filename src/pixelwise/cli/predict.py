"""``pixelwise predict``: label maps (and optionally probabilities and overlays) for image files.

For each input ``<stem>.<ext>`` it writes into ``--out`` what :func:`pixelwise.inference.files.predict_file`
writes: ``<stem>.png`` (``<stem>.tif`` for large images, more than 256 classes, or a georeferenced
GeoTIFF input, whose georeferencing the output keeps); with ``--save-probs`` ``<stem>_probs.npy``
(``<stem>_probs.tif`` for a GeoTIFF); with ``--overlay`` ``<stem>_overlay.png``; with ``--instances`` the
objects (and ``<stem>.geojson`` polygons in map coordinates for a GeoTIFF).
Temporary files left by killed runs are removed at the start. Options, the device and ``--out`` are
checked before the model is loaded: ``--out`` must not hold any input. An input that cannot be read
(missing, a broken link, not a regular file, a glob or folder without images, a corrupt image, a
decompression bomb, NaN pixels) or predicted is reported at the end with its reason (exit status 1)
and does not stop the others.

The inputs go through :func:`pixelwise.inference.pipeline.predict_folder`: ``--workers`` processes decode
them, whole images of equal size share a forward pass (``--batch-size`` of them: the same bound on a
forward pass as for tiles, since such an image is no larger than a tile), and a background thread writes
the outputs. ``--skip-existing`` leaves out the inputs whose outputs are all present.

With ``--devices N`` (and ``--num-nodes M``, or under ``torchrun`` / ``srun``) the files are shared over
N × M processes by :func:`pixelwise.inference.distributed.predict_folder_distributed` (Lightning Fabric,
gloo on the CPU, NCCL on GPUs): each process writes the outputs of its files, rank 0 prints one summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

from pixelwise.cli import _tiling
from pixelwise.cli.tune_instances import add_postprocess_arguments, postprocess_overrides
from pixelwise.errors import ConfigError, check_choice
from pixelwise.inference.backends import BACKENDS
from pixelwise.inference.distributed import is_distributed, is_rank_zero, predict_folder_distributed
from pixelwise.inference.files import DEFAULT_TILE_SIZE, LABEL_FORMATS, collect_inputs, prepare_out
from pixelwise.inference.pipeline import DEFAULT_WORKERS, predict_folder
from pixelwise.inference.predictor import DEFAULT_BACKEND, DEFAULT_PRECISION, PRECISIONS, check_int


def add_parser(commands: Any) -> None:
    predict = commands.add_parser("predict", help="predict label maps for image files (tiled, any size)")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    predict.add_argument("--model", required=True, help="run directory, save_pretrained directory or .onnx file")
    predict.add_argument("--out", required=True, help="output folder")
    _tiling.add_tiling_arguments(predict, DEFAULT_TILE_SIZE)
    predict.add_argument(
        "--save-probs",
        action="store_true",
        help="also write <stem>_probs.npy (float16 [K, H, W]); <stem>_probs.tif (float32 GeoTIFF) for a GeoTIFF input",
    )
    predict.add_argument(
        "--label-format",
        choices=LABEL_FORMATS,
        default="auto",
        help="label file type (default auto: PNG, or TIFF for large images, >256 classes and GeoTIFF inputs, "
        "which keep their georeferencing)",
    )
    predict.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    predict.add_argument(
        "--instances",
        action="store_true",
        help="also write <stem>_instances.png and <stem>_objects.json (objects drawn on the --overlay); "
        "post-processing as tune-instances stored it with the model, unless given below",
    )
    add_postprocess_arguments(predict)
    backend, precision = DEFAULT_BACKEND, DEFAULT_PRECISION
    predict.add_argument(
        "--backend",
        default=backend,
        help=f"auto, torch or onnxruntime (default {backend}: PyTorch, moving to "
        "ONNX Runtime on the CPU once 2 Mpx are predicted and its output matches to 1e-4)",
    )
    predict.add_argument("--precision", default=precision, help="fp32, bf16 or int8 (int8: onnxruntime)")
    _tiling.add_device_argument(predict)
    predict.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"processes decoding the inputs while the model runs (default {DEFAULT_WORKERS}: half the cores, "
        "shared by the --devices processes; 0: decode in the main process)",
    )
    predict.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes per machine, each on its own GPU (or CPU processes with --device cpu), sharing the files "
        "(default 1)",
    )
    predict.add_argument(
        "--num-nodes", type=int, default=1, help="machines (launched by torchrun or srun, see the README; default 1)"
    )
    predict.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out inputs whose outputs are all present (resumes an interrupted run: outputs are written "
        "atomically, so a present file is complete)",
    )
    predict.add_argument("--no-progress", action="store_true", help="no progress bars")
    predict.set_defaults(func=run)


def check_predict_options(args: argparse.Namespace) -> None:
    """Validate the sizes and choices of ``pixelwise predict`` before any work.

    Raises:
        ConfigError: names the option, the value and the valid range or choices.
    """
    _tiling.check_tiling_arguments(args)
    if args.workers is not None:
        check_int("--workers", args.workers, 0, " (0: decode in the main process)")
    check_int("--devices", args.devices, 1, " (processes per machine: GPUs, or CPU processes)")
    check_int("--num-nodes", args.num_nodes, 1, " (machines)")
    check_choice("--backend", args.backend, BACKENDS)
    check_choice("--precision", args.precision, PRECISIONS)
    postprocess_overrides(args)


def run(args: argparse.Namespace) -> int:
    """Check options, inputs and --out, build the predictor (one per process), predict every input, report
    failures (unreadable inputs included) once."""
    check_predict_options(args)
    model = Path(args.model)
    if not model.exists():
        raise ConfigError(
            f"--model {args.model!r} does not exist; pass a run directory (runs/<name> from `pixelwise train`), "
            "a folder written by model.save_pretrained(), or an .onnx file."
        )
    inputs, unreadable = collect_inputs(args.inputs)
    out = prepare_out(args.out, inputs)
    options = _folder_options(args, model)
    make_predictor = functools.partial(_build_predictor, args, model)
    engine = ""  # which engine ran the network: one line for one process (each process of a distributed run chose)
    if is_distributed(args.devices, args.num_nodes):
        report = predict_folder_distributed(
            make_predictor, inputs, out, devices=args.devices, num_nodes=args.num_nodes, device=args.device, **options
        )
        if report is None:  # not rank 0: rank 0 reports for everyone
            return 0
        removed = report.removed
    else:
        from pixelwise.io import remove_stale_temporaries

        removed = len(remove_stale_temporaries(out))
        predictor = make_predictor(args.device)
        report = predict_folder(predictor, inputs, out, **_one_process(options))
        engine = f"engine: {predictor.backend_note}"
    if removed:
        print(f"removed {removed} stale temporary file(s) of interrupted runs from {out}", file=sys.stderr)
    failures = [*unreadable, *report.failures]
    total = len(inputs) + len(unreadable)
    skipped = f"; skipped {report.skipped} with all outputs present" if args.skip_existing else ""
    print(f"predicted {report.predicted} of {total} images into {out} ({report.written} files){skipped}")
    if engine:
        print(engine)
    return report_failures(failures)


def _folder_options(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    """The keyword arguments of ``predict_folder`` from the command line."""
    from pixelwise.instances import write_prediction_instances

    postprocess = postprocess_overrides(args)
    method = postprocess.pop("method")
    instances = None
    if args.instances:
        instances = functools.partial(write_prediction_instances, model=model, method=method, options=postprocess)
    return {
        "save_probs": args.save_probs,
        "overlay": args.overlay,
        "instances": instances,
        "label_format": args.label_format,
        "workers": args.workers,
        "skip_existing": args.skip_existing,
        "progress": not args.no_progress,
    }


def _one_process(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for one process: the default number of decoding workers filled in."""
    return {**options, "workers": DEFAULT_WORKERS if options["workers"] is None else options["workers"]}


def _build_predictor(args: argparse.Namespace, model: Path, device: str | None) -> Any:
    """The predictor of one process on ``device`` (its own GPU in a distributed run)."""
    from pixelwise.inference import Predictor

    runtime = dataclasses.replace(_tiling.runtime_options(args), device=device)
    predictor = Predictor(
        model, tiling=_tiling.tiling_options(args), runtime=runtime, tta=args.tta, tta_scales=_tiling.tta_scales(args)
    )
    if predictor.tta and is_rank_zero():  # --tta, else the mode stored with the model
        print(f"test-time augmentation: {predictor.tta}" + ("" if args.tta else " (stored with the model)"))
    return predictor


def report_failures(failures: list[tuple[Any, str]]) -> int:
    """Print each failed input with its reason on stderr; the exit status (1 if any failed)."""
    if not failures:
        return 0
    print(f"{len(failures)} input{'s' if len(failures) > 1 else ''} failed:", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1
