"""Segmentation losses by name, and weighted sums of them.

``get_loss("ce + 0.5*dice", mode="multiclass", ignore_index=255)`` returns an ``nn.Module``
called as ``loss(preds, target, weight_map=None)`` that gives a differentiable scalar.

===========  ===========================  ==========================  ===========
name         class                        modes                       weight_map
===========  ===========================  ==========================  ===========
``ce``       :class:`CrossEntropyLoss`    multiclass                  yes
``bce``      :class:`BCELoss`             binary, multilabel          yes
``focal``    :class:`FocalLoss`           all three                   yes
``dice``     :class:`DiceLoss`            all three                   no
``jaccard``  :class:`JaccardLoss`         all three                   no
``tversky``  :class:`TverskyLoss`         all three                   no
``lovasz``   :class:`LovaszLoss`          all three                   no
``generalized_dice`` :class:`GeneralizedDiceLoss` all three           no
``mcc``      :class:`MCCLoss`             all three                   no
``cldice``   :class:`ClDiceLoss`          all three                   no
===========  ===========================  ==========================  ===========

Keras segmentation_models names (``categorical_crossentropy``, ``bce_dice_loss``, ...) are
accepted too and stand for the sums they define there (see :mod:`pixelwise.losses.aliases`).

The shapes of each mode are fixed in :mod:`pixelwise.modes`; the shared policies (ignored
pixels, empty masks, weight maps) are described in :mod:`pixelwise.losses.base`, the
absent-class policy of the overlap losses in :mod:`pixelwise.losses.overlap`.
"""

from pixelwise.losses.aliases import KERAS_ALIASES
from pixelwise.losses.base import SegmentationLoss, build_loss, get_loss_class, list_losses, register_loss
from pixelwise.losses.cldice import ClDiceLoss, soft_skeleton
from pixelwise.losses.combine import CombinedLoss, LossSpec, get_loss, parse_loss_spec
from pixelwise.losses.lovasz import LovaszLoss
from pixelwise.losses.overlap import DiceLoss, JaccardLoss, TverskyLoss
from pixelwise.losses.pixel import BCELoss, CrossEntropyLoss, FocalLoss
from pixelwise.losses.region import GeneralizedDiceLoss, MCCLoss

__all__ = [
    "KERAS_ALIASES",
    "BCELoss",
    "ClDiceLoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "LossSpec",
    "LovaszLoss",
    "MCCLoss",
    "SegmentationLoss",
    "TverskyLoss",
    "build_loss",
    "get_loss",
    "get_loss_class",
    "list_losses",
    "parse_loss_spec",
    "register_loss",
    "soft_skeleton",
]
