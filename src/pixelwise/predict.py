"""``pixelwise predict``: label maps (and optionally probabilities and overlays) for image files.

For each input ``<stem>.<ext>`` it writes into ``--out``: ``<stem>.png``, a palette PNG of class ids
coloured like the model's classes (``<stem>.tif`` for images above ``LARGE_IMAGE_PIXELS``, which
are streamed band by band, or models with more than 256 classes); with ``--save-probs``
``<stem>_probs.npy`` (``float16 [K, H, W]``); with ``--overlay`` ``<stem>_overlay.png``. Every file
is written under a temporary name and renamed (those left by killed runs are removed at the start).
Options, the device and ``--out`` are checked before the model is loaded: ``--out`` must not hold
any input. An input that cannot be read (missing, a broken link, not a regular file, a glob or
folder without images, a corrupt image, a decompression bomb, NaN pixels) or predicted is reported
at the end with its reason (exit status 1) and does not stop the others.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import os
import stat
import sys
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.inference.tta import TTA_MODES

LARGE_IMAGE_PIXELS = 64 * 2**20
"""Images with more pixels than this (64 Mpx) are written as tiled TIFFs; TIFF inputs are streamed."""
TIFF_SUFFIXES = (".tif", ".tiff")
GLOB_CHARACTERS = "*?["
"""An input holding one of these that is not an existing path is a glob pattern."""


def add_predict_parser(commands: Any) -> None:
    """Register the ``predict`` subcommand on an ``argparse`` subparsers object."""
    predict = commands.add_parser("predict", help="predict label maps for image files (tiled, any size)")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    predict.add_argument("--model", required=True, help="run directory, save_pretrained directory or .onnx file")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--tile", type=int, default=512, help="tile size in pixels (0: whole images; default 512)")
    predict.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    predict.add_argument("--blend", default="gaussian", help="gaussian, linear or none (default gaussian)")
    predict.add_argument("--batch-size", type=int, default=2, help="tiles per forward pass (default 2; more on a GPU)")
    predict.add_argument(
        "--tta", choices=TTA_MODES, default=None, help="test-time augmentation, probabilities averaged (default none)"
    )
    predict.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npy (float16 [K, H, W])")
    predict.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    predict.add_argument(
        "--instances",
        action="store_true",
        help="also write <stem>_instances.png and <stem>_objects.json (objects drawn on the --overlay)",
    )
    predict.add_argument("--backend", default="torch", help="torch or onnxruntime (default torch)")
    predict.add_argument("--precision", default="fp32", help="fp32, bf16 or int8 (int8: onnxruntime)")
    predict.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bars")
    predict.set_defaults(func=cmd_predict)


def collect_inputs(patterns: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named by ``patterns`` (files, folders: their images sorted, globs), in order, without
    repeats; and the patterns that gave none, each with its reason (does not exist, broken symbolic
    link, not a regular file, matched no files, folder holds no images). Nothing is opened, so
    named pipes never block.

    Raises:
        ConfigError: no pattern gave a file (lists each reason), or two inputs would write the same output.
    """
    from pixelwise.data.folder import IMAGE_SUFFIXES

    found: list[Path] = []
    failed: list[tuple[str, str]] = []
    for pattern in patterns:
        files, reason = _expand(pattern)
        found += files
        if reason:
            failed.append((pattern, reason))
    unique = list(dict.fromkeys(found))
    if not unique:
        reasons = "; ".join(f"{pattern!r}: {reason}" for pattern, reason in failed)
        raise ConfigError(
            f"no input images matched ({reasons}): give image files, folders holding images "
            f"(suffixes {', '.join(IMAGE_SUFFIXES)}) or quoted glob patterns such as 'data/*.png'."
        )
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            raise ConfigError(
                f"inputs {str(stems[path.stem])!r} and {str(path)!r} would both write {path.stem}.png; "
                "predict them into different --out folders."
            )
        stems[path.stem] = path
    return unique, failed


def _expand(pattern: str) -> tuple[list[Path], str | None]:
    """The files one command-line input names, and why it names none (None: it names some)."""
    path = Path(pattern).expanduser()
    kind = file_kind(path)
    if kind == "folder":
        return _folder_images(path)
    if kind == "file":
        return [path], None
    if kind == "does not exist" and any(char in pattern for char in GLOB_CHARACTERS):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if file_kind(Path(p)) == "file")
        return matches, None if matches else "matched no files"
    return [], kind


