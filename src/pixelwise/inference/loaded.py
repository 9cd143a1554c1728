"""A trained model ready for inference: its weights, input normalisation and classes, loaded once.

:func:`load_model` reads a run directory, a saved model folder (through :class:`pixelwise.bundle.ModelBundle`)
or a training checkpoint into a :class:`LoadedModel`: the network with the input normalisation, scale,
offset and classes it was trained with, and the test-time augmentation stored with it. Evaluation,
prediction, export and the ONNX check all load models here and predict through
:class:`~pixelwise.inference.Predictor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelwise.bundle import ModelBundle
from pixelwise.data import ClassInfo
from pixelwise.errors import ConfigError, WeightsError
from pixelwise.io import load_checkpoint
from pixelwise.models import SegmentationModel
from pixelwise.models.base import CONFIG_NAME
from pixelwise.models.registry import load_state


@dataclass
class LoadedModel:
    """A model ready for inference with the input normalisation and classes it was trained with."""

    model: SegmentationModel
    mean: torch.Tensor
    std: torch.Tensor
    classes: ClassInfo
    run_dir: Path | None
    scale: float = 1.0
    target: str = "semantic"
    """What the model was trained on: ``semantic`` or ``boundary`` (background / interior / boundary)."""
    separation_gap: int = 0
    """Pixels cut from each side of touching objects in the training target (undone by ``to_instances``)."""
    mask_offset: tuple[float, float] = (0.0, 0.0)
    """``[dy, dx]`` pixels: the images are shifted by this before the network (``TrainConfig.mask_offset``)."""
    mask_values: dict[int, int] | None = None
    """Stored mask values the training data read as other class ids (``{255: 1}`` for 0/255 binary masks;
    None: not recorded, found from the evaluation masks)."""
    tta: str | None = None
    """The test-time augmentation stored with the model (``TrainConfig.tta``; a name of
    :data:`~pixelwise.modes.TTA_MODES`), used by :class:`~pixelwise.inference.Predictor` unless given another;
    None: none."""


def load_model(path: str | Path) -> LoadedModel:
    """Load a run directory, a ``save_pretrained`` directory, or a run's ``.ckpt`` file.

    A ``.ckpt`` is read with the ``model/`` folder of its run directory (``runs/<name>/model``), which
    gives the architecture, normalisation and classes; the checkpoint gives the weights.

    Raises:
        ConfigError: the path does not exist or is none of the above.
        WeightsError: a damaged ``config.json``, ``preprocessing.json``, weights or checkpoint (the message
            names the file and what is wrong with it).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model path {str(path)!r} does not exist; pass a run directory (runs/<name>).")
    checkpoint = path if path.suffix == ".ckpt" else None
    run_dir = path.parent if checkpoint else (path if (path / "model" / CONFIG_NAME).is_file() else None)
    model_dir = run_dir / "model" if run_dir else path
    if not (model_dir / CONFIG_NAME).is_file():
        raise ConfigError(
            f"{str(path)!r} is neither a run directory (with model/) nor a saved model (with {CONFIG_NAME}); "
            "pass runs/<name> from `pixelwise train` or a folder written by model.save_pretrained()"
            + (f" (a .ckpt is read with {str(model_dir / CONFIG_NAME)!r}, which is missing)." if checkpoint else ".")
        )
    bundle = ModelBundle.load(model_dir)
    model, preprocessing = bundle.model, bundle.preprocessing
    if checkpoint:
        load_state(model, _checkpoint_weights(checkpoint), checkpoint, repr(str(model_dir / CONFIG_NAME)))
    shape = (1, -1, 1, 1)
    return LoadedModel(
        model.eval(),
        torch.tensor(preprocessing.mean).view(shape),
        torch.tensor(preprocessing.std).view(shape),
        bundle.classes,
        run_dir,
        preprocessing.scale,
        target=preprocessing.target,
        separation_gap=preprocessing.separation_gap,
        mask_offset=preprocessing.mask_offset,
        mask_values=preprocessing.mask_values,
        tta=preprocessing.tta,
    )


def _checkpoint_weights(checkpoint: Path) -> dict[str, Any]:
    """The model's weights in a training checkpoint: its ``state_dict`` entries ``model.*``, unprefixed.

    Raises:
        WeightsError: the file is not a dict with a ``state_dict`` holding ``model.*`` entries.
    """
    content = load_checkpoint(checkpoint)
    state = content.get("state_dict") if isinstance(content, dict) else None
    where = f"checkpoint {str(checkpoint)!r} is not a pixelwise training checkpoint"
    fix = "pass the run directory, or its last.ckpt / best.ckpt"
    if not isinstance(state, dict):
        found = f"keys {sorted(map(str, content))[:5]}" if isinstance(content, dict) else f"a {type(content).__name__}"
        raise WeightsError(f"{where}: it has no 'state_dict' (it holds {found}); {fix}.")
    weights = {key.removeprefix("model."): value for key, value in state.items() if str(key).startswith("model.")}
    if not weights:
        raise WeightsError(f"{where}: its 'state_dict' has no 'model.*' weights; {fix}.")
    return weights
