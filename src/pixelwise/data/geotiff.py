"""GeoTIFF: georeferencing (CRS, affine transform) and nodata of TIFF images.

Only what the datasets need lives here so far: :func:`nodata_pixels`, which marks the pixels a
GeoTIFF declares as "no data" (GDAL's ``GDAL_NODATA`` tag, 42113) so that the loss and the metrics
ignore them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile

from pixelwise.data.readers import IMAGE_READ_ERRORS, TIFF_SUFFIXES, read_error, read_image_array

GDAL_NODATA_TAG = 42113
"""TIFF tag in which GDAL stores the nodata value, as ASCII text."""


def read_nodata(path: str | Path) -> float | None:
    """The nodata value a TIFF declares (``GDAL_NODATA`` tag), or None (no tag, or not a TIFF).

    Raises:
        OSError, tifffile.TiffFileError: the file cannot be opened (callers translate with ``read_error``).
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(GDAL_NODATA_TAG)
    if tag is None:
        return None
    text = tag.value.decode("ascii", "replace") if isinstance(tag.value, bytes) else str(tag.value)
    try:
        return float(text.strip().strip("\x00"))
    except ValueError:
        return None


def nodata_pixels(path: str | Path, image: np.ndarray) -> np.ndarray | None:
    """``bool [H, W]``: the pixels of ``image`` (``[C, H, W]``, as stored) whose every channel equals the
    file's nodata value (NaN matches NaN); None when the file declares none."""
    nodata = read_nodata(path)
    if nodata is None:
        return None
    if math.isnan(nodata):
        return np.isnan(image).all(axis=0) if image.dtype.kind == "f" else None
    if image.dtype.kind in "iub":
        info = np.iinfo(image.dtype) if image.dtype.kind != "b" else None
        if info is None or nodata != int(nodata) or not info.min <= nodata <= info.max:
            return np.zeros(image.shape[1:], dtype=bool)  # a value this dtype cannot hold marks no pixel
        return (image == int(nodata)).all(axis=0)
    return (image == nodata).all(axis=0)


def read_image_with_nodata(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`~pixelwise.data.readers.read_image_array` (``[C, H, W]`` as stored) and :func:`nodata_pixels`.

    Raises:
        DataError: the file cannot be decoded; the message names it.
    """
    path = Path(path)
    stored = read_image_array(path)
    try:
        return stored, nodata_pixels(path, stored)
    except IMAGE_READ_ERRORS as error:
        raise read_error(path, "image", error) from error
