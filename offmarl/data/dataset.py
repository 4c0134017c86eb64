"""MultiAgentDataset: the in-memory offline dataset every algorithm reads (ARCHITECTURE.md).

Arrays (T transitions, N agents, S state width, O = widest observation, A = widest action):
    states, next_states             [T, S]     float32
    observations, next_observations [T, N, O]  float32, zero-padded (true widths in meta.obs_dims)
    actions                         [T, N, A]  float32 (continuous) | [T, N] int64 (discrete)
    avail_actions, next_avail_actions [T, N, K] bool (discrete envs only, optional)
    rewards                         [T]        float32 shared team reward
    terminals                       [T]        bool  (true environment termination: no bootstrap)
    timeouts                        [T]        bool  (episode cut by a time limit: bootstrap)
An episode ends at a transition with ``terminals | timeouts``; the last transition of the
arrays must end an episode.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offmarl.errors import OffmarlError


class DatasetError(OffmarlError):
    """A user-facing problem with a dataset: names the file, key and shape at fault."""


@dataclass
class DatasetMeta:
    env: str                      # registry name of the environment, e.g. "ant-4x2"
    obs_scheme: str               # observation scheme the observations were built with
    n_agents: int
    obs_dims: tuple[int, ...]     # true per-agent observation widths
    action_dims: tuple[int, ...]  # per-agent action widths (continuous) or number of actions
    state_dim: int
    discrete: bool
    name: str = ""                # dataset name, e.g. "ant-medium"
    source: str = ""              # "offmarl-generated", "d4rl:<file>", "minari:<id>", ...
    generator: str = ""           # behaviour policy description
    ref_min_return: float | None = None  # normalised score = (R - min) / (max - min)
    ref_max_return: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["obs_dims"], d["action_dims"] = list(self.obs_dims), list(self.action_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["obs_dims"] = tuple(int(x) for x in kw["obs_dims"])
        kw["action_dims"] = tuple(int(x) for x in kw["action_dims"])
        return cls(**kw)


ARRAY_KEYS = ("states", "next_states", "observations", "next_observations", "actions", "rewards", "terminals",
              "timeouts")
OPTIONAL_KEYS = ("avail_actions", "next_avail_actions")
CONTENT_KEYS = ("states", "next_states", "actions", "rewards", "terminals", "timeouts")  # content_sha256


@dataclass
class MultiAgentDataset:
    states: np.ndarray
    next_states: np.ndarray
    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    meta: DatasetMeta
    avail_actions: np.ndarray | None = None
    next_avail_actions: np.ndarray | None = None
    origin: str = "<memory>"  # file the data came from, for error messages

    def __post_init__(self):
        self.validate()
        self._tensors: dict[str, dict[str, Any]] = {}
        self._episode_start: np.ndarray | None = None

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Reject empty data, NaN/inf, and shape mismatches, naming the file and key."""
        where, m = self.origin, self.meta
        t = len(self.rewards) if self.rewards is not None else 0
        if t == 0:
            raise DatasetError(f"{where}: the dataset is empty (key 'rewards' has 0 transitions)")
        n, s = m.n_agents, m.state_dim
        o, a = max(m.obs_dims), max(m.action_dims)
        expected = {
            "states": (t, s), "next_states": (t, s), "observations": (t, n, o), "next_observations": (t, n, o),
            "actions": (t, n) if m.discrete else (t, n, a), "rewards": (t,), "terminals": (t,), "timeouts": (t,),
        }
        if m.discrete:
            for k in OPTIONAL_KEYS:
                if getattr(self, k) is not None:
                    expected[k] = (t, n, a)
        for key, shape in expected.items():
            arr = getattr(self, key)
            if arr is None:
                raise DatasetError(f"{where}: missing key '{key}' (expected shape {shape})")
            if tuple(arr.shape) != shape:
                raise DatasetError(
                    f"{where}: key '{key}' has shape {tuple(arr.shape)}, expected {shape} "
                    f"for env {m.env!r} (N={n} agents, state {s}, obs {o}, action {a})"
                )
        for key in ("states", "next_states", "observations", "next_observations", "actions", "rewards"):
            arr = getattr(self, key)
            # Fast path: NaN/inf propagate through a sum, so a finite sum proves every entry
            # finite (4x faster than isfinite on 1M-transition data); only a non-finite sum
            # (a bad entry, or a mere overflow) pays for the element-wise check.
            if arr.dtype.kind != "f":
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                finite_sum = np.isfinite(arr.sum())
            if not finite_sum and not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr.reshape(t, -1)))[0][0]
                raise DatasetError(f"{where}: key '{key}' contains NaN or inf (first at transition {bad})")
        ends = self.terminals.astype(bool) | self.timeouts.astype(bool)
        if not ends[-1]:
            raise DatasetError(
                f"{where}: the last transition ends no episode (terminals and timeouts are both False "
                f"at index {t - 1}); the data looks truncated — drop the partial episode or mark a timeout"
            )
        if m.discrete and np.any((self.actions < 0) | (self.actions >= a)):
            raise DatasetError(f"{where}: key 'actions' has values outside [0, {a})")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(len(self.rewards))

    @property
    def episode_ends(self) -> np.ndarray:
        return self.terminals.astype(bool) | self.timeouts.astype(bool)

    @property
    def episode_start(self) -> np.ndarray:
        """[T] int64: index of the first transition of each transition's episode."""
        if self._episode_start is None:
            t = len(self)
            starts = np.zeros(t, dtype=bool)
            starts[0] = True
            starts[1:] = self.episode_ends[:-1]
            self._episode_start = np.maximum.accumulate(np.where(starts, np.arange(t), 0))
        return self._episode_start

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.sum())

    def episode_returns(self) -> np.ndarray:
        """[E] undiscounted return of every episode."""
        ep_id = np.cumsum(np.r_[0, self.episode_ends[:-1]])
        return np.bincount(ep_id, weights=self.rewards.astype(np.float64))

    def episode_lengths(self) -> np.ndarray:
        ep_id = np.cumsum(np.r_[0, self.episode_ends[:-1]])
        return np.bincount(ep_id)

    def normalise_return(self, returns):
        """(R - ref_min) / (ref_max - ref_min); returns unchanged when no reference is known."""
        lo, hi = self.meta.ref_min_return, self.meta.ref_max_return
        if lo is None or hi is None:
            return returns
        return (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)

    def _hash(self, keys, extra: str) -> str:
        h = hashlib.sha256()
        for k in keys:
            arr = np.ascontiguousarray(getattr(self, k))
            h.update(k.encode() + str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(arr.tobytes())
        h.update(extra.encode())
        return h.hexdigest()[:16]

    def checksum(self) -> str:
        """Content hash of every array and the observation scheme (the dataset's identity)."""
        return self._hash(ARRAY_KEYS, self.meta.env + self.meta.obs_scheme)

    def content_sha256(self) -> str:
        """The dataset's identity for the registry (``offmarl datasets verify``): the full sha256
        over ``CONTENT_KEYS`` in that order, each as its shape then its bytes in a fixed dtype
        (float32; actions int64 when discrete; bool flags). Observations are left out: they are
        the states gathered by the observation scheme, so the digest does not depend on it."""
        h = hashlib.sha256()
        for k in CONTENT_KEYS:
            arr = getattr(self, k)
            dtype = bool if k in ("terminals", "timeouts") else (np.int64 if k == "actions" and self.meta.discrete
                                                                   else np.float32)
            arr = np.ascontiguousarray(arr, dtype=dtype)
            h.update(f"{k}{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def dynamics_checksum(self) -> str:
        """Hash of what a world model learns from (states, actions, rewards, ends; NOT the
        observations): the same data under another observation scheme shares fitted models."""
        return self._hash(("states", "next_states", "actions", "rewards", "terminals", "timeouts"), self.meta.env)

    def stats(self) -> dict[str, Any]:
        """Summary used by `offmarl datasets info` and the dataset cards."""
        rets = self.episode_returns()
        out = {
            "transitions": len(self),
            "episodes": self.n_episodes,
            "return_mean": float(rets.mean()), "return_std": float(rets.std()),
            "return_min": float(rets.min()), "return_max": float(rets.max()),
            "episode_length_mean": float(self.episode_lengths().mean()),
            "state_action_coverage": state_action_coverage(self),
        }
        if self.meta.ref_min_return is not None and self.meta.ref_max_return is not None:
            out["normalised_score_mean"] = float(np.mean(self.normalise_return(rets)))
        return out

    # ------------------------------------------------------------------ views
    def with_obs(self, scheme: str) -> MultiAgentDataset:
        """The same data with observations re-derived from the states for another scheme."""
        # lazy: the envs load MuJoCo / JAX; reading and validating a dataset file must not
        from offmarl.envs import make_env

        env = make_env(self.meta.env, obs=scheme)
        try:
            obs = np.asarray(env.observe(self.states), dtype=np.float32)
            next_obs = np.asarray(env.observe(self.next_states), dtype=np.float32)
            spec = env.spec
        finally:
            env.close()
        meta = dataclasses.replace(self.meta, obs_scheme=spec.obs_scheme, obs_dims=spec.obs_dims)
        return dataclasses.replace(self, observations=obs, next_observations=next_obs, meta=meta)

    @classmethod
    def for_acting(cls, meta: DatasetMeta) -> MultiAgentDataset:
        """Two real transitions of ``meta``'s environment, carrying ``meta``: what building an
        algorithm to ACT needs (shapes, layout, reference returns) when its training data is not
        at hand (``offmarl evaluate`` of a run directory from elsewhere). Everything fitted to the
        training data (weights, observation/state normalisers) comes from the checkpoint that
        ``load_state_dict`` restores afterwards (tests/test_run_provenance.py checks that the
        returns equal those of the algorithm built on the real dataset). Two rows, not one, so
        that a normaliser fitted on them has a defined std. Never used to train."""
        from offmarl.envs import make_env  # lazy: as in with_obs

        env = make_env(meta.env, obs=meta.obs_scheme)
        rows: dict[str, list] = {k: [] for k in ARRAY_KEYS + OPTIONAL_KEYS}
        try:
            spec = env.spec
            obs, state, _ = env.reset(seed=0)
            for t in range(2):
                avail = np.asarray(env.avail_actions(), dtype=bool) if spec.discrete else None
                actions = (avail.argmax(-1).astype(np.int64) if spec.discrete  # each agent's first available action
                           else np.zeros((spec.n_agents, spec.max_action_dim), dtype=np.float32))
                next_obs, next_state, reward, term, _, _ = env.step(actions)
                end = bool(term) or t == 1
                values = (state, next_state, obs, next_obs, actions, reward, term, end and not term)
                for k, v in zip(ARRAY_KEYS, values):
                    rows[k].append(v)
                if spec.discrete:
                    rows["avail_actions"].append(avail)
                    rows["next_avail_actions"].append(np.asarray(env.avail_actions(), dtype=bool))
                obs, state = (env.reset(seed=1)[:2] if end else (next_obs, next_state))
        finally:
            env.close()
        dtypes = {"actions": np.int64 if meta.discrete else np.float32, "terminals": bool, "timeouts": bool,
                  "avail_actions": bool, "next_avail_actions": bool}
        arrays = {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) if v else None for k, v in rows.items()}
        return cls(**arrays, meta=meta, origin=f"<two {meta.env} transitions for acting; the training data is "
                                               "not loaded>")

    def subset(self, n_transitions: int) -> MultiAgentDataset:
        """The first whole episodes holding at most ``n_transitions`` (at least one episode)."""
        ends = np.flatnonzero(self.episode_ends)
        keep = ends[ends < n_transitions]
        last = int(keep[-1]) + 1 if len(keep) else int(ends[0]) + 1
        kw = {k: getattr(self, k)[:last] for k in ARRAY_KEYS}
        for k in OPTIONAL_KEYS:
            v = getattr(self, k)
            kw[k] = None if v is None else v[:last]
        return MultiAgentDataset(**kw, meta=self.meta, origin=self.origin)

    # ------------------------------------------------------------------ sampling
    def tensors(self, device="cpu") -> dict[str, Any]:
        """All arrays as torch tensors on ``device`` (cached: one host->device copy in total)."""
        import torch  # lazy: `offmarl datasets info/list` read datasets without loading torch

        key = str(device)
        if key not in self._tensors:
            d = {}
            for k in ARRAY_KEYS + OPTIONAL_KEYS:
                v = getattr(self, k)
                if v is None:
                    continue
                if v.dtype == np.bool_:
                    d[k] = torch.as_tensor(v, device=device)
                elif v.dtype.kind in "iu":
                    d[k] = torch.as_tensor(v.astype(np.int64), device=device)
                else:
                    d[k] = torch.as_tensor(v.astype(np.float32), device=device)
            d["episode_start"] = torch.as_tensor(self.episode_start, device=device)
            self._tensors[key] = d
        return self._tensors[key]

    def sample(self, batch_size: int, generator=None, device="cpu") -> dict[str, Any]:
        """A batch of transitions (torch tensors on ``device``), indices drawn uniformly.

        ``generator``: a torch.Generator on ``device`` for repeatable draws.
        """
        import torch

        t = self.tensors(device)
        idx = torch.randint(len(self), (batch_size,), generator=generator, device=device)
        return {k: v[idx] for k, v in t.items() if k != "episode_start"}

    def history_indices(self, idx, k: int):
        """For transition indices ``idx`` [B], the indices of the K previous steps of the same
        episode ([B, K], oldest first) and a validity mask [B, K] (False before the episode start).
        Works on numpy arrays or torch tensors."""
        if hasattr(idx, "new_zeros"):
            import torch

            start = self.tensors(idx.device)["episode_start"][idx]
            hist = idx[:, None] - k + torch.arange(k, device=idx.device)[None, :]
        else:
            start = self.episode_start[idx]
            hist = idx[:, None] - k + np.arange(k)[None, :]
        valid = hist >= start[:, None]
        hist = hist * valid + start[:, None] * ~valid  # any in-range index; masked out anyway
        return hist, valid

    def sample_histories(self, batch_size: int, k: int, generator=None, device="cpu") -> dict[str, Any]:
        """A transition batch plus each agent's last K (observation, action) pairs before it:
        ``hist_obs`` [B, K, N, O], ``hist_actions`` [B, K, N, A] (or [B, K, N] int), ``hist_mask``
        [B, K] (False = before the episode start; the entries there are zeros)."""
        import torch

        t = self.tensors(device)
        idx = torch.randint(len(self), (batch_size,), generator=generator, device=device)
        batch = {k_: v[idx] for k_, v in t.items() if k_ != "episode_start"}
        hist, valid = self.history_indices(idx, k)
        obs = t["observations"][hist]
        act = t["actions"][hist]
        batch["hist_obs"] = obs * valid.view(*valid.shape, *([1] * (obs.dim() - 2)))
        batch["hist_actions"] = act * valid.view(*valid.shape, *([1] * (act.dim() - 2))).to(act.dtype)
        batch["hist_mask"] = valid
        return batch


def state_action_coverage(ds: MultiAgentDataset, decimals: int = 1) -> float:
    """SACo (OG-MARL): unique rounded (state, joint action) pairs / transitions."""
    t = len(ds)
    sa = np.concatenate([ds.states.reshape(t, -1), ds.actions.reshape(t, -1).astype(np.float32)], axis=1)
    rounded = np.round(sa.astype(np.float32), decimals)
    rounded += 0.0  # folds -0.0 into 0.0 so they hash alike
    uniq = np.unique(np.ascontiguousarray(rounded).view(np.dtype((np.void, rounded.dtype.itemsize * rounded.shape[1]))))
    return float(len(uniq) / t)
