"""Streaming prediction of large TIFF / OME-TIFF images: one band of tiles in memory at a time.

:class:`TiffSource` reads rows ``y0 ≤ y < y1`` of the first image series (full resolution) by
reading and decoding only the strips or tiles that hold them (uncompressed strips are read row by
row straight from the file), so neither the input nor the output image ever lives in memory.
(``tifffile.memmap`` would also work for uncompressed files, but every page it touches stays in the
process's resident memory; plain reads keep the peak at one band.) :func:`predict_tiff` writes the
labels as a tiled TIFF as bands finish, and optionally the probabilities as a ``float16 [K, H, W]``
``.npy`` file written band by band; both go to temporary names first and are renamed at the end.

GeoTIFF inputs (:mod:`pixelwise.data.geotiff`): the label TIFF gets the input's georeferencing tags, and a
probabilities path ending in ``.tif`` gets a ``float32 [K, H, W]`` GeoTIFF (one band per class) with them too.
Input pixels equal to the input's nodata value are labelled :data:`~pixelwise.modes.IGNORE_INDEX` (255, written
as the label TIFF's ``GDAL_NODATA``; -1 for int32 labels of more than 255 classes; a 256-class uint8 map has no
free value and keeps its predictions) and get NaN probabilities (``GDAL_NODATA`` ``nan``: a GIS shows them
transparent, and no probability is claimed where there was no data). NaN nodata pixels are predicted as zeros.
The probability GeoTIFF is written plane by plane, so the bands first go to a scratch ``.npy`` beside it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pixelwise.data.geotiff import GeoReference, geotiff_extratags, nodata_mask, read_georeference, read_nodata
from pixelwise.data.readers import IMAGE_READ_ERRORS, MAX_CHW_CHANNELS, DataError, check_tiff_pages, read_error
from pixelwise.inference.predictor import Predictor, labels_from_scores, nonfinite_message, nonfinite_pixels
from pixelwise.io import atomic_path
from pixelwise.modes import IGNORE_INDEX

OUTPUT_TILE = 256
"""Side of the tiles of the written label TIFF."""
BIGTIFF_BYTES = 2**31
"""Write BigTIFF above this many bytes of pixel data (classic TIFF offsets are 32-bit)."""
SIGNED_LABEL_NODATA = -1
"""Nodata value of int32 label maps (more than 256 classes), where 255 is a class."""
NAN_NODATA_FILL = 0
"""What NaN nodata pixels are replaced by before prediction (their labels are nodata anyway)."""
PROBS_DTYPE = np.float32
"""Probability GeoTIFFs are float32: every GIS reads it (float16 TIFFs need GDAL ≥ 3.11)."""


def label_nodata(classes: int, dtype: np.dtype) -> int | None:
    """The label written for nodata pixels: 255 while class ids stay below it, -1 for int32 labels, else None."""
    if classes <= IGNORE_INDEX:
        return IGNORE_INDEX
    return SIGNED_LABEL_NODATA if np.dtype(dtype).kind == "i" else None


class TiffSource:
    """The first series of a TIFF file, full resolution, as ``[C, H, W]`` rows read on demand.

    Channels are the samples of a page (RGB, planar or interleaved) and, for files with one page
    per channel (OME-TIFF ``CYX``), the pages. Use as a context manager, or call :meth:`close`.

    Raises:
        DataError: unreadable file, a volume (depth > 1) or more than 16 channels; from :meth:`read`,
            rows holding NaN or infinite values.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            check_tiff_pages(self._tif)
            level = self._tif.series[0].levels[0]
            self.nodata = read_nodata(self.path)
        except (IndexError, *IMAGE_READ_ERRORS) as error:
            raise read_error(self.path, "TIFF", error) from error
        self._pages = [page for page in level.pages if page is not None]
        key = self._pages[0].keyframe
        samples, depth, height, width, contig = key.shaped
        channels = len(self._pages) * samples * contig
        if depth != 1 or channels > MAX_CHW_CHANNELS:
            self.close()
            raise DataError(
                f"TIFF {str(self.path)!r} holds an array of shape {list(level.shape)} (axes {level.axes}); "
                f"expected one 2-D image with at most {MAX_CHW_CHANNELS} channels."
            )
        self.shape = (channels, height, width)
        self.dtype = np.dtype(key.dtype)

    def __enter__(self) -> TiffSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._tif.close()

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0 ≤ y < y1`` as ``[C, y1 - y0, W]`` in the stored dtype.

        Raises:
            DataError: float rows holding NaN or infinite values (checked as they are read).
        """
        rows = self._read_rows(y0, y1)
        if self.nodata is not None and math.isnan(self.nodata):
            rows[:, nodata_mask(rows, self.nodata)] = NAN_NODATA_FILL
        count = nonfinite_pixels(rows)
        if count:
            raise DataError(nonfinite_message(f"image {str(self.path)!r} (rows {y0} to {y1 - 1})", count))
        return rows

    def nodata_rows(self, y0: int, y1: int) -> np.ndarray | None:
        """``bool [y1 - y0, W]``: the nodata pixels of rows ``y0 ≤ y < y1`` (None: the file declares none)."""
        return None if self.nodata is None else nodata_mask(self._read_rows(y0, y1), self.nodata)

    def _read_rows(self, y0: int, y1: int) -> np.ndarray:
        parts = [self._read_page(page, y0, y1) for page in self._pages]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read_page(self, page: Any, y0: int, y1: int) -> np.ndarray:
        key = page.keyframe
        samples, _, _, width, contig = key.shaped
        out = np.zeros((samples, y1 - y0, width, contig), dtype=self.dtype)
        raw = key.compression == 1 and key.predictor == 1 and key.bitspersample == 8 * self.dtype.itemsize
        if raw and not key.is_tiled:
            self._read_raw_rows(page, out, y0, y1)
        else:
            self._read_segments(page, out, y0, y1)
        return out.transpose(0, 3, 1, 2).reshape(samples * contig, y1 - y0, width)

    def _read_raw_rows(self, page: Any, out: np.ndarray, y0: int, y1: int) -> None:
        key, fh = page.keyframe, self._tif.filehandle
        samples, _, height, width, contig = key.shaped
        per_strip = min(key.rowsperstrip or height, height)
        per_plane, row_bytes = math.ceil(height / per_strip), width * contig * self.dtype.itemsize
        dtype = self.dtype.newbyteorder(self._tif.byteorder)
        for plane in range(samples):
            for strip in range(y0 // per_strip, (y1 - 1) // per_strip + 1):
                first, last = max(y0, strip * per_strip), min(y1, (strip + 1) * per_strip)
                fh.seek(page.dataoffsets[plane * per_plane + strip] + (first - strip * per_strip) * row_bytes)
                data = np.frombuffer(fh.read((last - first) * row_bytes), dtype=dtype)
                out[plane, first - y0 : last - y0] = data.reshape(last - first, width, contig)

    def _read_segments(self, page: Any, out: np.ndarray, y0: int, y1: int) -> None:
        key = page.keyframe
        samples, _, height, width, _ = key.shaped
        if key.is_tiled:
            seg_h, across = key.tilelength, math.ceil(width / key.tilewidth)
        else:
            seg_h, across = min(key.rowsperstrip or height, height), 1
        per_plane = math.ceil(height / seg_h) * across
        indices = [
            plane * per_plane + row * across + column
            for plane in range(samples)
            for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1)
            for column in range(across)
        ]
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        for data, index in self._tif.filehandle.read_segments(offsets, counts, indices=indices, sort=True):
            segment, (plane, _, top, left, _), _ = key.decode(data, index, jpegtables=key.jpegtables)
            if segment is None:  # an empty (never written) segment reads as zeros
                continue
            segment = segment[0]
            first, last = max(y0, top), min(y1, top + segment.shape[0], height)
            right = min(left + segment.shape[1], width)
            out[plane, first - y0 : last - y0, left:right] = segment[first - top : last - top, : right - left]


class _NpyBands:
    """A ``[K, H, W]`` ``.npy`` file (float16 unless told) written band by band (seek + write per class plane)."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: str = "<f2") -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close(), which the caller's finally runs
        self.shape, self.dtype = shape, np.dtype(dtype)
        np.lib.format.write_array_header_1_0(self.file, {"descr": dtype, "fortran_order": False, "shape": shape})
        self.offset = self.file.tell()

    def write(self, row0: int, scores: np.ndarray) -> None:
        classes, height, width = self.shape
        for k in range(classes):
            self.file.seek(self.offset + self.dtype.itemsize * (k * height * width + row0 * width))
            self.file.write(scores[k].astype(self.dtype).tobytes())

    def read(self, plane: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0 ≤ y < y1`` of class plane ``plane`` (after :meth:`close`: reopens the file read-only)."""
        _, height, width = self.shape
        offset = self.offset + self.dtype.itemsize * (plane * height * width + y0 * width)
        data = np.fromfile(self.file.name, dtype=self.dtype, count=(y1 - y0) * width, offset=offset)
        return data.reshape(y1 - y0, width)

    def close(self) -> None:
        self.file.close()


RowMask = Callable[[int, int], "np.ndarray | None"]
"""``mask(y0, y1)``: the nodata pixels ``bool [y1 - y0, W]`` of rows ``y0 ≤ y < y1``, or None."""


def _label_bands(
    first: tuple[int, np.ndarray], bands: Iterator, nodata: RowMask | None, label: int | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(row0, scores, labels)`` per band; nodata pixels get ``label`` and NaN scores."""
    for row0, scores in _chain(first, bands):
        labels = labels_from_scores(scores)
        mask = None if nodata is None else nodata(row0, row0 + labels.shape[0])
        if mask is not None and mask.any():
            scores = scores.astype(np.float32)  # NaN needs a float array we may write to
            scores[:, mask] = np.nan
            if label is not None:
                labels[mask] = label
        yield row0, scores, labels


def _label_tiles(
    bands: Iterator[tuple[int, np.ndarray, np.ndarray]], width: int, tile: int, dtype: np.dtype, probs: Any
) -> Iterator[np.ndarray]:
    """Label tiles ``[tile, tile]`` in row-major order (zero-padded at the right and bottom edges)."""
    buffer = np.zeros((tile, math.ceil(width / tile) * tile), dtype=dtype)
    filled = 0
    for row0, scores, labels in bands:
        if probs is not None:
            probs.write(row0, scores)
        used = 0
        while used < labels.shape[0]:
            take = min(tile - filled, labels.shape[0] - used)
            buffer[filled : filled + take, :width] = labels[used : used + take]
            filled, used = filled + take, used + take
            if filled == tile:
                yield from (buffer[:, x : x + tile].copy() for x in range(0, buffer.shape[1], tile))
                filled = 0
    if filled:
        buffer[filled:] = 0
        yield from (buffer[:, x : x + tile].copy() for x in range(0, buffer.shape[1], tile))


def _plane_tiles(probs: _NpyBands, tile: int) -> Iterator[np.ndarray]:
    """The tiles of a planar ``[K, H, W]`` TIFF in file order: plane by plane, row-major (zero-padded)."""
    classes, height, width = probs.shape
    for k in range(classes):
        for y in range(0, height, tile):
            rows = np.zeros((tile, math.ceil(width / tile) * tile), dtype=probs.dtype)
            rows[: min(tile, height - y), :width] = probs.read(k, y, min(y + tile, height))
            yield from (rows[:, x : x + tile] for x in range(0, rows.shape[1], tile))


def _chain(first: tuple[int, np.ndarray], rest: Iterator) -> Iterator[tuple[int, np.ndarray]]:
    yield first
    yield from rest


def write_tiff(
    path: Path, data: Any, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None, extratags: list
) -> None:
    """A tiled TIFF of ``data`` (an array, or its tiles in file order; ``[K, H, W]``: one band per plane),
    BigTIFF when large; ``extratags``: e.g. :func:`~pixelwise.data.geotiff.geotiff_extratags`."""
    bigtiff = math.prod(shape) * np.dtype(dtype).itemsize > BIGTIFF_BYTES
    planar = {"planarconfig": "separate"} if len(shape) == 3 else {}
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as writer:
        writer.write(
            data,
            shape=shape,
            dtype=dtype,
            tile=(tile, tile),
            compression=compression,
            photometric="minisblack",
            extratags=extratags,
            **planar,
        )


def predict_to_tiff(
    predictor: Predictor,
    image: Any,
    output_path: str | os.PathLike,
    probs_path: str | os.PathLike | None = None,
    tile: int = OUTPUT_TILE,
    compression: str | None = None,
    geo: GeoReference | None = None,
) -> Path:
    """Predict ``image`` (anything :meth:`Predictor.predict` takes, or a :class:`TiffSource`) band by
    band into a tiled label TIFF (uint8, int32 beyond 256 classes) and optionally the probabilities:
    ``float16 [K, H, W]`` ``.npy``, or a ``float32`` TIFF when ``probs_path`` ends in ``.tif``. ``geo``: the
    georeferencing written into both TIFFs; a :class:`TiffSource`'s nodata pixels are marked (module notes).
    Returns ``output_path``."""
    source = predictor.as_source(image)
    _, height, width = source.shape
    first = next(bands := predictor.bands(source))
    classes = first[1].shape[0]
    dtype = labels_from_scores(first[1][:, :1, :1]).dtype
    label = label_nodata(classes, dtype)
    nodata = source.nodata_rows if isinstance(source, TiffSource) and source.nodata is not None else None
    probs_tiff = probs_path is not None and Path(probs_path).suffix.lower() in (".tif", ".tiff")
    output_path = Path(output_path)
    with contextlib.ExitStack() as stack:
        labels_tmp = stack.enter_context(atomic_path(output_path))
        probs = _open_probs(stack, probs_path, (classes, height, width), probs_tiff)
        tiles = _label_tiles(_label_bands(first, bands, nodata, label), width, tile, dtype, probs)
        label_tags = geotiff_extratags(geo, label if nodata is not None else None)
        write_tiff(labels_tmp, tiles, (height, width), dtype, tile, compression, label_tags)
        if probs is not None:
            probs.close()  # flush before atomic_path renames it, or before it is read back
        if probs_tiff:
            tags = geotiff_extratags(geo, math.nan if nodata is not None else None)
            target = stack.enter_context(atomic_path(probs_path))
            write_tiff(target, _plane_tiles(probs, tile), probs.shape, PROBS_DTYPE, tile, compression, tags)
    return output_path


def _open_probs(
    stack: contextlib.ExitStack, probs_path: Any, shape: tuple[int, int, int], tiff: bool
) -> _NpyBands | None:
    """The band writer of the probabilities: the ``.npy`` output, or the scratch ``.npy`` of a TIFF output
    (removed when the stack closes, written or not)."""
    if probs_path is None:
        return None
    path = Path(probs_path)
    if tiff:
        path = path.with_name(f".{path.name}.bands.npy")
        stack.callback(path.unlink, missing_ok=True)  # runs after atomic_path below has renamed it
    probs = _NpyBands(stack.enter_context(atomic_path(path)), shape, "<f4" if tiff else "<f2")
    stack.callback(probs.close)
    return probs


def predict_tiff(
    predictor: Predictor,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    probs_path: str | os.PathLike | None = None,
    tile: int = OUTPUT_TILE,
    compression: str | None = None,
) -> Path:
    """Stream a (large) TIFF / OME-TIFF through ``predictor`` into a tiled label TIFF.

    Peak memory is about one band of tiles: ``tile_size × W`` input pixels and ``K × tile_size × W``
    float32 scores (plus ``OUTPUT_TILE × W`` labels). The labels equal
    ``predictor.predict_labels`` on the whole image, except at the input's nodata pixels (module notes).
    A GeoTIFF input's georeferencing is copied into the outputs.

    Args:
        predictor: the :class:`Predictor` to use (its tile size sets the band height).
        input_path: TIFF file; its first series at full resolution is read.
        output_path: label TIFF to write (``tile × tile`` tiles, uint8, int32 beyond 256 classes).
        probs_path: optional ``.npy`` file for the probabilities, ``float16 [K, H, W]``; or a ``.tif``
            file: a ``float32`` GeoTIFF with one band per class.
        compression: TIFF compression of the labels, e.g. ``"zlib"`` (default none).

    Raises:
        DataError: unreadable input, malformed geo tags, or NaN / infinite pixels (names the file).

    Example:
        >>> predictor = Predictor.from_pretrained("runs/x", tiling=TilingOptions(tile_size=512))  # doctest: +SKIP
        >>> predict_tiff(predictor, "slide.tif", "labels.tif")  # doctest: +SKIP
    """
    geo = read_georeference(input_path)
    with TiffSource(input_path) as source:
        return predict_to_tiff(predictor, source, output_path, probs_path, tile, compression, geo)
