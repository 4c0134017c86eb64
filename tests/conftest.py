"""Fixtures shared by the test files: one torch thread, small REAL datasets, and the linear toy
world of the world-model and planner tests.

Datasets (all real: MuJoCo steps, the registry's own recipes):
- ``ant_dataset``: 60 random-action ant-4x2 steps, po scheme, 20-step episodes (session-wide; do
  not modify its arrays in place, copy them). ``make_ant_dataset(n_steps, episode, obs, seed)``
  builds other sizes.
- ``make_coordination_dataset(t, seed)``: the discrete coordination game written by hand (int
  actions, an avail mask that is not all-True), for storage and validation tests.
- ``coordination_file(size=2000, seed=0)``: the registry's coordination-unfavorable recipe saved
  as a native .hdf5 file once per (size, seed) for the session; the path, for end-to-end runs.
- ``ant_eps``: 3 real single-agent Ant-v5 episodes (the raw material of foreign files);
  ``make_ant_v5_episodes(n_episodes, limit, contact_forces, seed)``; ``write_d4rl(path, eps, ...)``
  writes them in D4RL's Ant layout (111-d observations, gzip, infos/qpos).
- ``reacher_random_dataset``: 500 uniform-random transitions of the real Reacher 2x1 (fo).
- ``linear_toy``: s' = s + 0.1 (A s + B a) with S=4, N=2, A=1 (dataset, observation function,
  a Gaussian stand-in policy, and ensembles that predict constants).
- ``assert_same_dataset(a, b)``: every array (dtype and values) and the metadata equal.

Each file may also define its own local helpers; what two files need lives here.
"""
from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from offmarl.data.dataset import ARRAY_KEYS, OPTIONAL_KEYS, DatasetMeta, MultiAgentDataset
from offmarl.data.registry import build
from offmarl.data.storage import save_dataset
from offmarl.envs import make_env
from offmarl.worldmodel import EnsembleConfig, EnsembleWorldModel


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box they oversubscribe
    (a 300-step world-model fit took 21 s with 2 threads vs 1 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ real datasets
def ant_rollout(n_steps: int = 60, episode: int = 20, obs: str = "po", seed: int = 0) -> MultiAgentDataset:
    """Real ant-4x2 transitions with uniform random actions, cut into time-limited episodes."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("states", "next_states", "actions", "rewards", "terminals", "timeouts")}
    with make_env("ant-4x2", obs=obs) as env:
        _, state, _ = env.reset(seed=seed)
        t_ep = 0
        for _ in range(n_steps):
            a = rng.uniform(-1, 1, (4, 2))
            _, nxt, r, term, trunc, _ = env.step(a)
            t_ep += 1
            cut = trunc or t_ep == episode
            for k, v in zip(rows, (state, nxt, a, r, term, cut and not term)):
                rows[k].append(v)
            state = nxt
            if term or cut:
                _, state, _ = env.reset(seed=int(rng.integers(1 << 30)))
                t_ep = 0
        rows["timeouts"][-1] = rows["timeouts"][-1] or not rows["terminals"][-1]
        spec = env.spec
        states = np.asarray(rows["states"], np.float32)
        next_states = np.asarray(rows["next_states"], np.float32)
        meta = DatasetMeta(env="ant-4x2", obs_scheme=spec.obs_scheme, n_agents=4, obs_dims=spec.obs_dims,
                           action_dims=spec.action_dims, state_dim=spec.state_dim, discrete=False, name="ant-test",
                           source="offmarl-generated", generator="uniform random", ref_min_return=-325.6,
                           ref_max_return=3879.7, extra={"seed": seed, "note": ["a", 1]})
        return MultiAgentDataset(
            states=states, next_states=next_states, observations=env.observe(states).astype(np.float32),
            next_observations=env.observe(next_states).astype(np.float32),
            actions=np.asarray(rows["actions"], np.float32), rewards=np.asarray(rows["rewards"], np.float32),
            terminals=np.asarray(rows["terminals"], bool), timeouts=np.asarray(rows["timeouts"], bool), meta=meta,
        )


def coordination_by_hand(t: int = 40, seed: int = 0) -> MultiAgentDataset:
    """The discrete coordination game: one-step episodes, int actions, avail_actions."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, (t, 2)).astype(np.int64)
    meta = DatasetMeta(env="coordination", obs_scheme="fo", n_agents=2, obs_dims=(1, 1), action_dims=(2, 2),
                       state_dim=1, discrete=True, name="coordination-neutral", source="offmarl-generated",
                       ref_min_return=0.0, ref_max_return=1.0)
    avail = np.ones((t, 2, 2), bool)
    avail[::3, 1, 0] = False  # not all-True, so a lost mask would be noticed
    return MultiAgentDataset(
        states=np.ones((t, 1), np.float32), next_states=np.ones((t, 1), np.float32),
        observations=np.ones((t, 2, 1), np.float32), next_observations=np.ones((t, 2, 1), np.float32),
        actions=a, rewards=(a[:, 0] == a[:, 1]).astype(np.float32), terminals=np.ones(t, bool),
        timeouts=np.zeros(t, bool), meta=meta, avail_actions=avail, next_avail_actions=avail[::-1].copy(),
    )


def reacher_random(size: int = 500, seed: int = 0) -> MultiAgentDataset:
    """Uniform random joint actions in the real Reacher 2x1 (fo observations, 50-step episodes)."""
    env = make_env("reacher-2x1", obs="fo")
    spec = env.spec
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("states", "next_states", "observations", "next_observations", "actions",
                            "rewards", "terminals", "timeouts")}
    obs, state, _ = env.reset(seed=seed)
    episode = 0
    while len(rows["rewards"]) < size:
        action = rng.uniform(-1, 1, (spec.n_agents, spec.max_action_dim))
        next_obs, next_state, reward, term, trunc, _ = env.step(action)
        for key, value in zip(rows, (state, next_state, obs, next_obs, action, reward, term, trunc and not term)):
            rows[key].append(value)
        obs, state = next_obs, next_state
        if term or trunc:
            episode += 1
            obs, state, _ = env.reset(seed=seed + episode)
    env.close()
    arr = {k: np.asarray(v) for k, v in rows.items()}
    for k in ("states", "next_states", "observations", "next_observations", "actions", "rewards"):
        arr[k] = arr[k].astype(np.float32)
    arr["terminals"], arr["timeouts"] = arr["terminals"].astype(bool), arr["timeouts"].astype(bool)
    arr["timeouts"][-1] |= not arr["terminals"][-1]
    meta = DatasetMeta(env="reacher-2x1", obs_scheme=spec.obs_scheme, n_agents=spec.n_agents,
                       obs_dims=spec.obs_dims, action_dims=spec.action_dims, state_dim=spec.state_dim,
                       discrete=False, name="reacher-random-test", ref_min_return=-11.1446, ref_max_return=-4.2371)
    return MultiAgentDataset(**arr, meta=meta)


