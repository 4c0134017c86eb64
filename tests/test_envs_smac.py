"""SMAC adapters: SMAX (JAX, runs here) and the SC2 adapter (against a test double only).

Kept small for a 2-core machine: SMAX tests use 3m (2s3z only for the spec, which needs no
JIT compile); the jitted functions are compiled once per map and shared by every env
instance (and by every max_steps), so the compile cost is paid about four times in total.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from offmarl.envs import make_env, make_vec_env, smac_names
from offmarl.envs.base import EnvError, VecMultiAgentEnv
from offmarl.envs.smac import (
    SC2_ONLY_MAPS,
    SMAC_MAPS,
    Sc2Env,
    SmaxEnv,
    SmaxVecEnv,
    make_smac,
    make_vec_smac,
    smac_backend_available,
)
from offmarl.paths import cache_dir

# find_spec, not pytest.importorskip: importing jaxmarl costs ~7 s of CPU at every collection
pytestmark = pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None, reason="jaxmarl is not installed")


def random_valid(rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    """avail [..., K] bool -> a uniformly random available action per row [...]."""
    return np.argmax(rng.random(avail.shape) * avail, axis=-1)


# ------------------------------------------------------------------------------- registry


def test_maps_and_spec_2s3z():
    assert {"3m", "2s3z", "3s5z", "3s5z_vs_3s6z", "3s_vs_5z", "6h_vs_8z"} <= set(SMAC_MAPS)
    assert not set(SMAC_MAPS) & set(SC2_ONLY_MAPS)
    env = make_env("smac-2s3z")
    s = env.spec
    assert (s.name, s.n_agents, s.state_dim, s.backend) == ("smac-2s3z", 5, 120, "smax")
    assert s.obs_dims == (127,) * 5  # 13 features x (4 allies + 5 enemies) + 10 own
    assert s.discrete and s.action_dims == (10,) * 5 and s.n_actions == 10  # 4 moves, stop, 5 attacks
    assert s.episode_limit == 100  # SMAX max_steps default
    assert s.obs_scheme == "local" and s.obs_schemes == ("local",)
    assert s.extra["action_names"][:5] == ("north", "east", "south", "west", "stop")


def test_option_errors():
    with pytest.raises(EnvError, match="choose one of: local"):
        make_smac("3m", obs="fo")
    with pytest.raises(EnvError, match="backend"):
        make_smac("3m", backend="sc3")
    with pytest.raises(EnvError, match='backend="sc2"'):
        make_smac("corridor")  # needs terrain SMAX does not model
    with pytest.raises(EnvError, match="Did you mean: 2s3z"):
        make_smac("2s3y")
    with pytest.raises(EnvError, match="cannot be set"):
        make_smac("3m", action_type="continuous")
    with pytest.raises(EnvError, match="max_steps"):
        make_smac("3m", max_steps=0)


@pytest.mark.parametrize("name,n,m", [
    ("3s_vs_4z", 3, 4),
    # each further map compiles its own SMAX step (minutes on a busy CPU the first time)
    pytest.param("3s_vs_3z", 3, 3, marks=pytest.mark.slow),
    pytest.param("2m_vs_1z", 2, 1, marks=pytest.mark.slow),
    pytest.param("8m_vs_9m", 8, 9, marks=pytest.mark.slow),
])
def test_registered_maps_build_and_step(name, n, m):
    """The MAMBA/MAG maps SMAX lacks are registered with the right teams and play to the end."""
    env = make_env(f"smac-{name}")
    s = env.spec
    assert s.n_agents == n and s.extra["n_enemies"] == m and s.n_actions == m + 5
    assert s.obs_dims == (13 * (n - 1) + 13 * m + 10,) * n and s.state_dim == 12 * (n + m)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(s.episode_limit):
        *_, term, trunc, info = env.step(random_valid(rng, env.avail_actions()))
        if term or trunc:
            break
    assert (term or trunc) and "battle_won" in info
    assert f"smac-{name}" in smac_names()


def test_backend_available_reports_smax():
    avail = smac_backend_available()
    assert avail["smax"] is True and set(avail) == {"smax", "sc2"}


# ----------------------------------------------------------------------------- SMAX single


@pytest.fixture(scope="module")
def env3m():
    return SmaxEnv("3m", seed=0)


def test_reset_step_shapes_and_full_episode(env3m):
    env, rng = env3m, np.random.default_rng(0)
    obs, state, info = env.reset(seed=1)
    n, o, k = 3, env.spec.max_obs_dim, env.spec.n_actions
    assert obs.shape == (n, o) and obs.dtype == np.float32
    assert state.shape == (env.spec.state_dim,) and state.dtype == np.float32
    assert info == {}
    avail = env.avail_actions()
    assert avail.shape == (n, k) and avail.dtype == bool
    assert avail[:, :5].all() and not avail[:, 5:].any()  # teams start out of range of each other
    total, t = 0.0, 0
    while True:
        a = random_valid(rng, env.avail_actions())
        obs, state, r, terminated, truncated, info = env.step(a)
        assert obs.shape == (n, o) and state.shape == (env.spec.state_dim,) and isinstance(r, float)
        total += r
        t += 1
        if terminated or truncated:
            break
        assert info == {}
    assert terminated != truncated and t <= env.spec.episode_limit
    assert isinstance(info["battle_won"], bool) and info["episode_limit"] == truncated
    assert 0.0 <= total <= 2.0 + 1e-5  # damage fraction (<= 1) + win bonus (1)
    if info["battle_won"]:
        assert info["dead_enemies"] == 3
    with pytest.raises(EnvError, match="call reset"):
        env.step(np.full(3, 4))


def test_unavailable_action_raises(env3m):
    env = env3m
    env.reset(seed=2)
    with pytest.raises(EnvError, match=r"agent 1: action 5 is not available"):
        env.step(np.array([4, 5, 4]))  # attack enemy 0 while out of range
    with pytest.raises(EnvError, match="out of range"):
        env.step(np.array([4, 4, 99]))
    with pytest.raises(EnvError, match="shape"):
        env.step(np.array([4, 4]))
    env.step(np.array([4, 4, 4]))  # the env is still usable after a rejected step


def test_seeding_repeats_episodes(env3m):
    env = env3m

    def rollout(seed: int, steps: int = 15):
        out = [env.reset(seed=seed)[:2]]
        rng = np.random.default_rng(0)  # same action stream given the same masks
        for _ in range(steps):
            obs, state, r, te, tr, _ = env.step(random_valid(rng, env.avail_actions()))
            out.append((obs, state, np.float32(r)))
            if te or tr:
                break
        return out

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0][0], c[0][0])  # another seed, other start positions
    # a fresh instance with the same seed repeats too (nothing hidden in the shared core)
    other = SmaxEnv("3m", seed=123)
    np.testing.assert_array_equal(other.reset(seed=7)[0], a[0][0])


def test_episode_limit_truncates_without_recompile():
    env = SmaxEnv("3m", seed=0, max_steps=3)  # shares the compiled core with env3m
    assert env.spec.episode_limit == 3
    env.reset(seed=0)
    for _ in range(3):
        _, _, _, terminated, truncated, info = env.step(np.full(3, 4))  # everybody stops
    assert (terminated, truncated) == (False, True)
    assert info["episode_limit"] is True and info["battle_won"] is False


# -------------------------------------------------------------------------------- SMAX vec


def test_vec_env_shapes_and_auto_reset():
    b = 4
    venv = SmaxVecEnv("3m", b, seed=0)
    n, o, s, k = 3, venv.spec.max_obs_dim, venv.spec.state_dim, venv.spec.n_actions
    obs, state, avail = venv.reset()
    assert obs.shape == (b, n, o) and state.shape == (b, s) and avail.shape == (b, n, k)
    assert not np.array_equal(obs[0], obs[1])  # copies get different start positions
    rng = np.random.default_rng(0)
    returns, length = np.zeros(b), np.zeros(b, dtype=int)
    finished = 0
    for _ in range(120):  # > episode_limit, so every copy ends at least once
        obs, state, r, done, info = venv.step(random_valid(rng, avail))
        avail = info["avail_actions"]
        assert obs.shape == (b, n, o) and r.shape == (b,) and done.shape == (b,) and done.dtype == bool
        returns += r
        length += 1
        np.testing.assert_array_equal(done, info["terminated"] | info["truncated"])
        assert not (info["terminated"] & info["truncated"]).any()
        np.testing.assert_array_equal(obs[~done], info["final_obs"][~done])
        for i in np.flatnonzero(done):
            finished += 1
            assert info["episode_length"][i] == length[i]
            assert info["episode_return"][i] == pytest.approx(returns[i], abs=1e-4)
            assert not np.array_equal(obs[i], info["final_obs"][i])  # reset happened
            assert avail[i, :, :5].all() and not avail[i, :, 5:].any()  # a fresh start
        assert not info["battle_won"][~done].any()
        returns[done], length[done] = 0.0, 0
    assert finished >= b
    # the VecMultiAgentEnv contract: writable arrays (torch wraps them without a copy or a warning),
    # alive flags read from the masks
    assert isinstance(venv, VecMultiAgentEnv)
    st = venv.state_dict()  # checkpoints wrap these in tensors too
    for x in (obs, state, r, done, info["final_obs"], info["avail_actions"], st["key"], st["ep_return"],
              *st["env_state"]):
        assert x.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.as_tensor(obs), torch.as_tensor(info["final_obs"])
    alive = venv.alive(info["final_avail"])
    assert alive.shape == (b, n) and alive.dtype == bool
    assert (alive == info["final_avail"][..., 0]).all()
    assert avail[np.arange(b)[:, None], np.arange(n), venv.idle_action].all()  # "stop": always allowed
    with pytest.raises(EnvError, match="env 0, agent 0: action 7 is not available"):
        venv.reset()
        venv.step(np.full((b, n), 7))


# ------------------------------------------------------------------------------------- SC2


class FakeStarCraft2Env:
    """TEST DOUBLE — NOT a simulator. It mimics only the documented API of oxwhirl SMAC's
    ``smac.env.StarCraft2Env`` (constructor(map_name, seed, ...), reset, step ->
    (reward, terminated, info), get_obs, get_state, get_avail_actions, get_env_info, close)
    with scripted numbers, so the adapter's plumbing can be tested without StarCraft II."""

    n_agents, n_actions, obs_shape, state_shape = 2, 7, 4, 6

    def __init__(self, map_name: str, seed: int | None = None, episode_limit: int = 3, win_at: int | None = None):
        self.map_name, self.seed = map_name, seed
        self.episode_limit, self.win_at = episode_limit, win_at
        self.t, self.closed, self.actions = 0, False, []

    def get_env_info(self) -> dict:
        return {"n_agents": self.n_agents, "n_actions": self.n_actions, "obs_shape": self.obs_shape,
                "state_shape": self.state_shape, "episode_limit": self.episode_limit}

    def reset(self):
        self.t = 0
        return self.get_obs(), self.get_state()

    def step(self, actions):
        self.actions.append(list(actions))
        self.t += 1
        if self.win_at is not None and self.t >= self.win_at:
            return 1.0, True, {"battle_won": True, "dead_allies": 0, "dead_enemies": 1}
        if self.t >= self.episode_limit:  # SMAC reports a time-out as terminated + episode_limit
            return 0.0, True, {"battle_won": False, "episode_limit": True}
        return 0.25, False, {}

    def get_obs(self):
        return [np.full(self.obs_shape, self.t + i, dtype=np.float64) for i in range(self.n_agents)]

    def get_state(self):
        return np.full(self.state_shape, float(self.seed or 0))

    def get_avail_actions(self):
        # agent 0 may do anything but no-op; agent 1 is "dead": only no-op (0)
        return [[0] + [1] * (self.n_actions - 1), [1] + [0] * (self.n_actions - 1)]

    def close(self):
        self.closed = True


