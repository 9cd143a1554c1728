"""The ``cvat`` layout: CVAT Segmentation mask 1.1 export (labelmap.txt).

Placeholder: not implemented yet; never detected.
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.layouts.base import Layout, LayoutScan

NAME = "cvat"


def detect(root: Path) -> bool:
    return False


def splits(root: Path) -> list[str]:
    return []


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    raise NotImplementedError(f"the {NAME} layout is not implemented yet")


LAYOUT = Layout(NAME, "CVAT Segmentation mask 1.1 export (labelmap.txt)", detect, splits, scan)
