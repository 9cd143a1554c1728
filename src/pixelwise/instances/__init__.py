"""Instances: separating touching objects, object lists, and instance metrics.

Semantic segmentation labels pixels; counting cells, buildings or cars needs each object separately.
This package goes from a network's class probabilities to a list of separated, measured objects:

- training targets, re-exported here from the data layer (:mod:`~pixelwise.data.weights`,
  :mod:`~pixelwise.data.targets`: training reads them there, below it, not from this post-processing
  package): the U-Net border weight map :func:`unet_weight_map`, separation gaps between touching
  objects, the three-class :func:`boundary_target`, and :func:`training_targets`, which the training
  data path applies to every augmented crop (``pixelwise train --loss-weight-map unet`` / ``--target boundary``);
- post-processing (:mod:`~pixelwise.instances.postprocess`): :func:`to_instances` by connected
  components or marker-controlled watershed;
- objects (:mod:`~pixelwise.instances.objects`, :mod:`~pixelwise.instances.outputs`): :func:`objects`
  records (class, score, area, box, centroid), COCO RLE / polygons, outlines with ids, and the files
  :func:`write_instance_outputs` / :func:`write_prediction_instances` write (``pixelwise predict --instances``);
- metrics (:mod:`~pixelwise.instances.metrics`): :func:`instance_metrics` (precision / recall / F1 at
  IoU 0.5, the DSB 2018 score, panoptic quality), :func:`average_precision` over IoU 0.5:0.95 (StarDist /
  Cellpose), :func:`aggregated_jaccard_index` (AJI), and :class:`InstanceScores` over many images;
- tuning (:mod:`~pixelwise.instances.tuning`): :func:`tune_instances` chooses the post-processing options on
  a labelled split and stores them with the model (``pixelwise tune-instances``);
  :func:`model_instance_options` gives the options a model's objects are made with (stored, else defaults,
  explicit ones winning).

Instance labels are ``int32 [H, W]``, 0 = background, one positive id per object.
"""

from pixelwise.data.targets import BOUNDARY_CLASSES, TARGETS, TargetOptions, training_targets
from pixelwise.data.weights import (
    boundary_target,
    class_balance_weights,
    instances_from_mask,
    separate_touching,
    two_nearest_distances,
    unet_weight_map,
)
from pixelwise.instances.metrics import (
    AJI_VARIANTS,
    IOU_THRESHOLDS,
    InstanceScores,
    aggregated_jaccard_index,
    aji_counts,
    average_precision,
    average_precision_dataset,
    instance_metrics,
    iou_matrix,
    match,
    overlaps,
)
from pixelwise.instances.objects import encode_polygons, encode_rle, has_pycocotools, objects
from pixelwise.instances.outputs import (
    default_options,
    draw_instances,
    model_instance_options,
    model_instance_settings,
    save_labels,
    write_instance_outputs,
    write_prediction_instances,
)
from pixelwise.instances.postprocess import class_map, clean_instances, relabel, semantic_probs, to_instances
from pixelwise.instances.scoring import InstanceScorer, default_method
from pixelwise.instances.tuning import OBJECTIVES, TuningResult, tune_instances

__all__ = [
    "AJI_VARIANTS",
    "BOUNDARY_CLASSES",
    "IOU_THRESHOLDS",
    "OBJECTIVES",
    "TARGETS",
    "InstanceScorer",
    "InstanceScores",
    "TargetOptions",
    "TuningResult",
    "aggregated_jaccard_index",
    "aji_counts",
    "average_precision",
    "average_precision_dataset",
    "boundary_target",
    "class_balance_weights",
    "class_map",
    "clean_instances",
    "default_method",
    "default_options",
    "draw_instances",
    "encode_polygons",
    "encode_rle",
    "has_pycocotools",
    "instance_metrics",
    "instances_from_mask",
    "iou_matrix",
    "match",
    "model_instance_options",
    "model_instance_settings",
    "objects",
    "overlaps",
    "relabel",
    "save_labels",
    "semantic_probs",
    "separate_touching",
    "to_instances",
    "training_targets",
    "tune_instances",
    "two_nearest_distances",
    "unet_weight_map",
    "write_instance_outputs",
    "write_prediction_instances",
]
