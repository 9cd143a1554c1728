"""Folder prediction over several processes, GPUs or machines, on torch.distributed through Lightning Fabric.

:func:`predict_folder_distributed` is what ``pixelwise predict --devices N [--num-nodes M]`` runs. Fabric
starts the processes (or, under ``torchrun`` or SLURM's ``srun``, finds them in the environment), each
loads its own predictor on its own device and runs :func:`~pixelwise.inference.pipeline.predict_folder`
on its share of the files, writing its own outputs (outputs are per input, so no two processes write the
same file); the reports are then gathered into one, on rank 0::

    files 0 1 2 3 4 5 6 ...
    rank 0 of W: files 0, W, 2W, ... ─► own predictor ─► predict_folder ─► its outputs ─┐
    rank 1 of W: files 1, W+1, ...   ─► own predictor ─► predict_folder ─► its outputs ─┼─► all_gather ─► rank 0:
    ...                                                                                  ─┘   one FolderReport

The backend is Fabric's choice for the device: gloo on the CPU, NCCL on GPUs. Strategy ``ddp`` starts the
other local processes by running the same command again (the ``pixelwise`` command, or your script);
from a notebook use ``strategy="ddp_spawn"`` with a picklable predictor factory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from pixelwise.errors import ConfigError
from pixelwise.inference.pipeline import DEFAULT_WORKERS, FolderReport, predict_folder
from pixelwise.inference.predictor import check_device, check_int
from pixelwise.io import remove_stale_temporaries

if TYPE_CHECKING:
    from lightning.fabric import Fabric

DEFAULT_STRATEGY = "ddp"
"""One process per device, the others started by running the command again (torchrun / srun: by them)."""
LAUNCHER_WORLD_SIZE = "WORLD_SIZE"
"""Set by ``torchrun`` (and Fabric's own launcher) in every process it starts: the run is then distributed."""

PredictorFactory = Callable[[str], Any]
"""Builds one process's predictor from its device string (``"cpu"``, ``"cuda:3"``)."""


@dataclasses.dataclass
class ShardedReport(FolderReport):
    """What :func:`predict_folder_distributed` did, summed over all processes.

    Args:
        processes: the number of processes (world size) that shared the files.
        removed: stale temporary files of killed runs removed from ``out`` before predicting.
    """

    processes: int = 1
    removed: int = 0


def is_distributed(devices: int, num_nodes: int) -> bool:
    """Whether ``pixelwise predict`` should share its files over processes: more than one asked for, or
    started by ``torchrun`` (``WORLD_SIZE`` set)."""
    return devices * num_nodes > 1 or LAUNCHER_WORLD_SIZE in os.environ


def accelerator_for(device: str | None, option: str = "--device") -> str:
    """Fabric's ``accelerator`` for a device string: ``auto`` (GPUs if any) for None, else its type.

    Raises:
        ConfigError: ``device`` is not a device here (:func:`~pixelwise.inference.predictor.check_device`), or
            names one GPU (``cuda:1``): each process gets its own GPU from Fabric.
    """
    resolved = check_device(device, option)
    if resolved is None:
        return "auto"
    if resolved.index is not None:
        raise ConfigError(
            f"{option} {device!r} names one device, but several processes each need their own; give "
            f"{option} {resolved.type} (and CUDA_VISIBLE_DEVICES to choose the GPUs)."
        )
    return resolved.type


def check_launched_world(devices: int, num_nodes: int) -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` set), ``devices × num_nodes`` must be the processes it started.

    Raises:
        ConfigError: names both options, their product and the launcher's world size.
    """
    launched = os.environ.get(LAUNCHER_WORLD_SIZE)
    if launched is not None and launched.isdigit() and devices * num_nodes != int(launched):
        raise ConfigError(
            f"--devices {devices} × --num-nodes {num_nodes} = {devices * num_nodes} processes, but the launcher "
            f"(torchrun) started {launched} ({LAUNCHER_WORLD_SIZE}={launched}); give --devices as its "
            "--nproc-per-node and --num-nodes as its --nnodes."
        )


def shard(inputs: list[Path], rank: int, world_size: int) -> list[Path]:
    """The files of process ``rank``: every ``world_size``-th, from the ``rank``-th (r, r + W, r + 2W, ...)."""
    return inputs[rank::world_size]


def merge_reports(reports: list[FolderReport], inputs: list[Path]) -> ShardedReport:
    """One report from the processes' reports: counts summed, failures in the order of ``inputs``."""
    order = {path: index for index, path in enumerate(inputs)}
    merged = ShardedReport(processes=len(reports))
    for report in reports:
        merged.predicted += report.predicted
        merged.written += report.written
        merged.skipped += report.skipped
        merged.failures += report.failures
        merged.removed += getattr(report, "removed", 0)
    merged.failures.sort(key=lambda failure: order.get(failure[0], len(order)))
    return merged


def predict_folder_distributed(
    make_predictor: PredictorFactory,
    inputs: list[Path],
    out: Path,
    *,
    devices: int = 1,
    num_nodes: int = 1,
    device: str | None = None,
    strategy: str = DEFAULT_STRATEGY,
    workers: int | None = None,
    progress: bool = False,
    **options: Any,
) -> ShardedReport | None:
    """Predict every input file into ``out`` as :func:`~pixelwise.inference.pipeline.predict_folder` does,
    the files shared over ``devices × num_nodes`` processes (module notes).

    Args:
        make_predictor: builds each process's predictor from its device (e.g. a ``functools.partial`` of
            ``Predictor``); called once in every process.
        inputs: image files, the same list in every process (e.g. from
            :func:`~pixelwise.inference.files.collect_inputs`).
        out: the output folder, already prepared (:func:`~pixelwise.inference.files.prepare_out`); on a
            shared file system when the processes span machines.
        devices: processes per machine (GPUs, or CPU processes).
        num_nodes: machines.
        device: ``cpu``, ``cuda``, ``mps``, or None for GPUs when there are any.
        strategy: Fabric's strategy (``ddp``: the command is run again for each local process).
        workers: decoding processes per process; None: the one-process default shared by the local processes.
        progress: a progress bar on rank 0, over its own files.
        **options: the other options of ``predict_folder`` (``save_probs``, ``skip_existing``, ...).

    Returns:
        On rank 0, the :class:`ShardedReport` of all processes; None on the others.

    Raises:
        ConfigError: ``devices`` or ``num_nodes`` not a whole number ≥ 1, a device index with several
            processes, or Fabric refusing the setup (e.g. ``--devices × --num-nodes`` not torchrun's world size).
    """
    check_int("devices", devices, 1, " (processes per machine: GPUs, or CPU processes)")
    check_int("num_nodes", num_nodes, 1, " (machines)")
    check_launched_world(devices, num_nodes)
    if workers is None:
        workers = DEFAULT_WORKERS // devices
    # imported here, not at the top: Lightning adds about 2 s to the start of every `pixelwise predict`
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=accelerator_for(device), devices=devices, num_nodes=num_nodes, strategy=strategy)
    except (ValueError, RuntimeError, MisconfigurationException) as error:
        raise ConfigError(
            f"cannot start {devices} process(es) on each of {num_nodes} machine(s) on device {device or 'auto'!r}: "
            f"{str(error).splitlines()[0]}; under torchrun or srun give --devices (per machine) and --num-nodes "
            "as launched."
        ) from error
    return fabric.launch(_predict_shard, make_predictor, inputs, Path(out), workers, progress, options)


def _predict_shard(
    fabric: Fabric,
    make_predictor: PredictorFactory,
    inputs: list[Path],
    out: Path,
    workers: int,
    progress: bool,
    options: dict[str, Any],
) -> ShardedReport | None:
    """One process's part: clean ``out`` (one process per machine), predict its share of rank 0's file list,
    gather the reports."""
    removed = len(remove_stale_temporaries(out)) if fabric.local_rank == 0 else 0
    fabric.barrier()  # no process writes before the stale temporaries are gone
    predictor = make_predictor(str(fabric.device))
    inputs = fabric.broadcast(inputs, src=0)  # each process listed the folder itself, maybe seeing other files
    mine = shard(inputs, fabric.global_rank, fabric.world_size)
    report = predict_folder(
        predictor, mine, out, workers=workers, progress=progress and fabric.global_rank == 0, **options
    )
    report = ShardedReport(**dataclasses.asdict(report), processes=fabric.world_size, removed=removed)
    reports: list[Any] = [None] * fabric.world_size
    if fabric.world_size > 1:
        dist.all_gather_object(reports, report)
    else:
        reports = [report]
    return merge_reports(reports, inputs) if fabric.global_rank == 0 else None


def is_rank_zero() -> bool:
    """Whether this process prints: rank 0 of a distributed run, or a process that is not part of one."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
