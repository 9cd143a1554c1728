"""Training callbacks: the run's human-readable records (``metrics.csv``, ``curves.png``) and the
weight average."""

from __future__ import annotations

import csv
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from pixelwise.io import atomic_path
from pixelwise.viz import plot_curves


class EpochRecords(L.Callback):
    """Append one row per finished epoch to ``metrics.csv`` and redraw ``curves.png``.

    A row is written when the next epoch starts (and when fitting ends): only then are both the
    validation metrics and the module's end-of-epoch training metrics logged, whatever order
    Lightning runs the hooks in. Only the global-zero process writes. Rows already in
    ``metrics.csv`` (a resumed run) are kept, so the curves cover the whole run.
    """

    def __init__(self, run_dir: str | Path, budget: TimeBudget | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.budget = budget  # knows which epochs were validated: the others get no val_ columns
        self.rows: list[dict[str, Any]] = []
        path = self.run_dir / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as handle:
                self.rows = list(csv.DictReader(handle))

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer, max(trainer.current_epoch - 1, 0))

    def _record(self, trainer: L.Trainer, epoch: int) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.endswith("_step")}
        if self.budget is not None and not self.budget.validated(epoch):  # the val_ values are an older epoch's
            metrics = {k: v for k, v in metrics.items() if not k.startswith("val_")}
        if not trainer.is_global_zero or not metrics:
            return
        row: dict[str, Any] = {"epoch": epoch, "step": trainer.global_step, **metrics}
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        self.rows = [r for r in self.rows if int(r["epoch"]) != epoch] + [row]
        self._write_csv()
        plot_curves(self.rows, self.run_dir / "curves.png")

    def _write_csv(self) -> None:
        fields: list[str] = []
        for row in self.rows:
            fields += [k for k in row if k not in fields]
        with atomic_path(self.run_dir / "metrics.csv") as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)


def ema_update(average: torch.Tensor, current: torch.Tensor, updates: torch.Tensor, decay: float) -> torch.Tensor:
    """One step of an exponential moving average whose decay warms up: ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates (as timm's model EMA does), so that the first, fast-changing weights are
    forgotten within a few hundred steps instead of weighing on the average for thousands."""
    step_decay = torch.clamp((1 + updates) / (10 + updates), max=decay).to(
        average.dtype if average.is_floating_point() else torch.float32
    )
    return average + (current - average) * (1 - step_decay)


class WeightEMA(WeightAveraging):
    """An exponential moving average of the weights and BatchNorm statistics (:func:`ema_update`),
    updated after every optimiser step, on Lightning's weight-averaging callback: validation and
    every checkpoint's ``state_dict`` use the average; the live weights are kept in the checkpoint
    as ``current_model_state``, which ``--resume`` continues from.

    Unlike Lightning's callback, the live weights stay in the module when fitting ends: Lightning
    would copy the average over them before its last checkpoint is written (a time budget that
    stops mid-epoch writes ``last.ckpt`` only then), and that checkpoint would hold the average
    twice. The run's ``model/`` is exported from the checkpoint, so it gets the average.
    """

    def __init__(self, decay: float) -> None:
        super().__init__(avg_fn=functools.partial(ema_update, decay=decay))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass


VALIDATION_SHARE = 0.1
"""Validation may take at most this share of the training time: an epoch ends with a validation pass
only once the training since the last one took ``1 / VALIDATION_SHARE`` times as long as that pass."""
EXPORT_SECONDS = 5.0
"""Time kept back at the end of a budget for writing the last checkpoint and the model folder."""
NEVER = 2**31 - 1
"""``check_val_every_n_epoch`` that switches validation off for an epoch."""


@dataclass
class TimeSplit:
    """Where a run's seconds went (this session of the run; ``--resume`` starts a new split)."""

    setup: float = 0.0
    training: float = 0.0
    validation: float = 0.0
    validations: int = 0
    steps: int = 0

    def format(self, total: float) -> str:
        share = self.validation / total if total else 0.0
        per_step = f", {self.training / self.steps:.2f} s/step" if self.steps else ""
        return (
            f"time {total:.0f} s: training {self.training:.0f} s ({self.steps} steps{per_step}), "
            f"validation {self.validation:.0f} s ({self.validations} passes, {share:.0%}), "
            f"data check, set-up and saving {max(total - self.training - self.validation, 0):.0f} s"
        )