def test_sc2_adapter_with_test_double():
    made = []

    def factory(**kw):
        made.append(FakeStarCraft2Env(**kw))
        return made[-1]

    env = make_smac("3s_vs_4z", backend="sc2", seed=5, sc2_env_factory=factory)
    s = env.spec
    assert isinstance(env, Sc2Env) and s.backend == "sc2" and s.name == "smac-3s_vs_4z"
    assert (s.n_agents, s.obs_dims, s.state_dim, s.action_dims, s.episode_limit) == (2, (4, 4), 6, (7, 7), 3)
    obs, state, info = env.reset()
    assert obs.shape == (2, 4) and obs.dtype == np.float32 and state.shape == (6,) and state[0] == 5
    np.testing.assert_array_equal(env.avail_actions()[1], [True] + [False] * 6)
    with pytest.raises(EnvError, match="agent 1: action 1 is not available"):
        env.step(np.array([1, 1]))
    obs, state, r, te, tr, info = env.step(np.array([6, 0]))
    assert (r, te, tr, info) == (0.25, False, False, {}) and made[-1].actions == [[6, 0]]
    env.step(np.array([1, 0]))
    _, _, r, te, tr, info = env.step(np.array([1, 0]))
    assert (te, tr, info["episode_limit"], info["battle_won"]) == (False, True, True, False)
    with pytest.raises(EnvError, match="call reset"):
        env.step(np.array([1, 0]))
    env.reset(seed=9)  # a new seed re-creates the SMAC env (SMAC seeds at construction)
    assert len(made) == 2 and made[0].closed and made[1].seed == 9
    env.close()
    assert made[1].closed

    won = make_smac("3m", backend="sc2", sc2_env_factory=factory, win_at=1)
    won.reset()
    _, _, r, te, tr, info = won.step(np.array([2, 0]))
    assert (r, te, tr, info["battle_won"]) == (1.0, True, False, True)


