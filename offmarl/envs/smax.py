"""SMAC's battles on JaxMARL's SMAX (the default SMAC backend): one env (SmaxEnv) and n copies
stepped by one jitted, vmapped call (SmaxVecEnv, the VecMultiAgentEnv of offmarl/envs/base.py).

SMAX is a JAX re-implementation of SMAC's micro-management battles against a scripted
("heuristic") enemy team — ``make("HeuristicEnemySMAX", scenario=...)``; it runs anywhere
jax[cpu] runs. Action layout (per agent, K = n_enemies + 5): 0 north, 1 east, 2 south, 3 west,
4 stop, 5 + j attack enemy j. There is no no-op: dead agents must pick "stop" (the only action
their mask allows), so "move" (action 0) is available exactly to the living.

Unavailable actions raise ``EnvError`` naming the agent and the action: SMAX itself would
silently ignore them (an out-of-range attack does nothing); an explicit error keeps datasets and
policies honest about the mask.

Reward: SMAX gives every ally the same team reward — the fraction of total enemy health removed
this step (damage / max health, summed over enemies, divided by n_enemies) plus
``won_battle_bonus`` (1.0) on the step the last enemy dies while an ally lives. An episode's
return is therefore at most 2.0 (SC2 SMAC normalises its return to at most 20). We expose that
shared value as one float.

JAX must stay off the GPU torch uses and must not preallocate: the environment variables are set
(unless the user set them) at the top of this module, before jax is first imported; jax/jaxmarl
are imported lazily so ``import offmarl.envs`` stays cheap. If jax was already imported elsewhere
with other settings, those settings win. Arrays handed out are writable numpy copies (JAX's own
are read-only views), so callers may wrap them in torch tensors without a copy or a warning.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offmarl.paths import cache_dir

# Must happen before jax is imported anywhere (jax reads them at import / backend start).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling SMAX's vmapped step takes minutes on a busy CPU: keep compiled programs on disk so
# that every later process (tests, runs, evaluations) loads them in seconds.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir("jax")))

import numpy as np  # noqa: E402 - after the JAX settings above

from offmarl.envs.base import EnvError, EnvSpec, MultiAgentEnv  # noqa: E402
from offmarl.envs.smac_maps import (  # noqa: E402
    OBS_SCHEMES,
    SMAX_EXTRA_MAPS,
    SMAX_MOVE_NAMES,
    alive_from_avail,
    check_avail,
    check_obs,
    check_smax_map,
    checked_step,
    seed_or_random,
)

# SMAX constructor options that would break this adapter's contract (map, discrete, local obs).
_FORBIDDEN_SMAX_KW = ("scenario", "action_type", "observation_type")
# SMAX is built with this step limit (never reached); the real limit is applied by the adapter.
_NO_LIMIT = 2**30


def _writable(tree):
    """JAX arrays -> writable numpy arrays (np.asarray of a JAX array is a read-only view)."""
    if isinstance(tree, dict):
        return {k: np.array(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(np.array(v) for v in tree)
    return np.array(tree)


@dataclass(frozen=True)
class _SmaxCore:
    """One SMAX map's jitted functions, built once per (map, options) and shared by every
    SmaxEnv / SmaxVecEnv on it, so a new env instance does not pay the JIT compile again.

    The time limit is applied here, not by SMAX (which is built with no effective limit), and
    is a traced argument, so ``max_steps`` can change without a recompile.

    reset(key) -> (key', env_state, obs [N, O], state [S], avail [N, K])
    step(key, env_state, actions [N], limit) -> (key', env_state, out) with out a dict of
        obs [N, O], state [S], reward [], terminated [], truncated [], battle_won [],
        dead_allies [], dead_enemies [], avail [N, K]
    vreset(key, B) / vstep(...): the batched versions, see SmaxVecEnv.
    """

    n_agents: int
    n_enemies: int
    obs_dim: int
    state_dim: int
    n_actions: int
    reset: Callable
    step: Callable
    vreset: Callable
    vstep: Callable


@contextlib.contextmanager
def _quiet_jaxmarl_import():
    """jaxmarl prints "Importing submoduled environments..." on import, and its mabrax module
    resets sys.stdout/sys.stderr to sys.__stdout__/__stderr__ (so contextlib.redirect_stdout
    alone does not help, and a caller's redirect would be lost). Point the dunder streams at a
    sink too, and put everything back afterwards."""
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    sys.stdout = sys.__stdout__ = sink
    try:
        yield
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved


def _import_jaxmarl():
    try:
        with _quiet_jaxmarl_import():
            import jax
            from jaxmarl import make
            from jaxmarl.environments.smax import map_name_to_scenario
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EnvError(f"backend 'smax' needs jaxmarl and jax[cpu]: pip install jaxmarl 'jax[cpu]' ({e})") from e
    _register_extra_maps()
    return jax, make, map_name_to_scenario


@functools.cache
def _register_extra_maps() -> None:
    """Add SMAX_EXTRA_MAPS to jaxmarl's scenario registry (once per process)."""
    import jax.numpy as jnp
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO, Scenario, register_scenario

    for name, (allies, enemies) in SMAX_EXTRA_MAPS.items():
        if name not in MAP_NAME_TO_SCENARIO:
            register_scenario(name, Scenario(jnp.array(allies + enemies, dtype=jnp.uint8), len(allies),
                                             len(enemies), False, False))


@functools.cache
def _smax_core(map_name: str, kw_items: tuple) -> _SmaxCore:
    jax, make, map_name_to_scenario = _import_jaxmarl()
    jnp = jax.numpy
    try:
        env = make("HeuristicEnemySMAX", scenario=map_name_to_scenario(map_name), max_steps=_NO_LIMIT,
                   **dict(kw_items))
    except TypeError as e:
        raise EnvError(f"smac-{map_name}: bad SMAX option: {e}") from e
    agents = list(env.agents)  # allies only: ally_0 .. ally_{N-1}
    n, m = env.num_allies, env.num_enemies
    n_actions = int(env.action_spaces[agents[0]].n)

    def _stack(d) -> Any:
        return jnp.stack([d[a] for a in agents])

    def strong(tree):
        # SMAX's reset leaves a weakly-typed leaf (the heuristic's last_attacked_enemy) that
        # step returns strongly typed; a jit cache keyed on the state would compile twice.
        return jax.tree.map(lambda x: x.astype(x.dtype), tree)

    def reset1(key):
        obs, env_state = env.reset(key)
        env_state = strong(env_state)
        avail = _stack(env.get_avail_actions(env_state)).astype(bool)
        return env_state, _stack(obs).astype(jnp.float32), obs["world_state"].astype(jnp.float32), avail

    def step1(key, env_state, actions, limit):
        # step_env, not step: SMAX's step() auto-resets, which would hide the terminal
        # observation; here the episode boundary is the caller's business.
        act = {a: actions[i] for i, a in enumerate(agents)}
        obs, env_state, rewards, _, _ = env.step_env(key, env_state, act)
        env_state = strong(env_state)
        alive = env_state.state.unit_alive
        allies_dead = jnp.all(~alive[:n])
        enemies_dead = jnp.all(~alive[n:])
        terminated = allies_dead | enemies_dead  # the battle is decided (a draw if both)
        truncated = (env_state.state.step >= limit) & ~terminated  # undecided at the limit
        out = {
            "obs": _stack(obs).astype(jnp.float32),
            "state": obs["world_state"].astype(jnp.float32),
            # every ally gets the same team reward in SMAX; take ally 0's
            "reward": rewards[agents[0]].astype(jnp.float32),
            "terminated": terminated,
            "truncated": truncated,
            # SMAX pays the win bonus only when the enemy is wiped out and an ally lives
            "battle_won": enemies_dead & ~allies_dead,
            "dead_allies": jnp.sum(~alive[:n]),
            "dead_enemies": jnp.sum(~alive[n:]),
            "avail": _stack(env.get_avail_actions(env_state)).astype(bool),
        }
        return env_state, out

    @jax.jit
    def reset(key):
        key, sub = jax.random.split(key)
        return (key, *reset1(sub))

    @jax.jit
    def step(key, env_state, actions, limit):
        key, sub = jax.random.split(key)
        return (key, *step1(sub, env_state, actions, limit))

    @functools.partial(jax.jit, static_argnums=1)
    def vreset(key, b):
        key, sub = jax.random.split(key)
        env_state, obs, state, avail = jax.vmap(reset1)(jax.random.split(sub, b))
        return key, env_state, obs, state, avail

    @jax.jit
    def vstep(key, env_state, actions, ep_return, ep_length, limit):
        b = actions.shape[0]
        key, k_step, k_reset = jax.random.split(key, 3)
        env_state, out = jax.vmap(step1, in_axes=(0, 0, 0, None))(jax.random.split(k_step, b), env_state,
                                                                   actions, limit)
        done = out["terminated"] | out["truncated"]
        # Reset every copy and keep the fresh one where the episode ended: a select is
        # cheaper under vmap than a per-copy branch (what SMAX's own step does too).
        r_state, r_obs, r_wstate, r_avail = jax.vmap(reset1)(jax.random.split(k_reset, b))

        def pick(new, old):
            return jnp.where(done.reshape(done.shape + (1,) * (new.ndim - 1)), new, old)

        env_state = jax.tree.map(pick, r_state, env_state)
        ep_return = ep_return + out["reward"]
        ep_length = ep_length + 1
        out["final_obs"], out["final_state"], out["final_avail"] = out["obs"], out["state"], out["avail"]
        out["obs"] = pick(r_obs, out["obs"])
        out["state"] = pick(r_wstate, out["state"])
        out["avail"] = pick(r_avail, out["avail"])
        out["episode_return"], out["episode_length"] = ep_return, ep_length
        out["done"] = done
        # running totals restart at 0 for the copies that were just reset
        ep_return = jnp.where(done, 0.0, ep_return).astype(jnp.float32)
        ep_length = jnp.where(done, 0, ep_length).astype(jnp.int32)
        return key, env_state, out, ep_return, ep_length

    return _SmaxCore(n, m, int(env.obs_size), int(env.state_size), n_actions, reset, step, vreset, vstep)


def _smax_default_max_steps() -> int:
    import inspect

    from jaxmarl.environments.smax.smax_env import SMAX

    return int(inspect.signature(SMAX.__init__).parameters["max_steps"].default)


def _get_core(map_name: str, kw: dict) -> tuple[_SmaxCore, int]:
    """(core, episode limit) for a map and SMAX options; max_steps is split off the options."""
    check_smax_map(map_name)
    kw = dict(kw)
    max_steps = kw.pop("max_steps", None)
    if max_steps is None:
        _import_jaxmarl()
        max_steps = _smax_default_max_steps()
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or not 0 < max_steps < _NO_LIMIT:
        raise EnvError(f"smac-{map_name}: max_steps must be a positive integer, got {max_steps!r}")
    bad = [k for k in _FORBIDDEN_SMAX_KW if k in kw]
    if bad:
        raise EnvError(f"smac-{map_name}: option(s) {', '.join(bad)} cannot be set (the map, discrete "
                       "actions and the local observation are fixed by this adapter)")
    items = tuple(sorted(kw.items()))
    try:
        hash(items)
    except TypeError:  # unhashable option values (arrays): build uncached
        return _smax_core.__wrapped__(map_name, items), int(max_steps)
    return _smax_core(map_name, items), int(max_steps)


def _smax_spec(map_name: str, core: _SmaxCore, max_steps: int) -> EnvSpec:
    n = core.n_agents
    return EnvSpec(
        name=f"smac-{map_name}", n_agents=n, obs_dims=(core.obs_dim,) * n, state_dim=core.state_dim,
        discrete=True, action_dims=(core.n_actions,) * n, episode_limit=max_steps,
        obs_scheme="local", obs_schemes=OBS_SCHEMES, backend="smax",
        extra={
            "map_name": map_name, "n_enemies": core.n_enemies,
            "action_names": SMAX_MOVE_NAMES + tuple(f"attack_{j}" for j in range(core.n_enemies)),
            "max_episode_return": 2.0,
        },
    )


class SmaxEnv(MultiAgentEnv):
    """One SMAX battle against SMAX's heuristic enemy. N allies are the agents.

    reset(seed) -> obs [N, O] float32, state [S] float32, info {}
    step(actions [N] int) -> obs [N, O], state [S], reward float, terminated, truncated, info
    avail_actions() -> [N, K] bool for the current step

    terminated: one side is wiped out (battle decided); truncated: ``spec.episode_limit``
    (SMAX ``max_steps``) steps passed undecided. At episode end info holds ``battle_won``,
    ``dead_allies``, ``dead_enemies`` and ``episode_limit`` (= truncated, SMAC's key). The final
    observation returned is the true terminal one (no auto-reset); ``step`` after the end
    raises EnvError until ``reset()``.

    Seeding: ``reset(seed)`` restarts the random stream (start positions, SMAX's cooldown noise
    and the enemy heuristic), so the same seed and actions give the same episode;
    ``reset()`` continues the stream seeded by the constructor's ``seed``.
    """

    def __init__(self, map_name: str = "2s3z", obs: str | None = None, seed: int | None = None, **smax_kwargs):
        check_obs(map_name, obs)
        self._core, limit = _get_core(map_name, smax_kwargs)
        self.spec = _smax_spec(map_name, self._core, limit)
        self._jax = _import_jaxmarl()[0]
        self._key = self._jax.random.PRNGKey(seed_or_random(seed))
        self._env_state = None
        self._avail: np.ndarray | None = None
        self._done = True
        self._t = 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        if seed is not None:
            self._key = self._jax.random.PRNGKey(int(seed))
        self._key, self._env_state, obs, state, avail = self._core.reset(self._key)
        obs, state, self._avail = _writable(self._jax.device_get((obs, state, avail)))
        self._done, self._t = False, 0
        return np.asarray(obs), np.asarray(state), {}

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, float, bool, bool, dict]:
        a = checked_step(self.spec, self._done, actions, self._avail)
        self._key, self._env_state, out = self._core.step(self._key, self._env_state, a.astype(np.int32),
                                                         np.int32(self.spec.episode_limit))
        out = _writable(self._jax.device_get(out))
        self._avail = out["avail"]
        self._t += 1
        terminated, truncated = bool(out["terminated"]), bool(out["truncated"])
        info: dict[str, Any] = {}
        if terminated or truncated:
            self._done = True
            info = {"battle_won": bool(out["battle_won"]), "dead_allies": int(out["dead_allies"]),
                    "dead_enemies": int(out["dead_enemies"]), "episode_limit": truncated}
        return out["obs"], out["state"], float(out["reward"]), terminated, truncated, info

    def avail_actions(self) -> np.ndarray:
        if self._avail is None:
            raise EnvError(f"{self.spec.name}: call reset() before avail_actions()")
        return self._avail.copy()


class SmaxVecEnv:
    """``n_envs`` copies of one SMAX map stepped together by one jitted, vmapped call.

    reset(seed) -> obs [B, N, O] float32, state [B, S] float32, avail [B, N, K] bool
    step(actions [B, N] int) -> obs [B, N, O], state [B, S], reward [B] float32, done [B] bool, info

    Auto-reset: a copy whose episode ended (terminated or truncated) is reset inside the same
    call, so the returned obs/state/avail of that copy are the first of its next episode. The
    last observation of the finished episode is in ``info["final_obs"]`` / ``["final_state"]``
    (equal to obs/state where not done). info, all [B]: ``terminated``, ``truncated``,
    ``battle_won``, ``episode_return``, ``episode_length`` — the last three describe the episode
    that just ended and are meaningful only where ``done``; plus ``avail_actions`` [B, N, K]
    (for the next step) and ``final_obs`` [B, N, O], ``final_state`` [B, S], ``final_avail`` [B, N, K]
    (the finished episode's last mask: who was still alive).
    """

    def __init__(self, map_name: str, n_envs: int, seed: int | None = None, check_actions: bool = True,
                 **smax_kwargs):
        if int(n_envs) < 1:
            raise EnvError(f"n_envs must be >= 1, got {n_envs}")
        self._core, limit = _get_core(map_name, smax_kwargs)
        self.spec = _smax_spec(map_name, self._core, limit)
        self.n_envs = int(n_envs)
        self.check_actions = check_actions
        self._jax = _import_jaxmarl()[0]
        self._key = self._jax.random.PRNGKey(seed_or_random(seed))
        self._env_state = None
        self._avail: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        jnp = self._jax.numpy
        if seed is not None:
            self._key = self._jax.random.PRNGKey(int(seed))
        self._key, self._env_state, obs, state, avail = self._core.vreset(self._key, self.n_envs)
        self._ep_return = jnp.zeros((self.n_envs,), jnp.float32)
        self._ep_length = jnp.zeros((self.n_envs,), jnp.int32)
        obs, state, self._avail = _writable(self._jax.device_get((obs, state, avail)))
        return obs, state, self._avail.copy()

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self._env_state is None:
            raise EnvError(f"{self.spec.name}: call reset() before step()")
        a = np.asarray(actions)
        want = (self.n_envs, self.spec.n_agents)
        if a.shape != want or not np.issubdtype(a.dtype, np.integer):
            raise EnvError(f"{self.spec.name}: expected integer actions of shape {want}, got {a.dtype} {a.shape}")
        if self.check_actions:
            check_avail(self.spec.name, a, self._avail)
        self._key, self._env_state, out, self._ep_return, self._ep_length = self._core.vstep(
            self._key, self._env_state, a.astype(np.int32), self._ep_return, self._ep_length,
            np.int32(self.spec.episode_limit))
        out = _writable(self._jax.device_get(out))
        self._avail = out["avail"]
        info = {k: out[k] for k in ("terminated", "truncated", "battle_won", "episode_return",
                                                "episode_length", "final_obs", "final_state", "final_avail")}
        info["avail_actions"] = self._avail.copy()
        obs, state, reward, done = (out[k] for k in ("obs", "state", "reward", "done"))
        return obs, state, reward, done, info

    def avail_actions(self) -> np.ndarray:
        if self._avail is None:
            raise EnvError(f"{self.spec.name}: call reset() before avail_actions()")
        return self._avail.copy()

    #: the action a dead agent takes ("stop": the only one its mask allows); also the placeholder
    #: action of rows no agent acted from
    idle_action = 4

    @staticmethod
    def alive(avail: np.ndarray) -> np.ndarray:
        """avail [..., N, K] -> alive [..., N]: in SMAX, moving (action 0) is available iff alive."""
        return alive_from_avail(np.asarray(avail), "smax").copy()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the JAX key and env states as numpy arrays)."""
        if self._env_state is None:
            return {"started": False, "key": np.array(self._key)}
        got = _writable(self._jax.device_get({"key": self._key, "ep_return": self._ep_return,
                                              "ep_length": self._ep_length}))
        # the env state as its list of leaves (plain arrays): a checkpoint holds no jaxmarl classes
        leaves = [np.array(x) for x in self._jax.tree.leaves(self._jax.device_get(self._env_state))]
        return {"started": True, **got, "env_state": leaves, "avail": self._avail.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        jnp = self._jax.numpy
        if not state["started"]:
            self._key = jnp.asarray(state["key"])
            return
        if self._env_state is None:  # the tree structure of the env state comes from a reset
            self.reset()
        tree = self._jax.tree.structure(self._env_state)
        self._env_state = self._jax.tree.unflatten(tree, [jnp.asarray(x) for x in state["env_state"]])
        self._key = jnp.asarray(state["key"])
        self._ep_return, self._ep_length = jnp.asarray(state["ep_return"]), jnp.asarray(state["ep_length"])
        self._avail = np.array(state["avail"])

    def random_rollout(self, steps: int) -> dict[str, int]:
        """``steps`` steps of every copy with uniformly random available actions, as ONE jitted
        ``lax.scan`` over the vmapped step (no Python per step): the speed of collection itself,
        and the episodes a random team plays. Continues from the current env state.
        -> {"env_steps", "episodes", "wins"}"""
        if self._env_state is None:
            raise EnvError(f"{self.spec.name}: call reset() before random_rollout()")
        self._key, self._env_state, self._ep_return, self._ep_length, avail, eps, wins = _random_scan(
            self._core, int(steps))(self._key, self._env_state, self._ep_return, self._ep_length,
                                    self._jax.numpy.asarray(self._avail), np.int32(self.spec.episode_limit))
        self._avail = np.array(avail)
        return {"env_steps": int(steps) * self.n_envs, "episodes": int(eps), "wins": int(wins)}

    def close(self) -> None:
        pass


@functools.cache
def _random_scan(core: _SmaxCore, steps: int) -> Callable:
    jax = _import_jaxmarl()[0]
    jnp = jax.numpy

    @jax.jit
    def run(key, env_state, ep_return, ep_length, avail, limit):
        def body(carry, _):
            key, env_state, ep_return, ep_length, avail, eps, wins = carry
            key, sub = jax.random.split(key)
            # uniform over the available actions: argmax of noise on the mask
            actions = jnp.argmax(jax.random.uniform(sub, avail.shape) * avail, -1).astype(jnp.int32)
            key, env_state, out, ep_return, ep_length = core.vstep(key, env_state, actions, ep_return, ep_length,
                                                                   limit)
            eps = eps + out["done"].sum()
            wins = wins + (out["done"] & out["battle_won"]).sum()
            return (key, env_state, ep_return, ep_length, out["avail"], eps, wins), None

        zero = jnp.zeros((), jnp.int32)
        carry, _ = jax.lax.scan(body, (key, env_state, ep_return, ep_length, avail, zero, zero), None, length=steps)
        return carry

    return run
