"""SMAC on real StarCraft II: an adapter over oxwhirl SMAC's ``StarCraft2Env`` (Sc2Env) and n
copies stepped one after another (Sc2VecEnv, the VecMultiAgentEnv of offmarl/envs/base.py).

Needs the StarCraft II binary and oxwhirl SMAC; neither is installable here, so it is
unit-tested against a test double only (tests/test_envs_smac.py). Action layout: 0 no-op (dead
agents only), 1 stop, 2 N, 3 S, 4 E, 5 W, 6 + j attack enemy j. Unavailable actions raise
``EnvError`` naming the agent and the action (SC2 SMAC would assert).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from offmarl.envs.base import EnvError, EnvSpec, MultiAgentEnv
from offmarl.envs.smac_maps import (
    OBS_SCHEMES,
    SC2_INSTALL_HINT,
    SC2_ONLY_MAPS,
    SMAC_MAPS,
    alive_from_avail,
    check_obs,
    checked_step,
    seed_or_random,
    suggest_map,
)


def _import_starcraft2env() -> Callable:
    """oxwhirl SMAC's StarCraft2Env class, or EnvError saying how to install it."""
    try:
        import smac
    except ImportError as e:
        raise EnvError(f"backend 'sc2' needs oxwhirl SMAC, which is not installed ({e}): {SC2_INSTALL_HINT}") from e
    try:
        from smac.env import StarCraft2Env
    except Exception as e:  # SMAC3 has no smac.env; a broken pysc2 install fails here too
        where = getattr(smac, "__file__", None) or "?"
        raise EnvError(f"backend 'sc2': the installed `smac` ({where}) has no smac.env.StarCraft2Env — it is "
                       f"not oxwhirl SMAC (PyPI `smac` is SMAC3) or it is broken ({e}): {SC2_INSTALL_HINT}") from e
    return StarCraft2Env


class Sc2Env(MultiAgentEnv):
    """Adapter over oxwhirl SMAC's ``StarCraft2Env`` (real StarCraft II).

    reset(seed) -> obs [N, O] float32, state [S] float32, info {}
    step(actions [N] int) -> obs, state, reward float, terminated, truncated, info

    SMAC's ``terminated`` covers the time-out too; here truncated = ``info["episode_limit"]`` and
    terminated = battle decided. At episode end info has ``battle_won`` (False if SMAC omits it).
    SMAC seeds only at construction, so ``reset(seed)`` with a new seed re-creates the
    StarCraft2Env (and restarts the game); StarCraft II itself is not bit-reproducible.
    ``sc2_env_factory(map_name=..., seed=..., **kw)`` replaces StarCraft2Env (tests inject a
    test double through it).
    """

    def __init__(self, map_name: str = "2s3z", obs: str | None = None, seed: int | None = None,
                 sc2_env_factory: Callable | None = None, **sc2_kwargs):
        check_obs(map_name, obs)
        known = [m for m in SMAC_MAPS if not m.startswith("smacv2_")] + list(SC2_ONLY_MAPS)
        if map_name.startswith("smacv2_"):
            raise EnvError(f"{map_name!r} is a SMAX-only map (SMACv2-style); use backend=\"smax\"")
        if map_name not in known:
            raise EnvError(f"unknown SMAC map {map_name!r}.{suggest_map(map_name, known)} SC2 maps: {', '.join(known)}")
        if sc2_env_factory is None:
            sc2_env_factory = _import_starcraft2env()
            sc2path = os.path.expanduser(os.environ.get("SC2PATH", "~/StarCraftII"))
            if not os.path.isdir(sc2path):
                raise EnvError(f"backend 'sc2': StarCraft II not found at {sc2path} (SC2PATH): {SC2_INSTALL_HINT}")
        self._factory = sc2_env_factory
        self._kw = sc2_kwargs
        self.map_name = map_name
        self._seed = seed
        self._env = self._factory(map_name=map_name, seed=seed, **sc2_kwargs)
        info = self._env.get_env_info()
        n = int(info["n_agents"])
        self.spec = EnvSpec(
            name=f"smac-{map_name}", n_agents=n, obs_dims=(int(info["obs_shape"]),) * n,
            state_dim=int(info["state_shape"]), discrete=True, action_dims=(int(info["n_actions"]),) * n,
            episode_limit=int(info["episode_limit"]), obs_scheme="local", obs_schemes=OBS_SCHEMES,
            backend="sc2", extra={"map_name": map_name},
        )
        self._avail: np.ndarray | None = None
        self._done = True

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        obs = np.asarray(np.stack(self._env.get_obs()), dtype=np.float32)
        state = np.asarray(self._env.get_state(), dtype=np.float32)
        self._avail = np.asarray(self._env.get_avail_actions(), dtype=bool)
        return obs, state

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        if seed is not None and seed != self._seed:
            self._env.close()
            self._seed = seed
            self._env = self._factory(map_name=self.map_name, seed=seed, **self._kw)
        # SMAC's reset() return value changed across versions; read through the getters.
        self._env.reset()
        obs, state = self._observe()
        self._done = False
        return obs, state, {}

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, float, bool, bool, dict]:
        a = checked_step(self.spec, self._done, actions, self._avail)
        reward, terminated, sc2_info = self._env.step([int(x) for x in a])
        info = dict(sc2_info or {})
        truncated = bool(info.get("episode_limit", False))
        terminated = bool(terminated) and not truncated
        obs, state = self._observe()
        if terminated or truncated:
            self._done = True
            info["battle_won"] = bool(info.get("battle_won", False))
            info["episode_limit"] = truncated
        return obs, state, float(reward), terminated, truncated, info

    def avail_actions(self) -> np.ndarray:
        if self._avail is None:
            raise EnvError(f"{self.spec.name}: call reset() before avail_actions()")
        return self._avail.copy()

    def close(self) -> None:
        self._env.close()


