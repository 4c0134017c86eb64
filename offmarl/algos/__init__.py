"""Algorithm registry: ``offmarl train --algo NAME`` -> the module that implements it.

Each module provides ``Config`` (a dataclass with a ``loop: LoopConfig`` field) and
``Algorithm(dataset, cfg, device, seed)`` (see offmarl/training.py for the contract) and
``check_dataset(dataset, cfg)``.
"""
from __future__ import annotations

import difflib
import importlib

from offmarl.errors import OffmarlError

ALGOS = {
    "moma-ppo": "offmarl.algos.moma_ppo",
    "iql": "offmarl.algos.iql",
    "ma-iql": "offmarl.algos.ma_iql",
    "ibc": "offmarl.algos.bc",
    "itd3bc": "offmarl.algos.td3bc",
    "matd3bc": "offmarl.algos.matd3bc",
    "icql": "offmarl.algos.cql",
    "omar": "offmarl.algos.omar",
}


def algo_module(name: str):
    if name not in ALGOS:
        close = difflib.get_close_matches(name, list(ALGOS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise OffmarlError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGOS)}.{hint}")
    try:
        return importlib.import_module(ALGOS[name])
    except ModuleNotFoundError as e:
        if e.name == ALGOS[name]:
            raise OffmarlError(f"algorithm {name!r} is not implemented in this version of offmarl") from None
        raise
