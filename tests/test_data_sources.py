"""Importers and exporters: D4RL-layout files, Minari datasets, per-agent decomposition.

The foreign files here are written with raw h5py / the minari API from REAL single-agent
Ant-v5 steps, not by offmarl, so the readers are tested against the other tools' layouts.
"""
from __future__ import annotations

import socket

import gymnasium as gym
import h5py
import numpy as np
import pytest

from offmarl.data.convert import convert, export
from offmarl.data.dataset import DatasetError, MultiAgentDataset
from offmarl.data.decompose import decompose
from offmarl.data.sources.d4rl import read_d4rl
from offmarl.data.sources.minari import export_minari, read_minari
from offmarl.data.storage import load_dataset_file
from offmarl.envs import make_env


def local_partition(env, global_actions: np.ndarray) -> np.ndarray:
    """Per-agent actions by MaMuJoCo's own helper, row by row [T, N, 2]."""
    out = []
    for g in global_actions:
        d = env._env.map_global_action_to_local_actions(g)
        out.append(np.stack([d[a] for a in env.agents]))
    return np.asarray(out)


# ------------------------------------------------------------------------- D4RL
def test_d4rl_fo_and_po(ant_eps, tmp_path, write_d4rl):
    path = tmp_path / "ant-random-v2.hdf5"
    cols = write_d4rl(path, ant_eps)
    t = len(cols["rewards"])
    states = cols["observations"][:, :27]

    fo = read_d4rl(path, env="ant-4x2", obs="fo")
    assert len(fo) == t and fo.meta.obs_dims == (27, 27, 27, 27)
    np.testing.assert_array_equal(fo.states, states)
    np.testing.assert_array_equal(fo.next_states, cols["next_observations"][:, :27])
    for i in range(4):
        np.testing.assert_array_equal(fo.observations[:, i], states)
    np.testing.assert_array_equal(fo.terminals, cols["terminals"])
    np.testing.assert_array_equal(fo.timeouts, cols["timeouts"])
    assert fo.meta.source == "d4rl:ant-random-v2.hdf5"
    assert (fo.meta.ref_min_return, fo.meta.ref_max_return) == (-325.6, 3879.7)

    po = read_d4rl(path, env="ant-4x2", obs="po")
    assert po.meta.obs_dims == (15, 4, 4, 4) and po.observations.shape == (t, 4, 15)
    with make_env("ant-4x2", obs="po") as env:
        np.testing.assert_array_equal(po.observations, env.observe(states))
        np.testing.assert_array_equal(po.actions, local_partition(env, cols["actions"]))
        # D4RL Ant-v2 action order == v5 actuator order: agent_0 (hip1, ankle1) = ids 2, 3
        np.testing.assert_array_equal(po.actions[:, 0], cols["actions"][:, [2, 3]])
        np.testing.assert_array_equal(po.actions[:, 3], cols["actions"][:, [0, 1]])
    assert po.observations[:, 1:, 4:].max() == 0  # zero padding past the true widths


def test_d4rl_without_next_observations_drops_episode_ends(ant_eps, tmp_path, write_d4rl):
    path = tmp_path / "no-next.hdf5"
    cols = write_d4rl(path, ant_eps, with_next=False)
    with pytest.warns(UserWarning, match="dropped the last transition"):
        ds = read_d4rl(path)
    ends = cols["terminals"] | cols["timeouts"]
    keep = np.flatnonzero(~ends)
    assert len(ds) == len(ends) - ends.sum() == len(keep)
    np.testing.assert_array_equal(ds.states, cols["observations"][keep, :27])
    np.testing.assert_array_equal(ds.next_states, cols["observations"][keep + 1, :27])
    assert ds.n_episodes == ends.sum() and not ds.terminals.any()  # shortened episodes end in a time-out
    np.testing.assert_array_equal(ds.timeouts, ends[keep + 1])


def test_d4rl_trailing_partial_episode_dropped(ant_eps, tmp_path, write_d4rl):
    path = tmp_path / "partial.hdf5"
    cols = write_d4rl(path, ant_eps, trailing=7)
    with pytest.warns(UserWarning, match="last 7 transitions end no episode"):
        ds = read_d4rl(path)
    assert len(ds) == len(cols["rewards"]) - 7


def test_d4rl_27d_observations_accepted(ant_eps, tmp_path, write_d4rl):
    path = tmp_path / "narrow.hdf5"
    cols = write_d4rl(path, ant_eps)
    with h5py.File(path, "a") as f:
        for k in ("observations", "next_observations"):
            v = f[k][:, :27]
            del f[k]
            f[k] = v
    np.testing.assert_array_equal(read_d4rl(path).states, cols["observations"][:, :27])


