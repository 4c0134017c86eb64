"""Loading torch files as plain data only: tensors, numbers, strings, lists, tuples, dicts.

``torch.load(..., weights_only=False)`` unpickles arbitrary Python objects, and unpickling can
call any function (a ``__reduce__`` payload runs ``os.system`` before the caller sees a thing).
Run directories, world models and policies travel between people (cross-play of other
people's runs is the common case), so every file offmarl reads back goes through
``torch_load_plain``: PyTorch's restricted unpickler, which refuses anything but plain data,
and one-line errors for the three ways a file goes wrong (unsafe, truncated, not a torch file).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offmarl.errors import OffmarlError


class UnsafeFileError(OffmarlError):
    """A file that is not plain data (or not a readable torch file at all)."""


def torch_load_plain(path: str | Path, what: str = "file", map_location: Any = "cpu", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error naming ``path`` and ``fix``.

    ``what`` says what the file should be ("checkpoint", "world model"); ``fix`` is appended to
    the message (e.g. "re-train the run")."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise UnsafeFileError(f"{path}: {what} not found{tail}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():
            # the restricted unpickler met a GLOBAL (a class or function to call) it does not
            # allow: the file holds Python objects beyond plain data, and loading them could run
            # code. Other unpickling errors ("Unsupported operand") are garbage, not a payload.
            found = _forbidden_global(str(e))
            raise UnsafeFileError(
                f"{path}: refused to load this {what}: it holds Python objects other than tensors and plain data"
                f"{f' ({found})' if found else ''}, and unpickling them could run code. offmarl writes plain data "
                f"only; files from before checkpoint format 2 (numpy RNG state) or from elsewhere are not loaded"
                f"{tail}") from None
        raise UnsafeFileError(f"{path}: cannot be read as a torch {what}: not a torch file, or truncated or corrupt"
                              f"{tail}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError) as e:
        raise UnsafeFileError(f"{path}: cannot be read as a torch {what}: it is truncated or corrupt "
                              f"({_first_line(e)}){tail}") from None


def arrays_to_tensors(obj: Any) -> Any:
    """Numpy arrays and scalars inside nested dicts/lists/tuples -> torch tensors, so that state
    kept as numpy (JAX env states, replay buffers) can go into a plain-data checkpoint.
    ``tensors_to_arrays`` is the inverse."""
    if isinstance(obj, np.ndarray | np.generic):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: arrays_to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(arrays_to_tensors(v) for v in obj)
    return obj


def tensors_to_arrays(obj: Any) -> Any:
    """Torch tensors inside nested dicts/lists/tuples -> numpy arrays (see ``arrays_to_tensors``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: tensors_to_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(tensors_to_arrays(v) for v in obj)
    return obj


def _forbidden_global(message: str) -> str:
    for line in message.splitlines():
        if "unsupported global" in line.lower():
            return line.strip().rstrip(".")[:160]
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__
