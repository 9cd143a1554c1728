"""Segmentation models: the registry, the encoder wrapper and one file per architecture."""

from pixelwise.models.base import SegmentationModel
from pixelwise.models.encoders import TimmEncoder
from pixelwise.models.registry import create_model, from_pretrained, get_model_class, list_models, register_model
from pixelwise.models.unet import Unet
from pixelwise.models.unet2015 import UNet2015

__all__ = [
    "SegmentationModel",
    "TimmEncoder",
    "UNet2015",
    "Unet",
    "create_model",
    "from_pretrained",
    "get_model_class",
    "list_models",
    "register_model",
]
