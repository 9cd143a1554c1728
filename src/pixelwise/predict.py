"""``pixelwise predict``: label maps (and optionally probabilities and overlays) for image files.

For each input ``<stem>.<ext>`` it writes into ``--out``: ``<stem>.png``, a palette PNG of class ids
coloured like the model's classes (``<stem>.tif`` for images above ``LARGE_IMAGE_PIXELS``, which
are streamed band by band, or models with more than 256 classes); with ``--save-probs``
``<stem>_probs.npy`` (``float16 [K, H, W]``); with ``--overlay`` ``<stem>_overlay.png``. Every file
is written under a temporary name and renamed. A file that cannot be read or predicted is
reported at the end with its reason (exit status 1) and does not stop the others.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.inference.tta import TTA_MODES

LARGE_IMAGE_PIXELS = 64 * 2**20
"""Images with more pixels than this (64 Mpx) are written as tiled TIFFs; TIFF inputs are streamed."""
TIFF_SUFFIXES = (".tif", ".tiff")


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


def collect_inputs(patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (files, folders: their images sorted, globs), in order, without repeats.

    Raises:
        ConfigError: nothing matched (names the patterns).
    """
    from pixelwise.data.folder import IMAGE_SUFFIXES

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            found.append(path)
        else:
            found += sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    unique = list(dict.fromkeys(found))
    if not unique:
        raise ConfigError(
            f"no input images matched {', '.join(map(repr, patterns))}: give image files, folders holding images "
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
    return unique


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels.

    Raises:
        DataError: the file is not a readable image (names the file, like ``read_image``).
    """
    import tifffile
    from PIL import Image, UnidentifiedImageError

    from pixelwise.data.folder import DataError

    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.series[0].levels[0].keyframe
                return int(page.shaped[2]), int(page.shaped[3])
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError, IndexError, UnidentifiedImageError, tifffile.TiffFileError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"cannot read image {str(path)!r}: {reason}. The file is corrupt, truncated or not an image."
        ) from error


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
    ``instances``: the model path, to also write its objects: ``pixelwise.instances.write_prediction_instances``)."""
    import numpy as np
    import tifffile

    from pixelwise.data import ClassInfo, read_image_array
    from pixelwise.data.folder import scale_image
    from pixelwise.inference import labels_from_scores
    from pixelwise.io import atomic_path
    from pixelwise.viz import overlay as draw_overlay
    from pixelwise.viz import save_png

    height, width = _image_size(path)
    probs_path = out / f"{path.stem}_probs.npy" if save_probs else None
    if height * width > LARGE_IMAGE_PIXELS:
        return _predict_large(predictor, path, out / f"{path.stem}.tif", probs_path, progress)
    array = np.moveaxis(read_image_array(path), 0, -1)  # [H, W, C], a view: no copy
    probabilities = predictor.predict(array)
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

    import numpy as np

    from pixelwise.data import read_image_array
    from pixelwise.inference.stream import predict_tiff, predict_to_tiff

    predictor.options = dataclasses.replace(predictor.options, progress=progress)
    if path.suffix.lower() in TIFF_SUFFIXES:
        predict_tiff(predictor, path, target, probs_path, compression="zlib")
    else:
        image = np.moveaxis(read_image_array(path), 0, -1)
        predict_to_tiff(predictor, image, target, probs_path, compression="zlib")
    return [target] + ([probs_path] if probs_path else [])


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``pixelwise predict``: build the predictor, predict every input, report failures."""
    import tifffile
    from PIL import UnidentifiedImageError

    from pixelwise.inference import Predictor

    model = Path(args.model)
    if not model.exists():
        raise ConfigError(
            f"--model {args.model!r} does not exist; pass a run directory (runs/<name> from `pixelwise train`), "
            "a folder written by model.save_pretrained(), or an .onnx file with --backend onnxruntime."
        )
    inputs = collect_inputs(args.inputs)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[Path, str]] = []
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
        except (PixelwiseError, OSError, ValueError, UnidentifiedImageError, tifffile.TiffFileError) as error:
            failures.append((path, str(error).splitlines()[0] if str(error) else type(error).__name__))
    print(f"predicted {len(inputs) - len(failures)} of {len(inputs)} images into {out} ({written} files)")
    if failures:
        print(f"{len(failures)} image{'s' if len(failures) > 1 else ''} failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
