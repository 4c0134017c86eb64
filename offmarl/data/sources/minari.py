"""Minari (Farama's offline-RL format) import and export, through the ``minari`` API.

Import (``read_minari``) handles two kinds of Minari datasets:
  * single-agent MuJoCo datasets (e.g. ``mujoco/ant/expert-v0``, Ant-v5, Box observations of
    105 dims or 27 without contact forces): decomposed per agent through the env's scheme
    (offmarl.data.decompose), like D4RL;
  * datasets exported by offmarl (``export_minari``): recognised by the ``offmarl`` block in
    their metadata and restored LOSSLESSLY (same arrays, dtypes and DatasetMeta).

Export layout (one Minari episode per offmarl episode, in order):
  observation: Dict {"agent_0": Box(O_0), ..., "agent_{N-1}": Box(O_{N-1}), "state": Box(S)}
               (+ "avail_actions": MultiBinary([N, K]) for discrete datasets with avail_actions);
               T+1 entries per episode: the T observations then the last next observation.
  action:      Dict {"agent_i": Box(A_i)} (continuous) or {"agent_i": Discrete(K)} (discrete).
  rewards [T], terminations [T] = terminals, truncations [T] = timeouts.
  metadata.json: "offmarl" = {"format", "format_version", "meta" (DatasetMeta dict), "dtypes",
               "has_next_avail_actions"}; plus ref_min_score/ref_max_score when known so that
               minari.get_normalized_score works.
Per-agent Boxes hold the TRUE widths (no padding); the zero padding is restored on import.
If a dataset's next_* arrays are not the following row of the same episode (never the case for
data rolled out in an env), the exact next_* arrays of that episode go into its infos as
``offmarl_next_states`` / ``offmarl_next_observations`` / ``offmarl_next_avail_actions``.

Everything works offline: HF_HUB_OFFLINE is set before minari is imported, and an id that is
not on disk is refused at once (no download attempt).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from offmarl.data.dataset import ARRAY_KEYS, OPTIONAL_KEYS, DatasetError, DatasetMeta, MultiAgentDataset

FORMAT_NAME = "offmarl-dataset"
FORMAT_VERSION = 1
META_KEY = "offmarl"
_NEXT_INFO = {"next_states": "offmarl_next_states", "next_observations": "offmarl_next_observations",
              "next_avail_actions": "offmarl_next_avail_actions"}


def _minari():
    # Before the first import: huggingface_hub reads it at import time and then refuses network
    # calls at once instead of hanging on an unreachable host.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import minari
    return minari


def minari_root() -> Path:
    """The local Minari root: $MINARI_DATASETS_PATH or ~/.minari/datasets (not created here)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


