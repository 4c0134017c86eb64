"""ONE store for fitted models (the ensemble world model and R_m): save, load, format check,
cache key and the load-or-fit cache logic.

A saved file is a ``torch.save`` of a plain dict (tensors, numbers, strings only, so it loads with
``weights_only=True``):

    {format: "<name>-v<n>", **header (config + widths), state_dict, metadata}

``format`` is checked on load and is part of every cache key: bump it when the layout changes and
old cache entries are ignored (refitted) instead of misread. Writes are atomic (offmarl.atomic).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from offmarl.atomic import atomic_torch_save
from offmarl.errors import OffmarlError

M = TypeVar("M")


class WorldModelError(OffmarlError):
    """A user-facing problem with a world-model (or R_m) file or its fit to a dataset."""


def save_module(path: str | os.PathLike, fmt: str, module: nn.Module, header: dict[str, Any],
                metadata: dict[str, Any] | None = None) -> Path:
    """Write {format, **header, state_dict (on the CPU), metadata (made JSON-safe)} atomically."""
    blob = {"format": fmt, **header,
            "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
            "metadata": json.loads(json.dumps(metadata or {}, default=str))}
    return atomic_torch_save(blob, path)


def read_module_file(path: str | os.PathLike, fmt: str, what: str, fix: str) -> dict[str, Any]:
    """The saved dict of ``path`` after checking it exists, loads (weights_only) and has format ``fmt``.
    Raises WorldModelError naming the file, ``what`` it should be and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise WorldModelError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — torch raises many types for unreadable files
        raise WorldModelError(f"{what} {str(path)!r} cannot be read as a torch file ({exc}); was it written by "
                              f"offmarl? {fix}") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise WorldModelError(f"{str(path)!r} is not an offmarl {what} (format {found!r}, expected {fmt!r}); {fix}")
    return blob


def restore_module(blob: dict[str, Any], build: Callable[[], M], path: str | os.PathLike, what: str) -> M:
    """Build the module (without moving the global RNG: a fit does not move it either) and load the
    blob's weights and metadata into it."""
    with torch.random.fork_rng(devices=[]):
        module = build()
    try:
        module.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise WorldModelError(f"{what} {str(path)!r} has weights that do not match its config: {exc}") from None
    module.metadata = dict(blob.get("metadata") or {})
    return module


def cache_key(payload: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the JSON of ``payload`` (sorted keys): data checksum, config, format."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's state_dict (names and bytes): R_m's key names the world model it describes."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_or_fit(path: Path | None, load: Callable[[Path], M], fit: Callable[[], M],
                save: Callable[[M, Path], Any]) -> tuple[M, bool]:
    """The model cached at ``path`` if it loads, else ``fit()`` and ``save`` it there (path None: fit
    without caching). A stale or damaged entry (any OffmarlError from ``load``) is refitted and
    overwritten. -> (model, cached)."""
    if path is not None and path.is_file():
        try:
            return load(path), True
        except OffmarlError:
            pass
    model = fit()
    if path is not None:
        save(model, path)
    return model, False
