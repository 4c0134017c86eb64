"""SMAC (StarCraft Multi-Agent Challenge) behind the offmarl env contract, two backends.

``smax`` (default): JaxMARL's SMAX, a JAX re-implementation of SMAC's micro-management battles
against a scripted ("heuristic") enemy team — ``make("HeuristicEnemySMAX", scenario=...)``.
It runs anywhere jax[cpu] runs. ``sc2``: an adapter over oxwhirl SMAC's ``StarCraft2Env``,
which needs the StarCraft II binary; neither is installable here, so it is unit-tested against
a test double only (tests/test_envs_smac.py).

The two backends share map names but NOT observation, state or action layouts (SMAX 2s3z:
obs 127, state 120, 10 actions; SC2 2s3z: obs 80, state 120, 11 actions, a different action
order), nor reward scales. Data collected on one backend is not usable on the other.

SMAX action layout (per agent, K = n_enemies + 5): 0 north, 1 east, 2 south, 3 west, 4 stop,
5 + j attack enemy j. There is no no-op: dead agents must pick "stop" (the only action their
mask allows). SC2 layout: 0 no-op (dead agents only), 1 stop, 2 N, 3 S, 4 E, 5 W, 6 + j attack.

Unavailable actions: both backends raise ``EnvError`` naming the agent and the action. SMAX
itself would silently ignore them (an out-of-range attack does nothing) and SC2 SMAC would
assert; an explicit error keeps datasets and policies honest about the mask.

Reward (smax): SMAX gives every ally the same team reward — the fraction of total enemy health
removed this step (damage / max health, summed over enemies, divided by n_enemies) plus
``won_battle_bonus`` (1.0) on the step the last enemy dies while an ally lives. An episode's
return is therefore at most 2.0 (SC2 SMAC normalises its return to at most 20). We expose that
shared value as one float.

JAX must stay off the GPU torch uses and must not preallocate: the environment variables are set
(unless the user set them) before jax is first imported, and jax/jaxmarl are imported lazily so
``import offmarl.envs`` stays cheap. If jax was already imported elsewhere with other settings,
those settings win.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Must happen before jax is imported anywhere (jax reads them at import / backend start).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling SMAX's vmapped step takes minutes on a busy CPU: keep compiled programs on disk so
# that every later process (tests, runs, evaluations) loads them in seconds.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "offmarl", "jax"))

import numpy as np

from offmarl.envs.base import EnvError, EnvSpec, MultiAgentEnv

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


def _check_obs(map_name: str, obs: str | None) -> None:
    if obs not in (None, *OBS_SCHEMES):
        raise EnvError(
            f"observation scheme {obs!r} is not available for smac-{map_name}; choose one of: "
            f"{', '.join(OBS_SCHEMES)}"
        )


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


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
    _check_obs(map_name, obs)
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
        _check_smax_map(map_name)
        return
    known = [m for m in SMAC_MAPS if not m.startswith("smacv2_")] + list(SC2_ONLY_MAPS)
    if map_name not in known:
        raise EnvError(f"unknown SMAC map {map_name!r}.{_suggest(map_name, known)} SC2 maps: {', '.join(known)}")
    _import_starcraft2env()
    sc2path = os.path.expanduser(os.environ.get("SC2PATH", "~/StarCraftII"))
    if not os.path.isdir(sc2path):
        raise EnvError(f"backend 'sc2': StarCraft II not found at {sc2path} (SC2PATH): {SC2_INSTALL_HINT}")


# --------------------------------------------------------------------------------------- SMAX


def _check_smax_map(map_name: str) -> None:
    if map_name in SMAC_MAPS:
        return
    if map_name in SC2_ONLY_MAPS:
        raise EnvError(
            f"SMAC map {map_name!r} exists only in StarCraft II SMAC ({SC2_ONLY_MAPS[map_name]}); "
            f"use backend=\"sc2\" (needs StarCraft II and oxwhirl SMAC). SMAX maps: {', '.join(SMAC_MAPS)}"
        )
    raise EnvError(
        f"unknown SMAC map {map_name!r}.{_suggest(map_name, SMAC_MAPS + tuple(SC2_ONLY_MAPS))} "
        f"SMAX maps: {', '.join(SMAC_MAPS)}"
    )


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
    _check_smax_map(map_name)
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


def _seed_or_random(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**32))
    return int(seed)


def _checked_step(spec, done: bool, actions, avail: np.ndarray) -> np.ndarray:
    """One env's step(actions) input check (SMAX and SC2 alike) -> the actions as an array."""
    if done:
        raise EnvError(f"{spec.name}: the episode has ended (or never started); call reset() first")
    a = np.asarray(actions)
    if a.shape != (spec.n_agents,) or not np.issubdtype(a.dtype, np.integer):
        raise EnvError(f"{spec.name}: expected integer actions of shape ({spec.n_agents},), got {a.dtype} {a.shape}")
    _check_avail(spec.name, a, avail)
    return a


