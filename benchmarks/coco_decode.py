"""COCO polygon rasterisation: pixelwise's own decoder against pycocotools, same polygons, same process.

Draws ``--objects`` random star-shaped polygons of ``--vertices`` vertices on a 640×480 image, checks that
both decoders give the same pixels, and prints the median time per object over 5 passes (after a warm-up).

Usage::

    python benchmarks/coco_decode.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from pixelwise.data.layouts.coco_masks import decode_segmentation

HEIGHT, WIDTH = 480, 640
PASSES = 5


def random_polygons(count: int, vertices: int, seed: int = 0) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    polygons = []
    for _ in range(count):
        cx, cy = rng.uniform(50, WIDTH - 50), rng.uniform(50, HEIGHT - 50)
        angles, radii = np.sort(rng.uniform(0, 2 * np.pi, vertices)), rng.uniform(10, 50, vertices)
        xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        polygons.append([xy.ravel().tolist()])
    return polygons


def median_ms(decode, polygons) -> float:
    decode(polygons)  # warm-up
    times = []
    for _ in range(PASSES):
        start = time.perf_counter()
        decode(polygons)
        times.append((time.perf_counter() - start) * 1000 / len(polygons))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--vertices", type=int, default=60)
    args = parser.parse_args()
    from pycocotools import mask as mask_api  # the reference; a test dependency, not a pixelwise one

    warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' NumPy 2 warning on every call
    polygons = random_polygons(args.objects, args.vertices)

    def reference(p):
        return mask_api.decode(mask_api.merge(mask_api.frPyObjects(p, HEIGHT, WIDTH))).astype(bool)

    same = all(np.array_equal(decode_segmentation(p, HEIGHT, WIDTH), reference(p)) for p in polygons)
    ours = median_ms(lambda ps: [decode_segmentation(p, HEIGHT, WIDTH) for p in ps], polygons)
    theirs = median_ms(lambda ps: [reference(p) for p in ps], polygons)
    print(f"{args.objects} polygons of {args.vertices} vertices on {WIDTH}x{HEIGHT}: identical pixels: {same}")
    print(f"| decoder | ms per object |\n|---|---|\n| pixelwise | {ours:.3f} |\n| pycocotools | {theirs:.3f} |")


if __name__ == "__main__":
    main()
