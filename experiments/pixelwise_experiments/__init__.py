"""Runnable studies of the FCN, U-Net and SegNet papers' claims: ``pixelwise experiment NAME``.

A research add-on, not part of the ``pixelwise`` library: the ``pixelwise-experiments`` distribution in the
repository's ``experiments/`` folder (``pip install -e ./experiments``), which adds the ``experiment`` command
to ``pixelwise`` through the ``pixelwise.commands`` entry point group.

==================  =====================================================================================
``fcn-skips``       FCN-32s vs 16s vs 8s on CamVid: do skips recover detail (mIoU, boundary F1)?
``upsampling``      U-Net with bilinear / transposed / pixel-shuffle upsampling vs SegNet's max-unpooling
``unet-vs-fcn``     U-Net vs FCN-8s, same encoder, on the ISBI 2012 membranes
``augmentation``    none / light / strong (elastic) augmentation with 5 or 20 ISBI training slices
==================  =====================================================================================

Each study is a declarative :class:`~pixelwise_experiments.base.Study` (one module each); the runner
(:func:`~pixelwise_experiments.runner.run_study`) trains variants × seeds for equal steps, scores every run
at full resolution and writes ``results.csv``, ``results.md`` (mean ± s.d. and a verdict per claim),
bar charts and a sample-prediction panel.
"""

from __future__ import annotations

from pixelwise.errors import unknown_name
from pixelwise_experiments import augmentation, fcn_skips, unet_vs_fcn, upsampling
from pixelwise_experiments.base import Metric, Ordered, Study, Variant
from pixelwise_experiments.planning import StudyOptions, data_folder, plan
from pixelwise_experiments.runner import run_study

STUDIES: dict[str, Study] = {m.STUDY.name: m.STUDY for m in (fcn_skips, upsampling, unet_vs_fcn, augmentation)}


def get_study(name: str) -> Study:
    """The registered study called ``name`` (ConfigError naming the closest names otherwise)."""
    if name not in STUDIES:
        raise unknown_name("experiment", name, STUDIES, hint="`pixelwise experiment --list` shows them.")
    return STUDIES[name]


__all__ = [
    "STUDIES",
    "Metric",
    "Ordered",
    "Study",
    "StudyOptions",
    "Variant",
    "data_folder",
    "get_study",
    "plan",
    "run_study",
]
