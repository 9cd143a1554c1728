"""Instance files: label images, ``objects.json`` with COCO masks, and pictures with object outlines and ids;
and :func:`write_prediction_instances`, what ``pixelwise predict --instances`` writes per image.

Files, for an image with stem ``NAME`` in the output folder: ``NAME_instances.png`` (16-bit instance ids;
``.tif`` past 65535 objects), ``NAME_objects.json`` (``{"image", "height", "width", "encoding",
"objects": [...]}``, one :func:`~pixelwise.instances.objects` record per object with a COCO
``segmentation``), and ``NAME_outlines.png`` or, in ``pixelwise predict``, outlines and ids drawn on
``NAME_overlay.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.bundle import PREPROCESSING_DEFAULTS, PREPROCESSING_NAME, Preprocessing, read_preprocessing
from pixelwise.errors import unknown_name
from pixelwise.instances.objects import ENCODINGS, encode_polygons, encode_rle, has_pycocotools, objects
from pixelwise.instances.postprocess import class_map, semantic_probs, to_instances
from pixelwise.instances.scoring import default_method
from pixelwise.io import atomic_path

OUTLINE_ALPHA = 0.35
"""Opacity of the object colours inside the outlines of :func:`draw_instances`."""
UINT16_LIMIT = 65535
GOLDEN_ANGLE = 0.618033988749895
"""Hue step between consecutive object ids (fractions of a turn): neighbours get distant colours."""


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


def write_instance_outputs(
    out_dir: str | os.PathLike,
    name: str,
    labels: np.ndarray,
    probs: np.ndarray | torch.Tensor | None = None,
    image: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    encoding: str = "auto",
) -> dict[str, Path]:
    """Write one image's instances: ``NAME_instances.png``, ``NAME_objects.json`` and, given ``image``,
    ``NAME_outlines.png`` (:func:`draw_instances`) into ``out_dir``.

    Args:
        out_dir: output folder (created if missing).
        name: file stem.
        labels, probs, class_names: as :func:`~pixelwise.instances.objects` (``probs`` of the data's classes).
        image: the input image, for the outline picture.
        encoding: ``"rle"`` (COCO compressed RLE; needs pycocotools), ``"polygon"``, ``"none"``, or
            ``"auto"`` (RLE where pycocotools is installed, else polygons).

    Returns:
        ``{"labels": path, "objects": path[, "outlines": path]}``.

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
    return paths


def model_instance_settings(model: str | os.PathLike) -> dict[str, Any]:
    """``{"target", "separation_gap"}`` of a run directory, ``save_pretrained`` directory, ``.ckpt`` or
    ``.onnx`` file, from the ``preprocessing.json`` beside it; ``semantic`` and 0 when there is none.

    Raises:
        WeightsError: that ``preprocessing.json`` is damaged (see :func:`pixelwise.bundle.read_preprocessing`).
    """
    path = Path(model)
    for folder in (path / "model", path, path.parent / "model", path.parent):
        if (folder / PREPROCESSING_NAME).is_file():
            # only the target matters here: neither mean/std nor the model are needed
            facts = Preprocessing.from_dict(read_preprocessing(folder, require=()))
            return {"target": facts.target, "separation_gap": facts.separation_gap}
    return {key: PREPROCESSING_DEFAULTS[key] for key in ("target", "separation_gap")}


def write_prediction_instances(
    out_dir: str | os.PathLike,
    name: str,
    probabilities: np.ndarray,
    model: str | os.PathLike,
    image: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
    method: str = "auto",
) -> list[Path]:
    """What ``pixelwise predict --instances`` writes for one image: the instance labels and objects of its
    probabilities (post-processing as :func:`~pixelwise.instances.default_method` suits the model's
    training target, with its separation gaps closed) and, given ``image``, ``NAME_overlay.png``: the
    class overlay with the objects' outlines and ids.

    Args:
        out_dir: output folder.
        name: file stem.
        probabilities: the model's class probabilities ``float32 [K, H, W]``.
        model: the model path given to ``predict`` (its ``preprocessing.json`` tells the target).
        image: the input ``[C, H, W]`` in [0, 1], or None for no overlay.
        class_names: names of the model's classes (a boundary-target model's objects are "object").
        palette: ``[K, 3]`` uint8 class colours of the overlay; None: :func:`pixelwise.viz.default_palette`.
        method: ``auto``, ``components`` or ``watershed``.

    Returns:
        The files written.
    """
    from pixelwise.viz import default_palette, overlay, save_png

    settings = model_instance_settings(model)
    target = settings["target"]
    labels = to_instances(
        probabilities,
        default_method(target) if method == "auto" else method,
        target=target,
        close_gap=settings["separation_gap"],
    )
    probs = semantic_probs(probabilities, target)
    names = ["background", "object"] if target == "boundary" else class_names
    written = list(write_instance_outputs(out_dir, name, labels, probs, class_names=names).values())
    if image is not None:
        classes = class_map(probs)
        colors = palette if palette is not None and target != "boundary" else default_palette(probs.shape[0])
        written.append(Path(out_dir) / f"{name}_overlay.png")
        save_png(draw_instances(overlay(image, classes, np.asarray(colors)), labels), written[-1])
    return written
