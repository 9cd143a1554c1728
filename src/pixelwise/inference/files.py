"""Folder prediction: the image files a list of paths, folders and globs names, a checked output
folder, and one image file predicted into it.

For each input ``<stem>.<ext>`` :func:`predict_file` writes into the output folder ``<stem>.png``, a
palette PNG of class ids coloured like the model's classes (``<stem>.tif`` for images above
``LARGE_IMAGE_PIXELS``, which are streamed band by band, or models with more than 256 classes);
optionally ``<stem>_probs.npy`` (``float16 [K, H, W]``) and ``<stem>_overlay.png``. Every file is
written under a temporary name and renamed. Inputs are examined with ``stat`` only, so a named pipe
is reported, never opened. ``pixelwise predict`` (:mod:`pixelwise.cli.predict`) is built on these.

GeoTIFF inputs (:mod:`pixelwise.data.geotiff`): with ``label_format="auto"`` the labels are written as
``<stem>.tif``, a GeoTIFF with the input's georeferencing tags (and the class colours as its colour map), and
``--save-probs`` writes ``<stem>_probs.tif`` (``float32``, one band per class, same georeferencing) instead of
the ``.npy``, so that a GIS opens both on the map at the input's place. The user's choice is kept:
``label_format="png"`` writes the PNG anyway, and a one-line warning (once per run) says that it has no map
position. Pixels equal to the input's nodata value are labelled 255 (the ignore id, the label TIFF's
``GDAL_NODATA``), get NaN probabilities (see :mod:`pixelwise.inference.stream`) and hold no objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pixelwise.errors import ConfigError, PixelwiseError

LARGE_IMAGE_PIXELS = 64 * 2**20
"""Images with more pixels than this (64 Mpx) are written as tiled TIFFs; TIFF inputs are streamed."""
TIFF_SUFFIXES = (".tif", ".tiff")
GLOB_CHARACTERS = "*?["
"""An input holding one of these that is not an existing path is a glob pattern."""
DEFAULT_TILE_SIZE = 512
"""Tile side in pixels for folder prediction (``pixelwise predict --tile``); 0 predicts whole images."""
LABEL_FORMATS = ("auto", "png", "tif")
"""Label map formats: ``auto`` = a palette PNG, or a TIFF for GeoTIFF inputs and more than 256 classes."""
PNG_LOSES_GEOREFERENCE = (
    "PNG label maps of GeoTIFF inputs have no map position (PNG holds no georeferencing); "
    "use label_format 'auto' or 'tif' to write GeoTIFF labels."
)
INSTANCE_FILES = (("_instances.png", "_instances.tif"), ("_objects.json",))
"""What ``--instances`` writes per input, as name endings after the stem: one of each tuple."""
COLORMAP_SCALE = 257
"""8-bit colour → the 16-bit value of a TIFF colour map (255 → 65535)."""

InstanceWriter = Callable[..., list[Path]]
"""Writes the objects of one image: called as ``writer(out, stem, probabilities, image=..., class_names=...,
palette=...)``, returns the files written; e.g. ``functools.partial(write_prediction_instances, model=path)``
(:mod:`pixelwise.instances` lies above inference, so the caller supplies it)."""


def collect_inputs(patterns: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named by ``patterns`` (files, folders: their images sorted, globs), in order, without
    repeats; and the patterns that gave none, each with its reason (does not exist, broken symbolic
    link, not a regular file, matched no files, folder holds no images). Nothing is opened, so
    named pipes never block.

    Raises:
        ConfigError: no pattern gave a file (lists each reason), or two inputs would write the same output.
    """
    from pixelwise.data.readers import IMAGE_SUFFIXES

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
    from pixelwise.data.readers import IMAGE_SUFFIXES

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

    from pixelwise.data.readers import IMAGE_READ_ERRORS, check_tiff_pages, read_error

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
    return _read_input(path)[0]


