"""Folder prediction as a pipeline: decoding, the network and encoding the outputs overlap.

:func:`predict_folder` is what ``pixelwise predict`` runs. Inputs are checked and decoded in worker
processes (a torch ``DataLoader`` over the file list), images that the predictor covers with one tile
and that share a size are stacked into one forward pass (up to the tiling's ``batch_size``), large
images go through the predictor's tiling one at a time, and a background thread writes the outputs
(:func:`~pixelwise.inference.files.write_prediction`) from a bounded queue::

    files ─► DataLoader workers: read_input_file ─► main: group by size ─► forward pass ─┐
                                                                                          ▼
                              outputs, in input order ◄─ writer thread ◄─ bounded queue ◄─┘

The outputs, their order, and the failures (an unreadable input is reported with its reason and
skipped, the others are still written) are those of calling
:func:`~pixelwise.inference.files.predict_file` on each input in turn. The files are the same bit for bit
where the backend computes each image of a batch as it computes it alone (``batch_size=1`` always
does; on the CPU a larger batch may change probabilities by about one float32 ulp, as tile batches do).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pixelwise.data.readers import IMAGE_READ_ERRORS
from pixelwise.errors import PixelwiseError, check_choice
from pixelwise.inference.files import (
    LABEL_FORMATS,
    DecodedInput,
    InstanceWriter,
    outputs_present,
    predict_large_file,
    read_input_file,
    write_prediction,
)
from pixelwise.inference.predictor import check_int
from pixelwise.inference.tiling import ArraySource

MAX_DEFAULT_WORKERS = 8
"""More decoding processes than this rarely pay: the network, not PNG decoding, is then the bottleneck."""
DEFAULT_WORKERS = min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) // 2)
"""Decoding processes by default: half the cores (the other half runs the network); 0 on one core
(decoding in the main process)."""
WRITE_QUEUE_IMAGES = 8
"""Predicted images waiting for the writer thread at most: each holds its ``float32 [K, H, W]`` probabilities."""
LOOKAHEAD_BATCHES = 4
"""Decoded images gathered before grouping them by size, in batches: more finds more equal sizes in a
mixed folder, at the cost of that many decoded images (and their probabilities) in memory."""
FAILURE_ERRORS = (PixelwiseError, *IMAGE_READ_ERRORS)
"""The errors that fail one input (reported, the others go on); any other error stops the run."""


@dataclasses.dataclass
class FolderReport:
    """What :func:`predict_folder` did.

    Args:
        predicted: inputs predicted and written.
        written: files written.
        skipped: inputs left alone because all their outputs were present (``skip_existing``).
        failures: ``(input, reason)`` of each failed input, in input order.
    """

    predicted: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Item:
    """One input on its way through the pipeline: decoded, or failed with ``reason``."""

    index: int
    path: Path
    decoded: DecodedInput | None = None
    reason: str | None = None


def failure_reason(error: BaseException) -> str:
    """The one-line reason a failed input is reported with: the error's first line, else its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class _InputFiles(Dataset):
    """The inputs as a map-style dataset of :class:`_Item`: read errors are returned, not raised, so that one
    bad file does not stop the workers."""

    def __init__(self, paths: list[Path], out: Path) -> None:
        self.paths, self.out = paths, out

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        path = self.paths[index]
        try:
            return _Item(index, path, read_input_file(path, self.out))
        except FAILURE_ERRORS as error:
            return _Item(index, path, reason=failure_reason(error))


def _keep(item: _Item) -> _Item:
    """The DataLoader's collate function: items pass as they are (no stacking, no resizing)."""
    return item


class _Writer:
    """A thread writing predicted images in the order they are put, from a bounded queue.

    An input failing while written is recorded in ``failures``; any other error is raised again in the
    caller at the next :meth:`put` or at :meth:`close`.
    """

    def __init__(self, write: Any, report: FolderReport, failures: list[tuple[int, Path, str]]) -> None:
        self._write, self._report, self._failures = write, report, failures
        self._queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE_IMAGES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pixelwise-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            item, probabilities = job
            try:
                if self._error is None:
                    self._report.written += len(self._write(probabilities, item.decoded))
                    self._report.predicted += 1
            except FAILURE_ERRORS as error:
                self._failures.append((item.index, item.path, failure_reason(error)))
            except BaseException as error:  # stop the run: raised again in the main thread
                self._error = error
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: _Item, probabilities: np.ndarray) -> None:
        """Queue one image's outputs; blocks while the queue is full."""
        self._check()
        self._queue.put((item, probabilities))

    def drain(self) -> None:
        """Wait until everything queued is written."""
        self._queue.join()
        self._check()

    def close(self) -> None:
        """Write what is queued, stop the thread, raise its error if it had one."""
        self._queue.put(None)
        self._thread.join()
        self._check()


