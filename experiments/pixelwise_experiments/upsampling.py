"""``upsampling``: how a decoder upsamples — bilinear, transposed convolution, pixel shuffle, max-unpooling.

FCN (Long et al. 2015) upsamples with transposed convolutions ("deconvolution") initialised to bilinear
interpolation and notes that fixed bilinear is nearly as good; the U-Net uses learnable "up-convolutions";
SegNet (Badrinarayanan et al. 2017) upsamples by max-unpooling with the encoder's pooling indices, which
needs no learned upsampling weights and stores no encoder features, and reports that it trades some
accuracy for memory against decoders that reuse encoder features. Here the same U-Net (ResNet-18 encoder)
runs with each ``decoder_upsampling``, next to SegNet on the same encoder, all for the same steps.
"""

from __future__ import annotations

from pixelwise_experiments.base import Metric, Ordered, Study, Variant
from pixelwise_experiments.unet_vs_fcn import BOUNDARY_F1, ISBI_BASE, ISBI_EVAL, ISBI_LAYOUT, MEMBRANE_F1

DECODER = [128, 64, 32, 16, 16]
PARAMS = Metric("params", "parameters", higher_is_better=False, digits=0)
SPEED = Metric("ms_per_image", "ms / image", higher_is_better=False, digits=0)


def _unet(mode: str) -> dict:
    return {"model": "unet", "model_options": {"decoder_channels": DECODER, "decoder_upsampling": mode}}


STUDY = Study(
    name="upsampling",
    claim="Bilinear interpolation, learnable transposed convolution, pixel shuffle and max-unpooling are "
    "different ways to upsample, with different costs and results; decoders that reuse encoder features "
    "(U-Net) beat index-only max-unpooling (SegNet).",
    source="Long et al. 2015 (section 3.3), Ronneberger et al. 2015, Badrinarayanan et al. TPAMI 2017 (section 4)",
    dataset="isbi2012-em",
    layout=ISBI_LAYOUT,
    base=ISBI_BASE | {"augment": "light"},
    variants=(
        Variant("unet-bilinear", _unet("bilinear"), "U-Net bilinear"),
        Variant("unet-transposed", _unet("transposed"), "U-Net transposed"),
        Variant("unet-pixelshuffle", _unet("pixelshuffle"), "U-Net pixel shuffle"),
        Variant(
            "segnet",
            {"model": "segnet", "model_options": {"decoder_channels": 16, "fallback_upsampling": "bilinear"}},
            "SegNet max-unpooling",
        ),
    ),
    steps=65,
    epochs=2,
    measured="all runs 14.8 min at --budget 1 on a 2-core CPU, 1 thread (docs/experiments)",
    metrics=(MEMBRANE_F1, BOUNDARY_F1),
    claims=(
        Ordered(
            "learnable transposed convolution ≥ fixed bilinear in membrane F1",
            MEMBRANE_F1,
            ("unet-transposed", "unet-bilinear"),
        ),
        Ordered(
            "U-Net (concatenated encoder features) > SegNet (max-unpooling indices only) in membrane F1",
            MEMBRANE_F1,
            ("unet-bilinear", "segnet"),
        ),
        Ordered(
            "learned upsampling costs parameters: bilinear < transposed in parameter count",
            PARAMS,
            ("unet-bilinear", "unet-transposed"),
        ),
    ),
    extra_columns=(PARAMS, SPEED, Metric("pixel_error", "pixel error", higher_is_better=False, digits=4)),
    notes=(
        "All variants: ResNet-18 encoder from scratch, no full-resolution stem (so the last ×2 upsampling, "
        "which has no skip with a ResNet, shows the upsampling method at its plainest). U-Net decoder "
        "channels 128-64-32-16-16; SegNet's last stage has 16 channels and, where a ResNet has no feature "
        "to take pooling indices from (stride 1), upsamples bilinearly.",
        "`light` augmentation (flips, 90° rotations) to keep the runs cheap; ms / image is the median "
        "whole-image (512×512) prediction time on the machine of the run, batch 1.",
    ),
    **ISBI_EVAL,
)