def _read_input(path: Path) -> tuple[Any, Any]:
    """The image as ``[C, H, W]`` in its stored dtype, and its nodata pixels (``bool [H, W]`` or None);
    NaN nodata pixels are replaced by zeros, other NaN and ±inf pixels refused.

    Raises:
        DataError: unreadable, or holding non-finite pixels (names the file and how many).
    """
    import numpy as np

    from pixelwise.data.geotiff import read_image_with_nodata
    from pixelwise.errors import DataError
    from pixelwise.inference.predictor import nonfinite_message, nonfinite_pixels
    from pixelwise.inference.stream import NAN_NODATA_FILL

    image, nodata = read_image_with_nodata(path)
    if nodata is not None and image.dtype.kind == "f":  # a NaN nodata value would fail the check below
        image = np.where(nodata & np.isnan(image), np.asarray(NAN_NODATA_FILL, image.dtype), image)
    count = nonfinite_pixels(image)
    if count:
        raise DataError(nonfinite_message(f"image {str(path)!r}", count))
    return image, nodata


def _check_input_file(path: Path, out: Path) -> None:
    """Refuse an input that is not a regular file (a named pipe would block) or lies in ``out``.

    Raises:
        DataError: not a regular file. ConfigError: ``out`` holds ``path``.
    """
    from pixelwise.errors import DataError

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


def _save_labels(labels: Any, stem: Path, palette: list[int], geo: Any, nodata: int | None, label_format: str) -> Path:
    """Write the label map as ``stem.png`` or ``stem.tif`` (module notes); return the path written.

    ``geo``: the input's :class:`~pixelwise.data.geotiff.GeoReference` or None; ``nodata``: the label of nodata
    pixels, written as ``GDAL_NODATA`` (None: no tag).
    """
    import warnings

    import numpy as np
    import tifffile

    from pixelwise.data.geotiff import geotiff_extratags
    from pixelwise.io import atomic_path

    if labels.dtype == np.uint8 and (label_format == "png" or (label_format == "auto" and geo is None)):
        if geo is not None:
            warnings.warn(PNG_LOSES_GEOREFERENCE, UserWarning, stacklevel=3)  # constant text: shown once per run
        _save_png_labels(labels, palette, stem.with_suffix(".png"))
        return stem.with_suffix(".png")
    colors = {}
    if labels.dtype == np.uint8:  # the class colours, for GIS and image viewers alike
        colormap = np.asarray(palette, np.uint16).reshape(-1, 3).T * COLORMAP_SCALE
        colors = {"photometric": "palette", "colormap": colormap}
    with atomic_path(stem.with_suffix(".tif")) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", extratags=geotiff_extratags(geo, nodata), **colors)
    return stem.with_suffix(".tif")


def _save_probs(probabilities: Any, path: Path, geo: Any, nodata: Any) -> None:
    """``.npy``: ``float16 [K, H, W]``; ``.tif``: a float32 GeoTIFF, NaN at the ``nodata`` pixels."""
    import math

    import numpy as np

    from pixelwise.data.geotiff import geotiff_extratags
    from pixelwise.inference.stream import OUTPUT_TILE, PROBS_DTYPE, write_tiff
    from pixelwise.io import atomic_path

    if path.suffix == ".npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            np.save(file, probabilities.astype(np.float16))
        return
    probs = probabilities.astype(PROBS_DTYPE)
    if nodata is not None:
        probs[:, nodata] = np.nan
    tags = geotiff_extratags(geo, math.nan if nodata is not None else None)
    with atomic_path(path) as tmp:
        write_tiff(tmp, probs, probs.shape, PROBS_DTYPE, OUTPUT_TILE, "zlib", tags)


def _background_at(probabilities: Any, nodata: Any) -> Any:
    """``probabilities`` with the ``nodata`` pixels certain background (class 0), so that they hold no objects."""
    if nodata is None or not nodata.any():
        return probabilities
    probs = probabilities.copy()
    probs[:, nodata] = 0
    if probs.shape[0] > 1:  # a binary model's one channel is the foreground
        probs[0, nodata] = 1
    return probs


