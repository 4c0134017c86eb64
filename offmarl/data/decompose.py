"""Single-agent data -> per-agent data, through the environment's own scheme.

Single-agent MuJoCo datasets (D4RL, Minari) hold the global state and the global action. The
per-agent view is NOT re-implemented here: observations come from ``env.observe(states)`` and
per-agent actions from ``env.to_local_actions(global_actions)``, both of which MaMuJoCoEnv
builds from MaMuJoCo's own partition (envs/mamujoco.py). Dataset decomposition and evaluation
therefore cannot disagree about who owns which joint.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from offmarl.data.dataset import DatasetError, DatasetMeta, MultiAgentDataset

# Single-agent observation widths of other Ant versions whose first 27 dims are the 27-d
# offmarl ant state (z, quaternion, 8 joint angles, 6 torso velocities, 8 joint velocities):
# 111 = gym Ant-v2/v3 (D4RL; + 84 contact forces), 105 = Gymnasium Ant-v4/v5 (+ 78).
_ANT_WIDE_WIDTHS = (105, 111)


def select_state_dims(obs: np.ndarray, env_name: str, key: str, origin: str, expected: int) -> np.ndarray:
    """Single-agent observations ``obs`` [T, D] -> states [T, S] of ``env_name``.

    Accepts the env's own width S, and for ant the 105-d (v4/v5) and 111-d (v2/v3) layouts whose
    trailing contact forces are dropped (zero under MuJoCo >= 2 anyway). Anything else is a
    DatasetError naming the key, the found and the expected width.
    """
    obs = np.asarray(obs)
    if obs.ndim != 2:
        raise DatasetError(f"{origin}: key '{key}' has shape {obs.shape}, expected [T, {expected}] "
                           f"for env {env_name!r}")
    width = obs.shape[1]
    if width == expected:
        return obs
    if env_name.startswith("ant-") and expected == 27 and width in _ANT_WIDE_WIDTHS:
        return obs[:, :expected]
    accepted = f"{expected}" + (" (or 105/111 with contact forces)" if env_name.startswith("ant-") else "")
    raise DatasetError(
        f"{origin}: key '{key}' has width {width}, expected {accepted} for env {env_name!r}. "
        f"Pick the env the data was recorded in with --env (e.g. halfcheetah-2x3 for 17-d data)"
    )


def decompose(
    states: np.ndarray,
    next_states: np.ndarray,
    global_actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    env_name: str,
    obs_scheme: str = "fo",
    *,
    name: str = "",
    source: str = "",
    generator: str = "",
    ref_min_return: float | None = None,
    ref_max_return: float | None = None,
    extra: dict[str, Any] | None = None,
    origin: str = "<memory>",
) -> MultiAgentDataset:
    """Per-agent dataset from single-agent transitions of a MaMuJoCo scenario.

    states, next_states [T, S]; global_actions [T, A_global] (the single-agent action order of
    the Gymnasium model, i.e. the actuator order of its XML); rewards, terminals, timeouts [T].
    Returns observations [T, N, O] = env.observe(states) and actions [T, N, A] =
    env.to_local_actions(global_actions) under ``obs_scheme``. Widths are checked against the
    env first, so a wrong ``env_name`` is a DatasetError naming the key, not an index error.
    """
    from offmarl.envs import make_env
    from offmarl.errors import OffmarlError

    try:
        env = make_env(env_name, obs=obs_scheme)
    except OffmarlError as e:
        raise DatasetError(f"{origin}: cannot decompose for env {env_name!r}: {e}") from None
    try:
        if not hasattr(env, "to_local_actions") or env.spec.discrete:
            raise DatasetError(
                f"{origin}: env {env_name!r} has no single-agent form to decompose; "
                f"decomposition works for MaMuJoCo envs (ant-4x2, halfcheetah-2x3, ...)"
            )
        spec = env.spec
        s_dim, a_dim = spec.state_dim, int(env.global_action_dim)
        for key, arr, width in (("states", states, s_dim), ("next_states", next_states, s_dim),
                                ("actions", global_actions, a_dim)):
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape[1] != width:
                found = arr.shape[1] if arr.ndim == 2 else f"shape {arr.shape}"
                raise DatasetError(
                    f"{origin}: key '{key}' has width {found}, expected {width} for env {env_name!r} "
                    f"(state {s_dim}, global action {a_dim}); pass the env the data was recorded in"
                )
        states = np.asarray(states, dtype=np.float32)
        next_states = np.asarray(next_states, dtype=np.float32)
        obs = np.asarray(env.observe(states), dtype=np.float32)
        next_obs = np.asarray(env.observe(next_states), dtype=np.float32)
        actions = np.asarray(env.to_local_actions(np.asarray(global_actions, dtype=np.float32)), dtype=np.float32)
    finally:
        env.close()
    meta = DatasetMeta(
        env=env_name, obs_scheme=spec.obs_scheme, n_agents=spec.n_agents, obs_dims=tuple(spec.obs_dims),
        action_dims=tuple(spec.action_dims), state_dim=spec.state_dim, discrete=False, name=name,
        source=source, generator=generator, ref_min_return=ref_min_return, ref_max_return=ref_max_return,
        extra=dict(extra or {}),
    )
    return MultiAgentDataset(
        states=states, next_states=next_states, observations=obs, next_observations=next_obs, actions=actions,
        rewards=np.asarray(rewards, dtype=np.float32).reshape(-1),
        terminals=np.asarray(terminals).astype(bool).reshape(-1),
        timeouts=np.asarray(timeouts).astype(bool).reshape(-1),
        meta=meta, origin=origin,
    )
