"""pixelwise: image segmentation on PyTorch.

Models (``pixelwise.Unet``, ``pixelwise.FCN8s``, ... or ``pixelwise.create_model(arch, ...)``)
are plain ``nn.Module``s mapping ``[N, in_channels, H, W]`` images to ``[N, classes, H, W]``
class scores for any H and W. ``pixelwise.Predictor`` predicts images of any size in tiles.
"""

from pixelwise import losses, metrics
from pixelwise._version import __version__
from pixelwise.convert import from_smp
from pixelwise.errors import (
    ConfigError,
    DataError,
    ExportError,
    InputSizeError,
    InputTypeError,
    PixelwiseError,
    ShapeError,
    WeightsError,
)
from pixelwise.inference import Predictor, predict_arrays
from pixelwise.keras_model import KerasModel
from pixelwise.models import *  # noqa: F403
from pixelwise.models import __all__ as _models_all
from pixelwise.training.fit import fit

__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "InputSizeError",
    "InputTypeError",
    "KerasModel",
    "PixelwiseError",
    "Predictor",
    "predict_arrays",
    "ShapeError",
    "WeightsError",
    "__version__",
    "fit",
    "from_smp",
    "losses",
    "metrics",
    *_models_all,
]