def ant_v5_rollouts(n_episodes: int, limit: int, contact_forces: bool, seed: int = 0) -> list[dict]:
    """Real single-agent Ant-v5 episodes with uniform random actions (T+1 observations each)."""
    env = gym.make("Ant-v5", max_episode_steps=limit, include_cfrc_ext_in_observation=contact_forces)
    rng = np.random.default_rng(seed)
    eps = []
    for k in range(n_episodes):
        o, _ = env.reset(seed=seed + k)
        ep = {"obs": [o], "act": [], "rew": [], "term": [], "trunc": []}
        while True:
            a = rng.uniform(-1, 1, 8).astype(np.float32)
            o, r, term, trunc, _ = env.step(a)
            for key, v in zip(("obs", "act", "rew", "term", "trunc"), (o, a, r, term, trunc)):
                ep[key].append(v)
            if term or trunc:
                break
        eps.append({k: np.asarray(v) for k, v in ep.items()})
    env.close()
    return eps


@pytest.fixture(scope="session")
def make_ant_v5_episodes():
    return ant_v5_rollouts


@pytest.fixture(scope="session")
def ant_eps() -> list[dict]:
    """3 real Ant-v5 episodes, 50-step time limit (some may terminate early): raw single-agent data."""
    return ant_v5_rollouts(3, 50, contact_forces=False)


def d4rl_file(path, eps: list[dict], with_next: bool = True, trailing: int = 0) -> dict:
    """A D4RL-layout file (key names and dtypes of d4rl's Ant-v2 files): 111-d observations
    whose first 27 dims are real Ant steps and whose 84 contact dims are zero."""
    obs = np.concatenate([e["obs"][:-1] for e in eps])
    nxt = np.concatenate([e["obs"][1:] for e in eps])
    wide = lambda x: np.concatenate([x, np.zeros((len(x), 84))], axis=1).astype(np.float32)
    cols = {
        "observations": wide(obs), "actions": np.concatenate([e["act"] for e in eps]).astype(np.float32),
        "rewards": np.concatenate([e["rew"] for e in eps]).astype(np.float32),
        "terminals": np.concatenate([e["term"] for e in eps]).astype(bool),
        "timeouts": np.concatenate([e["trunc"] for e in eps]).astype(bool),
    }
    if with_next:
        cols["next_observations"] = wide(nxt)
    if trailing:  # rows of an episode cut off by the end of the file (neither flag set)
        for k, v in cols.items():
            cols[k] = np.concatenate([v, v[:trailing]])
            if k in ("terminals", "timeouts"):
                cols[k][-trailing:] = False
    with h5py.File(path, "w") as f:
        for k, v in cols.items():
            f.create_dataset(k, data=v, compression="gzip")
        f.create_dataset("infos/qpos", data=np.zeros((len(cols["rewards"]), 15)))
        f.create_dataset("infos/qvel", data=np.zeros((len(cols["rewards"]), 14)))
    return cols


@pytest.fixture(scope="session")
def write_d4rl():
    """``write_d4rl(path, eps, with_next=True, trailing=0) -> columns``: a D4RL-layout Ant file."""
    return d4rl_file


@pytest.fixture(scope="session")
def make_ant_dataset():
    return ant_rollout