def file_kind(path: Path) -> str:
    """``"file"`` (a regular file), ``"folder"``, or why ``path`` cannot be read as an input.

    Only ``stat`` is used, never ``open``: a named pipe is reported, not read (which would block).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if path.is_symlink() else "does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "broken symbolic link (a loop of links)"
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    what = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file ({what})"


def _folder_images(folder: Path) -> tuple[list[Path], str | None]:
    """The image files of ``folder`` (not below it), sorted; other entries are skipped."""
    from pixelwise.data.folder import IMAGE_SUFFIXES

    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        return [], f"folder cannot be listed ({error.strerror or type(error).__name__})"
    images = [
        p
        for p in entries
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and file_kind(p) == "file"
    ]
    return images, None if images else f"folder holds no images (suffixes {', '.join(IMAGE_SUFFIXES)})"


def input_inside(out: Path, inputs: list[Path]) -> Path | None:
    """The first of ``inputs`` that lies in the folder ``out`` (as named, or once symbolic links are
    resolved), where predicting would write beside or over it; None if none does or ``out`` is new."""
    try:
        folder = out.stat()
    except OSError:  # a folder that does not exist holds no inputs
        return None
    for path in inputs:
        for parent in (path.absolute().parent, Path(os.path.realpath(path)).parent):
            with contextlib.suppress(OSError):
                if os.path.samestat(folder, parent.stat()):
                    return path
    return None


def prepare_out(option: str, inputs: list[Path]) -> Path:
    """Check the ``--out`` folder and create it: not a file, holding none of ``inputs``, writable.

    Raises:
        ConfigError: names --out, the reason and the fix.
    """
    out = Path(option).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {option!r} is an existing file; give a folder to write the label maps into.")
    inside = input_inside(out, inputs)
    if inside is not None:
        raise ConfigError(
            f"--out {option!r} holds the input {str(inside)!r}; predicting there would write over input images. "
            "Choose another --out folder, outside the input folders."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"--out {option!r} cannot be created ({reason}); choose a folder in a writable place."
        ) from error
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {option!r} is not writable; choose another folder or change its permissions.")
    return out


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels.

    Raises:
        DataError: the file is not a readable image, or a decompression bomb (names the file, like ``read_image``).
    """
    import tifffile
    from PIL import Image

    from pixelwise.data.folder import IMAGE_READ_ERRORS, check_tiff_pages, read_error

    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                check_tiff_pages(tif)
                page = tif.series[0].levels[0].keyframe
                return int(page.shaped[2]), int(page.shaped[3])
        with Image.open(path) as image:
            return image.height, image.width
    except (IndexError, *IMAGE_READ_ERRORS) as error:
        raise read_error(path, "image", error) from error


def _read_finite(path: Path) -> Any:
    """The image as ``[C, H, W]`` in its stored dtype, checked for NaN and ±inf (float images only).

    Raises:
        DataError: unreadable, or holding non-finite pixels (names the file and how many).
    """
    from pixelwise.data import read_image_array
    from pixelwise.data.folder import DataError
    from pixelwise.inference.predictor import nonfinite_message, nonfinite_pixels

    image = read_image_array(path)
    count = nonfinite_pixels(image)
    if count:
        raise DataError(nonfinite_message(f"image {str(path)!r}", count))
    return image


def _check_input_file(path: Path, out: Path) -> None:
    """Refuse an input that is not a regular file (a named pipe would block) or lies in ``out``.

    Raises:
        DataError: not a regular file. ConfigError: ``out`` holds ``path``.
    """
    from pixelwise.data.folder import DataError

    kind = file_kind(path)
    if kind != "file":
        raise DataError(f"input {str(path)!r}: {kind}; give an image file.")
    if input_inside(out, [path]) is not None:
        raise ConfigError(
            f"out folder {str(out)!r} holds the input {str(path)!r}, which predicting would write over; "
            "choose another output folder."
        )


def _save_png_labels(labels: Any, palette: list[int], path: Path) -> None:
    from PIL import Image

    from pixelwise.io import atomic_path

    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())  # ids as palette indices
    image.putpalette(palette)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def predict_file(
    predictor: Any,
    path: Path,
    out: Path,
    save_probs: bool = False,
    overlay: bool = False,
    progress: bool = False,
    instances: Path | None = None,
) -> list[Path]:
    """Predict one image file into ``out``; return the files written (``progress``: a tile bar for large images;
    ``instances``: the model path, to also write its objects: ``pixelwise.instances.write_prediction_instances``).

    Raises:
        DataError: ``path`` is not a regular file, not a readable image, or holds NaN / infinite pixels.
        ConfigError: ``out`` is the folder of ``path`` (its outputs could replace it).
    """
    import numpy as np
    import tifffile

    from pixelwise.data import ClassInfo
    from pixelwise.data.folder import scale_image
    from pixelwise.inference import labels_from_scores
    from pixelwise.inference.tiling import ArraySource
    from pixelwise.io import atomic_path
    from pixelwise.viz import overlay as draw_overlay
    from pixelwise.viz import save_png

    _check_input_file(path, out)
    height, width = _image_size(path)
    probs_path = out / f"{path.stem}_probs.npy" if save_probs else None
    if height * width > LARGE_IMAGE_PIXELS:
        return _predict_large(predictor, path, out / f"{path.stem}.tif", probs_path, progress)
    image = _read_finite(path)  # [C, H, W]
    array = np.moveaxis(image, 0, -1)  # [H, W, C], a view: no copy
    probabilities = predictor.predict(ArraySource(image))  # checked above: no second NaN pass
    labels = labels_from_scores(probabilities)
    classes = predictor.classes or ClassInfo.default(max(probabilities.shape[0], 2))
    written = []
    if labels.dtype == np.uint8:
        written.append(out / f"{path.stem}.png")
        _save_png_labels(labels, classes.palette(), written[-1])
    else:  # more than 256 classes do not fit a palette PNG
        written.append(out / f"{path.stem}.tif")
        with atomic_path(written[-1]) as tmp:
            tifffile.imwrite(tmp, labels, compression="zlib")
    if probs_path is not None:
        with atomic_path(probs_path) as tmp, open(tmp, "wb") as file:
            np.save(file, probabilities.astype(np.float16))
        written.append(probs_path)
    if overlay:
        written.append(out / f"{path.stem}_overlay.png")
        save_png(draw_overlay(scale_image(np.moveaxis(array, -1, 0)), labels, classes.color_array()), written[-1])
    if instances is not None:
        from pixelwise.instances import write_prediction_instances

        image = scale_image(np.moveaxis(array, -1, 0)) if overlay else None  # redraws the overlay with objects
        found = write_prediction_instances(
            out, path.stem, probabilities, instances, image, classes.names, classes.color_array()
        )
        written += [p for p in found if p not in written]
    return written