class TimeBudget(L.Callback):
    """Spend a run's time on training: validate only as often as keeps validation within
    ``validation_share`` of the training time (always after the first and the last epoch), and,
    with a budget, stop early enough that the final validation and the model export fit in it.

    Every epoch that is not validated still writes ``last.ckpt``, so ``--resume`` loses at most an
    epoch. With a budget, the learning-rate schedule's progress (:class:`~pixelwise.training.task.LRFactor`)
    follows the clock towards the moment training must stop, so a run stopped by the clock still ends
    annealed. The budget counts from ``start`` (the moment ``train()`` was called, so the data check
    counts too) and continues across ``--resume`` (the seconds used are kept in the checkpoint).

    Args:
        budget_seconds: the whole run's budget, or None for no time limit.
        start: ``time.perf_counter()`` when the run started.
        last_checkpoint: where ``last.ckpt`` goes.
        validation_share: see :data:`VALIDATION_SHARE` (its default).
    """

    def __init__(
        self,
        budget_seconds: float | None,
        start: float,
        last_checkpoint: str | Path,
        validation_share: float | None = None,
    ) -> None:
        self.budget, self.start, self.last_checkpoint = budget_seconds, start, Path(last_checkpoint)
        self.validation_share = VALIDATION_SHARE if validation_share is None else validation_share
        self.used_before = 0.0  # seconds of earlier sessions of a resumed run
        self.split = TimeSplit()
        self.since_validation = 0.0  # training seconds since the last validation pass
        self.last_validation: float | None = None  # seconds the last validation pass took
        self.step_seconds: float | None = None
        self._mark = 0.0
        self._validated_epoch = -1

    # -- the clock ----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of the budget used so far, earlier sessions of a resumed run included."""
        return self.used_before + time.perf_counter() - self.start

    def reserve(self) -> float:
        """Seconds kept back for the final validation pass and the export."""
        return (self.last_validation or 0.0) + EXPORT_SECONDS

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.used_before = float(state_dict.get("elapsed", 0.0))

    # -- hooks ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.split.setup = time.perf_counter() - self.start

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        due = self.last_validation is None or self.since_validation * self.validation_share >= self.last_validation
        due = trainer.strategy.broadcast(due or last_epoch, src=0)  # every process must agree
        trainer.check_val_every_n_epoch = 1 if due else NEVER

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        seconds = time.perf_counter() - self._mark
        self.split.training += seconds
        self.split.steps += 1
        self.since_validation += seconds
        # a running mean that forgets the first step (one-time set-up of the kernels)
        self.step_seconds = seconds if self.split.steps <= 2 else 0.9 * self.step_seconds + 0.1 * seconds
        if self.budget is None:
            return
        available = self.budget - self.reserve()
        progress = (self.elapsed() + self.step_seconds) / max(available, 1e-9)
        progress = trainer.strategy.broadcast(progress, src=0)  # one schedule and one stop for every process
        _set_clock_progress(trainer, progress)
        if progress >= 1:
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = 1  # the stop triggers one last validation pass

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.last_validation = time.perf_counter() - self._mark
        self.split.validation += self.last_validation
        self.split.validations += 1
        self.since_validation = 0.0
        self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._validated_epoch != trainer.current_epoch:  # ModelCheckpoint saves only after validation
            # the whole training state (optimiser, loops, callbacks): last.ckpt is what --resume continues from
            trainer.save_checkpoint(self.last_checkpoint, weights_only=False)

    def validated(self, epoch: int) -> bool:
        """Whether ``epoch`` ended with a validation pass."""
        return self._validated_epoch == epoch


def _set_clock_progress(trainer: L.Trainer, progress: float) -> None:
    """Tell the learning-rate schedule how far through the budget the run is (see ``LRFactor``)."""
    for config in trainer.lr_scheduler_configs:
        for factor in getattr(config.scheduler, "lr_lambdas", []):
            if hasattr(factor, "clock_progress"):
                factor.clock_progress = min(1.0, progress)
