"""``unet-vs-fcn``: U-Net vs FCN-8s with the same encoder on the ISBI 2012 EM membranes (Ronneberger et al. 2015).

The paper's claim: a contracting path and a symmetric expanding path that copies and concatenates encoder
features at every scale localises far better than FCN's upsampled class scores, so on the thin (1-3 px)
membranes the U-Net has higher membrane F1 and boundary F1 and lower pixel error. Both use a ResNet-18
encoder from scratch, the U-Net paper's augmentation (``strong``: elastic deformation and more) and
the same steps.
"""

from __future__ import annotations

from pixelwise_experiments.base import Metric, Ordered, Study, Variant

ISBI_CLASSES = ("cell", "membrane")
ISBI_LAYOUT = ("train/images", "train/masks")
ISBI_BASE = {
    "classes": 2,
    "train_split": "train",
    "train_files": "[01]?",  # slices 00-19 (see the data README)
    "val_split": "train",
    "val_files": "20",  # the in-training monitor only; every run is scored on slices 20-24
    "encoder": "resnet18",
    "crop": 256,
    "batch_size": 4,
    "augment": "strong",
    "loss": "ce+dice",
    "optimizer": "adamw",
    "lr": 2e-3,
    "scheduler": "cosine",
    "warmup_epochs": 0.1,
}
ISBI_EVAL = {"eval_split": "train", "eval_files": "2[0-4]", "panel_crop": 192, "class_names": ISBI_CLASSES}
UNET_OPTIONS = {"decoder_channels": [128, 64, 32, 16, 16], "decoder_full_resolution_channels": 16}
MEMBRANE_F1 = Metric("f1_membrane", "membrane F1")
BOUNDARY_F1 = Metric("boundary_f1", "boundary F1")
PIXEL_ERROR = Metric("pixel_error", "pixel error", higher_is_better=False, digits=4)

STUDY = Study(
    name="unet-vs-fcn",
    claim="U-Net's contracting/expanding paths with copy-and-concatenate localise better than FCN's "
    "upsampled scores: higher membrane F1 and boundary F1, lower pixel error.",
    source="Ronneberger, Fischer, Brox, MICCAI 2015, sections 2 and 4",
    dataset="isbi2012-em",
    layout=ISBI_LAYOUT,
    base=ISBI_BASE,
    variants=(
        Variant("unet", {"model": "unet", "model_options": UNET_OPTIONS}, "U-Net"),
        Variant("fcn8s", {"model": "fcn8s"}, "FCN-8s"),
    ),
    steps=180,
    epochs=2,
    measured="all runs 14.8 min at --budget 1 on a 2-core CPU, 1 thread (docs/experiments)",
    metrics=(MEMBRANE_F1, BOUNDARY_F1, PIXEL_ERROR),
    claims=(
        Ordered("U-Net > FCN-8s in membrane F1", MEMBRANE_F1, ("unet", "fcn8s")),
        Ordered("U-Net > FCN-8s in boundary F1", BOUNDARY_F1, ("unet", "fcn8s")),
        Ordered("U-Net < FCN-8s in pixel error", PIXEL_ERROR, ("unet", "fcn8s")),
    ),
    extra_columns=(Metric("params", "parameters", higher_is_better=False, digits=0),),
    notes=(
        "U-Net: ResNet-18 encoder, decoder channels 128-64-32-16-16 and a 16-channel full-resolution stem "
        "(ResNets have no stride-1 feature; the 2015 U-Net's top level is at full resolution), as "
        "configs/isbi2012.yaml. FCN-8s: the same encoder, no fc6/fc7 block.",
        "Training on slices 00-19 (256×256 crops, batch 4, `strong` augmentation with elastic deformation, "
        "CE + Dice, AdamW); scored on slices 20-24 (512×512, whole images).",
    ),
    **ISBI_EVAL,
)
