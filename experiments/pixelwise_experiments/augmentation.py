"""``augmentation``: none vs light vs strong (elastic) augmentation with few training slices, on ISBI 2012.

The U-Net paper's claim: with very few annotated images, augmentation — above all elastic deformation —
teaches the invariances the data cannot, so "a few annotated images go far"; the gain should be largest
when the training set is smallest. The same U-Net trains on 5 or 20 slices with each preset for the same
number of steps (so 5 slices are seen four times as often as 20).
"""

from __future__ import annotations

from pixelwise_experiments.base import LargerGain, Metric, Ordered, Study, Variant
from pixelwise_experiments.unet_vs_fcn import (
    BOUNDARY_F1,
    ISBI_BASE,
    ISBI_EVAL,
    ISBI_LAYOUT,
    MEMBRANE_F1,
    UNET_OPTIONS,
)

SIZES = {5: "0[0-4]", 20: "[01]?"}
"""Training slices → the file glob that selects them. 10 slices would make 27 runs instead of 18."""
PRESETS = ("none", "light", "strong")


def _variants() -> tuple[Variant, ...]:
    return tuple(
        Variant(
            f"{preset}-{size}",
            {"model": "unet", "model_options": UNET_OPTIONS, "augment": preset, "train_files": files},
            preset,
            f"{size} slices",
        )
        for size, files in SIZES.items()
        for preset in PRESETS
    )


small, large = min(SIZES), max(SIZES)
STUDY = Study(
    name="augmentation",
    claim="Elastic deformation makes a few annotated images go far: strong > light > none, with the "
    "largest gain when there are fewest training images.",
    source="Ronneberger, Fischer, Brox, MICCAI 2015, sections 1 and 3.1",
    dataset="isbi2012-em",
    layout=ISBI_LAYOUT,
    base=ISBI_BASE,
    variants=_variants(),
    steps=40,
    epochs=1,
    measured="all runs 13.3 min at --budget 1 on a 2-core CPU, 1 thread (docs/experiments)",
    metrics=(MEMBRANE_F1, BOUNDARY_F1, Metric("pixel_error", "pixel error", higher_is_better=False, digits=4)),
    claims=(
        *(
            Ordered(
                f"strong > light > none in membrane F1 with {size} slices",
                MEMBRANE_F1,
                (f"strong-{size}", f"light-{size}", f"none-{size}"),
            )
            for size in SIZES
        ),
        LargerGain(
            f"strong augmentation gains more over none with {small} slices than with {large}",
            MEMBRANE_F1,
            (f"strong-{small}", f"none-{small}"),
            (f"strong-{large}", f"none-{large}"),
        ),
    ),
    notes=(
        f"Training slices: {small} (00-04) or {large} (00-19); U-Net with a ResNet-18 encoder and a "
        "full-resolution stem as in configs/isbi2012.yaml; 256×256 crops, batch 4, CE + Dice, AdamW. "
        "`none`: random crops only; `light`: + flips and 90° rotations; `strong`: + scale/rotation, elastic "
        "deformation, intensity jitter, blur and noise.",
        "Sizes 5 and 20 only (not 10): three sizes × three presets × three seeds would be 27 runs instead of "
        "18; with a larger `--budget` the step count grows, not the grid.",
    ),
    **ISBI_EVAL,
)