@dataclasses.dataclass
class DecodedInput:
    """One input file, checked and read for prediction (by :func:`read_input_file`).

    Args:
        path: the input file.
        geo: its :class:`~pixelwise.data.geotiff.GeoReference`, or None.
        image: the pixels ``[C, H, W]`` as stored, finite; None for a large image (streamed when predicted).
        nodata: its nodata pixels ``bool [H, W]``, or None.
    """

    path: Path
    geo: Any
    image: Any
    nodata: Any = None


def read_input_file(path: Path, out: Path) -> DecodedInput:
    """Check ``path`` and read it for prediction into ``out``; images above ``LARGE_IMAGE_PIXELS`` are left unread.

    Safe to call in a worker process: it touches no model.

    Raises:
        DataError: ``path`` is not a regular file, not a readable image, holds NaN / infinite pixels, or has
            malformed geo tags.
        ConfigError: ``out`` is the folder of ``path`` (its outputs could replace it).
    """
    from pixelwise.data.geotiff import read_georeference

    _check_input_file(path, out)
    height, width = _image_size(path)
    geo = read_georeference(path)
    if height * width > LARGE_IMAGE_PIXELS:
        return DecodedInput(path, geo, None)
    image, nodata = _read_input(path)  # [C, H, W]
    return DecodedInput(path, geo, image, nodata)


def predict_file(
    predictor: Any,
    path: Path,
    out: Path,
    save_probs: bool = False,
    overlay: bool = False,
    progress: bool = False,
    instances: InstanceWriter | None = None,
    label_format: str = "auto",
) -> list[Path]:
    """Predict one image file into ``out``; return the files written (``progress``: a tile bar for large images;
    ``instances``: also write the image's objects with it, see :data:`InstanceWriter`; ``label_format``: one
    of :data:`LABEL_FORMATS`, see the module notes on GeoTIFF inputs).

    Raises:
        DataError: ``path`` is not a regular file, not a readable image, holds NaN / infinite pixels, or has
            malformed geo tags.
        ConfigError: ``out`` is the folder of ``path`` (its outputs could replace it); unknown ``label_format``.
    """
    from pixelwise.errors import check_choice
    from pixelwise.inference.tiling import ArraySource

    check_choice("label_format", label_format, LABEL_FORMATS)
    decoded = read_input_file(path, out)
    if decoded.image is None:
        return predict_large_file(predictor, decoded, out, save_probs, progress)
    probabilities = predictor.predict(ArraySource(decoded.image))  # checked when read: no second NaN pass
    return write_prediction(
        predictor.classes, probabilities, decoded, out, save_probs, overlay, instances, label_format
    )


def probs_path_for(decoded: DecodedInput, out: Path, save_probs: bool) -> Path | None:
    """Where ``--save-probs`` writes the probabilities of ``decoded`` (None: not asked for)."""
    if not save_probs:
        return None
    return out / f"{decoded.path.stem}_probs{'.tif' if decoded.geo else '.npy'}"


def predict_large_file(
    predictor: Any, decoded: DecodedInput, out: Path, save_probs: bool, progress: bool
) -> list[Path]:
    """Predict a large image (``decoded.image`` None) band by band into ``out/<stem>.tif``; the files written."""
    target = out / f"{decoded.path.stem}.tif"
    return _predict_large(predictor, decoded.path, target, probs_path_for(decoded, out, save_probs), progress)


