"""SMAC maps and what the two SMAC backends share (offmarl/envs/smax.py, offmarl/envs/sc2.py):
map tables, options, input checks. Cheap to import: no JAX, no StarCraft II.

The two backends share map names but NOT observation, state or action layouts (SMAX 2s3z:
obs 127, state 120, 10 actions; SC2 2s3z: obs 80, state 120, 11 actions, a different action
order), nor reward scales. Data collected on one backend is not usable on the other.
"""
from __future__ import annotations

import difflib

import numpy as np

from offmarl.envs.base import EnvError

# Maps SMAX's map_name_to_scenario knows (jaxmarl 0.2.0), each checked to build and step with
# HeuristicEnemySMAX. smacv2_* are SMAX's SMACv2-style maps: random unit types and positions.
SMAC_MAPS: tuple[str, ...] = (
    "3m", "2s3z", "25m", "3s5z", "8m", "5m_vs_6m", "10m_vs_11m", "27m_vs_30m",
    "3s5z_vs_3s6z", "3s_vs_5z", "6h_vs_8z",
    "smacv2_5_units", "smacv2_10_units", "smacv2_20_units",
    "3s_vs_3z", "3s_vs_4z", "2m_vs_1z", "8m_vs_9m",
)

# Real SMAC maps that SMAX lacks but whose units it models: registered with jaxmarl's
# ``register_scenario`` when jaxmarl is first imported. name -> (ally units, enemy units), unit
# types as SMAX numbers them (smax_env.py: 0 marine, 1 marauder, 2 stalker, 3 zealot,
# 4 zergling, 5 hydralisk); team sizes from oxwhirl SMAC's smac_maps.py. As with SMAX's own
# maps, the terrain is SMAX's open square and the episode limit SMAX's max_steps (100).
SMAX_EXTRA_MAPS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "3s_vs_3z": ((2, 2, 2), (3, 3, 3)),
    "3s_vs_4z": ((2, 2, 2), (3, 3, 3, 3)),
    "2m_vs_1z": ((0, 0), (3,)),
    "8m_vs_9m": ((0,) * 8, (0,) * 9),
}

# Real SMAC maps SMAX has no scenario for -> why. Use backend="sc2" for these.
SC2_ONLY_MAPS: dict[str, str] = {
    "MMM": "needs medivacs (healing), not modelled by SMAX",
    "MMM2": "needs medivacs (healing), not modelled by SMAX",
    "1c3s5z": "needs colossi, not modelled by SMAX",
    "2c_vs_64zg": "needs colossi and cliffs, not modelled by SMAX",
    "corridor": "needs the corridor terrain; SMAX maps are an open square",
    "2s_vs_1sc": "needs a spine crawler (static building), not modelled by SMAX",
    "so_many_baneling": "needs banelings, not modelled by SMAX",
    "bane_vs_bane": "needs banelings, not modelled by SMAX",
}

# Episode limits of real SMAC (oxwhirl smac, smac_maps.py). SMAX uses one max_steps (100) for
# every map unless max_steps= is passed.
SC2_EPISODE_LIMITS: dict[str, int] = {
    "3m": 60, "8m": 120, "25m": 150, "5m_vs_6m": 70, "8m_vs_9m": 120, "10m_vs_11m": 150,
    "27m_vs_30m": 180, "MMM": 150, "MMM2": 180, "2s3z": 120, "3s5z": 150, "1c3s5z": 180,
    "3s5z_vs_3s6z": 170, "3s_vs_3z": 150, "3s_vs_4z": 200, "3s_vs_5z": 250, "2m_vs_1z": 150,
    "corridor": 400, "6h_vs_8z": 150, "2s_vs_1sc": 300, "so_many_baneling": 100,
    "bane_vs_bane": 200, "2c_vs_64zg": 400,
}

BACKENDS = ("smax", "sc2")
OBS_SCHEMES = ("local",)