@contextlib.contextmanager
def _root_env(root: str | os.PathLike | None) -> Iterator[None]:
    """Point minari at ``root`` for the duration (minari reads the variable at each call)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


# ---------------------------------------------------------------------------- import
def _resolve_data_dir(dataset_id_or_path: str | os.PathLike) -> tuple[Path, str]:
    """-> (the dataset's data/ directory, a label for messages)."""
    p = Path(dataset_id_or_path)
    if p.exists():
        for cand in (p / "data", p, p.parent):
            if (cand / "metadata.json").is_file():
                return cand, str(p)
        raise DatasetError(
            f"{p}: not a Minari dataset (no data/metadata.json); expected the layout "
            f"<root>/<namespace>/<env>/<name>-v<N>/data/{{metadata.json, main_data.hdf5}}"
        )
    ds_id = str(dataset_id_or_path)
    root = minari_root()
    data_dir = root / ds_id / "data"
    if not (data_dir / "metadata.json").is_file():
        raise DatasetError(
            f"minari:{ds_id}: not found locally under {root}; downloads need network: run "
            f"`minari download {ds_id}` on a connected machine and copy ~/.minari/datasets "
            f"(or set MINARI_DATASETS_PATH), or use `offmarl datasets generate`"
        )
    return data_dir, f"minari:{ds_id}"


def read_minari(dataset_id_or_path: str | os.PathLike, env: str | None = None,
                obs: str | None = None) -> MultiAgentDataset:
    """A Minari dataset (id under the local root, or a path to its directory) -> MultiAgentDataset.

    offmarl-exported datasets come back exactly as exported; ``env`` must then be None or the
    stored env, and an ``obs`` other than the stored scheme re-derives observations
    (``with_obs``). Single-agent datasets are decomposed for ``env`` (default ``ant-4x2``) under
    ``obs`` (default ``fo``): observations [T+1, 105] (Ant-v5) or [T+1, 27] per episode, keeping
    the first 27 dims; actions [T, 8] in Gymnasium v5 order. An episode that ends with neither
    termination nor truncation is marked as a time-out (its final observation is known, so no
    transition is lost).
    """
    data_dir, where = _resolve_data_dir(dataset_id_or_path)
    minari = _minari()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mds = minari.MinariDataset(data_dir)
        raw_meta = json.loads((data_dir / "metadata.json").read_text())
    except (ValueError, AssertionError, KeyError, TypeError, OSError) as e:  # what minari raises on damage
        raise DatasetError(f"{where}: Minari cannot open this dataset ({type(e).__name__}: {e}); "
                           "copy it again") from None
    if mds.total_episodes == 0:
        raise DatasetError(f"{where}: the Minari dataset has no episodes")
    block = raw_meta.get(META_KEY)
    if isinstance(block, dict) and block.get("format") == FORMAT_NAME:
        ds = _read_offmarl_export(mds, block, where)
        if env is not None and env != ds.meta.env:
            raise DatasetError(
                f"{where}: this offmarl export is for env {ds.meta.env!r}, not {env!r}; drop --env"
            )
        if obs is not None and obs != ds.meta.obs_scheme:
            ds = ds.with_obs(obs)
        return ds
    return _read_single_agent(mds, raw_meta, where, env or "ant-4x2", obs or "fo")


def _read_single_agent(mds, raw_meta: dict, where: str, env: str, obs: str) -> MultiAgentDataset:
    import gymnasium as gym

    from offmarl.data.decompose import decompose, select_state_dims
    from offmarl.data.sources.d4rl import D4RL_REF_RETURNS
    from offmarl.envs import make_env
    from offmarl.errors import OffmarlError

    if not isinstance(mds.observation_space, gym.spaces.Box) or not isinstance(mds.action_space, gym.spaces.Box):
        raise DatasetError(
            f"{where}: observation space {mds.observation_space} / action space {mds.action_space}: "
            f"only Box observations and actions (single-agent MuJoCo) or offmarl exports can be imported"
        )
    try:
        with make_env(env, obs="fo") as e:
            s_dim = e.spec.state_dim
    except OffmarlError as e:
        raise DatasetError(f"{where}: cannot import for env {env!r}: {e}") from None
    states, next_states, actions, rewards, terms, truncs = [], [], [], [], [], []
    for ep in mds.iterate_episodes():
        o = select_state_dims(np.asarray(ep.observations), env, f"episode_{ep.id}/observations", where, s_dim)
        t = len(ep.rewards)
        if len(o) != t + 1:
            raise DatasetError(
                f"{where}: key 'episode_{ep.id}/observations' has {len(o)} rows, expected {t + 1} "
                f"(rewards + 1); the dataset is inconsistent"
            )
        if t == 0:
            continue
        states.append(o[:-1])
        next_states.append(o[1:])
        actions.append(np.asarray(ep.actions).reshape(t, -1))
        rewards.append(np.asarray(ep.rewards).reshape(t))
        term = np.asarray(ep.terminations).reshape(t).astype(bool)
        trunc = np.asarray(ep.truncations).reshape(t).astype(bool)
        if not (term[-1] or trunc[-1]):
            trunc = trunc.copy()
            trunc[-1] = True  # an episode cut without a flag: a time-out (bootstrap)
        terms.append(term)
        truncs.append(trunc)
    if not states:
        raise DatasetError(f"{where}: every episode is empty")
    ds_id = raw_meta.get("dataset_id", where)
    ref = D4RL_REF_RETURNS.get(env.split("-")[0])  # offmarl normalises ant etc. by D4RL's refs
    extra: dict[str, Any] = {"minari_dataset_id": ds_id}
    for k in ("ref_min_score", "ref_max_score", "algorithm_name"):
        if raw_meta.get(k) is not None:
            extra[f"minari_{k}"] = raw_meta[k]
    return decompose(
        np.concatenate(states), np.concatenate(next_states), np.concatenate(actions), np.concatenate(rewards),
        np.concatenate(terms), np.concatenate(truncs), env, obs,
        name=str(ds_id).replace("/", "-"), source=f"minari:{ds_id}",
        generator=str(raw_meta.get("algorithm_name") or "minari"),
        ref_min_return=ref[0] if ref else None, ref_max_return=ref[1] if ref else None,
        extra=extra, origin=where,
    )


def export_meta(block: dict, where: str) -> tuple[DatasetMeta, dict[str, str]]:
    """The ``offmarl`` metadata block of an export (Minari here, vaults in vault.py) -> (DatasetMeta,
    the arrays' dtypes)."""
    version = int(block.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise DatasetError(f"{where}: offmarl export format_version {version} is newer than this offmarl "
                           "reads; upgrade")
    try:
        meta = DatasetMeta.from_dict(block["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{where}: metadata key '{META_KEY}.meta' is not valid dataset metadata ({e})") from None
    return meta, block.get("dtypes", {})


def _read_offmarl_export(mds, block: dict, where: str) -> MultiAgentDataset:
    meta, dtypes = export_meta(block, where)
    n, o_max, a_max = meta.n_agents, max(meta.obs_dims), max(meta.action_dims)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ARRAY_KEYS + OPTIONAL_KEYS}
    has_avail = "avail_actions" in dtypes
    has_next_avail = bool(block.get("has_next_avail_actions", False))
    for ep in mds.iterate_episodes():
        t = len(ep.rewards)
        ob = ep.observations
        try:
            st = np.asarray(ob["state"])
            per_agent = [np.asarray(ob[f"agent_{i}"]) for i in range(n)]
            act = [np.asarray(ep.actions[f"agent_{i}"]) for i in range(n)]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{where}: episode_{ep.id} lacks key {e} of the offmarl export layout") from None
        obs_all = np.zeros((t + 1, n, o_max), dtype=per_agent[0].dtype)
        for i, x in enumerate(per_agent):
            obs_all[:, i, : x.shape[-1]] = x
        if meta.discrete:
            a = np.stack([x.reshape(t) for x in act], axis=1)
        else:
            a = np.zeros((t, n, a_max), dtype=act[0].dtype)
            for i, x in enumerate(act):
                a[:, i, : x.shape[-1]] = x
        infos = ep.infos or {}
        parts["states"].append(st[:-1])
        parts["next_states"].append(np.asarray(infos.get(_NEXT_INFO["next_states"], st[1:])))
        parts["observations"].append(obs_all[:-1])
        parts["next_observations"].append(np.asarray(infos.get(_NEXT_INFO["next_observations"], obs_all[1:])))
        parts["actions"].append(a)
        parts["rewards"].append(np.asarray(ep.rewards))
        parts["terminals"].append(np.asarray(ep.terminations))
        parts["timeouts"].append(np.asarray(ep.truncations))
        if has_avail:
            av = np.asarray(ob["avail_actions"])
            parts["avail_actions"].append(av[:-1])
            if has_next_avail:
                parts["next_avail_actions"].append(np.asarray(infos.get(_NEXT_INFO["next_avail_actions"], av[1:])))
    arrays: dict[str, np.ndarray | None] = {}
    for k in ARRAY_KEYS + OPTIONAL_KEYS:
        if not parts[k]:
            arrays[k] = None
            continue
        arr = np.concatenate(parts[k])
        arrays[k] = arr.astype(dtypes[k], copy=False) if k in dtypes else arr
    return MultiAgentDataset(**arrays, meta=meta, origin=where)


# ---------------------------------------------------------------------------- export
def export_minari(ds: MultiAgentDataset, dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """Write ``ds`` as the Minari dataset ``dataset_id`` (``namespace/env/name-vN``) under ``root``
    (default: $MINARI_DATASETS_PATH or ~/.minari/datasets) and return its directory.

    ``minari.load_dataset(dataset_id)`` then loads it, and ``read_minari`` restores ``ds``
    exactly. A partly written dataset directory is removed if anything fails.
    """
    import gymnasium as gym

    minari = _minari()
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError):  # TypeError: an id without "-vN" (minari parses the version as None)
        raise DatasetError(
            f"Minari id {dataset_id!r} is malformed; use NAMESPACE/ENV/NAME-v0, e.g. offmarl/ant-4x2/medium-v0"
        ) from None
    m = ds.meta
    n = m.n_agents
    _check_padding(ds)

    obs_spaces: dict[str, gym.Space] = {
        f"agent_{i}": gym.spaces.Box(-np.inf, np.inf, (m.obs_dims[i],), ds.observations.dtype) for i in range(n)
    }
    obs_spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (m.state_dim,), ds.states.dtype)
    if ds.avail_actions is not None:
        obs_spaces["avail_actions"] = gym.spaces.MultiBinary([n, max(m.action_dims)])
    if m.discrete:
        act_space = gym.spaces.Dict({f"agent_{i}": gym.spaces.Discrete(m.action_dims[i]) for i in range(n)})
    else:
        lo, hi = _action_bounds(m.env)
        act_space = gym.spaces.Dict(
            {f"agent_{i}": gym.spaces.Box(lo, hi, (m.action_dims[i],), ds.actions.dtype) for i in range(n)}
        )

    dtypes = {k: str(getattr(ds, k).dtype) for k in ARRAY_KEYS + OPTIONAL_KEYS if getattr(ds, k) is not None}
    block = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": m.to_dict(), "dtypes": dtypes,
        "has_next_avail_actions": ds.next_avail_actions is not None,
    }
    with _root_env(root):
        dest = minari_root() / dataset_id
        if dest.exists():
            raise DatasetError(
                f"{dest}: Minari dataset {dataset_id!r} already exists; choose another version "
                f"(e.g. -v1) or delete that directory"
            )
        try:
            buffers = list(_episode_buffers(ds, EpisodeBuffer))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # author/permalink/eval_env "recommended" notices
                created = minari.create_dataset_from_buffers(
                    dataset_id=dataset_id, buffer=buffers, env=None,
                    observation_space=gym.spaces.Dict(obs_spaces), action_space=act_space,
                    algorithm_name=m.generator or "unknown", author="offmarl",
                    description=f"offmarl dataset {m.name or '(unnamed)'} for {m.env} ({m.obs_scheme} "
                    f"observations, {n} agents); source {m.source or 'unknown'}. Import losslessly with "
                    f"`offmarl datasets convert {dataset_id} --from minari`.",
                )
            extra: dict[str, Any] = {META_KEY: block}
            if m.ref_min_return is not None and m.ref_max_return is not None:
                extra.update(ref_min_score=float(m.ref_min_return), ref_max_score=float(m.ref_max_return))
            created.storage.update_metadata(extra)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dest