def write_prediction(
    classes: Any,
    probabilities: Any,
    decoded: DecodedInput,
    out: Path,
    save_probs: bool = False,
    overlay: bool = False,
    instances: InstanceWriter | None = None,
    label_format: str = "auto",
) -> list[Path]:
    """Write the outputs of an image read whole (labels, probabilities, overlay, objects); the files written.

    Args:
        classes: the predictor's :class:`~pixelwise.data.ClassInfo`, or None (default names and colours).
        probabilities: ``float32 [K, H, W]`` of ``decoded.image``.
        decoded: the input as :func:`read_input_file` gave it (``image`` not None).
        out, save_probs, overlay, instances, label_format: as :func:`predict_file` takes them.
    """
    from pixelwise.data import ClassInfo
    from pixelwise.data.readers import scale_image
    from pixelwise.inference import labels_from_scores
    from pixelwise.inference.stream import label_nodata
    from pixelwise.viz import overlay as draw_overlay
    from pixelwise.viz import save_png

    image, nodata, geo, stem = decoded.image, decoded.nodata, decoded.geo, out / decoded.path.stem
    probs_path = probs_path_for(decoded, out, save_probs)
    labels = labels_from_scores(probabilities)
    classes = classes or ClassInfo.default(max(probabilities.shape[0], 2))
    label = None if nodata is None else label_nodata(probabilities.shape[0], labels.dtype)
    if label is not None:
        labels[nodata] = label
    written = [_save_labels(labels, stem, classes.palette(), geo, label, label_format)]
    if probs_path is not None:
        _save_probs(probabilities, probs_path, geo, nodata)
        written.append(probs_path)
    picture = scale_image(image) if overlay else None
    if overlay:
        written.append(stem.with_name(f"{stem.name}_overlay.png"))
        save_png(draw_overlay(picture, labels, classes.color_array()), written[-1])
    if instances is not None:  # redraws the overlay with objects
        extra = {} if geo is None else {"geo": geo}
        found = instances(
            stem.parent,
            stem.name,
            _background_at(probabilities, nodata),
            image=picture,
            class_names=classes.names,
            palette=classes.color_array(),
            **extra,
        )
        written += [p for p in found if p not in written]
    return written


def outputs_present(
    path: Path, out: Path, save_probs: bool, overlay: bool, instances: bool, label_format: str = "auto"
) -> bool:
    """Whether every output ``path`` would get in ``out`` exists (files are written atomically: present means
    complete), judged from the names alone; the header is read only to tell whether a large image (which gets
    no overlay) needs one. Where the label or probabilities suffix depends on the image (PNG or TIFF, ``.npy``
    or ``.tif``), either one counts.
    """
    stem = out / path.stem
    labels = {"png": (".png",), "tif": (".tif",)}.get(label_format, (".png", ".tif"))
    if not any(stem.with_suffix(suffix).is_file() for suffix in labels):
        return False
    needed = [(f"{path.stem}_probs.npy", f"{path.stem}_probs.tif")] if save_probs else []
    if instances:
        needed += [tuple(path.stem + ending for ending in endings) for endings in INSTANCE_FILES]
    if any(not any((out / name).is_file() for name in names) for names in needed):
        return False
    if not overlay or (out / f"{path.stem}_overlay.png").is_file():
        return True
    try:  # a large image gets no overlay: complete without one
        height, width = _image_size(path)
    except PixelwiseError:
        return False
    return height * width > LARGE_IMAGE_PIXELS


def _predict_large(predictor: Any, path: Path, target: Path, probs_path: Path | None, progress: bool) -> list[Path]:
    """Band-by-band prediction into a tiled TIFF: TIFF inputs are streamed (GeoTIFF tags kept), others read
    whole first.

    No overlay: it would need the whole image in memory.
    """
    from pixelwise.inference.stream import predict_tiff, predict_to_tiff
    from pixelwise.inference.tiling import ArraySource

    predictor = predictor.with_progress(progress)  # a configured copy: the caller's predictor is unchanged
    if path.suffix.lower() in TIFF_SUFFIXES:  # streamed: TiffSource checks each band for NaN
        predict_tiff(predictor, path, target, probs_path, compression="zlib")
    else:
        predict_to_tiff(predictor, ArraySource(_read_finite(path)), target, probs_path, compression="zlib")
    return [target] + ([probs_path] if probs_path else [])