def test_d4rl_width_and_key_errors(ant_eps, tmp_path, write_d4rl):
    path = tmp_path / "ant.hdf5"
    write_d4rl(path, ant_eps)
    with pytest.raises(DatasetError) as ei:
        read_d4rl(path, env="halfcheetah-2x3")
    msg = str(ei.value)
    assert "ant.hdf5" in msg and "'observations'" in msg and "111" in msg and "17" in msg and "halfcheetah-2x3" in msg

    with h5py.File(path, "a") as f:
        a = f["actions"][:, :6]
        del f["actions"]
        f["actions"] = a
    with pytest.raises(DatasetError) as ei:
        read_d4rl(path)
    msg = str(ei.value)
    assert "ant.hdf5" in msg and "'actions'" in msg and "width 6" in msg and "expected 8" in msg and "ant-4x2" in msg

    with h5py.File(path, "a") as f:
        del f["timeouts"]
    with pytest.raises(DatasetError, match=r"ant\.hdf5.*'timeouts'"):
        read_d4rl(path)


# ------------------------------------------------------------------------- decomposition
def test_decomposition_matches_live_mamujoco():
    """Step MaMuJoCo with random global actions; decompose the recorded states and global
    actions; compare with MaMuJoCo's own local observations and action split."""
    rng = np.random.default_rng(1)
    with make_env("ant-4x2", obs="local") as env:
        _, state, _ = env.reset(seed=3)
        own_obs0 = env.local_observations_from_mamujoco()
        states, nexts, globals_, own_obs, own_next, locals_ = [], [], [], [], [], []
        for _ in range(12):
            g = rng.uniform(-1, 1, 8)
            local = local_partition(env, g[None])[0]
            _, nxt, *_ = env.step(local)
            states.append(state)
            nexts.append(nxt)
            globals_.append(g)
            locals_.append(local)
            own_obs.append(own_obs0)
            own_obs0 = env.local_observations_from_mamujoco()
            own_next.append(own_obs0)
            state = nxt
        single_obs = env._single.unwrapped._get_obs()  # the single-agent env's own observation
    np.testing.assert_allclose(state, single_obs)
    t = len(states)
    ends = np.zeros(t, bool)
    ends[-1] = True
    ds = decompose(np.asarray(states), np.asarray(nexts), np.asarray(globals_), np.zeros(t), np.zeros(t, bool), ends,
                   "ant-4x2", "local")
    assert ds.meta.obs_dims == (18, 18, 18, 18)
    np.testing.assert_allclose(ds.observations, np.asarray(own_obs), rtol=1e-6, atol=1e-6)  # float32 storage
    np.testing.assert_allclose(ds.next_observations, np.asarray(own_next), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds.actions, np.asarray(locals_), rtol=1e-6)


def test_decompose_width_errors():
    with pytest.raises(DatasetError, match=r"'states' has width 26, expected 27 for env 'ant-4x2'"):
        decompose(np.zeros((3, 26)), np.zeros((3, 26)), np.zeros((3, 8)), np.zeros(3), np.zeros(3), np.ones(3),
                  "ant-4x2", origin="x.h5")
    with pytest.raises(DatasetError, match=r"x\.h5: key 'actions' has width 6, expected 8 for env 'ant-4x2'"):
        decompose(np.zeros((3, 27)), np.zeros((3, 27)), np.zeros((3, 6)), np.zeros(3), np.zeros(3), np.ones(3),
                  "ant-4x2", origin="x.h5")
    with pytest.raises(DatasetError, match="no single-agent form"):
        decompose(np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 2)), np.zeros(3), np.zeros(3), np.ones(3),
                  "coordination")


