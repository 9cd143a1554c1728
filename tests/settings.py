"""Settings shared by the test modules that train (imported as ``from settings import TINY_TRAIN``)."""

TINY_TRAIN = {
    "model": "unet",
    "encoder": "resnet18",
    "model_options": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "epochs": 2,
    "batch_size": 4,
    "crop": 64,
    "lr": 3e-3,
    "progress": False,
}
"""A three-level U-Net trained for two epochs on 64-pixel crops: seconds on a CPU."""