def _check_avail(name: str, actions: np.ndarray, avail: np.ndarray, where: str = "") -> None:
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
        _check_obs(map_name, obs)
        self._core, limit = _get_core(map_name, smax_kwargs)
        self.spec = _smax_spec(map_name, self._core, limit)
        self._jax = _import_jaxmarl()[0]
        self._key = self._jax.random.PRNGKey(_seed_or_random(seed))
        self._env_state = None
        self._avail: np.ndarray | None = None
        self._done = True
        self._t = 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        if seed is not None:
            self._key = self._jax.random.PRNGKey(int(seed))
        self._key, self._env_state, obs, state, avail = self._core.reset(self._key)
        obs, state, self._avail = self._jax.device_get((obs, state, avail))
        self._done, self._t = False, 0
        return np.asarray(obs), np.asarray(state), {}

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, float, bool, bool, dict]:
        a = _checked_step(self.spec, self._done, actions, self._avail)
        self._key, self._env_state, out = self._core.step(self._key, self._env_state, a.astype(np.int32),
                                                         np.int32(self.spec.episode_limit))
        out = self._jax.device_get(out)
        self._avail = np.asarray(out["avail"])
        self._t += 1
        terminated, truncated = bool(out["terminated"]), bool(out["truncated"])
        info: dict[str, Any] = {}
        if terminated or truncated:
            self._done = True
            info = {"battle_won": bool(out["battle_won"]), "dead_allies": int(out["dead_allies"]),
                    "dead_enemies": int(out["dead_enemies"]), "episode_limit": truncated}
        return np.asarray(out["obs"]), np.asarray(out["state"]), float(out["reward"]), terminated, truncated, info

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
        self._key = self._jax.random.PRNGKey(_seed_or_random(seed))
        self._env_state = None
        self._avail: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        jnp = self._jax.numpy
        if seed is not None:
            self._key = self._jax.random.PRNGKey(int(seed))
        self._key, self._env_state, obs, state, avail = self._core.vreset(self._key, self.n_envs)
        self._ep_return = jnp.zeros((self.n_envs,), jnp.float32)
        self._ep_length = jnp.zeros((self.n_envs,), jnp.int32)
        obs, state, self._avail = self._jax.device_get((obs, state, avail))
        return np.asarray(obs), np.asarray(state), self._avail.copy()

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self._env_state is None:
            raise EnvError(f"{self.spec.name}: call reset() before step()")
        a = np.asarray(actions)
        want = (self.n_envs, self.spec.n_agents)
        if a.shape != want or not np.issubdtype(a.dtype, np.integer):
            raise EnvError(f"{self.spec.name}: expected integer actions of shape {want}, got {a.dtype} {a.shape}")
        if self.check_actions:
            _check_avail(self.spec.name, a, self._avail)
        self._key, self._env_state, out, self._ep_return, self._ep_length = self._core.vstep(
            self._key, self._env_state, a.astype(np.int32), self._ep_return, self._ep_length,
            np.int32(self.spec.episode_limit))
        out = self._jax.device_get(out)
        self._avail = np.asarray(out["avail"])
        info = {k: np.asarray(out[k]) for k in ("terminated", "truncated", "battle_won", "episode_return",
                                                "episode_length", "final_obs", "final_state", "final_avail")}
        info["avail_actions"] = self._avail.copy()
        obs, state, reward, done = (np.asarray(out[k]) for k in ("obs", "state", "reward", "done"))
        return obs, state, reward, done, info

    def avail_actions(self) -> np.ndarray:
        if self._avail is None:
            raise EnvError(f"{self.spec.name}: call reset() before avail_actions()")
        return self._avail.copy()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the JAX key and env states as numpy arrays)."""
        if self._env_state is None:
            return {"started": False, "key": np.asarray(self._key)}
        got = self._jax.device_get({"key": self._key, "ep_return": self._ep_return, "ep_length": self._ep_length})
        # the env state as its list of leaves (plain arrays): a checkpoint holds no jaxmarl classes
        leaves = [np.asarray(x) for x in self._jax.tree.leaves(self._jax.device_get(self._env_state))]
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
        self._avail = np.asarray(state["avail"])

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
        self._avail = np.asarray(avail)
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


def make_vec_smac(map_name: str, n_envs: int, backend: str = "smax", seed: int | None = None, **kw):
    """``n_envs`` copies of one map behind SmaxVecEnv's interface: the jitted, vmapped SMAX
    copies, or (``sc2``) StarCraft II processes stepped one after another (Sc2VecEnv)."""
    if backend not in BACKENDS:
        raise EnvError(f"unknown SMAC backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "smax":
        return SmaxVecEnv(map_name, n_envs, seed=seed, **kw)
    return Sc2VecEnv(map_name, n_envs, seed=seed, **kw)


# ---------------------------------------------------------------------------------------- SC2


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
        _check_obs(map_name, obs)
        known = [m for m in SMAC_MAPS if not m.startswith("smacv2_")] + list(SC2_ONLY_MAPS)
        if map_name.startswith("smacv2_"):
            raise EnvError(f"{map_name!r} is a SMAX-only map (SMACv2-style); use backend=\"smax\"")
        if map_name not in known:
            raise EnvError(f"unknown SMAC map {map_name!r}.{_suggest(map_name, known)} SC2 maps: {', '.join(known)}")
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
        a = _checked_step(self.spec, self._done, actions, self._avail)
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
        base = _seed_or_random(seed)
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

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()

    def close(self) -> None:
        for e in self.envs:
            e.close()


__all__ = [
    "SC2_EPISODE_LIMITS",
    "SC2_ONLY_MAPS",
    "SMAC_MAPS",
    "SMAX_EXTRA_MAPS",
    "Sc2Env",
    "Sc2VecEnv",
    "SmaxEnv",
    "SmaxVecEnv",
    "check_online_map",
    "make_smac",
    "make_vec_smac",
    "smac_backend_available",
]
