"""OG-MARL datasets: flashbax Vaults in and out (instadeepai/og-marl; flashbax.vault.Vault).

A Vault is a folder ``<scenario>.vlt/<uid>/`` (uid = the dataset, e.g. ``Good``, ``Replay``)
holding ``metadata.json`` and one zarr array per leaf of the recorded experience, read and
written here through flashbax's own ``Vault`` (it runs with the project's jax). Every leaf is
[B, T, ...]: B recorded env streams, T timesteps in recording order:

    observations [B, T, N, O]   actions [B, T, N, A] float | [B, T, N] int
    rewards, terminals, truncations [B, T, N]
    infos/state [B, T, S]       infos/legals [B, T, N, K] (discrete envs)

Row t holds what the agents saw and did at step t and what the env returned for it; the next
row is the next step of the same episode unless row t ended it (terminal or truncation of every
agent). The observation that follows the LAST step of an episode is not recorded, so on import:
  * a step ended by truncation has no known next state: it is DROPPED and the step before it
    becomes a time-out (the same rule as D4RL files without next_observations, d4rl.py);
  * a step ended by termination is KEPT (its reward, e.g. SMAC's win bonus, matters) with its
    own state as a placeholder next state — nothing bootstraps from it (terminal);
  * a trailing episode with neither flag is dropped with a warning.
MaMuJoCo vaults (OG-MARL's gymnasium_mamujoco: Ant-v5 with contact forces, agent_obsk=1)
keep the global state's first 27 dims (offmarl's ant state, see decompose.select_state_dims)
and re-derive each agent's observation from it under ``--obs``; SMAX/SMAC vaults keep their
observations, which must match the env's widths. Rewards are per agent; offmarl's team reward
is their mean (OG-MARL's MaMuJoCo and SMAC rewards are shared, so all agents agree).

Export writes the same leaves, plus what makes the round trip exact: ``infos/next_stored``
[1, T] marks rows whose next step is not the following row (episode ends, or edited data) and
``infos/next_state`` / ``infos/next_observations`` / ``infos/next_legals`` hold those rows'
next values (zeros elsewhere: they compress away). OG-MARL ignores these extra info keys.
Arrays are stored as jax dtypes (float32, int32, bool: flashbax writes jax arrays); the
original dtypes go into the metadata's ``offmarl`` block and come back on import, and a value
that a float32/int32 cannot hold exactly is refused.

Downloads: OG-MARL publishes vaults on the Hugging Face hub (``download_vault``); with
HF_HUB_OFFLINE=1 or without network the call fails at once with a message saying so.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from offmarl.data.dataset import ARRAY_KEYS, OPTIONAL_KEYS, DatasetError, DatasetMeta, MultiAgentDataset
from offmarl.data.sources.minari import FORMAT_NAME, FORMAT_VERSION, META_KEY, export_meta

REQUIRED_LEAVES = ("observations", "actions", "rewards", "terminals", "truncations")

# OG-MARL's hub (og_marl/vault_utils/download_vault.py): <HUB>/<family>/<scenario>.zip unpacks to <scenario>.vlt/
HUB_URL = "https://huggingface.co/datasets/InstaDeepAI/og-marl/resolve/main/core"
OG_MARL_VAULTS = {
    "gymnasium_mamujoco": ("2ant", "2halfcheetah", "2walker", "3hopper", "4ant", "6halfcheetah"),
    "smac_v1": ("3m", "8m", "5m_vs_6m", "2s3z", "3s5z_vs_3s6z"),
    "smac_v2": ("terran_5_vs_5", "terran_10_vs_10", "zerg_5_vs_5"),
    "mamujoco": ("2halfcheetah", "2ant"),
}


def vault_root() -> Path:
    """Where downloaded vaults go: $OFFMARL_VAULT_DIR or ~/.offmarl/vaults."""
    return Path(os.environ.get("OFFMARL_VAULT_DIR", Path.home() / ".offmarl" / "vaults")).expanduser()


def download_vault(family: str, scenario: str, root: str | os.PathLike | None = None, timeout: float = 30.0) -> Path:
    """Fetch OG-MARL's ``<family>/<scenario>`` vault (e.g. gymnasium_mamujoco/4ant) into ``root``
    and return the ``<scenario>.vlt`` folder (no download when it is already there)."""
    if scenario not in OG_MARL_VAULTS.get(family, ()):
        known = "; ".join(f"{f}: {', '.join(s)}" for f, s in OG_MARL_VAULTS.items())
        raise DatasetError(f"og-marl vault {family}/{scenario!r} is unknown. Known: {known}")
    dest = Path(root) if root is not None else vault_root() / family
    vlt = dest / f"{scenario}.vlt"
    if vlt.is_dir() and any(vlt.iterdir()):
        return vlt
    url = f"{HUB_URL}/{family}/{scenario}.zip"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise DatasetError(
            f"og-marl:{family}/{scenario}: not in {dest} and HF_HUB_OFFLINE is set, so it is not downloaded; "
            f"fetch {url} on a connected machine, unzip it into {dest}, then convert {vlt}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{scenario}.{os.getpid()}.zip"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            shutil.copyfileobj(resp, f)
        with zipfile.ZipFile(tmp) as z:
            z.extractall(dest)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"og-marl:{family}/{scenario}: download from {url} failed ({e}); "
                           f"without network, unzip the file into {dest} by hand") from None
    finally:
        tmp.unlink(missing_ok=True)
    if not vlt.is_dir():
        raise DatasetError(f"{url}: the archive did not contain {scenario}.vlt/")
    return vlt


# ---------------------------------------------------------------------------- flashbax access
def _flashbax():
    """flashbax's Vault and buffer state (lazy: importing jax costs seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
        from flashbax.vault import Vault
    return Vault, TrajectoryBufferState


