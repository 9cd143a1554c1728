"""The ``generic`` layout: generic folders (masks paired by a suffix rule, split lists).

Placeholder: not implemented yet; never detected.
"""

from __future__ import annotations

from pathlib import Path

from pixelwise.data.layouts.base import Layout, LayoutScan

NAME = "generic"


def detect(root: Path) -> bool:
    return False


def splits(root: Path) -> list[str]:
    return []


def scan(root: Path, split: str | None, **options: object) -> LayoutScan:
    raise NotImplementedError(f"the {NAME} layout is not implemented yet")


LAYOUT = Layout(NAME, "generic folders (masks paired by a suffix rule, split lists)", detect, splits, scan)