class Sc2VecEnv:
    """SmaxVecEnv's interface over ``n_envs`` Sc2Env copies (each a StarCraft II process),
    stepped one after another with auto-reset. Copy b is seeded ``seed + b``. StarCraft II is not
    bit-reproducible, so ``state_dict`` keeps no env state: a resumed run restarts its battles."""

    def __init__(self, map_name: str, n_envs: int, seed: int | None = None, **sc2_kwargs):
        if int(n_envs) < 1:
            raise EnvError(f"n_envs must be >= 1, got {n_envs}")
        base = seed_or_random(seed)
        self.envs = [Sc2Env(map_name, seed=base + b, **sc2_kwargs) for b in range(int(n_envs))]
        self.spec, self.n_envs, self._seed = self.envs[0].spec, int(n_envs), base
        self._ret = np.zeros(self.n_envs, np.float32)
        self._len = np.zeros(self.n_envs, np.int32)

    def reset(self, seed: int | None = None):
        outs = [e.reset() for e in self.envs]
        self._ret[:], self._len[:] = 0, 0
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]), self.avail_actions()

    def step(self, actions):
        a = np.asarray(actions)
        keys = ("terminated", "truncated", "battle_won", "episode_return", "episode_length", "final_obs",
                "final_state", "final_avail")
        info: dict[str, list] = {k: [] for k in keys}
        obs, state, reward, done = [], [], [], []
        for b, e in enumerate(self.envs):
            o, s, r, term, trunc, inf = e.step(a[b])
            self._ret[b] += r
            self._len[b] += 1
            for k, v in (("terminated", term), ("truncated", trunc), ("battle_won", inf.get("battle_won", False)),
                         ("episode_return", self._ret[b]), ("episode_length", self._len[b]), ("final_obs", o),
                         ("final_state", s), ("final_avail", e.avail_actions())):
                info[k].append(v)
            if term or trunc:
                o, s, _ = e.reset()
                self._ret[b], self._len[b] = 0, 0
            obs.append(o)
            state.append(s)
            reward.append(r)
            done.append(term or trunc)
        out = {k: np.asarray(v) for k, v in info.items()}
        out["avail_actions"] = self.avail_actions()
        return np.stack(obs), np.stack(state), np.asarray(reward, np.float32), np.asarray(done), out

    def avail_actions(self) -> np.ndarray:
        return np.stack([e.avail_actions() for e in self.envs])

    #: a placeholder action available to every living agent ("stop"; a dead one has only no-op)
    idle_action = 1

    @staticmethod
    def alive(avail: np.ndarray) -> np.ndarray:
        """avail [..., N, K] -> alive [..., N]: in SC2 SMAC, no-op (action 0) is available iff dead."""
        return alive_from_avail(np.asarray(avail), "sc2")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()

    def close(self) -> None:
        for e in self.envs:
            e.close()