def _action_bounds(env_name: str) -> tuple[float, float]:
    """The env's action box (all offmarl continuous envs use the same bounds per dimension)."""
    from offmarl.envs import make_env
    from offmarl.errors import OffmarlError

    try:
        with make_env(env_name) as e:
            return float(e.spec.action_low), float(e.spec.action_high)
    except (OffmarlError, ImportError):  # env not installable here: the box is documentation only
        return -np.inf, np.inf


def _check_padding(ds: MultiAgentDataset) -> None:
    """Per-agent Boxes hold true widths, so padding must be zero to come back exactly."""
    m = ds.meta
    checks = [("observations", ds.observations, m.obs_dims), ("next_observations", ds.next_observations, m.obs_dims)]
    if not m.discrete:
        checks.append(("actions", ds.actions, m.action_dims))
    for key, arr, widths in checks:
        for i, w in enumerate(widths):
            if w < arr.shape[-1] and np.any(arr[:, i, w:] != 0):
                raise DatasetError(
                    f"{ds.origin}: key '{key}' has non-zero padding for agent {i} beyond its width {w}; "
                    f"the format requires zero padding (meta.obs_dims/action_dims are the true widths)"
                )


def _episode_buffers(ds: MultiAgentDataset, EpisodeBuffer) -> Iterator[Any]:
    m = ds.meta
    n = m.n_agents
    ends = np.flatnonzero(ds.episode_ends)
    starts = np.r_[0, ends[:-1] + 1]
    for ep_id, (s, e) in enumerate(zip(starts, ends + 1)):
        obs = {f"agent_{i}": np.concatenate([ds.observations[s:e, i, : m.obs_dims[i]],
                                             ds.next_observations[e - 1 : e, i, : m.obs_dims[i]]]) for i in range(n)}
        obs["state"] = np.concatenate([ds.states[s:e], ds.next_states[e - 1 : e]])
        infos: dict[str, np.ndarray] = {}
        if ds.avail_actions is not None:
            last = ds.next_avail_actions if ds.next_avail_actions is not None else ds.avail_actions
            obs["avail_actions"] = np.concatenate([ds.avail_actions[s:e], last[e - 1 : e]])
        # next_* must equal the following row inside the episode for the T+1 layout to be exact
        for key, cur in (("next_states", ds.states), ("next_observations", ds.observations),
                         ("next_avail_actions", ds.avail_actions)):
            nxt = getattr(ds, key)
            if nxt is None or cur is None:
                continue
            if not np.array_equal(nxt[s : e - 1], cur[s + 1 : e]):
                infos[_NEXT_INFO[key]] = np.ascontiguousarray(nxt[s:e])
        if m.discrete:
            actions = {f"agent_{i}": ds.actions[s:e, i] for i in range(n)}
        else:
            actions = {f"agent_{i}": ds.actions[s:e, i, : m.action_dims[i]] for i in range(n)}
        yield EpisodeBuffer(
            id=ep_id, observations=obs, actions=actions, rewards=ds.rewards[s:e],
            terminations=ds.terminals[s:e], truncations=ds.timeouts[s:e], infos=infos or None,
        )