def predict_folder(
    predictor: Any,
    inputs: list[Path],
    out: Path,
    *,
    save_probs: bool = False,
    overlay: bool = False,
    instances: InstanceWriter | None = None,
    label_format: str = "auto",
    workers: int = DEFAULT_WORKERS,
    skip_existing: bool = False,
    progress: bool = False,
) -> FolderReport:
    """Predict every input file into ``out``, as :func:`~pixelwise.inference.files.predict_file` does each one,
    with decoding, the network and writing overlapped (module notes).

    Args:
        predictor: a :class:`~pixelwise.inference.Predictor`; its ``tiling.batch_size`` is also the number of
            equal-size whole images stacked into one forward pass.
        inputs: image files (e.g. from :func:`~pixelwise.inference.files.collect_inputs`).
        out: the output folder (checked by :func:`~pixelwise.inference.files.prepare_out`).
        save_probs, overlay, instances, label_format: as :func:`~pixelwise.inference.files.predict_file`.
        workers: decoding processes (0: decode in this process).
        skip_existing: leave out the inputs whose outputs are all present
            (:func:`~pixelwise.inference.files.outputs_present`): they are neither read nor predicted.
        progress: a progress bar over images (and over the tiles of large images).

    Returns:
        A :class:`FolderReport`: counts, and each failed input with its reason.

    Raises:
        ConfigError: unknown ``label_format``, or ``workers`` not a whole number ≥ 0.
    """
    check_choice("label_format", label_format, LABEL_FORMATS)
    check_int("workers", workers, 0)
    report = FolderReport()
    todo = inputs
    if skip_existing:
        todo = [
            p for p in inputs if not outputs_present(p, out, save_probs, overlay, instances is not None, label_format)
        ]
        report.skipped = len(inputs) - len(todo)
    failures: list[tuple[int, Path, str]] = []

    def write(probabilities: np.ndarray, decoded: DecodedInput) -> list[Path]:
        return write_prediction(
            predictor.classes, probabilities, decoded, out, save_probs, overlay, instances, label_format
        )

    decoded = _decoded(todo, out, workers)  # forks the workers before any thread of ours runs
    writer = _Writer(write, report, failures)
    bar = _progress_bar(len(todo), progress)
    try:
        for chunk in _chunks(decoded, predictor.tiling.batch_size * LOOKAHEAD_BATCHES):
            for item, probabilities in _predict_chunk(predictor, chunk, failures):
                if probabilities is not None:
                    writer.put(item, probabilities)
                elif item.reason is None:  # a large image, streamed after the images before it: files keep order
                    writer.drain()
                    _predict_large(predictor, item, out, save_probs, progress, report, failures)
                if bar is not None:
                    bar.update()
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    report.failures = [(path, reason) for _, path, reason in sorted(failures, key=lambda f: f[0])]
    return report


def _progress_bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="image")


def _predict_large(
    predictor: Any,
    item: _Item,
    out: Path,
    save_probs: bool,
    progress: bool,
    report: FolderReport,
    failures: list[tuple[int, Path, str]],
) -> None:
    """Stream one large image through the predictor's tiling; a failure is recorded, not raised."""
    try:
        report.written += len(predict_large_file(predictor, item.decoded, out, save_probs, progress))
        report.predicted += 1
    except FAILURE_ERRORS as error:
        failures.append((item.index, item.path, failure_reason(error)))


def _decoded(paths: list[Path], out: Path, workers: int) -> Iterator[_Item]:
    """The inputs decoded by ``workers`` processes, in input order (the DataLoader keeps it)."""
    if not paths:
        return iter(())
    loader = DataLoader(
        _InputFiles(paths, out), batch_size=None, num_workers=min(workers, len(paths)), collate_fn=_keep
    )
    return iter(loader)


def _chunks(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    chunk: list[_Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _predict_chunk(
    predictor: Any, chunk: list[_Item], failures: list[tuple[int, Path, str]]
) -> Iterator[tuple[_Item, np.ndarray | None]]:
    """``(item, probabilities)`` for each item of ``chunk`` in order; probabilities None: a failed item (its
    ``reason`` set, and added to ``failures``) or a large image (left to the caller).

    Whole images that share a one-tile plan are predicted together, ``batch_size`` at a time; the others one by one.
    """
    groups: dict[Any, list[tuple[_Item, Any]]] = {}
    for item in chunk:
        if item.reason is None and item.decoded.image is not None:
            try:
                source = predictor.as_source(ArraySource(item.decoded.image))
                groups.setdefault(predictor.batch_key(source) or id(source), []).append((item, source))
            except FAILURE_ERRORS as error:
                item.reason = failure_reason(error)
        if item.reason is not None:
            failures.append((item.index, item.path, item.reason))
    results: dict[int, np.ndarray] = {}
    for key, members in groups.items():
        for first in range(0, len(members), predictor.tiling.batch_size):
            batch = members[first : first + predictor.tiling.batch_size]
            sources = [source for _, source in batch]
            scores = predictor.predict_batch(sources) if isinstance(key, tuple) else [predictor.predict(sources[0])]
            results.update((item.index, probabilities) for (item, _), probabilities in zip(batch, scores, strict=True))
    for item in chunk:
        yield item, results.pop(item.index, None)