@pytest.fixture(scope="session")
def ant_dataset() -> MultiAgentDataset:
    return ant_rollout()


@pytest.fixture(scope="session")
def make_coordination_dataset():
    return coordination_by_hand


@pytest.fixture(scope="session")
def reacher_random_dataset() -> MultiAgentDataset:
    return reacher_random()


@pytest.fixture(scope="session")
def coordination_file(tmp_path_factory):
    """``coordination_file(size=2000, seed=0) -> str``: coordination-unfavorable saved once per (size, seed)."""
    root = tmp_path_factory.mktemp("coordination")
    made: dict[tuple[int, int], str] = {}

    def path(size: int = 2000, seed: int = 0) -> str:
        if (size, seed) not in made:
            made[size, seed] = str(save_dataset(build("coordination-unfavorable", size=size, seed=seed),
                                                root / f"coord-{size}-s{seed}.hdf5"))
        return made[size, seed]

    return path


def same_dataset(a: MultiAgentDataset, b: MultiAgentDataset) -> None:
    for k in ARRAY_KEYS + OPTIONAL_KEYS:
        x, y = getattr(a, k), getattr(b, k)
        if x is None or y is None:
            assert x is None and y is None, k
            continue
        assert x.dtype == y.dtype, (k, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=k)
    assert a.meta == b.meta


@pytest.fixture(scope="session")
def assert_same_dataset():
    return same_dataset


# ------------------------------------------------------------------------------ the linear toy world
LINEAR_S, LINEAR_N, LINEAR_A = 4, 2, 1  # state 4, two agents with one action each


def linear_dataset(t: int = 2000, seed: int = 0, episode: int = 50) -> MultiAgentDataset:
    """s' = s + 0.1 (A s + B a), r = c.s + d.a; every episode ends on a time-out."""
    s, n, a = LINEAR_S, LINEAR_N, LINEAR_A
    rng = np.random.default_rng(seed)
    a_mat = rng.normal(size=(s, s)) * 0.3
    b_mat = rng.normal(size=(s, n * a))
    c, d = rng.normal(size=s), rng.normal(size=n * a)
    states = rng.normal(size=(t, s)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(t, n, a)).astype(np.float32)
    flat = actions.reshape(t, -1)
    next_states = (states + 0.1 * (states @ a_mat.T + flat @ b_mat.T)).astype(np.float32)
    rewards = (states @ c + flat @ d).astype(np.float32)
    timeouts = (np.arange(t) % episode) == episode - 1
    timeouts[-1] = True
    meta = DatasetMeta(env="linear-test", obs_scheme="fo", n_agents=n, obs_dims=(s,) * n, action_dims=(a,) * n,
                       state_dim=s, discrete=False, name="linear-test")
    obs = np.repeat(states[:, None], n, axis=1)
    next_obs = np.repeat(next_states[:, None], n, axis=1)
    return MultiAgentDataset(states, next_states, obs, next_obs, actions, rewards, np.zeros(t, bool), timeouts, meta)


def observe_all(states: torch.Tensor) -> torch.Tensor:
    """FO scheme of the toy: every agent sees the whole state. [B, S] -> [B, N, S]."""
    return states.unsqueeze(1).expand(-1, LINEAR_N, -1)


class LinearGaussianPolicy:
    """Stand-in for the MA-PPO actor: a = tanh(W obs_i) + 0.1 noise, per agent."""

    def __init__(self, device="cpu"):
        self.w = torch.linspace(-0.5, 0.5, LINEAR_S * LINEAR_A, device=device).view(LINEAR_S, LINEAR_A)

    def act(self, obs, hist, avail=None, deterministic=False, generator=None):
        mean = torch.tanh(obs @ self.w)  # [B, N, A]
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        logp = -0.5 * (noise ** 2).sum(-1)  # up to a constant; only shapes matter here
        return (mean if deterministic else mean + 0.1 * noise), logp

    def env_actions(self, actions):
        return actions.clamp(-1.0, 1.0)


def constant_model(deltas: list[list[float]], done_logit: float = -10.0, elites: int | None = None
                   ) -> EnsembleWorldModel:
    """Member e always predicts [delta state, reward] = deltas[e] (raw = standardised units, since the
    standardisers are the identity before fitting)."""
    e = len(deltas)
    model = EnsembleWorldModel(LINEAR_S, LINEAR_A, LINEAR_N,
                               config=EnsembleConfig(members=e, elites=elites or e, hidden=(8,)))
    with torch.no_grad():
        model.net.out.weight.zero_()
        model.net.out.bias.zero_()
        model.net.out.bias[:, 0, : LINEAR_S + 1] = torch.tensor(deltas)
        model.net.out.bias[:, 0, -1] = done_logit
    return model


@pytest.fixture(scope="session")
def linear_toy():
    """The linear toy world: S, N, A, dataset(t, seed, episode), observe, policy(device), constant_model(...)."""
    return SimpleNamespace(S=LINEAR_S, N=LINEAR_N, A=LINEAR_A, dataset=linear_dataset, observe=observe_all,
                           policy=LinearGaussianPolicy, constant_model=constant_model)