def resolve_vault(path: str | os.PathLike) -> tuple[Path, str]:
    """``X.vlt/UID`` or ``X.vlt`` holding exactly one uid -> (the X.vlt folder, UID)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such vault (a folder <scenario>.vlt/ or <scenario>.vlt/<uid>/)")
    if (p / "metadata.json").is_file():
        return p.parent, p.name
    uids = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / "metadata.json").is_file()) if p.is_dir() else []
    if not uids:
        raise DatasetError(f"{p}: not a flashbax vault (no <uid>/metadata.json inside)")
    if len(uids) > 1:
        raise DatasetError(f"{p}: holds several datasets ({', '.join(uids)}); name one, e.g. {p / uids[0]}")
    return p, uids[0]


def _read_experience(vlt: Path, uid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (experience as nested dict of numpy arrays, the vault's metadata)."""
    where = str(vlt / uid)
    try:
        meta = json.loads((vlt / uid / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{where}/metadata.json: cannot be read as JSON ({e}); the vault is damaged") from None
    if not isinstance(meta, dict) or "structure_shape" not in meta:
        raise DatasetError(f"{where}/metadata.json: no 'structure_shape' key; not a flashbax vault")
    Vault, _ = _flashbax()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints "Loading vault found at ..."
            state = Vault(vault_name=vlt.name, rel_dir=str(vlt.parent.resolve()), vault_uid=uid).read()
    except Exception as e:  # noqa: BLE001  (flashbax/tensorstore raise assorted types on damaged stores)
        raise DatasetError(f"{where}: flashbax cannot read this vault ({type(e).__name__}: {e}); copy it "
                           "again") from None
    return _to_numpy(state.experience), meta


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


# ---------------------------------------------------------------------------- import
def read_vault(path: str | os.PathLike, env: str | None = None, obs: str | None = None) -> MultiAgentDataset:
    """A flashbax vault (``X.vlt``, ``X.vlt/UID``, or ``og-marl:<family>/<scenario>/<uid>`` downloaded
    from OG-MARL's hub, e.g. og-marl:gymnasium_mamujoco/4ant/Good) -> MultiAgentDataset.

    Vaults written by offmarl come back exactly (``env`` must be None or the stored env; another
    ``obs`` re-derives observations). Other vaults (OG-MARL's) need ``env`` (default ant-4x2) and
    are read by the rules in the module docstring.
    """
    if str(path).startswith("og-marl:"):  # og-marl:<family>/<scenario>[/<uid>], fetched from OG-MARL's hub
        family, scenario, *uid_part = str(path)[len("og-marl:"):].split("/")
        path = download_vault(family, scenario) / "/".join(uid_part)
    vlt, uid = resolve_vault(path)
    where = str(vlt / uid)
    exp, meta = _read_experience(vlt, uid)
    infos = exp.get("infos", {}) if isinstance(exp.get("infos"), dict) else {}
    missing = [k for k in REQUIRED_LEAVES if k not in exp] + ([] if "state" in infos else ["infos/state"])
    if missing:
        found = sorted(list(exp) + [f"infos/{k}" for k in infos])
        raise DatasetError(f"{where}: missing key(s) {', '.join(missing)} (found: {', '.join(found) or 'none'}); "
                           f"offmarl needs {', '.join(REQUIRED_LEAVES)} and infos/state")
    _check_layout(exp, infos, where)
    block = meta.get(META_KEY)
    if isinstance(block, str):
        ds = _read_offmarl_export(exp, infos, json.loads(block), where)
        if env is not None and env != ds.meta.env:
            raise DatasetError(f"{where}: this offmarl export is for env {ds.meta.env!r}, not {env!r}; drop --env")
        return ds.with_obs(obs) if obs is not None and obs != ds.meta.obs_scheme else ds
    return _read_foreign(exp, infos, where, env or "ant-4x2", obs, uid)


def _check_layout(exp: dict, infos: dict, where: str) -> None:
    """Shapes [B, T, ...] agree across leaves; no empty vault; no NaN/inf in float leaves."""
    b, t = exp["observations"].shape[:2] if exp["observations"].ndim >= 2 else (0, 0)
    if exp["observations"].ndim != 4:
        raise DatasetError(f"{where}: key 'observations' has shape {exp['observations'].shape}, expected [B, T, N, O]")
    n = exp["observations"].shape[2]
    expected_prefix = {"actions": (b, t, n), "rewards": (b, t), "terminals": (b, t), "truncations": (b, t),
                       "infos/state": (b, t)}
    for key, prefix in expected_prefix.items():
        arr = infos["state"] if key == "infos/state" else exp[key]
        if tuple(arr.shape[: len(prefix)]) != prefix:
            raise DatasetError(f"{where}: key '{key}' has shape {arr.shape}, expected it to start with {prefix} "
                               f"like 'observations' {exp['observations'].shape} ([B, T, N, ...])")
    if b * t == 0:
        raise DatasetError(f"{where}: the vault is empty (key 'observations' has {t} timesteps)")
    leaves = {**{k: exp[k] for k in REQUIRED_LEAVES}, **{f"infos/{k}": v for k, v in infos.items()}}
    for key, arr in leaves.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            first = np.argwhere(~np.isfinite(arr.reshape(b, t, -1)))[0]
            raise DatasetError(f"{where}: key '{key}' contains NaN or inf (first at stream {first[0]}, step "
                               f"{first[1]})")


def _per_step(arr: np.ndarray) -> np.ndarray:
    """[B, T, N] per-agent flags -> [B, T] (every agent done); [B, T] passes through."""
    arr = np.asarray(arr).astype(bool)
    return arr.all(axis=-1) if arr.ndim == 3 else arr


def _read_foreign(exp: dict, infos: dict, where: str, env_name: str, obs: str | None, uid: str) -> MultiAgentDataset:
    from offmarl.data.decompose import select_state_dims
    from offmarl.data.sources.d4rl import D4RL_REF_RETURNS
    from offmarl.envs import make_env
    from offmarl.errors import OffmarlError

    try:
        env = make_env(env_name, obs=obs)
    except OffmarlError as e:
        raise DatasetError(f"{where}: cannot import for env {env_name!r}: {e}") from None
    try:
        spec = env.spec
        n = exp["observations"].shape[2]
        if n != spec.n_agents:
            raise DatasetError(f"{where}: key 'observations' has {n} agents, env {env_name!r} has {spec.n_agents}; "
                               "pick the env the vault was recorded in with --env")
        b, t = exp["observations"].shape[:2]
        state = infos["state"].reshape(b * t, -1)
        states = select_state_dims(state, env_name, "infos/state", where, spec.state_dim).astype(np.float32)
        states = states.reshape(b, t, -1)
        rewards = np.asarray(exp["rewards"], dtype=np.float64)
        if rewards.ndim == 3:
            if not np.allclose(rewards, rewards[..., :1]):
                warnings.warn(f"{where}: agents' rewards differ; offmarl's team reward is their mean", stacklevel=3)
            rewards = rewards.mean(axis=-1)
        term, trunc = _per_step(exp["terminals"]), _per_step(exp["truncations"])
        if spec.discrete:
            actions = np.asarray(exp["actions"])
            if actions.ndim != 3 or actions.dtype.kind not in "iu":
                raise DatasetError(f"{where}: key 'actions' has shape {actions.shape} dtype {actions.dtype}; "
                                   f"env {env_name!r} has discrete actions: expected int [B, T, N]")
            actions = actions.astype(np.int64)
            observations = np.asarray(exp["observations"], dtype=np.float32)
            if observations.shape[-1] != spec.max_obs_dim:
                raise DatasetError(f"{where}: key 'observations' has width {observations.shape[-1]}, expected "
                                   f"{spec.max_obs_dim} for env {env_name!r}")
            legals = infos.get("legals")
            if legals is not None and tuple(legals.shape) != (b, t, n, spec.n_actions):
                raise DatasetError(f"{where}: key 'infos/legals' has shape {legals.shape}, expected "
                                   f"{(b, t, n, spec.n_actions)} for env {env_name!r}")
            legals = None if legals is None else legals.astype(bool)
        else:
            actions = np.asarray(exp["actions"], dtype=np.float32)
            a = spec.max_action_dim
            if actions.ndim != 4 or actions.shape[-1] < a:
                raise DatasetError(f"{where}: key 'actions' has shape {actions.shape}, expected [B, T, {n}, {a}] "
                                   f"for env {env_name!r}")
            actions = actions[..., :a]  # OG-MARL pads every agent's action to the widest
            observations, legals = None, None  # re-derived from the states below
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("idx", "next_idx", "term", "trunc")}
        dropped_trunc = dropped_tail = 0
        for s in range(b):
            ends = term[s] | trunc[s]
            last = int(np.flatnonzero(ends)[-1]) if ends.any() else -1
            dropped_tail += t - 1 - last
            rows = np.arange(last + 1)
            keep = ~(trunc[s][rows] & ~term[s][rows])        # truncated ends: next state unknown
            dropped_trunc += int((~keep).sum())
            nxt = np.where(ends[rows], rows, rows + 1)        # terminal ends: own state as placeholder
            new_trunc = np.zeros(len(rows), bool)
            before_cut = np.flatnonzero(~keep) - 1
            before_cut = before_cut[(before_cut >= 0) & ~ends[np.clip(before_cut, 0, None)]]
            new_trunc[before_cut] = True                      # the step before a dropped end: a time-out
            cols["idx"].append(s * t + rows[keep])
            cols["next_idx"].append(s * t + nxt[keep])
            cols["term"].append(term[s][rows][keep])
            cols["trunc"].append(new_trunc[keep])
        idx, next_idx = np.concatenate(cols["idx"]), np.concatenate(cols["next_idx"])
        if dropped_tail:
            warnings.warn(f"{where}: the last {dropped_tail} steps end no episode; dropping that partial episode",
                          stacklevel=3)
        if len(idx) == 0:
            raise DatasetError(f"{where}: no complete episode with a known next state (keys 'terminals'/'truncations')")
        flat = lambda x: x.reshape(b * t, *x.shape[2:])
        st = flat(states)
        kw: dict[str, Any] = {
            "states": st[idx], "next_states": st[next_idx], "actions": flat(actions)[idx],
            "rewards": flat(rewards)[idx].astype(np.float32),
            "terminals": np.concatenate(cols["term"]), "timeouts": np.concatenate(cols["trunc"]),
        }
        if spec.discrete:
            kw["observations"], kw["next_observations"] = flat(observations)[idx], flat(observations)[next_idx]
            if legals is not None:
                kw["avail_actions"], kw["next_avail_actions"] = flat(legals)[idx], flat(legals)[next_idx]
        else:
            kw["observations"] = np.asarray(env.observe(kw["states"]), dtype=np.float32)
            kw["next_observations"] = np.asarray(env.observe(kw["next_states"]), dtype=np.float32)
    finally:
        env.close()
    ref = D4RL_REF_RETURNS.get(env_name.split("-")[0]) or ((0.0, 1.0) if env_name == "coordination" else None)
    meta = DatasetMeta(
        env=env_name, obs_scheme=spec.obs_scheme, n_agents=spec.n_agents, obs_dims=tuple(spec.obs_dims),
        action_dims=tuple(spec.action_dims), state_dim=spec.state_dim, discrete=spec.discrete,
        name=f"{Path(where).parent.stem}-{uid}", source=f"vault:{Path(where).parent.name}/{uid}",
        generator="og-marl vault",
        ref_min_return=ref[0] if ref else None, ref_max_return=ref[1] if ref else None,
        extra={"vault_dropped_truncated_steps": dropped_trunc, "vault_terminal_next_is_placeholder": True},
    )
    return MultiAgentDataset(**kw, meta=meta, origin=where)


def _read_offmarl_export(exp: dict, infos: dict, block: dict, where: str) -> MultiAgentDataset:
    if block.get("format") != FORMAT_NAME:
        raise DatasetError(f"{where}: metadata '{META_KEY}' block is not an offmarl export (format "
                           f"{block.get('format')!r})")
    meta, dtypes = export_meta(block, where)
    if exp["observations"].shape[0] != 1:
        raise DatasetError(f"{where}: an offmarl export has one stream (B = 1), found {exp['observations'].shape[0]}")
    if exp["observations"].shape[2] != meta.n_agents:
        raise DatasetError(f"{where}: key 'observations' has {exp['observations'].shape[2]} agents, the metadata "
                           f"says {meta.n_agents}")
    first = lambda x: np.asarray(x)[0]  # drop B
    stored = first(infos.get("next_stored", np.zeros((1, exp["observations"].shape[1]), bool))).astype(bool)

    def with_next(cur: np.ndarray, key: str) -> np.ndarray:
        nxt = np.concatenate([cur[1:], cur[-1:]])
        if key in infos:
            mask = stored.reshape(-1, *([1] * (cur.ndim - 1)))
            nxt = np.where(mask, first(infos[key]), nxt)
        return nxt

    states = first(infos["state"])
    obs = first(exp["observations"])
    arrays: dict[str, Any] = {
        "states": states, "next_states": with_next(states, "next_state"),
        "observations": obs, "next_observations": with_next(obs, "next_observations"),
        "actions": first(exp["actions"]), "rewards": first(exp["rewards"])[..., 0],
        "terminals": first(exp["terminals"])[..., 0], "timeouts": first(exp["truncations"])[..., 0],
    }
    if "legals" in infos:
        legals = first(infos["legals"])
        arrays["avail_actions"] = legals
        if "next_avail_actions" in dtypes:
            arrays["next_avail_actions"] = with_next(legals, "next_legals")
    for k, v in list(arrays.items()):
        arrays[k] = v.astype(dtypes[k], copy=False) if k in dtypes else v
    return MultiAgentDataset(**arrays, meta=meta, origin=where)


# ---------------------------------------------------------------------------- export
_JAX_DTYPE = {"f": np.float32, "i": np.int32, "u": np.int32, "b": np.bool_}


def _jax_safe(arr: np.ndarray, key: str, origin: str) -> np.ndarray:
    """``arr`` in the dtype flashbax stores (jax without x64), refused if that changes a value."""
    out = arr.astype(_JAX_DTYPE[arr.dtype.kind], copy=False)
    if out.dtype != arr.dtype and not np.array_equal(out.astype(arr.dtype), arr):
        raise DatasetError(f"{origin}: key '{key}' ({arr.dtype}) has values a {out.dtype} vault cannot hold exactly; "
                           "convert the dataset to float32/int32 first")
    return out


def export_vault(ds: MultiAgentDataset, path: str | os.PathLike, uid: str | None = None) -> Path:
    """Write ``ds`` as the vault ``path`` (``X.vlt``, uid ``uid`` or ds.meta.name; or ``X.vlt/UID``)
    with flashbax and return the uid folder. ``read_vault`` restores ``ds`` exactly; OG-MARL's
    tools read the standard leaves. The vault is written under a temporary uid and renamed, so a
    failure leaves nothing behind."""
    path = Path(path)
    if uid is None:
        if path.suffix != ".vlt":
            path, uid = path.parent, path.name
        else:
            uid = ds.meta.name or "offmarl"
    if path.suffix != ".vlt":
        raise DatasetError(f"{path}: a vault folder is named <scenario>.vlt (OG-MARL's layout); e.g. {path}.vlt")
    dest = path / uid
    if dest.exists():
        raise DatasetError(f"{dest}: already exists; choose another --uid or delete that folder")
    m, o = ds.meta, ds.origin
    t, n = len(ds), m.n_agents
    nxt_rows = lambda cur: np.concatenate([cur[1:], cur[-1:]])
    ends = ds.episode_ends
    stored = ends.copy()
    next_keys = [("next_state", ds.states, ds.next_states),
                 ("next_observations", ds.observations, ds.next_observations)]
    if ds.avail_actions is not None and ds.next_avail_actions is not None:
        next_keys.append(("next_legals", ds.avail_actions, ds.next_avail_actions))
    for _, cur, nxt in next_keys:  # rows whose next step is not simply the following row
        stored |= ~np.all((nxt == nxt_rows(cur)).reshape(t, -1), axis=1)
    infos = {"state": _jax_safe(ds.states, "states", o)[None], "next_stored": stored[None]}
    for key, _, nxt in next_keys:
        kept = np.where(stored.reshape(-1, *([1] * (nxt.ndim - 1))), nxt, np.zeros_like(nxt))
        infos[key] = _jax_safe(kept, key, o)[None]
    if ds.avail_actions is not None:
        infos["legals"] = ds.avail_actions.astype(bool)[None]
    per_agent = lambda x: np.repeat(x[:, None], n, axis=1)[None]  # [T] -> [1, T, N]
    exp = {
        "observations": _jax_safe(ds.observations, "observations", o)[None],
        "actions": _jax_safe(ds.actions, "actions", o)[None],
        "rewards": per_agent(_jax_safe(ds.rewards, "rewards", o)),
        "terminals": per_agent(ds.terminals.astype(bool)), "truncations": per_agent(ds.timeouts.astype(bool)),
        "infos": infos,
    }
    dtypes = {k: str(getattr(ds, k).dtype) for k in ARRAY_KEYS + OPTIONAL_KEYS if getattr(ds, k) is not None}
    block = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "meta": m.to_dict(), "dtypes": dtypes}
    Vault, BufferState = _flashbax()
    import jax.numpy as jnp  # flashbax's buffer state holds jax scalars

    path.mkdir(parents=True, exist_ok=True)
    tmp_uid = f".{uid}.{os.getpid()}.tmp"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints its own progress lines
            vault = Vault(vault_name=path.name, experience_structure=exp, rel_dir=str(path.parent.resolve()),
                          vault_uid=tmp_uid, metadata={META_KEY: json.dumps(block)})
            state = BufferState(experience=exp, current_index=jnp.asarray(t), is_full=jnp.asarray(False))
            written = vault.write(state)
        if written != t:
            raise DatasetError(f"{dest}: flashbax wrote {written} of {t} timesteps")
        os.replace(path / tmp_uid, dest)
    finally:
        shutil.rmtree(path / tmp_uid, ignore_errors=True)
    return dest
