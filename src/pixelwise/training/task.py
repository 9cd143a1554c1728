"""The LightningModule: model, loss, metrics and optimiser, built from a TrainConfig.

Reads top to bottom like the torchvision references: the model (``configure_model_``), the loss,
the metrics, one ``_shared_step(batch, stage)`` for training and validation, then the optimiser
and its schedule.

With ``aux_loss_weight > 0`` (deep supervision, auxiliary FCN head) the training loss is::

    loss(main, mask) + aux_loss_weight × Σ_i w_i · loss(upsample(aux_i), mask),  w_i ∝ 2**-i, Σ w_i = 1

(auxiliary outputs finest first); validation and the metrics see the main output only.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from pixelwise.errors import ConfigError
from pixelwise.losses import get_loss, get_loss_class
from pixelwise.losses.combine import parse_loss_spec
from pixelwise.metrics import ConfusionMatrix
from pixelwise.models import SegmentationModel, create_model
from pixelwise.models.base import segmentation_output
from pixelwise.models.geometry import center_crop, forward_mirrored, uses_valid_convolution
from pixelwise.models.registry import takes_encoder
from pixelwise.training.config import TrainConfig, aux_option

STAGES = ("train", "val")
CLASS_WEIGHTED_LOSSES = ("ce",)
"""Loss terms the run's ``class_weights`` go to when the loss has one of them (see ``_weighted_spec``)."""
AUX_DECAY = 0.5
"""Each auxiliary output (finest first) weighs this times the one before it in the auxiliary mean: nnU-Net's
deep-supervision weights ``1 / 2**i``, normalised to sum 1."""


def aux_weights(count: int) -> list[float]:
    """The weights of ``count`` auxiliary losses (finest first): ``AUX_DECAY**i``, normalised to sum 1."""
    raw = [AUX_DECAY**i for i in range(count)]
    return [w / sum(raw) for w in raw]


def build_model(config: TrainConfig | Mapping[str, Any], in_channels: int, classes: int) -> SegmentationModel:
    """The pixelwise model a config describes (``model``, ``encoder``, ``model_options``): a TrainConfig,
    or a mapping of its fields (e.g. a checkpoint's hyper-parameters; absent keys count as None).

    ``classes`` is the number of classes of the data; a ``mode="binary"`` model has one output channel.
    With ``aux_loss_weight > 0`` the model gets its auxiliary outputs (``deep_supervision`` or ``aux_head``).

    Raises:
        ConfigError: ``aux_loss_weight > 0`` for an architecture without auxiliary outputs.
    """
    values = config.to_dict() if isinstance(config, TrainConfig) else config
    options = dict(values.get("model_options") or {})
    if (values.get("aux_loss_weight") or 0) > 0:
        options[aux_option(values["model"])] = True
    if values.get("encoder") and takes_encoder(values["model"]):
        options.setdefault("encoder_name", values["encoder"])
        options.setdefault("encoder_weights", values.get("encoder_weights"))
    # binary mode scores one sigmoid channel (foreground) for the 2 classes background / foreground
    outputs = 1 if values.get("mode") == "binary" else classes
    return create_model(values["model"], in_channels=in_channels, classes=outputs, **options)


def training_tile(model: nn.Module, crop: int | None) -> tuple[int | None, int]:
    """``(crop, mirror border)`` of the training samples for ``model``.

    Same-size models train on ``crop`` as it is, with no border. A valid-convolution model
    (:class:`pixelwise.UNet2015`) trains as in the U-Net paper: its input tile is ``crop`` rounded up
    to a valid size, cut from the image mirror-padded by the model's border, and the loss sees the
    smaller output tile (``572 → 388`` for the paper's network).

    Raises:
        ConfigError: a valid-convolution model without a crop size.
    """
    if not uses_valid_convolution(model):
        return crop, 0
    if crop is None:
        raise ConfigError(
            f"{type(model).__name__} trains on tiles of a valid input size: set --crop (the input tile, "
            "e.g. 572 as in the U-Net paper; rounded up to a valid size)."
        )
    return model.valid_input_size(crop), model.border()