def test_sc2_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "smac", None)  # "not installed"
    with pytest.raises(EnvError, match=r"pip install git\+https://github.com/oxwhirl/smac.git.*SC2PATH"):
        make_smac("3m", backend="sc2")
    assert smac_backend_available()["sc2"] is False


def test_sc2_smac3_is_detected(monkeypatch):
    smac3 = types.ModuleType("smac")  # stands in for PyPI `smac` (SMAC3): no smac.env
    smac3.__file__ = "/site-packages/smac/__init__.py"
    monkeypatch.setitem(sys.modules, "smac", smac3)
    with pytest.raises(EnvError, match="not oxwhirl SMAC.*SMAC3"):
        make_smac("2s3z", backend="sc2")
    assert smac_backend_available()["sc2"] is False


def test_sc2_errors_without_double():
    with pytest.raises(EnvError, match="SMAX-only"):
        make_smac("smacv2_5_units", backend="sc2", sc2_env_factory=FakeStarCraft2Env)
    with pytest.raises(EnvError, match="choose one of: local"):
        make_smac("3m", backend="sc2", obs="po", sc2_env_factory=FakeStarCraft2Env)


def test_sc2_default_factory_path(monkeypatch, tmp_path):
    # a stand-in `smac` package whose smac.env.StarCraft2Env is the TEST DOUBLE above
    smac_pkg, smac_env = types.ModuleType("smac"), types.ModuleType("smac.env")
    smac_pkg.__path__ = []
    smac_env.StarCraft2Env = FakeStarCraft2Env
    smac_pkg.env = smac_env
    monkeypatch.setitem(sys.modules, "smac", smac_pkg)
    monkeypatch.setitem(sys.modules, "smac.env", smac_env)
    assert smac_backend_available()["sc2"] is True
    monkeypatch.setenv("SC2PATH", str(tmp_path / "missing"))
    with pytest.raises(EnvError, match="StarCraft II not found"):
        make_smac("3m", backend="sc2")
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    env = make_smac("3m", backend="sc2", seed=1)
    assert env.spec.n_agents == 2 and env.reset()[1][0] == 1


