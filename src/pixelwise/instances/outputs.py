"""Instance files: label images, ``objects.json`` with COCO masks, and pictures with object outlines and ids;
and :func:`write_prediction_instances`, what ``pixelwise predict --instances`` writes per image.

Files, for an image with stem ``NAME`` in the output folder: ``NAME_instances.png`` (16-bit instance ids;
``.tif`` past 65535 objects), ``NAME_objects.json`` (``{"image", "height", "width", "encoding",
"objects": [...]}``, one :func:`~pixelwise.instances.objects` record per object with a COCO
``segmentation``), and ``NAME_outlines.png`` or, in ``pixelwise predict``, outlines and ids drawn on
``NAME_overlay.png``.

GeoTIFF inputs (``geo``: a :class:`~pixelwise.data.geotiff.GeoReference` with an affine transform) also get
``NAME.geojson``: a FeatureCollection with one feature per object, properties ``{id, class, class_name,
area_px}``, geometry a Polygon (MultiPolygon when the object's pixels touch only at corners) traced along the
pixel *edges* (:func:`mask_polygons`, like ``rasterio.features.shapes``): the polygon covers exactly the object's
pixels, holes are inner rings, and pixel ``(row, col)`` is the square ``[col, col + 1] × [row, row + 1]`` in
pixel space before the transform maps it to map coordinates. Outer rings are counter-clockwise on the map
(RFC 7946's right-hand rule, for north-up rasters). RFC 7946 makes GeoJSON WGS 84 only; we keep the raster's
CRS (reprojecting would need a projection library and would move the pixel edges) and name it in the legacy
``crs`` member (``urn:ogc:def:crs:EPSG::<code>``, as GDAL writes it), which QGIS and GDAL read; it is left out
when the CRS has no EPSG code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.bundle import PREPROCESSING_DEFAULTS, PREPROCESSING_NAME, Preprocessing, read_preprocessing
from pixelwise.data.geotiff import GeoReference, pixel_to_map
from pixelwise.errors import unknown_name
from pixelwise.instances.objects import ENCODINGS, encode_polygons, encode_rle, has_pycocotools, objects
from pixelwise.instances.postprocess import MARKER_H, MIN_SIZE, class_map, semantic_probs, to_instances
from pixelwise.instances.scoring import default_method
from pixelwise.io import atomic_path

OUTLINE_ALPHA = 0.35
"""Opacity of the object colours inside the outlines of :func:`draw_instances`."""
UINT16_LIMIT = 65535
DEFAULT_OPTIONS: dict[str, Any] = {"markers": "auto", "threshold": None, "marker_threshold": 0.5, "h": MARKER_H}
"""The post-processing every model gets until tuned (with ``method`` from its target and ``min_size``)."""
GOLDEN_ANGLE = 0.618033988749895
"""Hue step between consecutive object ids (fractions of a turn): neighbours get distant colours."""
GEOJSON_CRS = "urn:ogc:def:crs:EPSG::{}"
"""The legacy GeoJSON ``crs`` name of an EPSG code, as GDAL writes it."""
TURN_ORDER = ((0, 1), (1, 0), (0, -1))
"""Preferred next edge at a pixel corner, as (dx, dy) turned from the current direction: right, straight,
left (screen coordinates, y down). Turning right first hugs the current pixel, so pixels touching only at a
corner get separate rings."""


def _color(label: int) -> np.ndarray:
    from pixelwise.viz import _hsv_to_rgb

    return np.array(_hsv_to_rgb((label * GOLDEN_ANGLE) % 1.0, 0.8, 1.0), np.float32)


def draw_instances(image: np.ndarray, labels: np.ndarray, ids: bool = True) -> np.ndarray:
    """Objects drawn over an image: a colour per object, its outline, and its id at its centroid.

    Shape:
        ``image`` ``[C, H, W]``, ``[H, W]`` or ``[H, W, 3]`` (float in [0, 1] or uint8); ``labels``
        int ``[H, W]`` → ``uint8 [H, W, 3]``.
    """
    from PIL import Image, ImageDraw, ImageFont
    from skimage.segmentation import find_boundaries

    from pixelwise.viz import to_rgb

    image = np.asarray(image)
    rgb = (image if image.ndim == 3 and image.shape[-1] == 3 else to_rgb(image)).astype(np.float32)
    labels = np.asarray(labels)
    count = int(labels.max()) + 1 if labels.size else 1
    colors = np.stack([np.zeros(3, np.float32)] + [_color(i) for i in range(1, count)])
    inside = (labels > 0)[..., None]
    rgb = np.where(inside, (1 - OUTLINE_ALPHA) * rgb + OUTLINE_ALPHA * colors[labels], rgb)
    outline = find_boundaries(labels, mode="inner")
    rgb[outline] = colors[labels[outline]]
    picture = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))
    if ids:
        draw = ImageDraw.Draw(picture)
        font = ImageFont.load_default()
        # centred, outlined text needs a FreeType font; Pillow without FreeType falls back to a bitmap font
        style = {"anchor": "mm", "stroke_width": 1, "stroke_fill": (0, 0, 0)}
        style = style if isinstance(font, ImageFont.FreeTypeFont) else {}
        for record in objects(labels):
            y, x = record["centroid"]
            draw.text((x, y), str(record["id"]), fill=(255, 255, 255), font=font, **style)
    return np.asarray(picture)


def save_labels(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write instance labels atomically: a 16-bit PNG, or a TIFF (same name, ``.tif``) past 65535 objects.
    :func:`pixelwise.data.read_instances` reads both. Returns the path written."""
    from PIL import Image

    path = Path(path)
    if int(np.max(labels, initial=0)) > UINT16_LIMIT:
        import tifffile

        path = path.with_suffix(".tif")
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, np.asarray(labels, np.int32))
        return path
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(labels, np.uint16)).save(tmp, format="PNG")
    return path


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed pixel edges between ``mask`` and the outside, interior on the right (screen coordinates):
    start corner ``(x, y)`` → end corners."""
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # (neighbour offset (dy, dx), edge start and end as offsets from the pixel's top-left corner (x, y))
    sides = (((-1, 0), (0, 0), (1, 0)), ((0, 1), (1, 0), (1, 1)), ((1, 0), (1, 1), (0, 1)), ((0, -1), (0, 1), (0, 0)))
    height, width = mask.shape
    for (dy, dx), (sx, sy), (ex, ey) in sides:
        outside = ~padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for row, col in zip(*np.nonzero(inside & outside), strict=True):
            edges.setdefault((int(col) + sx, int(row) + sy), []).append((int(col) + ex, int(row) + ey))
    return edges


def _trace_rings(edges: dict[tuple[int, int], list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Link directed edges into closed rings: the corners where the direction changes, starting at the top-left
    corner (smallest y, then x), not repeated at the end."""
    rings = []
    while edges:
        start = next(iter(edges))
        first_end = edges[start][0]
        ring, corner, direction = [], start, None
        while True:
            ends = edges[corner]
            end = first_end if direction is None else _turn(corner, direction, ends)
            ends.remove(end)
            if not ends:
                del edges[corner]
            step = _unit(corner, end)
            if step != direction:
                ring.append(corner)
            corner, direction = end, step
            if corner == start and _turn(start, direction, [*edges.get(start, []), first_end]) == first_end:
                break
        if direction == _unit(ring[0], ring[1]):  # the start lies inside a straight run: not a corner
            ring = ring[1:]
        top = min(range(len(ring)), key=lambda k: (ring[k][1], ring[k][0]))
        rings.append(ring[top:] + ring[:top])
    return rings