class SegmentationTask(L.LightningModule):
    """Trains any pixelwise model on ``{"image": [N, C, H, W] float in [0, 1], "mask": [N, H, W] int64}``.

    Images are normalised inside (``(image - mean) / std`` with the training set's channel
    statistics) so that a saved model and the predictor see the same input as training did.

    Args:
        config: the resolved TrainConfig (saved as a plain dict in every checkpoint's hyper-parameters,
            so that checkpoints load with ``weights_only=True``).
        in_channels, classes: data properties found by the data check.
        mean, std: per-channel statistics of the training images, each ``[C]``.
        class_weights: optional loss weights per class ``[K]``.
    """

    def __init__(
        self,
        config: TrainConfig,
        in_channels: int,
        classes: int,
        mean: list[float],
        std: list[float],
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        # plain values only, under the names of the arguments, as in the checkpoints of earlier versions
        hyper_parameters = {"config": config.to_dict(), "in_channels": in_channels, "classes": classes}
        self.save_hyperparameters(hyper_parameters | {"mean": mean, "std": std, "class_weights": class_weights})
        self.config = config
        self.classes = classes
        self.model = build_model(config, in_channels, classes)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.valid_conv = uses_valid_convolution(self.model)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.loss = self.configure_loss()
        self.metrics = {stage: self.configure_metrics() for stage in STAGES}
        self._aux_logits: list[torch.Tensor] = []  # set by forward in training with aux_loss_weight, read once

    def _weighted_spec(self) -> dict[str, dict]:
        """The loss spec with the run's class weights given to its cross-entropy term when it has one
        (region losses such as Dice already weigh the classes equally), else to every term that takes
        class weights."""
        terms = parse_loss_spec(self.config.loss)
        weights = self.hparams.class_weights
        weighted = [name for name in terms if name in CLASS_WEIGHTED_LOSSES] or [
            name for name in terms if "class_weights" in inspect.signature(get_loss_class(name)).parameters
        ]
        spec = {}
        for name, (weight, own) in terms.items():
            extra = {"class_weights": weights} if weights is not None and name in weighted else {}
            spec[name] = {"weight": weight, **extra, **own}
        return spec

    def configure_loss(self) -> nn.Module:
        config = self.config
        options = dict(config.loss_options or {})
        loss = get_loss(self._weighted_spec(), mode=config.mode, ignore_index=config.ignore_index, **options)
        if config.loss_weight_map and not getattr(loss, "accepts_weight_map", False):
            raise ConfigError(
                f"loss_weight_map={config.loss_weight_map!r} needs a per-pixel loss, but loss "
                f"{config.loss!r} has none; use e.g. --loss ce or --loss ce+dice."
            )
        return loss

    def configure_metrics(self) -> ConfusionMatrix:
        return ConfusionMatrix(self.classes, mode=self.config.mode, ignore_index=self.config.ignore_index)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` images in [0, 1] → ``[N, K, H, W]`` logits."""
        x = ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        if self.training and self.config.aux_loss_weight > 0:
            # One pass gives both; the auxiliary logits are kept for the loss (_shared_step) so that forward
            # still returns the main logits alone, which forward hooks (fit's Keras metrics) expect.
            output, self._aux_logits = self.model.forward_with_aux(x)
            return segmentation_output(output)
        return segmentation_output(self.model(x))  # the masks; an aux_params head's labels are not trained here

    def aux_loss(
        self, aux_logits: list[torch.Tensor], mask: torch.Tensor, weight_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The weighted mean (:func:`aux_weights`) of the run's loss on each auxiliary output.

        Each auxiliary output is upsampled by its stride (bilinear, as torchvision's and MMSegmentation's
        auxiliary heads) rather than the mask downsampled (nearest, as nnU-Net): every labelled pixel,
        ``ignore_index`` and the per-pixel weight map stay exact, and thin structures (membranes, vessels)
        are not lost to nearest-neighbour subsampling. The upsampled scores are then cut to the mask: at the
        top left for padded models (whose padding is at the bottom and right), at the centre for a
        valid-convolution model (its coarser outputs cover a larger region centred on the main output).

        Shape: ``aux_logits[i]`` ``[N, K, h_i, w_i]`` at stride ``model.aux_strides[i]``, ``mask`` ``[N, H, W]``
        → scalar.
        """
        total = torch.zeros((), device=mask.device)
        strides = self.model.aux_strides
        for weight, logits, stride in zip(aux_weights(len(aux_logits)), aux_logits, strides, strict=True):
            upsampled = F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
            if self.valid_conv:
                upsampled = center_crop(upsampled, mask.shape[-2:])
            else:
                upsampled = upsampled[..., : mask.shape[-2], : mask.shape[-1]]
            total = total + weight * self.loss(upsampled, mask, weight_map=weight_map)
        return total

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        mask, weight_map = batch["mask"], batch.get("weight_map")
        if not self.valid_conv:
            logits = self(batch["image"])
        elif stage == "val":  # whole images, mirror-padded (overlap-tile in one pass)
            logits = forward_mirrored(self, batch["image"], self.model)
        else:  # a valid-size input tile: the labels are those of the smaller output tile at its centre
            logits = self(batch["image"])
            mask = center_crop(mask, logits.shape[-2:])
            weight_map = None if weight_map is None else center_crop(weight_map, logits.shape[-2:])
        loss = self.loss(logits, mask, weight_map=weight_map)
        aux_logits, self._aux_logits = self._aux_logits, []
        if stage == "train" and aux_logits:
            loss = loss + self.config.aux_loss_weight * self.aux_loss(aux_logits, mask, weight_map)
        self.metrics[stage].update(logits.detach(), mask)
        self.log(
            f"{stage}_loss",
            loss,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            sync_dist=True,
            batch_size=batch["image"].shape[0],
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        self._shared_step(batch, "val")

    def _log_metrics(self, stage: str) -> None:
        # ConfusionMatrix.compute() already sums the matrix over all processes: no sync_dist here
        results = self.metrics[stage].compute()
        self.log(f"{stage}_miou", results["mean_iou"].nan_to_num(0.0).item(), prog_bar=True)
        self.log(f"{stage}_accuracy", results["accuracy"].nan_to_num(0.0).item())
        self.log(f"{stage}_mf1", results["mean_f1"].nan_to_num(0.0).item())
        self.metrics[stage].reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_metrics("val")
        else:
            self.metrics["val"].reset()

    # -- optimiser and schedule ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        config = self.config
        # Lightning's mixed-precision plugin refuses gradient clipping with a fused optimiser (it unscales inside)
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = make_optimizer(parameters, config, fused=not (mixed and config.gradient_clip))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if config.scheduler == "onecycle":
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(config.warmup_epochs * steps_per_epoch)
        factor = LRFactor(config.scheduler, warmup, total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


POLY_POWER = 0.9
"""Exponent of the "poly" schedule (DeepLab's choice)."""


class LRFactor:
    """Learning-rate multiplier at step ``t``: linear warm-up, then cosine, poly or constant decay.

    Progress through the decay is the larger of the step fraction and ``clock_progress``, which a
    time budget sets (:class:`~pixelwise.training.callbacks.TimeBudget`: the fraction of the time
    available for training that is used), so a run stopped by the clock still ends its schedule annealed.
    A class rather than a closure so that the schedule pickles into checkpoints and DDP workers.
    """

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int) -> None:
        self.schedule, self.warmup, self.total = schedule, warmup_steps, max(total_steps, 1)
        self.clock_progress = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        progress = max(progress, self.clock_progress)
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "poly":
            return (1 - progress) ** POLY_POWER
        return 1.0


FUSED_DEVICES = ("cpu", "cuda")
"""Devices with torch's fused AdamW kernel: one pass over each parameter instead of a dozen elementwise ops."""


def make_optimizer(
    parameters: list[torch.nn.Parameter], config: TrainConfig, fused: bool = True
) -> torch.optim.Optimizer:
    """The optimiser ``config`` names over ``parameters`` (already on their device).

    AdamW runs fused (``fused``, where the kernel exists): the same update (to float rounding) as the loop
    implementation, in one kernel per parameter (``benchmarks/train_step.py`` times it).
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    fused = (
        fused and bool(parameters) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in parameters)
    )
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