def alive_from_avail(avail, backend: str):
    """avail [..., N, K] (numpy or torch, bool) -> alive [..., N]. SMAX: moving (action 0) is
    available iff the agent is alive; SC2 SMAC: no-op (action 0) is available iff it is dead."""
    return avail[..., 0] if backend == "smax" else ~avail[..., 0]
SMAX_MOVE_NAMES = ("north", "east", "south", "west", "stop")
SC2_INSTALL_HINT = (
    "install StarCraft II (https://github.com/Blizzard/s2client-proto#downloads), the SMAC maps, "
    "and oxwhirl SMAC with `pip install git+https://github.com/oxwhirl/smac.git`, and set SC2PATH "
    "to the StarCraft II folder. Note: the PyPI package `smac` is SMAC3, a hyper-parameter "
    "optimiser, not StarCraft. Or use backend=\"smax\" (JAX, no StarCraft needed)."
)
# SMAX constructor options that would break this adapter's contract (map, discrete, local obs).
_FORBIDDEN_SMAX_KW = ("scenario", "action_type", "observation_type")
# SMAX is built with this step limit (never reached); the real limit is applied by the adapter.
_NO_LIMIT = 2**30


def check_obs(map_name: str, obs: str | None) -> None:
    if obs not in (None, *OBS_SCHEMES):
        raise EnvError(
            f"observation scheme {obs!r} is not available for smac-{map_name}; choose one of: "
            f"{', '.join(OBS_SCHEMES)}"
        )


def suggest_map(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def check_smax_map(map_name: str) -> None:
    if map_name in SMAC_MAPS:
        return
    if map_name in SC2_ONLY_MAPS:
        raise EnvError(
            f"SMAC map {map_name!r} exists only in StarCraft II SMAC ({SC2_ONLY_MAPS[map_name]}); "
            f"use backend=\"sc2\" (needs StarCraft II and oxwhirl SMAC). SMAX maps: {', '.join(SMAC_MAPS)}"
        )
    raise EnvError(
        f"unknown SMAC map {map_name!r}.{suggest_map(map_name, SMAC_MAPS + tuple(SC2_ONLY_MAPS))} "
        f"SMAX maps: {', '.join(SMAC_MAPS)}"
    )


def seed_or_random(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**32))
    return int(seed)


def checked_step(spec, done: bool, actions, avail: np.ndarray) -> np.ndarray:
    """One env's step(actions) input check (SMAX and SC2 alike) -> the actions as an array."""
    if done:
        raise EnvError(f"{spec.name}: the episode has ended (or never started); call reset() first")
    a = np.asarray(actions)
    if a.shape != (spec.n_agents,) or not np.issubdtype(a.dtype, np.integer):
        raise EnvError(f"{spec.name}: expected integer actions of shape ({spec.n_agents},), got {a.dtype} {a.shape}")
    check_avail(spec.name, a, avail)
    return a


def check_avail(name: str, actions: np.ndarray, avail: np.ndarray, where: str = "") -> None:
    """actions [..., N] ints, avail [..., N, K] bool: raise EnvError on the first bad entry."""
    k = avail.shape[-1]
    in_range = (actions >= 0) & (actions < k)
    ok = in_range & np.take_along_axis(avail, np.clip(actions, 0, k - 1)[..., None], axis=-1)[..., 0]
    if ok.all():
        return
    idx = tuple(int(i) for i in np.argwhere(~ok)[0])
    a = int(actions[idx])
    prefix = f"env {idx[0]}, " if len(idx) == 2 else ""
    if not in_range[idx]:
        raise EnvError(f"{name}: {prefix}agent {idx[-1]}: action {a} is out of range 0..{k - 1}{where}")
    allowed = np.flatnonzero(avail[idx]).tolist()
    raise EnvError(f"{name}: {prefix}agent {idx[-1]}: action {a} is not available (available: {allowed}); "
                   f"pick actions from avail_actions(){where}")