def _predict_large(predictor: Any, path: Path, target: Path, probs_path: Path | None, progress: bool) -> list[Path]:
    """Band-by-band prediction into a tiled TIFF: TIFF inputs are streamed, others read whole first.

    No overlay: it would need the whole image in memory.
    """
    import dataclasses

    from pixelwise.inference.stream import predict_tiff, predict_to_tiff
    from pixelwise.inference.tiling import ArraySource

    predictor.options = dataclasses.replace(predictor.options, progress=progress)
    if path.suffix.lower() in TIFF_SUFFIXES:  # streamed: TiffSource checks each band for NaN
        predict_tiff(predictor, path, target, probs_path, compression="zlib")
    else:
        predict_to_tiff(predictor, ArraySource(_read_finite(path)), target, probs_path, compression="zlib")
    return [target] + ([probs_path] if probs_path else [])


def check_predict_options(args: argparse.Namespace) -> None:
    """Validate the sizes and choices of ``pixelwise predict`` before any work.

    Raises:
        ConfigError: names the option, the value and the valid range or choices.
    """
    from pixelwise.inference.backends import BACKENDS
    from pixelwise.inference.predictor import PRECISIONS, check_choice, check_device, check_fraction, check_int
    from pixelwise.inference.tiling import BLEND_MODES

    check_int("--tile", args.tile, 0, " (0: whole images)")
    check_fraction("--overlap", args.overlap)
    check_int("--batch-size", args.batch_size, 1)
    for option, value, choices in (
        ("--blend", args.blend, BLEND_MODES),
        ("--backend", args.backend, BACKENDS),
        ("--precision", args.precision, PRECISIONS),
    ):
        check_choice(option, value, choices)
    check_device(args.device, "--device")


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``pixelwise predict``: check options, inputs and --out, build the predictor, predict every
    input, report failures (unreadable inputs included)."""
    from pixelwise.data.folder import IMAGE_READ_ERRORS
    from pixelwise.inference import Predictor
    from pixelwise.io import remove_stale_temporaries

    check_predict_options(args)
    model = Path(args.model)
    if not model.exists():
        raise ConfigError(
            f"--model {args.model!r} does not exist; pass a run directory (runs/<name> from `pixelwise train`), "
            "a folder written by model.save_pretrained(), or an .onnx file with --backend onnxruntime."
        )
    inputs, unreadable = collect_inputs(args.inputs)
    out = prepare_out(args.out, inputs)
    removed = remove_stale_temporaries(out)
    if removed:
        print(f"removed {len(removed)} stale temporary file(s) of interrupted runs from {out}", file=sys.stderr)
    predictor = Predictor(
        model,
        tile_size=args.tile or None,
        overlap=args.overlap,
        blend=args.blend,
        batch_size=args.batch_size,
        tta=args.tta,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
    )
    failures: list[tuple[Any, str]] = list(unreadable)
    items: Any = inputs
    if not args.no_progress:
        from tqdm import tqdm

        items = tqdm(inputs, desc="predict", unit="image")
    written = 0
    for path in items:
        try:
            instances = model if args.instances else None
            written += len(
                predict_file(predictor, path, out, args.save_probs, args.overlay, not args.no_progress, instances)
            )
        except (PixelwiseError, *IMAGE_READ_ERRORS) as error:
            failures.append((path, str(error).splitlines()[0] if str(error) else type(error).__name__))
    total = len(inputs) + len(unreadable)
    print(f"predicted {total - len(failures)} of {total} images into {out} ({written} files)")
    return _report_failures(failures)


def _report_failures(failures: list[tuple[Any, str]]) -> int:
    """Print each failed input with its reason on stderr; the exit status (1 if any failed)."""
    if not failures:
        return 0
    print(f"{len(failures)} input{'s' if len(failures) > 1 else ''} failed:", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1
