"""CamVid as a COCO export: train from the COCO file and from the folder for the same steps, compare.

A real export, made the way a labelling tool makes one: every connected region of every class in
CamVid's masks becomes a COCO polygon, traced with scikit-image (``find_contours`` at level 0.5 on
the region with its holes filled, vertices at pixel coordinates + 0.5, COCO's pixel-centre
convention), and void pixels are left unannotated. The COCO layout reads the file with
``background: false`` (unannotated pixels are ignored, categories are classes 0..10, as in the
folder), so the two data sets differ only by polygon rasterisation. The script reports

1. how many labelled pixels the rasterised polygons give another class than the folder's masks
   (per split, and per class), and
2. the validation metrics of two runs with the same seed, steps and recipe, one per data set,
   both scored on the folder's own masks.

Usage::

    python benchmarks/camvid_coco.py --data ../shared/data/camvid --out /tmp/camvid-coco
    python benchmarks/camvid_coco.py --data ../shared/data/camvid --out /tmp/cc --images 12 --epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from pixelwise.data import SegmentationFolder, read_mask
from pixelwise.evaluate import evaluate
from pixelwise.training.config import TrainConfig
from pixelwise.training.run import train

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
VOID = 255
PIXEL_CENTRE = 0.5
"""COCO puts pixel (row, col)'s centre at (col + 0.5, row + 0.5); find_contours puts it at (col, row)."""
MIN_POLYGON_POINTS = 3


def region_polygons(region: np.ndarray) -> list[list[float]]:
    """The outer boundaries of one connected region as COCO polygons ``[x0, y0, x1, y1, ...]``.

    Holes are filled first: COCO paints every polygon of an object, so a hole's own boundary would
    fill the hole; the pixels inside belong to other regions, painted on top (smaller on top).
    """
    filled = np.pad(ndimage.binary_fill_holes(region), 1)
    polygons = []
    for contour in measure.find_contours(filled.astype(np.float32), 0.5):
        if len(contour) < MIN_POLYGON_POINTS + 1:
            continue
        yx = contour[:-1] - 1 + PIXEL_CENTRE  # drop the closing point and the padding
        polygons.append(np.round(yx[:, ::-1], 2).ravel().tolist())
    return polygons


