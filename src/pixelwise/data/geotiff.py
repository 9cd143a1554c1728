"""GeoTIFF: georeferencing (CRS, affine transform) and nodata of TIFF images, read and copied with tifffile.

A GeoTIFF keeps its map position in a handful of TIFF tags::

    33550 ModelPixelScaleTag     (Sx, Sy, Sz)                 ┐ pixel size + one tiepoint,
    33922 ModelTiepointTag       (I, J, K, X, Y, Z) ...       ┘ or
    34264 ModelTransformationTag 4 × 4 matrix, row-major        a full affine matrix
    34735 GeoKeyDirectoryTag     keys: model type, raster type (1025), EPSG codes (2048, 3072), ...
    34736 GeoDoubleParamsTag     doubles the keys point into
    34737 GeoAsciiParamsTag      text the keys point into (CRS names)
    42113 GDAL_NODATA            nodata value as ASCII text

Dependency decision: these tags are read and written with tifffile (already a dependency), not rasterio/GDAL.
Outputs get the input's georeferencing tags copied value for value (same TIFF types and counts), which is exact
whatever the CRS and needs no projection library; GDAL would only be needed to *reproject*, which pixelwise never
does. rasterio is used by the tests only, to verify that GDAL reads our outputs at the same place.
``GDAL_METADATA`` (42112) is not copied: it describes the input's bands (scales, names), not the outputs'.

Parsed for our own use (:class:`GeoReference`): the EPSG code (``ProjectedCSTypeGeoKey`` 3072, else
``GeographicTypeGeoKey`` 2048; None for user-defined CRSs), the affine transform in rasterio's ``Affine`` order
``(a, b, c, d, e, f)``: ``x = a·col + b·row + c``, ``y = d·col + e·row + f`` with (col, row) the pixel-*corner*
coordinates (GDAL's convention; for ``PixelIsPoint`` rasters the tiepoint names a pixel centre, so the origin
is moved half a pixel, as GDAL does), the nodata value, and ``PixelIsArea`` vs ``PixelIsPoint``.
Ground-control-point georeferencing (several tiepoints, no scale) keeps ``transform=None``: its tags are still
copied, so a GIS places the outputs, but map coordinates of objects are not computed.

:func:`nodata_pixels` marks the pixels a GeoTIFF declares as "no data" so that the loss and the metrics ignore
them (the datasets and ``check-data`` use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pixelwise.data.readers import IMAGE_READ_ERRORS, TIFF_SUFFIXES, read_error, read_image_array
from pixelwise.errors import DataError

GDAL_NODATA_TAG = 42113
"""TIFF tag in which GDAL stores the nodata value, as ASCII text."""
MODEL_PIXEL_SCALE_TAG = 33550
MODEL_TIEPOINT_TAG = 33922
MODEL_TRANSFORMATION_TAG = 34264
GEO_KEY_DIRECTORY_TAG = 34735
GEO_DOUBLE_PARAMS_TAG = 34736
GEO_ASCII_PARAMS_TAG = 34737
GEOREFERENCE_TAGS = (
    MODEL_PIXEL_SCALE_TAG,
    MODEL_TIEPOINT_TAG,
    MODEL_TRANSFORMATION_TAG,
    GEO_KEY_DIRECTORY_TAG,
    GEO_DOUBLE_PARAMS_TAG,
    GEO_ASCII_PARAMS_TAG,
)
"""The tags copied from a georeferenced input to every raster output."""
ASCII_TYPE = 2
"""TIFF data type of ASCII text."""

GT_RASTER_TYPE_KEY = 1025
GEOGRAPHIC_TYPE_KEY = 2048
PROJECTED_CS_TYPE_KEY = 3072
PIXEL_IS_POINT = 2
"""``GTRasterTypeGeoKey`` value of rasters whose tiepoints name pixel centres (1: PixelIsArea, the default)."""
USER_DEFINED = 32767
"""GeoKey value of a CRS defined by parameters instead of an EPSG code."""
KEY_HEADER = 4
"""Shorts in the GeoKey directory header, and in each key entry."""
TIEPOINT_VALUES = 6
MATRIX_VALUES = 16
HALF_PIXEL = 0.5

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class GeoReference:
    """The georeferencing of a TIFF: the raw tags to copy, and what they mean.

    Attributes:
        path: the file it was read from (named in errors).
        tags: ``(code, tiff_type, count, value)`` of each georeferencing tag, as stored.
        epsg: EPSG code of the CRS, or None (user-defined, or no GeoKeys).
        transform: affine ``(a, b, c, d, e, f)`` from pixel-corner (col, row) to map (x, y), or None
            (ground control points only).
        nodata: the input's nodata value, or None.
        pixel_is_area: False for ``PixelIsPoint`` rasters.
    """

    path: Path
    tags: tuple[tuple[int, int, int, Any], ...]
    epsg: int | None
    transform: Transform | None
    nodata: float | None
    pixel_is_area: bool = True

    @property
    def crs(self) -> str | None:
        """``"EPSG:<code>"``, or None when the CRS has no EPSG code."""
        return None if self.epsg is None else f"EPSG:{self.epsg}"


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
        return None if tag is None else _nodata_value(tag.value)


def _nodata_value(value: Any) -> float | None:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        return float(text.strip().strip("\x00"))
    except ValueError:
        return None


def nodata_mask(image: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """``bool [H, W]``: the pixels of ``image`` (``[C, H, W]``, as stored) whose every channel equals
    ``nodata`` (NaN matches NaN); None when ``nodata`` is None."""
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


def nodata_pixels(path: str | Path, image: np.ndarray) -> np.ndarray | None:
    """``bool [H, W]``: the pixels of ``image`` (``[C, H, W]``, as stored) whose every channel equals the
    file's nodata value (NaN matches NaN); None when the file declares none."""
    return nodata_mask(image, read_nodata(path))


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