# ------------------------------------------------------------------------- Minari
@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def make_foreign_minari(dataset_id: str, eps: list[dict], contact_forces: bool):
    """A Minari dataset made the way Minari users make them (not by offmarl)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, observations=list(e["obs"]), actions=list(e["act"]), rewards=list(e["rew"]),
                             terminations=list(e["term"]), truncations=list(e["trunc"])) for i, e in enumerate(eps)]
    env = gym.make("Ant-v5", max_episode_steps=30, include_cfrc_ext_in_observation=contact_forces)
    return minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="random",
                                              author="test", author_email="t@e.st", code_permalink="none",
                                              description="random Ant-v5")


def test_minari_foreign_ant_v5_105d(minari_root, make_ant_v5_episodes):
    eps = make_ant_v5_episodes(2, 30, contact_forces=True, seed=5)
    assert eps[0]["obs"].shape[1] == 105
    make_foreign_minari("mujoco/ant/random-v0", eps, contact_forces=True)
    ds = read_minari("mujoco/ant/random-v0", env="ant-4x2", obs="po")
    states = np.concatenate([e["obs"][:-1, :27] for e in eps]).astype(np.float32)
    nexts = np.concatenate([e["obs"][1:, :27] for e in eps]).astype(np.float32)
    acts = np.concatenate([e["act"] for e in eps])
    np.testing.assert_array_equal(ds.states, states)
    np.testing.assert_array_equal(ds.next_states, nexts)
    assert ds.meta.obs_dims == (15, 4, 4, 4) and ds.n_episodes == 2
    with make_env("ant-4x2", obs="po") as env:
        np.testing.assert_array_equal(ds.actions, local_partition(env, acts))
        np.testing.assert_array_equal(ds.observations, env.observe(states))
    np.testing.assert_array_equal(ds.terminals, np.concatenate([e["term"] for e in eps]))
    assert ds.meta.source == "minari:mujoco/ant/random-v0" and ds.meta.ref_min_return == -325.6
    # the same dataset by path (the dataset directory), fo scheme
    by_path = read_minari(minari_root / "mujoco" / "ant" / "random-v0")
    assert by_path.meta.obs_dims == (27,) * 4
    np.testing.assert_array_equal(by_path.states, states)


def test_minari_foreign_27d(minari_root, ant_eps):
    make_foreign_minari("mujoco/ant/narrow-v0", ant_eps[:1], contact_forces=False)
    ds = read_minari("mujoco/ant/narrow-v0")
    np.testing.assert_array_equal(ds.states, ant_eps[0]["obs"][:-1].astype(np.float32))


def test_minari_round_trip_continuous_exact(minari_root, assert_same_dataset, make_ant_dataset):
    import minari

    ds = make_ant_dataset(n_steps=50, episode=20, obs="po")  # po: padded obs, true widths 15/4/4/4
    dest = export_minari(ds, "offmarl/ant-4x2/test-v0")
    assert dest == minari_root / "offmarl" / "ant-4x2" / "test-v0"
    m = minari.load_dataset("offmarl/ant-4x2/test-v0")  # plain minari can load it
    assert set(m.observation_space.spaces) == {"agent_0", "agent_1", "agent_2", "agent_3", "state"}
    assert m.observation_space["agent_0"].shape == (15,) and m.action_space["agent_3"].shape == (2,)
    assert m.total_steps == len(ds) and m.total_episodes == ds.n_episodes
    ep = next(m.iterate_episodes())
    assert ep.observations["state"].shape == (len(ep.rewards) + 1, 27)
    assert minari.get_normalized_score(m, np.array([3879.7])) == pytest.approx(1.0)
    back = read_minari("offmarl/ant-4x2/test-v0")
    assert_same_dataset(ds, back)
    with pytest.raises(DatasetError, match="already exists"):
        export_minari(ds, "offmarl/ant-4x2/test-v0")


def test_minari_round_trip_discrete_with_avail(minari_root, assert_same_dataset, make_coordination_dataset):
    ds = make_coordination_dataset()
    export_minari(ds, "offmarl/coordination/neutral-v0")
    assert_same_dataset(ds, read_minari("offmarl/coordination/neutral-v0"))


def test_minari_round_trip_non_contiguous_next(minari_root, assert_same_dataset, make_ant_dataset):
    """next_* that are not the following row (e.g. edited data) still come back exactly."""
    ds = make_ant_dataset(n_steps=30, episode=15, obs="fo")
    ns, no = ds.next_states.copy(), ds.next_observations.copy()
    ns[3] += 0.5
    no[3] += 0.5
    odd = MultiAgentDataset(**{**{k: getattr(ds, k) for k in ("states", "observations", "actions", "rewards",
                                                              "terminals", "timeouts")},
                               "next_states": ns, "next_observations": no}, meta=ds.meta)
    export_minari(odd, "offmarl/ant-4x2/odd-v0")
    assert_same_dataset(odd, read_minari("offmarl/ant-4x2/odd-v0"))


def test_minari_missing_id_fails_fast(minari_root, make_coordination_dataset, monkeypatch):
    connects = []

    def connect(sock, address):
        connects.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(DatasetError) as ei:
        read_minari("mujoco/ant/expert-v0")
    assert connects == []  # fails on the local lookup, without trying the network
    msg = str(ei.value)
    assert "mujoco/ant/expert-v0" in msg and "not found locally" in msg and str(minari_root) in msg
    assert "minari download" in msg and "offmarl datasets generate" in msg
    with pytest.raises(DatasetError, match="malformed"):
        export_minari(make_coordination_dataset(), "no version here")


# ------------------------------------------------------------------------- library side of the CLI
def test_convert_and_export(ant_eps, tmp_path, minari_root, assert_same_dataset, write_d4rl):
    src = tmp_path / "ant-medium-v2.hdf5"
    write_d4rl(src, ant_eps)
    out = tmp_path / "ant-po.h5"
    ds = convert(src, "d4rl", env="ant-4x2", obs="po", out=out)
    assert_same_dataset(ds, load_dataset_file(out))
    dest = export(out, "minari", "offmarl/ant-4x2/medium-v0")
    assert dest.is_dir()
    assert_same_dataset(ds, convert("offmarl/ant-4x2/medium-v0", "minari", env=None, obs=None))
    with pytest.raises(DatasetError, match="unknown source format"):
        convert(src, "rlds")
