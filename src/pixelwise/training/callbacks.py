"""Training callbacks: the run's human-readable records (``metrics.csv``, ``curves.png``) and the
weight average."""

from __future__ import annotations

import csv
import functools
import math
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

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
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
