"""Atomic file writes, written once for the whole project (run directories, datasets, model caches).

A writer fills a temp file NEXT TO the destination and renames it over the destination with
``os.replace`` (atomic on POSIX): a reader sees the old file or the new one, never half of one, and
a writer killed mid-write leaves only a temp file. Temp names are ``.<name>.<pid>.<random>.tmp``:
the pid lets a later writer recognise the temps of dead writers (offmarl.data.storage removes them).
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

TMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """A fresh temp file name in ``path``'s folder: ``.<name>.<pid>.<8 hex>.tmp``."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s new content to; on normal exit it replaces ``path``.

    The folder is created if needed. ``fsync``: flush the bytes to disk before the rename, so a
    machine crash cannot publish an empty file (datasets). On any exception the temp file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
