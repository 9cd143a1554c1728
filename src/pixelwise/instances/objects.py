"""One record per object, and object masks as COCO RLE or polygons.

Coordinates: ``bbox`` is ``[y0, x0, y1, x1]`` in pixels, half-open (``labels[y0:y1, x0:x1]`` holds the
object; scikit-image's ``regionprops`` order); ``centroid`` is ``[y, x]``, the mean of the object's
pixel centres. The COCO fields (``segmentation``) use COCO's own ``x, y`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pixelwise.instances.postprocess import _as_numpy
from pixelwise.instances.postprocess import class_map as argmax_classes

ENCODINGS = ("auto", "rle", "polygon", "none")


def objects(
    labels: np.ndarray,
    probs: np.ndarray | torch.Tensor | None = None,
    class_map: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Measure every object of an instance label image.

    Args:
        labels: instance labels, 0 = background.
        probs: class probabilities ``[K, H, W]`` (of the data's classes: for a boundary-target model use
            :func:`~pixelwise.instances.semantic_probs`); gives each object's class and ``score``.
        class_map: class id per pixel ``[H, W]``; default: the argmax of ``probs``; without either every
            object has class 1.
        class_names: names of the class ids, to add ``class_name``.

    Returns:
        One dict per object, by id: ``id``, ``class`` (the most frequent non-background class of its
        pixels), ``score`` (mean probability of that class over its pixels; None without ``probs``),
        ``area`` (pixels), ``bbox`` ``[y0, x0, y1, x1]``, ``centroid`` ``[y, x]``, and ``class_name``.

    Shape:
        ``labels`` int ``[H, W]``; ``probs`` ``[K, H, W]``; ``class_map`` int ``[H, W]``.
    """
    labels = np.asarray(labels)
    flat = labels.ravel().astype(np.int64)
    count = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=count)
    yy, xx = np.indices(labels.shape)
    cy = np.bincount(flat, weights=yy.ravel(), minlength=count)
    cx = np.bincount(flat, weights=xx.ravel(), minlength=count)
    probs_np = _as_numpy(probs) if probs is not None else None
    if class_map is None and probs_np is not None:
        class_map = argmax_classes(probs_np) if probs_np.shape[0] > 1 else (probs_np[0] > 0.5).astype(np.int64)
    if class_map is not None:
        class_map = np.asarray(class_map).astype(np.int64)
        k = int(max(class_map.max(initial=0), 1)) + 1
        votes = np.bincount(flat * k + class_map.ravel(), minlength=count * k).reshape(count, k)
        votes[:, 0] = 0  # an object's class is a foreground class
        classes = np.where(votes.sum(1) > 0, votes.argmax(1), 0)
    else:
        classes = np.ones(count, np.int64)
    records = []
    for label, box in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
        if box is None:
            continue
        cls = int(classes[label])
        score = None
        if probs_np is not None:
            channel = probs_np[min(cls, probs_np.shape[0] - 1)]
            score = float(channel[box][labels[box] == label].mean())
        record = {
            "id": label,
            "class": cls,
            "score": score,
            "area": int(area[label]),
            "bbox": [box[0].start, box[1].start, box[0].stop, box[1].stop],
            "centroid": [float(cy[label] / area[label]), float(cx[label] / area[label])],
        }
        if class_names is not None and 0 <= cls < len(class_names):
            record["class_name"] = str(class_names[cls])
        records.append(record)
    return records


def has_pycocotools() -> bool:
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        return False
    return True


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a boolean ``[H, W]`` mask: ``{"size": [H, W], "counts": str}`` (pycocotools).

    Raises:
        ImportError: pycocotools is not installed (``pip install 'pixelwise[instances]'``).
    """
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer and hole contours of a boolean ``[H, W]`` mask as COCO polygons ``[x0, y0, x1, y1, ...]``.

    Contours run through pixel edges' midpoints (``skimage.measure.find_contours`` at level 0.5 on the
    mask padded by one pixel), so a single pixel gives a diamond around its centre.
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, np.float32), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        points = contour[:, ::-1] - 1  # (row, col) → (x, y), undo the padding
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons
