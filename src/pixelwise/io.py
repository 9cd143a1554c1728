"""Safe reading and atomic writing of weight files.

Weights are stored as safetensors; ``.pth``/``.pt``/``.ckpt`` files are read with
``torch.load(weights_only=True)`` so that a file can never run code when loaded.
Every writer goes through :func:`atomic_path`: the data land under a temporary
name in the same folder and are renamed into place, so an interrupted write
never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixelwise.errors import WeightsError

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the permissions open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict to ``path`` as safetensors, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``.pth``/``.pt``/``.ckpt`` file.

    Pickle-based files are opened with ``weights_only=True``. A checkpoint that wraps its
    weights in ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        WeightsError: the file is missing, corrupt, or holds something other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; check the path.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise WeightsError(
                f"{str(path)!r} is not a readable safetensors file ({error}); "
                "it is corrupt or was changed after saving: save it again."
            ) from error
    if path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(
            f"cannot read weights from {str(path)!r}: expected a .safetensors file or one of "
            f"{', '.join(PICKLE_SUFFIXES)}."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise WeightsError(
            f"refusing to load {str(path)!r}: it is not a plain-tensor checkpoint "
            f"(torch.load with weights_only=True failed: {str(error).splitlines()[0]}). "
            "Only files of tensors are accepted; re-save the weights with safetensors."
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{str(path)!r} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint (a dict of tensors and plain values) with ``weights_only=True``.

    Raises:
        WeightsError: the file is missing, truncated, corrupt, or holds other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {str(path)!r} does not exist; check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise WeightsError(
            f"cannot read checkpoint {str(path)!r} ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "it is truncated, corrupt, or holds objects other than tensors and plain values."
        ) from error
