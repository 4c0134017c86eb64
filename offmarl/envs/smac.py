"""SMAC (StarCraft Multi-Agent Challenge) behind the offmarl env contract, two backends:

``smax`` (default, offmarl/envs/smax.py): JaxMARL's SMAX, a JAX re-implementation of SMAC's
battles against a scripted enemy; runs anywhere jax[cpu] runs. ``sc2`` (offmarl/envs/sc2.py):
an adapter over oxwhirl SMAC's ``StarCraft2Env``, which needs the StarCraft II binary. The map
tables and what both share are in offmarl/envs/smac_maps.py. This module picks the backend
(``make_smac``, ``make_vec_smac``) and checks a map before anything heavy is imported.

Algorithms do not import this module: they build envs through ``offmarl.envs.make_env`` /
``make_vec_env`` and see only the contracts of offmarl/envs/base.py.
"""
from __future__ import annotations

import importlib.util
import os

from offmarl.envs.base import EnvError, MultiAgentEnv
from offmarl.envs.sc2 import Sc2Env, Sc2VecEnv, _import_starcraft2env
from offmarl.envs.smac_maps import (
    BACKENDS,
    OBS_SCHEMES,
    SC2_EPISODE_LIMITS,
    SC2_INSTALL_HINT,
    SC2_ONLY_MAPS,
    SMAC_MAPS,
    SMAX_EXTRA_MAPS,
    SMAX_MOVE_NAMES,
    check_obs,
    check_smax_map,
    suggest_map,
)
from offmarl.envs.smax import SmaxEnv, SmaxVecEnv


def smac_backend_available() -> dict[str, bool]:
    """{"smax": jaxmarl importable, "sc2": oxwhirl SMAC's StarCraft2Env importable}.

    The smax check does not import jax (cheap). The sc2 check imports ``smac.env`` when a
    ``smac`` package exists, because only that tells oxwhirl SMAC from SMAC3 (PyPI ``smac``).
    It does not check for the StarCraft II binary.
    """
    smax = importlib.util.find_spec("jaxmarl") is not None
    try:
        _import_starcraft2env()
        sc2 = True
    except EnvError:
        sc2 = False
    return {"smax": smax, "sc2": sc2}


def make_smac(map_name: str, obs: str | None = None, backend: str = "smax", seed: int | None = None,
              **kw) -> MultiAgentEnv:
    """Build one SMAC map. ``obs``: only ``local`` (None means local). ``backend``: ``smax``
    (JAX, default) or ``sc2`` (real StarCraft II). Extra keywords go to the backend's
    constructor (SMAX: e.g. ``max_steps``, ``enemy_shoots``; SC2: e.g. ``difficulty``)."""
    if backend not in BACKENDS:
        raise EnvError(f"unknown SMAC backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    check_obs(map_name, obs)
    if backend == "smax":
        return SmaxEnv(map_name, obs=obs, seed=seed, **kw)
    return Sc2Env(map_name, obs=obs, seed=seed, **kw)


def check_online_map(map_name: str, backend: str = "smax") -> None:
    """Fail early, in one line, when ``map_name`` cannot run on ``backend``: unknown maps with the
    nearest names, SC2-only maps on smax, and sc2 without StarCraft II (how to install it).
    Imports neither jax nor StarCraft II's game."""
    if backend not in BACKENDS:
        raise EnvError(f"unknown SMAC backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "smax":
        check_smax_map(map_name)
        return
    known = [m for m in SMAC_MAPS if not m.startswith("smacv2_")] + list(SC2_ONLY_MAPS)
    if map_name not in known:
        raise EnvError(f"unknown SMAC map {map_name!r}.{suggest_map(map_name, known)} SC2 maps: {', '.join(known)}")
    _import_starcraft2env()
    sc2path = os.path.expanduser(os.environ.get("SC2PATH", "~/StarCraftII"))
    if not os.path.isdir(sc2path):
        raise EnvError(f"backend 'sc2': StarCraft II not found at {sc2path} (SC2PATH): {SC2_INSTALL_HINT}")


def make_vec_smac(map_name: str, n_envs: int, backend: str = "smax", seed: int | None = None, **kw):
    """``n_envs`` copies of one map behind SmaxVecEnv's interface: the jitted, vmapped SMAX
    copies, or (``sc2``) StarCraft II processes stepped one after another (Sc2VecEnv)."""
    if backend not in BACKENDS:
        raise EnvError(f"unknown SMAC backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "smax":
        return SmaxVecEnv(map_name, n_envs, seed=seed, **kw)
    return Sc2VecEnv(map_name, n_envs, seed=seed, **kw)


__all__ = [
    "BACKENDS",
    "OBS_SCHEMES",
    "SC2_EPISODE_LIMITS",
    "SC2_INSTALL_HINT",
    "SC2_ONLY_MAPS",
    "SMAC_MAPS",
    "SMAX_EXTRA_MAPS",
    "SMAX_MOVE_NAMES",
    "Sc2Env",
    "Sc2VecEnv",
    "SmaxEnv",
    "SmaxVecEnv",
    "check_online_map",
    "make_smac",
    "make_vec_smac",
    "smac_backend_available",
]
