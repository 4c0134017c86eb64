"""The one environment contract every algorithm in offmarl sees (ARCHITECTURE.md, Contracts).

Inside the library, everything is an array ordered by agent index — never a dict keyed by
agent name. Observations are zero-padded to the widest agent (``spec.max_obs_dim``); the true
per-agent widths are ``spec.obs_dims``. Continuous actions are ``[N, A]`` with
``A = spec.max_action_dim``; discrete actions are ``[N]`` integers.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from offmarl.errors import OffmarlError


class EnvError(OffmarlError):
    """A user-facing error about an environment name, option or input (no traceback needed)."""


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a multi-agent environment under one observation scheme.

    name:          registry name, e.g. ``ant-4x2``
    n_agents:      N
    obs_dims:      true observation width of each agent under ``obs_scheme``
    state_dim:     S, width of the global state
    discrete:      True for categorical actions
    action_dims:   per agent: action width (continuous) or number of actions (discrete)
    episode_limit: steps before a time-out
    obs_scheme:    observation scheme in use (``fo``, ``po``, ``local``, ...)
    obs_schemes:   every scheme this environment supports
    action_low / action_high: box bounds for continuous actions (same for every dimension)
    """

    name: str
    n_agents: int
    obs_dims: tuple[int, ...]
    state_dim: int
    discrete: bool
    action_dims: tuple[int, ...]
    episode_limit: int
    obs_scheme: str
    obs_schemes: tuple[str, ...] = ()
    action_low: float = -1.0
    action_high: float = 1.0
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def max_obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def max_action_dim(self) -> int:
        return max(self.action_dims)

    @property
    def n_actions(self) -> int:
        """Number of discrete actions (discrete envs only)."""
        if not self.discrete:
            raise EnvError(f"{self.name} has continuous actions; use action_dims")
        return max(self.action_dims)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_agents": self.n_agents,
            "obs_dims": list(self.obs_dims),
            "state_dim": self.state_dim,
            "discrete": self.discrete,
            "action_dims": list(self.action_dims),
            "episode_limit": self.episode_limit,
            "obs_scheme": self.obs_scheme,
            "obs_schemes": list(self.obs_schemes),
            "action_low": self.action_low,
            "action_high": self.action_high,
            "backend": self.backend,
        }


class MultiAgentEnv(abc.ABC):
    """A cooperative multi-agent environment with a global state and a shared reward.

    reset(seed) -> (obs [N, O], state [S], info)
    step(actions) -> (obs [N, O], state [S], reward float, terminated bool, truncated bool, info)
    avail_actions() -> [N, K] bool (discrete envs; all True for continuous ones)
    observe(states [B, S]) -> obs [B, N, O]: the observation scheme as a pure function of the
        state (numpy in, numpy out; torch in, torch out) — datasets and world-model rollouts use
        it to derive observations. Environments whose observations are not a function of the
        state (SMAC) raise EnvError.
    """

    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        ...

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool, bool, dict]:
        ...

    def avail_actions(self) -> np.ndarray:
        n, k = self.spec.n_agents, self.spec.max_action_dim
        return np.ones((n, k), dtype=bool)

    def observe(self, states):
        raise EnvError(f"{self.spec.name}: observations are not a function of the global state")

    #: True when ``terminated(states)`` implements the environment's own termination rule
    has_termination_rule = False

    #: The rule as bounds on state dimensions: [(index, low, high, strict), ...] (healthy = every
    #: state[index] inside its bounds); worldmodel/termination.py calibrates a margin on them
    termination_conditions: tuple[tuple[int, float, float, bool], ...] = ()

    def terminated(self, states):
        """states [B, S] -> bool [B]: would the episode end on reaching these states?"""
        raise EnvError(f"{self.spec.name}: no termination rule on states (use the world model's head)")

    def close(self) -> None:  # noqa: B027 - optional: most environments hold nothing to release
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@runtime_checkable
class VecMultiAgentEnv(Protocol):
    """``n_envs`` copies of one discrete-action multi-agent environment stepped together, with
    auto-reset: what online algorithms see (never a backend module). Built by
    ``offmarl.envs.make_vec_env``; implemented by SMAX (offmarl/envs/smax.py, one vmapped call)
    and StarCraft II (offmarl/envs/sc2.py, processes in turn). B = n_envs.

    reset(seed) -> obs [B, N, O] float32, state [B, S] float32, avail [B, N, K] bool
    step(actions [B, N] int) -> obs, state, reward [B] float32, done [B] bool, info
        A copy whose episode ended is reset inside the call: its obs/state/avail are the first of
        its next episode. info, all [B]: ``terminated``, ``truncated``, ``battle_won``,
        ``episode_return``, ``episode_length`` (the last three describe the episode that just
        ended, meaningful where done), ``avail_actions`` [B, N, K] (for the next step),
        ``final_obs`` [B, N, O], ``final_state`` [B, S], ``final_avail`` [B, N, K] (the finished
        episode's last rows; equal to obs/state/avail where not done).
    avail_actions() -> [B, N, K] bool for the next step
    alive(avail [..., N, K]) -> [..., N] bool: which agents are alive, read from their masks
    idle_action: an action every agent may take (dead ones included where the env lets them
        act): the placeholder of rows nobody acts from
    state_dict() / load_state_dict(d): what continuing exactly needs (plain arrays; {} where the
        backend cannot be restored: its battles restart)
    Arrays handed out are writable numpy arrays (safe to wrap in torch tensors without a copy).
    """

    spec: EnvSpec
    n_envs: int
    idle_action: ClassVar[int]

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]: ...

    def avail_actions(self) -> np.ndarray: ...

    def alive(self, avail: np.ndarray) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def pad_last(x: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the last axis of ``x`` to ``width``."""
    if x.shape[-1] == width:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]
    return np.pad(x, pad)


def check_actions(spec: EnvSpec, actions) -> np.ndarray:
    """Validate an action array against the spec and return it as numpy."""
    a = np.asarray(actions)
    if spec.discrete:
        if a.shape != (spec.n_agents,):
            raise EnvError(f"{spec.name}: expected discrete actions of shape ({spec.n_agents},), got {a.shape}")
        return a.astype(np.int64)
    want = (spec.n_agents, spec.max_action_dim)
    if a.shape != want:
        raise EnvError(f"{spec.name}: expected continuous actions of shape {want}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise EnvError(f"{spec.name}: actions contain NaN or inf")
    return a.astype(np.float64)
