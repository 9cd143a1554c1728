"""pixelwise: image segmentation on PyTorch.

Models (``pixelwise.Unet``, ``pixelwise.FCN8s``, ... or ``pixelwise.create_model(arch, ...)``)
are plain ``nn.Module``s mapping ``[N, in_channels, H, W]`` images to ``[N, classes, H, W]``
class scores for any H and W. ``pixelwise.Predictor`` predicts images of any size in tiles.

``pixelwise.fit`` and ``pixelwise.KerasModel`` are imported on first use: they bring in Lightning, which
would add about 2 s to every ``import pixelwise`` (and every ``pixelwise`` command) that never trains.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from pixelwise.models import *  # noqa: F403
from pixelwise.models import __all__ as _models_all

if TYPE_CHECKING:  # for type checkers and IDEs; at run time :func:`__getattr__` imports them on first use
    from pixelwise.keras_model import KerasModel
    from pixelwise.training.fit import fit

_ON_FIRST_USE = {"fit": "pixelwise.training.fit", "KerasModel": "pixelwise.keras_model"}
"""Top-level names imported when first read (PEP 562), and the module each comes from."""

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


def __getattr__(name: str) -> Any:
    """Import a name of :data:`_ON_FIRST_USE` when it is first read (then it is an ordinary attribute)."""
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'pixelwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
