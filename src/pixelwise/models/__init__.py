"""Segmentation models: the registry, the encoder wrapper and one file per architecture."""

from pixelwise.models.base import SegmentationModel
from pixelwise.models.deeplab import DeepLabV3, DeepLabV3Plus
from pixelwise.models.dpt import DPT
from pixelwise.models.encoders import TimmEncoder
from pixelwise.models.fcn import FCN8s, FCN16s, FCN32s
from pixelwise.models.fpn import FPN
from pixelwise.models.linknet import Linknet
from pixelwise.models.manet import MAnet
from pixelwise.models.mit import MixTransformerEncoder
from pixelwise.models.pan import PAN
from pixelwise.models.pspnet import PSPNet
from pixelwise.models.registry import create_model, from_pretrained, get_model_class, list_models, register_model
from pixelwise.models.segformer import Segformer
from pixelwise.models.segnet import SegNet
from pixelwise.models.unet import Unet
from pixelwise.models.unet2015 import UNet2015
from pixelwise.models.unetplusplus import UnetPlusPlus
from pixelwise.models.upernet import UPerNet

__all__ = [
    "DPT",
    "FPN",
    "PAN",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FCN8s",
    "FCN16s",
    "FCN32s",
    "Linknet",
    "MAnet",
    "MixTransformerEncoder",
    "PSPNet",
    "SegNet",
    "Segformer",
    "SegmentationModel",
    "TimmEncoder",
    "UNet2015",
    "UPerNet",
    "Unet",
    "UnetPlusPlus",
    "create_model",
    "from_pretrained",
    "get_model_class",
    "list_models",
    "register_model",
]