def read_georeference(path: str | Path) -> GeoReference | None:
    """The georeferencing of a TIFF's first page; None for other files and TIFFs without geo tags.

    Raises:
        DataError: the file cannot be opened, or its geo tags are malformed (names the file and the tag).
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            found = {code: tif.pages[0].tags.get(code) for code in (*GEOREFERENCE_TAGS, GDAL_NODATA_TAG)}
            tags = {code: tag for code, tag in found.items() if tag is not None}
            raw = tuple((code, int(tag.dtype), int(tag.count), tag.value) for code, tag in tags.items())
    except (IndexError, *IMAGE_READ_ERRORS) as error:
        raise read_error(path, "image", error) from error
    values = {code: value for code, _, _, value in raw}
    nodata = _nodata_value(values.pop(GDAL_NODATA_TAG)) if GDAL_NODATA_TAG in values else None
    if not values:
        return None
    keys = _geokeys(path, values)
    pixel_is_area = keys.get(GT_RASTER_TYPE_KEY) != PIXEL_IS_POINT
    return GeoReference(
        path=path,
        tags=tuple(entry for entry in raw if entry[0] != GDAL_NODATA_TAG),
        epsg=_epsg(keys),
        transform=_transform(path, values, pixel_is_area),
        nodata=nodata,
        pixel_is_area=pixel_is_area,
    )


def _bad_tag(path: Path, name: str, problem: str) -> DataError:
    return DataError(
        f"GeoTIFF {str(path)!r} has a malformed {name} ({problem}); its georeferencing cannot be read. "
        "Re-write the file with a GIS (e.g. `gdal_translate in.tif out.tif`) or remove its geo tags."
    )


def _numbers(path: Path, name: str, value: Any) -> list[float]:
    """The numeric values of a tag, checked to be finite numbers."""
    items = list(value) if isinstance(value, tuple | list | np.ndarray) else [value]
    if not all(isinstance(v, int | float | np.number) and math.isfinite(v) for v in items):
        raise _bad_tag(path, name, "it holds values that are not finite numbers")
    return [float(v) for v in items]


def _geokeys(path: Path, values: dict[int, Any]) -> dict[int, Any]:
    """GeoKey id → value (a short, or the doubles / text a key points into)."""
    if GEO_KEY_DIRECTORY_TAG not in values:
        return {}
    name = "GeoKeyDirectoryTag (34735)"
    shorts = [int(v) for v in _numbers(path, name, values[GEO_KEY_DIRECTORY_TAG])]
    if len(shorts) < KEY_HEADER or len(shorts) != KEY_HEADER * (1 + shorts[KEY_HEADER - 1]):
        raise _bad_tag(path, name, f"{len(shorts)} values do not match its header's key count")
    doubles = values.get(GEO_DOUBLE_PARAMS_TAG, ())
    text = values.get(GEO_ASCII_PARAMS_TAG, "")
    keys = {}
    for start in range(KEY_HEADER, len(shorts), KEY_HEADER):
        key, location, count, offset = shorts[start : start + KEY_HEADER]
        if location == 0:
            keys[key] = offset
        elif location == GEO_DOUBLE_PARAMS_TAG and offset + count <= len(doubles):
            keys[key] = tuple(doubles[offset : offset + count])
        elif location == GEO_ASCII_PARAMS_TAG and offset <= len(text):  # writers disagree on counting the NUL
            keys[key] = text[offset : offset + count]
        else:
            raise _bad_tag(path, name, f"key {key} points to values its tag {location} does not hold")
    return keys


def _epsg(keys: dict[int, Any]) -> int | None:
    for key in (PROJECTED_CS_TYPE_KEY, GEOGRAPHIC_TYPE_KEY):
        code = keys.get(key)
        if isinstance(code, int) and 0 < code < USER_DEFINED:
            return code
    return None


def _transform(path: Path, values: dict[int, Any], pixel_is_area: bool) -> Transform | None:
    """The pixel-corner affine transform of the model tags (None: ground control points, or none)."""
    if MODEL_TRANSFORMATION_TAG in values:
        m = _numbers(path, "ModelTransformationTag (34264)", values[MODEL_TRANSFORMATION_TAG])
        if len(m) != MATRIX_VALUES:
            raise _bad_tag(path, "ModelTransformationTag (34264)", f"{len(m)} values instead of {MATRIX_VALUES}")
        a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
    elif MODEL_PIXEL_SCALE_TAG in values and MODEL_TIEPOINT_TAG in values:
        scale = _numbers(path, "ModelPixelScaleTag (33550)", values[MODEL_PIXEL_SCALE_TAG])
        tie = _numbers(path, "ModelTiepointTag (33922)", values[MODEL_TIEPOINT_TAG])
        if len(scale) < 2 or scale[0] == 0 or scale[1] == 0:
            raise _bad_tag(path, "ModelPixelScaleTag (33550)", f"pixel size {scale} is not two non-zero numbers")
        if len(tie) < TIEPOINT_VALUES or len(tie) % TIEPOINT_VALUES:
            raise _bad_tag(path, "ModelTiepointTag (33922)", f"{len(tie)} values, not a multiple of 6")
        col, row, _, x, y, _ = tie[:TIEPOINT_VALUES]
        a, b, c, d, e, f = scale[0], 0.0, x - col * scale[0], 0.0, -scale[1], y + row * scale[1]
    else:
        return None
    if not pixel_is_area:  # the tiepoint names the pixel centre: move the origin to the pixel corner, as GDAL
        c, f = c - HALF_PIXEL * (a + b), f - HALF_PIXEL * (d + e)
    return (a, b, c, d, e, f)


def pixel_to_map(geo: GeoReference, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates ``(x, y)`` of pixel-space points (``(col, row)`` = ``(0, 0)``: the top-left corner
    of the top-left pixel; pixel ``(r, c)`` covers ``[c, c + 1] × [r, r + 1]``).

    Shape:
        ``rows``, ``cols``: any equal shapes → ``x``, ``y`` float64 of that shape.

    Raises:
        DataError: ``geo`` has no affine transform (ground control points only).
    """
    if geo.transform is None:
        raise DataError(
            f"GeoTIFF {str(geo.path)!r} is georeferenced by ground control points, not an affine transform; "
            "map coordinates need a transform: warp it first (e.g. `gdalwarp in.tif out.tif`)."
        )
    a, b, c, d, e, f = geo.transform
    rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
    return a * cols + b * rows + c, d * cols + e * rows + f


def geotiff_extratags(geo: GeoReference | None, nodata: float | None = None) -> list[tuple]:
    """``tifffile.imwrite(..., extratags=...)`` entries copying ``geo``'s georeferencing tags (same types,
    counts and values), plus ``GDAL_NODATA`` = ``nodata`` when given (the output's own nodata value: the
    input's is not copied, since outputs hold labels or probabilities, not the input's values).
    ``geo=None`` gives only the nodata tag (or nothing)."""
    tags = [(code, dtype, count, value, True) for code, dtype, count, value in (geo.tags if geo else ())]
    if nodata is not None:
        text = "nan" if math.isnan(nodata) else f"{nodata:g}"
        tags.append((GDAL_NODATA_TAG, ASCII_TYPE, 0, text, True))
    return tags