def test_sc2_vec_env_auto_resets_with_test_double():
    """Sc2VecEnv (the online loop's sc2 collector) over the TEST DOUBLE: SmaxVecEnv's contract
    (auto-reset, final observation and mask, episode return/length), copies seeded seed + b."""
    venv = make_vec_smac("3m", 2, backend="sc2", seed=7, sc2_env_factory=FakeStarCraft2Env, episode_limit=2)
    obs, state, avail = venv.reset()
    assert obs.shape == (2, 2, 4) and avail.shape == (2, 2, 7) and state[1, 0] == 8.0
    act = np.array([[1, 0], [1, 0]])  # agent 1 is "dead" in the double: no-op only
    _, _, r, done, info = venv.step(act)
    assert not done.any() and np.allclose(r, 0.25)
    obs, _, r, done, info = venv.step(act)
    assert done.all() and info["truncated"].all() and not info["terminated"].any()
    assert np.allclose(info["episode_return"], 0.25) and (info["episode_length"] == 2).all()
    assert (info["final_obs"][:, 0] == 2).all() and (obs[:, 0] == 0).all()  # final vs reset observation
    assert info["final_avail"].shape == (2, 2, 7)
    assert isinstance(venv, VecMultiAgentEnv) and venv.alive(avail).tolist() == [[True, False]] * 2


def test_make_vec_env_and_the_cache_folder(monkeypatch, tmp_path):
    venv = make_vec_env("smac-3m", 2, backend="sc2", seed=7, sc2_env_factory=FakeStarCraft2Env)
    assert isinstance(venv, VecMultiAgentEnv) and venv.n_envs == 2
    with pytest.raises(EnvError, match="no vectorised version"):
        make_vec_env("ant-4x2", 2)
    with pytest.raises(EnvError, match="unknown SMAC map '3n'"):
        make_vec_env("smac-3n", 2)
    with pytest.raises(EnvError, match="Did you mean: smac-3m"):
        make_vec_env("smax-3m", 2)
    from offmarl.algos.moma_ppo import default_cache_dir
    from offmarl.sweep import ray_dir

    monkeypatch.setenv("OFFMARL_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "d"))
    assert cache_dir() == tmp_path / "c" and cache_dir("jax") == tmp_path / "c" / "jax"
    monkeypatch.delenv("OFFMARL_CACHE_DIR")
    assert cache_dir() == tmp_path / "d" / "cache"
    monkeypatch.delenv("OFFMARL_DATA_DIR")
    assert cache_dir() == Path.home() / ".offmarl" / "cache"
    # every cache the toolkit keeps sits in the one folder
    assert default_cache_dir() == cache_dir() / "worldmodels" and ray_dir() == cache_dir() / "ray"
