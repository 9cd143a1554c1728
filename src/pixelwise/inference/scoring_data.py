"""The labelled data a trained model is scored on (``evaluate``, ``tune-instances``): read as the model needs it.

One place decides how a data split is read for a :class:`~pixelwise.inference.loaded.LoadedModel`: with the
model's classes (a boundary-target model's three outputs are not the data's classes, so its masks keep their
own), its ignore value, the layout and layout options the run was trained with when the data are its training
data, and the layout's mask values (Cityscapes' labelId → trainId, ...) where it has them, else the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pixelwise.data import SegmentationFolder
from pixelwise.errors import ConfigError
from pixelwise.inference.loaded import LoadedModel
from pixelwise.modes import IGNORE_INDEX


def scoring_dataset(
    loaded: LoadedModel,
    data: str | Path,
    split: str | None,
    *,
    files: str | list[str] | None = None,
    format: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
    ignore_index: int | None = None,
    instances: bool = False,
    purpose: str = "evaluate",
) -> SegmentationFolder:
    """The images and masks of ``data``'s ``split`` for scoring ``loaded``.

    Args:
        format, layout_options: the layout; both None: the run's own when ``data`` is its training data.
        ignore_index: the mask value to ignore; None: the model's (255, which binary 0/255 masks read as
            class 1, is then left to the layout).
        instances: also read instance labels.
        purpose: the verb of the error message ("evaluate", "tune").

    Raises:
        ConfigError: the images have another number of channels than the model takes.
    """
    ignore = loaded.classes.ignore_index if ignore_index is None else ignore_index
    layout = {"format": format, "layout_options": layout_options}
    if format is None and layout_options is None:  # the training data again: read it as training did
        layout = training_layout(loaded.run_dir, data)
    dataset = SegmentationFolder(
        data,
        split=split,
        num_classes=None if loaded.target == "boundary" else len(loaded.classes.names),
        ignore_index=None if ignore_index is None and ignore == IGNORE_INDEX else ignore,
        files=files,
        instances=instances,
        **layout,
    )
    if dataset.layout.mask_values is None:
        dataset.mask_values = loaded.mask_values
    if dataset.in_channels != loaded.model.in_channels:
        raise ConfigError(
            f"the images in {str(data)!r} have {dataset.in_channels} channels but the model expects "
            f"{loaded.model.in_channels}; {purpose} on data like the training data."
        )
    return dataset


def training_layout(run_dir: Path | None, data: str | Path) -> dict[str, Any]:
    """The run's ``data_format`` and ``data_options`` when ``data`` is its training data (else none)."""
    path = None if run_dir is None else Path(run_dir) / "config.yaml"
    config = yaml.safe_load(path.read_text()) if path is not None and path.is_file() else {}
    config = config if isinstance(config, dict) else {}
    same = bool(config.get("data")) and Path(config["data"]).expanduser().resolve() == Path(data).expanduser().resolve()
    if not same:
        return {"format": None, "layout_options": None}
    return {"format": config.get("data_format"), "layout_options": config.get("data_options") or None}
