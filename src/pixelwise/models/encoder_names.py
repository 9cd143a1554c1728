"""Encoder names of segmentation_models_pytorch (SMP) and Keras segmentation_models → timm model names.

A user switching from either library keeps the encoder name they know: ``Unet("efficientnet-b0")``
(SMP) and ``Unet("efficientnetb0")`` (Keras) build timm's equivalent model. Where the equivalent has
the same architecture but another origin for its pretrained weights (SMP's ``efficientnet-bN`` come
from lukemelas' efficientnet-pytorch, Keras' ResNets from MXNet), a warning says so once per name:
checkpoints of the other library then need a conversion, and ImageNet weights are timm's.

Names timm knows itself (``resnet34``, ``densenet121``, ``vgg16``, ...) need no entry.
"""

from __future__ import annotations

import warnings

_B = range(8)  # EfficientNet-B0 … B7

SMP_ENCODER_NAMES: dict[str, str] = {
    # lukemelas' efficientnet-pytorch is a port of the TF models: "same" padding and TF BatchNorm, as tf_*
    **{f"efficientnet-b{i}": f"tf_efficientnet_b{i}" for i in _B},
    # SMP builds these with timm's EfficientNet (symmetric padding) and loads TF-ported weights into it
    **{f"timm-efficientnet-b{i}": f"efficientnet_b{i}" for i in (*_B, 8)},
    "timm-efficientnet-l2": "efficientnet_l2",
    **{f"timm-tf_efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)},
    # Cadene's pretrainedmodels SENets: timm keeps their exact structure as legacy_*
    "senet154": "legacy_senet154",
    **{f"se_resnet{d}": f"legacy_seresnet{d}" for d in (50, 101, 152)},
    "se_resnext50_32x4d": "legacy_seresnext50_32x4d",
    "se_resnext101_32x4d": "legacy_seresnext101_32x4d",
    "inceptionresnetv2": "inception_resnet_v2",
    "inceptionv4": "inception_v4",
    "mobilenet_v2": "mobilenetv2_100",
    "xception": "legacy_xception",
}
"""SMP encoder name → timm model name, for SMP names timm does not know as they are. SMP's other
``timm-*`` names (``timm-regnetx_002``, ``timm-skresnet18``, ``timm-res2net50_26w_4s``, ...) are timm's
model with the prefix removed; ``mit_b0`` … ``mit_b5`` are pixelwise's own encoders."""

KERAS_BACKBONE_NAMES: dict[str, str] = {
    **{f"seresnet{d}": f"seresnet{d}" for d in (18, 34, 50, 101, 152)},
    "resnext50": "resnext50_32x4d",
    "resnext101": "resnext101_32x4d",
    "seresnext50": "seresnext50_32x4d",
    "seresnext101": "seresnext101_32x4d",
    "senet154": "legacy_senet154",
    "inceptionv3": "inception_v3",
    "inceptionresnetv2": "inception_resnet_v2",
    "mobilenet": "mobilenetv1_100",
    "mobilenetv2": "mobilenetv2_100",
    # keras.applications' EfficientNets use TF "same" padding, as timm's tf_* models
    **{f"efficientnetb{i}": f"tf_efficientnet_b{i}" for i in _B},
}
"""Keras segmentation_models backbone name → timm model name (``resnet18``, ``densenet121``, ``vgg16``,
... are timm names already)."""

_SAME_ARCHITECTURE = "the same architecture as {name!r} of {origin}, but other module names and ImageNet weights"
_NOTES: dict[str, str] = {
    **{
        f"efficientnet-b{i}": _SAME_ARCHITECTURE.format(
            name=f"efficientnet-b{i}", origin="lukemelas' efficientnet-pytorch"
        )
        + " (and no unused conv_head)"
        for i in _B
    },
    **{f"timm-efficientnet-b{i}": "the same architecture as SMP's, without its unused conv_head" for i in (*_B, 8)},
    **{
        f"efficientnetb{i}": _SAME_ARCHITECTURE.format(name=f"efficientnetb{i}", origin="keras.applications")
        for i in _B
    },
    **{
        name: _SAME_ARCHITECTURE.format(name=name, origin="qubvel's classification_models")
        for name in (
            "resnext50",
            "resnext101",
            "seresnext50",
            "seresnext101",
            *(f"seresnet{d}" for d in (18, 34, 50, 101, 152)),
        )
    },
    "mobilenet_v2": "its deepest feature is the last block's (320 channels), not SMP's final 1×1 conv (1280)",
    "inceptionv4": "its stride-4 feature is tapped after another block than SMP's (160 channels, not 64)",
}
"""Names whose timm equivalent differs from the other library's encoder (origin of the weights, module names,
or the layers the features are taken from): a warning says how, once per name."""

_warned: set[str] = set()


def resolve_encoder_name(name: str, known: set[str] | frozenset[str] = frozenset()) -> str:
    """The timm model name for an encoder ``name`` given in timm's, SMP's or Keras segmentation_models' spelling.

    Args:
        name: e.g. ``"resnet34"``, ``"tu-convnext_tiny"`` (SMP's prefix for timm models),
            ``"efficientnet-b0"`` or ``"se_resnext50_32x4d"`` (SMP), ``"efficientnetb0"`` (Keras).
        known: names to return unchanged (pixelwise's own encoders, e.g. ``mit_b0``).

    Returns:
        The timm name, or ``name`` itself (without ``tu-``) when no table has it; whether timm knows
        it is checked by the caller.

    Example:
        >>> resolve_encoder_name("timm-regnetx_002")
        'regnetx_002'
    """
    if name in known:
        return name
    if name.startswith("tu-"):
        return name.removeprefix("tu-")
    resolved = SMP_ENCODER_NAMES.get(name) or KERAS_BACKBONE_NAMES.get(name)
    if resolved is None and name.startswith("timm-"):
        resolved = name.removeprefix("timm-")
    if resolved is None:
        return name
    if name in _NOTES and name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"encoder {name!r} is built as timm's {resolved!r}: {_NOTES[name]}. Checkpoints of the other "
            "library need a conversion; pretrained weights are timm's.",
            UserWarning,
            stacklevel=3,
        )
    return resolved


def encoder_aliases() -> list[str]:
    """Every SMP and Keras name the tables translate (for "did you mean" suggestions)."""
    return sorted({*SMP_ENCODER_NAMES, *KERAS_BACKBONE_NAMES})
