"""Settings and small data shared by test modules (imported as ``from settings import TINY_TRAIN``)."""

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

TINY_TRAIN = {
    "model": "unet",
    "encoder": "resnet18",
    "model_options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "epochs": 2,
    "batch_size": 4,
    "crop": 64,
    "samples_per_epoch": 8,
    "lr": 3e-3,
    "progress": False,
}
"""A three-level U-Net trained for two epochs of 8 crops of 64 pixels: seconds on a CPU."""


def edge_pairs(root: Path, offset: tuple[float, float], n: int = 6) -> Path:
    """Pairs whose image edges sit ``-offset`` from the mask edges: the image is the mask, blurred
    (its steepest steps on the mask's edges), then moved by ``-offset`` pixels."""
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        yy, xx = np.mgrid[:80, :80]
        mask = np.zeros((80, 80), np.uint8)
        for cy, cx, r in rng.uniform((15, 15, 6), (65, 65, 14), (5, 3)):
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
        image = ndimage.shift(ndimage.gaussian_filter(mask * 200.0, 1.0), [-v for v in offset], order=1, mode="nearest")
        Image.fromarray((image + 20).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root
