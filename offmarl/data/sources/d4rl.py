"""Read D4RL hdf5 files directly with h5py (``import d4rl`` needs mujoco-py 2.1 and fails on
modern stacks; the files themselves are plain HDF5).

D4RL layout (top level): observations [T, D] float32, actions [T, A] float32, rewards [T]
float32, terminals [T] bool, timeouts [T] bool, optional next_observations [T, D], plus infos/*
and metadata/* that offmarl does not need.

Action order. D4RL's Ant-v2 came from gym's ``ant.xml``; gymnasium-robotics still ships that
Ant-v2 (gymnasium_robotics/envs/mujoco/ant_v2.py) and its assets/ant.xml is byte-identical to
Gymnasium's v5 ant.xml (checked with diff in gymnasium 1.3.0 / gymnasium-robotics 1.4.2). The
actuator block of that XML is hip_4, ankle_4, hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3,
so a D4RL Ant-v2 action is in the SAME order as a Gymnasium v5 action, and MaMuJoCo's
``map_global_action_to_local_actions`` applies to it unchanged (agent_0 = ids 2, 3 = hip1,
ankle1; ...; agent_3 = ids 0, 1 = hip4, ankle4). Note that this differs from the joint order of
the observation (hip1, ankle1, ..., hip4, ankle4 in dims 5-12 and 19-26).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from offmarl.data.dataset import DatasetError, MultiAgentDataset
from offmarl.data.decompose import decompose, select_state_dims

# D4RL's reference returns (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE, v2 tasks):
# normalised score = (R - min) / (max - min).
D4RL_REF_RETURNS: dict[str, tuple[float, float]] = {
    "ant": (-325.6, 3879.7),
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def read_d4rl(path: str | Path, env: str = "ant-4x2", obs: str = "fo") -> MultiAgentDataset:
    """A D4RL hdf5 file -> MultiAgentDataset for MaMuJoCo ``env`` under observation scheme ``obs``.

    observations [T, 111] (Ant-v2: dims 0..26 are the 27-d state, kept; 27..110 are contact
    forces, dropped) or already [T, 27]; actions [T, 8] in D4RL (= Gymnasium v5) order.
    Episodes end at ``terminals | timeouts``; a trailing partial episode (neither flag at the
    end) is dropped with a warning.

    Without ``next_observations`` the next state of row t is row t+1 of the same episode, so
    the LAST transition of every episode has no known next state and is DROPPED; the
    transition before it then ends the episode as a time-out (the agent was still alive
    there, so bootstrapping is right). An episode of one transition disappears entirely.
    Files with ``next_observations`` keep every transition.
    """
    from offmarl.data.storage import open_hdf5

    path = Path(path)
    where = str(path)
    with open_hdf5(path, what="D4RL") as f:
        if f.attrs.get("format") is not None:
            raise DatasetError(
                f"{where}: this is an offmarl dataset file (attr 'format'), not a D4RL file; "
                f"load it directly (`offmarl train --dataset {where}`), no conversion needed"
            )
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise DatasetError(
                f"{where}: missing D4RL key(s) {', '.join(repr(k) for k in missing)} "
                f"(found: {', '.join(sorted(f.keys())) or 'none'}); a D4RL v2 file has "
                f"{', '.join(REQUIRED_KEYS)} — is this a D4RL file? (old v0 files without "
                f"'timeouts' are not supported: use the -v2 files)"
            )
        raw = {k: _read(f, k, where) for k in REQUIRED_KEYS}
        raw_next = _read(f, "next_observations", where) if "next_observations" in f else None

    for k, v in [*raw.items(), ("next_observations", raw_next)]:
        if v is not None and np.asarray(v).dtype.kind not in "fiub":  # e.g. rewards stored as strings
            raise DatasetError(f"{where}: key '{k}' holds {np.asarray(v).dtype} values, not numbers; "
                               f"D4RL stores float32 (bool for terminals/timeouts) — the file is not usable")
    t = len(raw["rewards"])
    for k, v in raw.items():
        if len(v) != t:
            raise DatasetError(f"{where}: key '{k}' has {len(v)} rows but 'rewards' has {t}; the file is inconsistent")
    if raw_next is not None and len(raw_next) != t:
        raise DatasetError(f"{where}: key 'next_observations' has {len(raw_next)} rows but 'rewards' has {t}")
    if t == 0:
        raise DatasetError(f"{where}: the dataset is empty (key 'rewards' has 0 transitions)")

    from offmarl.envs import make_env
    from offmarl.errors import OffmarlError

    try:
        with make_env(env, obs="fo") as e:
            s_dim = e.spec.state_dim
    except OffmarlError as e:
        raise DatasetError(f"{where}: cannot import for env {env!r}: {e}") from None
    states = select_state_dims(raw["observations"], env, "observations", where, s_dim)
    actions = np.asarray(raw["actions"])
    rewards = np.asarray(raw["rewards"]).reshape(-1)
    terminals = np.asarray(raw["terminals"]).reshape(-1).astype(bool)
    timeouts = np.asarray(raw["timeouts"]).reshape(-1).astype(bool)
    ends = terminals | timeouts

    # Drop a trailing partial episode: nothing says how it ended.
    last_end = int(np.flatnonzero(ends)[-1]) if ends.any() else -1
    if last_end < t - 1:
        warnings.warn(
            f"{where}: the last {t - 1 - last_end} transitions end no episode (terminals and timeouts "
            f"both False); dropping that partial episode", stacklevel=2,
        )
    keep = last_end + 1
    if keep == 0:
        raise DatasetError(f"{where}: no episode ends anywhere (keys 'terminals' and 'timeouts' are all False)")

    if raw_next is not None:
        next_states = select_state_dims(raw_next, env, "next_observations", where, s_dim)[:keep]
        sel = slice(0, keep)
        states, actions, rewards = states[sel], actions[sel], rewards[sel]
        terminals, timeouts = terminals[sel], timeouts[sel]
    else:
        # next state = following row; the row that ends an episode has no successor -> drop it.
        ends = ends[:keep]
        idx = np.flatnonzero(~ends)          # transitions whose successor is in the same episode
        if len(idx) == 0:
            raise DatasetError(
                f"{where}: every episode has one transition and the file has no 'next_observations', "
                f"so no next state is known"
            )
        next_states = states[idx + 1]
        # the kept row before a dropped episode end now ends its episode: a time-out
        new_end = ends[idx + 1]
        states, actions, rewards = states[idx], actions[idx], rewards[idx]
        terminals = np.zeros(len(idx), dtype=bool)
        timeouts = new_end.copy()
        n_dropped = int(ends.sum())
        warnings.warn(
            f"{where}: no 'next_observations' key; dropped the last transition of each of the "
            f"{n_dropped} episodes (its next state is unknown) — {len(idx)} transitions kept",
            stacklevel=2,
        )

    env_kind = env.split("-")[0]
    ref = D4RL_REF_RETURNS.get(env_kind)
    return decompose(
        states, next_states, actions, rewards, terminals, timeouts, env, obs,
        name=path.stem, source=f"d4rl:{path.name}", generator="D4RL",
        ref_min_return=ref[0] if ref else None, ref_max_return=ref[1] if ref else None,
        extra={"d4rl_has_next_observations": raw_next is not None}, origin=where,
    )


def _read(f, key: str, where: str) -> np.ndarray:
    try:
        return f[key][()]
    except (OSError, RuntimeError, TypeError, AttributeError) as e:
        raise DatasetError(f"{where}: key '{key}' cannot be read ({e}); the file is truncated or corrupt") from None
