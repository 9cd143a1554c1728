"""Safe reading and atomic writing of weight files.

Weights are stored as safetensors; ``.pth``/``.pt``/``.ckpt`` files are read with
``torch.load(weights_only=True)`` so that a file can never run code when loaded.
Every writer goes through :func:`atomic_path`: the data land under a temporary
name in the same folder and are renamed into place, so an interrupted write
never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pixelwise.errors import ConfigError, WeightsError

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
"""Our temporary files: ``.NAME.PID-RANDOM.tmp`` beside ``NAME`` (PID: the writing process)."""
STALE_SECONDS = 24 * 3600
"""A temporary file this old is stale even if its writer's process id is in use again."""


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary file is removed when the block raises (``KeyboardInterrupt`` and the
    ``SystemExit`` that the command line raises on SIGTERM included); one left by a killed process
    is removed by :func:`remove_stale_temporaries`. The file gets the permissions a plain
    ``open()`` would give it (0644 under the usual umask), whatever the writer inside the block did.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the mode open() gives, umask applied
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a private one
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` in ``folder`` (not below it) whose writing
    process has ended (killed before it could clean up) or that are older than ``STALE_SECONDS``.

    Returns:
        The files removed. Files of other naming, and those of a live writer, are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        try:
            old = time.time() - entry.stat().st_mtime > STALE_SECONDS
            if old or not _process_alive(int(match["pid"])):
                entry.unlink()
                removed.append(entry)
        except FileNotFoundError:  # removed meanwhile by its writer
            continue
    return removed


BYTE_ORDER_MARKS = {b"\xff\xfe": "UTF-16 (little-endian)", b"\xfe\xff": "UTF-16 (big-endian)"}


def read_text(path: str | os.PathLike, what: str) -> str:
    """Read a UTF-8 text file (a UTF-8 byte-order mark is allowed); ``what`` names it in errors ("config file").

    Raises:
        ConfigError: the file cannot be read or is not UTF-8 (names the file, the encoding found and the fix).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {error.strerror or error}.") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        found = next((name for mark, name in BYTE_ORDER_MARKS.items() if data.startswith(mark)), None)
        encoding = f"it is {found} text" if found else f"byte {error.start} is not UTF-8"
        raise ConfigError(
            f"{what} {str(path)!r} is not UTF-8 text ({encoding}); save it as UTF-8 "
            "(PowerShell: `Out-File -Encoding utf8`; most editors: 'Save with encoding')."
        ) from error


def read_json_object(path: str | os.PathLike, fix: str) -> dict:
    """Read a JSON file that must hold an object (``config.json``, ``preprocessing.json``).

    Raises:
        WeightsError: the file is not UTF-8 JSON, or holds something other than an object; the message
            names the file, what is wrong and ``fix``.
    """
    where = f"{str(path)!r} is damaged"
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{where}: it is not valid JSON ({error}); {fix}.") from error
    if not isinstance(value, dict):
        raise WeightsError(f"{where}: it holds a JSON {type(value).__name__}, not an object; {fix}.")
    return value


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise _refusal(path, "weights file", error) from error
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
        raise _refusal(path, "checkpoint", error) from error


FOREIGN_GLOBAL = re.compile(r"(?:[Uu]nsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
"""How torch names the object a pickle asked for that a weights-only load does not allow."""


def _refusal(path: Path, what: str, error: Exception) -> WeightsError:
    """The error for a file ``torch.load(weights_only=True)`` refused, in our words: torch's own message
    has terminal colour codes and advice on loading the file unsafely, which we never take."""
    if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower():
        found = FOREIGN_GLOBAL.search(str(error))
        asks = f" (it asks for {found[1]})" if found else ""
        return WeightsError(
            f"refusing to load {what} {str(path)!r}: it is not a weights-only checkpoint{asks}. pixelwise loads "
            "only tensors and plain values, so that a file can never run code; re-save the weights as "
            "safetensors, or as a plain state dict with torch.save(model.state_dict(), ...)."
        )
    return WeightsError(
        f"cannot read {what} {str(path)!r}: it is truncated or corrupt ({type(error).__name__}); "
        "write it again, or use another copy."
    )
