"""offmarl's cache folder, chosen in one place for every cache the toolkit keeps.

``cache_dir()`` is ``$OFFMARL_CACHE_DIR``; else, when ``OFFMARL_DATA_DIR`` is set,
``<data dir>/cache`` (a separate data folder, e.g. CI's, keeps its caches with it); else
``~/.offmarl/cache``. Its sub-folders: ``worldmodels`` (trained world models and R_m, reused by a
second run on the same data and config), ``jax`` (compiled SMAX programs), ``ray`` (a local Ray's
session files and token, ``offmarl sweep``) and ``matplotlib`` (font cache, ``offmarl report``; only
when one of the two variables is set). Standard library only: offmarl.envs.smax calls it before JAX
is imported.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(sub: str | None = None) -> Path:
    """The cache folder (module docstring), or its sub-folder ``sub``; nothing is created."""
    if os.environ.get("OFFMARL_CACHE_DIR"):
        root = Path(os.environ["OFFMARL_CACHE_DIR"]).expanduser()
    elif os.environ.get("OFFMARL_DATA_DIR"):
        root = Path(os.environ["OFFMARL_DATA_DIR"]).expanduser() / "cache"
    else:
        root = Path.home() / ".offmarl" / "cache"
    return root / sub if sub else root


def cache_dir_chosen() -> bool:
    """True when the user chose the cache folder (OFFMARL_CACHE_DIR or OFFMARL_DATA_DIR is set)."""
    return bool(os.environ.get("OFFMARL_CACHE_DIR") or os.environ.get("OFFMARL_DATA_DIR"))