def _unit(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (int(np.sign(b[0] - a[0])), int(np.sign(b[1] - a[1])))


def _turn(corner: tuple[int, int], direction: tuple[int, int], ends: list[tuple[int, int]]) -> tuple[int, int]:
    """The end to take at a corner with two outgoing edges (see :data:`TURN_ORDER`)."""
    dx, dy = direction
    for right, ahead in TURN_ORDER:
        step = (ahead * dx - right * dy, ahead * dy + right * dx)
        end = (corner[0] + step[0], corner[1] + step[1])
        if end in ends:
            return end
    return ends[0]


def _ring_area(ring: list[tuple[int, int]]) -> float:
    """Shoelace area in screen coordinates: positive for outer rings, negative for holes."""
    xs, ys = np.array(ring, np.float64).T
    return 0.5 * float(np.sum(xs * np.roll(ys, -1) - np.roll(xs, -1) * ys))


def _inside(point: tuple[float, float], ring: list[tuple[int, int]]) -> bool:
    """Even-odd test of a point that lies on no edge (a pixel centre)."""
    xs, ys = np.array(ring, np.float64).T
    x2, y2 = np.roll(xs, -1), np.roll(ys, -1)
    crosses = (ys > point[1]) != (y2 > point[1])
    at = xs + (point[1] - ys) * (x2 - xs) / np.where(y2 == ys, 1, y2 - ys)
    return bool(np.sum(crosses & (point[0] < at)) % 2)


def mask_polygons(mask: np.ndarray) -> list[list[list[tuple[int, int]]]]:
    """The polygons covering exactly the ``True`` pixels of ``mask``, traced along pixel edges: each a list of
    rings, the outer ring first, then its holes; a ring is its corners ``(x, y)`` in pixel space (pixel
    ``(row, col)`` covers ``[col, col + 1] × [row, row + 1]``), not repeated at the end. Outer rings run
    clockwise on screen (y down), holes the other way; pixels touching only at a corner are separate polygons.

    Shape:
        ``mask``: bool ``[H, W]``.
    """
    rings = _trace_rings(_boundary_edges(np.asarray(mask, bool)))
    outers = sorted((r for r in rings if _ring_area(r) > 0), key=_ring_area)  # smallest first: innermost
    polygons = {id(outer): [outer] for outer in outers}
    for hole in (r for r in rings if _ring_area(r) < 0):
        (dx, dy), (x0, y0) = _unit(hole[0], hole[1]), hole[0]
        # the centre of the pixel left of the hole's first edge (the object lies right of it): inside the hole
        probe = (x0 + 0.5 * (dx + dy), y0 + 0.5 * (dy - dx))
        owner = next((outer for outer in outers if _inside(probe, outer)), outers[-1])
        polygons[id(owner)].append(hole)
    return [polygons[id(outer)] for outer in sorted(outers, key=lambda ring: (ring[0][1], ring[0][0]))]


def geojson_geometry(mask: np.ndarray, geo: GeoReference, offset: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """GeoJSON Polygon (or MultiPolygon) of ``mask``'s pixels in ``geo``'s map coordinates; ``offset``:
    ``(row, col)`` of ``mask``'s top-left pixel in the georeferenced image (for a crop).

    Raises:
        DataError: ``geo`` has no affine transform.
    """
    a, b, _, d, e, _ = geo.transform or (1, 0, 0, 0, 1, 0)  # pixel_to_map refuses a missing transform
    flips = a * e - b * d < 0  # north-up: y turns round, so screen-clockwise rings are clockwise on the map
    polygons = []
    for rings in mask_polygons(mask):
        polygon = []
        for ring in rings:
            ring = [ring[0], *ring[:0:-1]] if flips else ring  # outer rings counter-clockwise (RFC 7946)
            cols, rows = np.array([*ring, ring[0]], np.float64).T  # closed: first corner repeated
            xs, ys = pixel_to_map(geo, rows + offset[0], cols + offset[1])
            polygon.append([[float(x), float(y)] for x, y in zip(xs, ys, strict=True)])
        polygons.append(polygon)
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def geojson_objects(labels: np.ndarray, records: list[dict[str, Any]], geo: GeoReference, name: str) -> dict:
    """A FeatureCollection of the objects of ``labels`` (``records``: :func:`objects` of them) in map coordinates."""
    features = []
    for record in records:
        y0, x0, y1, x1 = record["bbox"]
        geometry = geojson_geometry(labels[y0:y1, x0:x1] == record["id"], geo, (y0, x0))
        properties = {"id": record["id"], "class": record["class"], "class_name": record.get("class_name")}
        properties["area_px"] = record["area"]
        features.append({"type": "Feature", "id": record["id"], "geometry": geometry, "properties": properties})
    document: dict[str, Any] = {"type": "FeatureCollection", "name": name}
    if geo.epsg is not None:
        document["crs"] = {"type": "name", "properties": {"name": GEOJSON_CRS.format(geo.epsg)}}
    return document | {"features": features}


def _add_segmentations(records: list[dict[str, Any]], labels: np.ndarray, encoding: str) -> None:
    """Give each record its mask as a COCO ``segmentation`` (``encoding``: rle, polygon or none)."""
    for record in records:
        if encoding == "none":
            continue
        y0, x0, y1, x1 = record["bbox"]
        crop = labels[y0:y1, x0:x1] == record["id"]
        if encoding == "rle":
            full = np.zeros(labels.shape, bool)
            full[y0:y1, x0:x1] = crop
            record["segmentation"] = encode_rle(full)
        else:
            offset = (x0, y0)  # polygons of the crop, moved back to image coordinates
            record["segmentation"] = [
                [round(v + offset[i % 2], 2) for i, v in enumerate(poly)] for poly in encode_polygons(crop)
            ]


def write_instance_outputs(
    out_dir: str | os.PathLike,
    name: str,
    labels: np.ndarray,
    probs: np.ndarray | torch.Tensor | None = None,
    image: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    encoding: str = "auto",
    geo: GeoReference | None = None,
) -> dict[str, Path]:
    """Write one image's instances: ``NAME_instances.png``, ``NAME_objects.json``, given ``image``
    ``NAME_outlines.png`` (:func:`draw_instances`) and, given ``geo`` with an affine transform,
    ``NAME.geojson`` (:func:`geojson_objects`) into ``out_dir``.

    Args:
        out_dir: output folder (created if missing).
        name: file stem.
        labels, probs, class_names: as :func:`~pixelwise.instances.objects` (``probs`` of the data's classes).
        image: the input image, for the outline picture.
        encoding: ``"rle"`` (COCO compressed RLE; needs pycocotools), ``"polygon"``, ``"none"``, or
            ``"auto"`` (RLE where pycocotools is installed, else polygons).
        geo: the georeferencing of the input image (:func:`~pixelwise.data.geotiff.read_georeference`).

    Returns:
        ``{"labels": path, "objects": path[, "outlines": path][, "geojson": path]}``.

    Raises:
        ConfigError: unknown encoding.
        ImportError: ``encoding="rle"`` without pycocotools.
    """
    if encoding not in ENCODINGS:
        raise unknown_name("mask encoding", encoding, ENCODINGS)
    if encoding == "auto":
        encoding = "rle" if has_pycocotools() else "polygon"
    out = Path(out_dir)
    labels = np.asarray(labels)
    records = objects(labels, probs, class_names=class_names)
    _add_segmentations(records, labels, encoding)
    paths = {"labels": save_labels(labels, out / f"{name}_instances.png")}
    document = {"image": name, "height": int(labels.shape[0]), "width": int(labels.shape[1])}
    document |= {"encoding": encoding, "objects": records}
    paths["objects"] = out / f"{name}_objects.json"
    with atomic_path(paths["objects"]) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")
    if image is not None:
        from pixelwise.viz import save_png

        paths["outlines"] = out / f"{name}_outlines.png"
        save_png(draw_instances(image, labels), paths["outlines"])
    if geo is not None and geo.transform is not None:  # ground control points give no map coordinates
        paths["geojson"] = out / f"{name}.geojson"
        with atomic_path(paths["geojson"]) as tmp:
            tmp.write_text(json.dumps(geojson_objects(labels, records, geo, name)) + "\n")
    return paths


def _model_preprocessing(model: str | os.PathLike) -> Preprocessing | None:
    """The ``preprocessing.json`` of a run directory, ``save_pretrained`` directory, ``.ckpt`` or ``.onnx`` file
    (the one beside it), or None when there is none."""
    path = Path(model)
    for folder in (path / "model", path, path.parent / "model", path.parent):
        if (folder / PREPROCESSING_NAME).is_file():
            # only the instance facts matter here: neither mean/std nor the model are needed
            return Preprocessing.from_dict(read_preprocessing(folder, require=()))
    return None


def model_instance_settings(model: str | os.PathLike) -> dict[str, Any]:
    """``{"target", "separation_gap"}`` of a run directory, ``save_pretrained`` directory, ``.ckpt`` or
    ``.onnx`` file, from the ``preprocessing.json`` beside it; ``semantic`` and 0 when there is none.

    Raises:
        WeightsError: that ``preprocessing.json`` is damaged (see :func:`pixelwise.bundle.read_preprocessing`).
    """
    facts = _model_preprocessing(model)
    if facts is None:
        return {key: PREPROCESSING_DEFAULTS[key] for key in ("target", "separation_gap")}
    return {"target": facts.target, "separation_gap": facts.separation_gap}


def default_options(target: str) -> dict[str, Any]:
    """The :func:`~pixelwise.instances.to_instances` options a model trained on ``target`` gets until tuned:
    :func:`~pixelwise.instances.default_method`, :data:`DEFAULT_OPTIONS` and ``MIN_SIZE``."""
    return {"method": default_method(target)} | DEFAULT_OPTIONS | {"min_size": MIN_SIZE}


def model_instance_options(
    model: str | os.PathLike, explicit: Mapping[str, Any] | None = None, target: str | None = None
) -> dict[str, Any]:
    """The :func:`~pixelwise.instances.to_instances` keyword arguments (``method`` included) for a model: the
    defaults of its target, replaced by the options stored with it (``pixelwise tune-instances``), replaced by
    the ``explicit`` ones (a None value, or ``method="auto"``, means "not given").

    Args:
        model: as :func:`model_instance_settings`.
        explicit: options the user gave (``--instance-method``, ``--min-size``, ...).
        target: the model's target when already known (else read with the stored options).

    Raises:
        WeightsError: the model's ``preprocessing.json`` is damaged.
    """
    facts = _model_preprocessing(model)
    target = target or (facts.target if facts is not None else PREPROCESSING_DEFAULTS["target"])
    options = default_options(target)
    options |= (facts.instance_options if facts is not None else None) or {}
    given = {key: value for key, value in (explicit or {}).items() if value is not None}
    if given.get("method") == "auto":
        del given["method"]
    return options | given


def write_prediction_instances(
    out_dir: str | os.PathLike,
    name: str,
    probabilities: np.ndarray,
    model: str | os.PathLike,
    image: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
    method: str = "auto",
    geo: GeoReference | None = None,
    options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """What ``pixelwise predict --instances`` writes for one image: the instance labels and objects of its
    probabilities (post-processing: the options stored with the model by ``pixelwise tune-instances``, else
    what :func:`~pixelwise.instances.default_method` suits its training target; explicit ``method`` and
    ``options`` win; separation gaps closed) and, given ``image``, ``NAME_overlay.png``: the class overlay
    with the objects' outlines and ids.

    Args:
        out_dir: output folder.
        name: file stem.
        probabilities: the model's class probabilities ``float32 [K, H, W]``.
        model: the model path given to ``predict`` (its ``preprocessing.json`` tells the target).
        image: the input ``[C, H, W]`` in [0, 1], or None for no overlay.
        class_names: names of the model's classes (a boundary-target model's objects are "object").
        palette: ``[K, 3]`` uint8 class colours of the overlay; None: :func:`pixelwise.viz.default_palette`.
        method: ``auto`` (stored, else the target's default), ``components`` or ``watershed``.
        geo: the input's georeferencing: also write ``NAME.geojson`` (see :func:`write_instance_outputs`).
        options: explicit :func:`~pixelwise.instances.to_instances` options (``threshold``, ``min_size``, ...);
            None values are not given (see :func:`model_instance_options`).

    Returns:
        The files written.
    """
    from pixelwise.viz import default_palette, overlay, save_png

    settings = model_instance_settings(model)
    target = settings["target"]
    chosen = model_instance_options(model, {**(options or {}), "method": method}, target)
    labels = to_instances(probabilities, target=target, close_gap=settings["separation_gap"], **chosen)
    probs = semantic_probs(probabilities, target)
    names = ["background", "object"] if target == "boundary" else class_names
    written = list(write_instance_outputs(out_dir, name, labels, probs, class_names=names, geo=geo).values())
    if image is not None:
        classes = class_map(probs)
        colors = palette if palette is not None and target != "boundary" else default_palette(probs.shape[0])
        written.append(Path(out_dir) / f"{name}_overlay.png")
        save_png(draw_instances(overlay(image, classes, np.asarray(colors)), labels), written[-1])
    return written
