"""Fingerprints with chosen facts, for the tests of the training plan's rules."""

from __future__ import annotations

from pixelwise.data.fingerprint import Fingerprint


def fingerprint(
    *,
    side: int = 256,
    channels: int = 1,
    shares: tuple[float, ...] = (0.7, 0.3),
    widths: tuple[float, ...] = (40.0, 30.0),
    extents: tuple[float, ...] = (0.3, 0.3),
    vertical: float = 0.0,
    horizontal: float = 0.0,
    transpose: float = 0.0,
    offset: list[float] | None = None,
) -> Fingerprint:
    """A fingerprint with the given facts (everything else plain)."""
    k = len(shares)
    objects = [
        {
            "count_per_image": 3,
            "median_area": 100,
            "median_width": w,
            "weighted_width": w,
            "median_extent": e,
            "weighted_extent": e,
            "components": 30,
        }
        for w, e in zip(widths, extents, strict=True)
    ]
    orientation = {
        "vertical_asymmetry": vertical,
        "vertical_chance": 0.01,
        "horizontal_asymmetry": horizontal,
        "horizontal_chance": 0.01,
        "transpose_asymmetry": transpose,
        "transpose_chance": 0.01,
    }
    return Fingerprint(
        images=20,
        sampled=20,
        sizes={
            "height": {"min": side, "median": side, "max": side},
            "width": {"min": side, "median": side, "max": side},
        },
        channels=channels,
        bit_depth=8,
        intensity={},
        num_classes=k,
        class_names=[f"c{i}" for i in range(k)],
        class_pixels=list(shares),
        class_presence=[1.0] * k,
        ignored_share=0.0,
        objects=objects,
        mask_offset=offset,
        measured_offset=[None, None],
        orientation=orientation,
        split="train",
        root="r",
    )
