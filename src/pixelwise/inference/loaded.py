"""A trained model ready for inference: its weights, input normalisation and classes, loaded once.

:func:`load_model` reads a run directory, a saved model folder (through :class:`pixelwise.bundle.ModelBundle`)
or a training checkpoint; :class:`LoadedModel` predicts whole images the way training saw them. Evaluation,
prediction, export and the ONNX check all load models here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pixelwise.bundle import ModelBundle
from pixelwise.data import ClassInfo
from pixelwise.data.transforms import shift_image
from pixelwise.errors import ConfigError, WeightsError
from pixelwise.inference.tta import tta_average
from pixelwise.io import load_checkpoint
from pixelwise.models import SegmentationModel
from pixelwise.models.base import CONFIG_NAME
from pixelwise.models.geometry import forward_mirrored, uses_valid_convolution
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

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``[N, K, H, W]`` logits → probabilities: softmax, or sigmoid for a one-channel (binary) model."""
        return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(1)

    @torch.inference_mode()
    def predict_logits(self, image: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """``[C, H, W]`` or ``[N, C, H, W]`` image(s) in [0, 1] → ``[N, K, H, W]`` logits (whole image).

        The image is first shifted by ``mask_offset`` (as in training); a model trained at ``scale``
        sees the image resized by it; its scores are upsampled back.
        A valid-convolution model (UNet2015) predicts the mirror-padded image, see
        :func:`~pixelwise.models.geometry.forward_mirrored`.
        With ``tta`` (``"hflip"``, ``"flips"`` or ``"d4"``, see :mod:`pixelwise.inference.tta`) the probabilities
        of the transformed copies are averaged, and the logits returned are those of the average
        (log-probabilities, or the logit of a one-channel model), so that ``probabilities`` and
        ``argmax`` work on them as on plain logits.
        """
        batch = image[None] if image.ndim == 3 else image
        # in the image's own frame, before any flip: the offset is a fact of how the masks were drawn
        batch = shift_image(batch, self.mask_offset)
        if tta is not None:
            mean = tta_average(lambda x: self.probabilities(self._logits(x)), batch, tta)
            return torch.logit(mean, eps=1e-7) if mean.shape[1] == 1 else mean.clamp_min(1e-12).log()
        return self._logits(batch)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[-2:]
        device = next(self.model.parameters()).device
        batch = (batch.to(device) - self.mean.to(device)) / self.std.to(device)
        if self.scale != 1:
            scaled = (max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale)))
            batch = F.interpolate(batch, size=scaled, mode="bilinear", antialias=True)
        model = self.model.eval()
        # a valid-convolution model (UNet2015) sees the image mirror-padded by its border, as the paper tiles
        logits = (forward_mirrored(model, batch, model) if uses_valid_convolution(model) else model(batch)).float()
        if self.scale != 1:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.cpu()


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