def mask_annotations(mask: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """One COCO annotation per connected region of each class of ``mask`` (void left out)."""
    annotations = []
    for class_id in np.unique(mask):
        if class_id == VOID:
            continue
        regions, _ = ndimage.label(mask == class_id)
        for index, box in enumerate(ndimage.find_objects(regions), start=1):
            region = regions[box] == index
            polygons = region_polygons(region)
            if not polygons:
                continue
            offset = np.array([box[1].start, box[0].start] * (len(polygons[0]) // 2))
            shifted = [(np.asarray(p) + offset[: len(p)]).round(2).tolist() for p in polygons]
            annotations.append(
                {
                    "id": first_id + len(annotations),
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "segmentation": shifted,
                    "area": float(region.sum()),
                    "bbox": [box[1].start, box[0].start, box[1].stop - box[1].start, box[0].stop - box[0].start],
                    "iscrowd": 0,
                }
            )
    return annotations


def export_split(folder: Path, out: Path, split: str, limit: int | None) -> Path:
    """Write ``out/annotations/instances_<split>.json`` and link the images into ``out/<split>/``."""
    images_dir = out / split
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    masks = sorted((folder / split / "masks").glob("*.png"))[:limit]
    for image_id, mask_path in enumerate(masks, start=1):
        mask = read_mask(mask_path)
        image = folder / split / "images" / mask_path.name
        link = images_dir / image.name
        if not link.exists():
            os.symlink(image.resolve(), link)
        images.append({"id": image_id, "file_name": image.name, "height": mask.shape[0], "width": mask.shape[1]})
        annotations += mask_annotations(mask, image_id, len(annotations) + 1)
    categories = [{"id": k + 1, "name": name, "supercategory": "camvid"} for k, name in enumerate(CAMVID_CLASSES)]
    path = out / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def rasterisation_differences(folder: Path, coco: Path, split: str, files: list[str]) -> dict:
    """Labelled pixels (of the folder's masks) that the COCO masks give another class, overall and per
    class, and void pixels the COCO masks give a class (void inside a region's hole: COCO polygons
    have no holes)."""
    truth = SegmentationFolder(folder, split, files=files, mask_values={})
    drawn = SegmentationFolder(coco, split, layout_options={"background": False}, files=files)
    k = len(CAMVID_CLASSES)
    changed, labelled = np.zeros(k, np.int64), np.zeros(k, np.int64)
    void = void_labelled = 0
    for index in range(len(truth)):
        expected, got = truth.read_mask(index), drawn.read_mask(index)
        keep = expected != VOID
        labelled += np.bincount(expected[keep], minlength=k)
        changed += np.bincount(expected[keep & (got != expected)], minlength=k)
        void += int((~keep).sum())
        void_labelled += int((got[~keep] != VOID).sum())
    return {
        "changed": int(changed.sum()),
        "labelled": int(labelled.sum()),
        "per_class": (changed / np.maximum(labelled, 1)).tolist(),
        "void": void,
        "void_labelled": void_labelled,
    }


def run(data: Path, scored_on: Path, out: Path, recipe: dict, name: str, options: dict) -> dict:
    """Train on ``data`` with ``recipe``; return the metrics on the val split of ``scored_on`` (the folder's masks)."""
    config = TrainConfig(data=str(data), runs_dir=str(out / "runs"), name=name, **recipe, **options)
    result = train(config)
    return evaluate(result.run_dir / "model", scored_on, split="val", progress=False).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the CamVid folder (train/, val/)")
    parser.add_argument("--out", type=Path, required=True, help="working folder (COCO files, runs)")
    parser.add_argument("--images", type=int, default=None, help="use the first N images of each split")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    exports = {split: export_split(args.data, args.out / "coco", split, args.images) for split in ("train", "val")}
    names = {split: [Path(p).stem for p in sorted((args.out / "coco" / split).iterdir())] for split in exports}
    for split in exports:
        found = rasterisation_differences(args.data, args.out / "coco", split, names[split])
        share = found["changed"] / found["labelled"]
        print(f"{split}: {found['changed']} of {found['labelled']} labelled pixels differ ({share:.4%}); ")
        print(f"  {found['void_labelled']} of {found['void']} void pixels get a class (void inside a region's hole)")
        print(
            "  per class: " + ", ".join(f"{n} {v:.3%}" for n, v in zip(CAMVID_CLASSES, found["per_class"], strict=True))
        )
    recipe = {
        "model": "unet",
        "encoder": "resnet18",
        "epochs": args.epochs,
        "batch_size": 8,
        "crop": 128,
        "scale": 0.5,
        "samples_per_epoch": 160,
        "progress": False,
        "seed": 0,
        "deterministic": True,  # the same data must then give the same run: differences come from the data
    }
    folder_view = args.out / "folder-view"  # the folder layout, limited to the exported images
    for split in exports:
        for sub in ("images", "masks"):
            (folder_view / split / sub).mkdir(parents=True, exist_ok=True)
            for stem in names[split]:
                link = folder_view / split / sub / f"{stem}.png"
                if not link.exists():
                    os.symlink((args.data / split / sub / f"{stem}.png").resolve(), link)
    rows = {
        "folder": run(folder_view, folder_view, args.out, recipe, "folder", {}),
        "coco": run(args.out / "coco", folder_view, args.out, recipe, "coco", {"data_options": {"background": False}}),
    }
    print(f"\n{'data':<8} {'mIoU':>7} {'pixel acc':>9}  per-class IoU")
    for name, metrics in rows.items():
        per_class = " ".join(f"{v:.3f}" if v is not None else "n/a" for v in metrics["iou"])
        print(f"{name:<8} {metrics['mean_iou']:>7.4f} {metrics['accuracy']:>9.4f}  {per_class}")


if __name__ == "__main__":
    main()
