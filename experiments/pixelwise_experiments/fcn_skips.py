"""``fcn-skips``: FCN-32s vs FCN-16s vs FCN-8s on CamVid (Long, Shelhamer, Darrell 2015, Table 2).

The paper's claim: scoring finer encoder features and fusing them with the upsampled coarse scores
("skips") recovers the detail lost by pooling, so FCN-8s > FCN-16s > FCN-32s in mean IoU, and the gain
shows most at object boundaries. All three share the encoder (ResNet-18 from scratch: the machine is
offline, the paper used ImageNet-pretrained VGG16) and see the same training images for the same steps.
"""

from __future__ import annotations

from pixelwise_experiments.base import Metric, Ordered, Study, Variant

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
"""SegNet's CamVid colours, so the sample panel looks like the papers' figures."""
CAMVID_LAYOUT = ("train/images", "train/masks", "val/images", "val/masks")
CAMVID_BASE = {
    "classes": len(CAMVID_CLASSES),
    "encoder": "resnet18",
    "scale": 0.5,  # train and predict at 180×240; scored at the full 360×480
    "crop": None,
    "batch_size": 8,
    "augment": [  # configs/camvid.yaml's road-scene augmentation (no vertical flips)
        {"name": "RandomHorizontalFlip", "p": 0.5},
        {"name": "RandomAffine", "degrees": 0, "scale": [0.8, 1.25]},
        {"name": "ColorJitter", "brightness": 0.25, "contrast": 0.25, "saturation": 0.25},
    ],
    "loss": "ce+dice",
    "class_weights": "median",
    "optimizer": "adamw",
    "lr": 3e-3,
    "scheduler": "cosine",
    "warmup_epochs": 0.1,
    "val_files": "0016E5_0796[13]",  # the in-training monitor only: two images keep it cheap
}
MIOU = Metric("miou", "mIoU")
BOUNDARY_F1 = Metric("boundary_f1", "boundary F1")

STUDY = Study(
    name="fcn-skips",
    claim="Skip connections recover detail lost by pooling: FCN-8s beats FCN-16s beats FCN-32s.",
    source="Long, Shelhamer, Darrell, CVPR 2015 / TPAMI 2017, Table 2",
    dataset="camvid",
    layout=CAMVID_LAYOUT,
    base=CAMVID_BASE,
    variants=(
        Variant("fcn32s", {"model": "fcn32s"}, "FCN-32s"),
        Variant("fcn16s", {"model": "fcn16s"}, "FCN-16s"),
        Variant("fcn8s", {"model": "fcn8s"}, "FCN-8s"),
    ),
    steps=70,
    epochs=2,
    measured="all runs 18.1 min at --budget 1 on a 2-core CPU, 1 thread (docs/experiments)",
    metrics=(MIOU, BOUNDARY_F1, Metric("pixel_accuracy", "pixel accuracy")),
    claims=(
        Ordered("FCN-8s > FCN-16s > FCN-32s in mIoU", MIOU, ("fcn8s", "fcn16s", "fcn32s")),
        Ordered("FCN-8s > FCN-16s > FCN-32s in boundary F1", BOUNDARY_F1, ("fcn8s", "fcn16s", "fcn32s")),
    ),
    class_names=CAMVID_CLASSES,
    eval_split="val",
    palette=CAMVID_PALETTE,
    extra_columns=(Metric("ms_per_image", "ms / image", higher_is_better=False, digits=0),),
    notes=(
        "Models: FCN-32s/16s/8s with a ResNet-18 encoder from scratch (no pretrained weights offline), "
        "no fc6/fc7 block; half-resolution training (180×240), median-frequency class weights, CE + Dice, AdamW.",
    ),
)
