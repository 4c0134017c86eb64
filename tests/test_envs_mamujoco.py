"""MaMuJoCo scenarios under every observation scheme, against MaMuJoCo's own maps."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from offmarl.envs import EnvError, make_env
from offmarl.envs.mamujoco import SCENARIOS, MaMuJoCoEnv


def _random_actions(spec, rng):
    return rng.uniform(-1, 1, (spec.n_agents, spec.max_action_dim))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scheme_resets_and_steps(name):
    rng = np.random.default_rng(0)
    for scheme in MaMuJoCoEnv(name).spec.obs_schemes:
        env = make_env(name, obs=scheme)
        obs, state, _ = env.reset(seed=0)
        assert obs.shape == (env.spec.n_agents, env.spec.max_obs_dim)
        assert state.shape == (env.spec.state_dim,)
        for _ in range(3):
            obs, state, r, term, trunc, _ = env.step(_random_actions(env.spec, rng))
            assert np.isfinite(r) and obs.shape[0] == env.spec.n_agents
            np.testing.assert_array_equal(obs, env.observe(state[None])[0])
        env.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fo_obs_is_state(name):
    env = make_env(name, obs="fo")
    obs, state, _ = env.reset(seed=1)
    obs, state, *_ = env.step(_random_actions(env.spec, np.random.default_rng(1)))
    for i in range(env.spec.n_agents):
        np.testing.assert_array_equal(obs[i], state)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_local_obs_is_mamujocos_own(name):
    """`local` is MaMuJoCo's local observation: equal to map_global_state_to_local_observations
    of the state (where MaMuJoCo has that map), and to the live obs MaMuJoCo builds from the
    simulator, except Hopper/Walker2d whose Gymnasium state clips joint velocities to +-10
    while MaMuJoCo's live local obs reads the unclipped qvel (docs/environments.md)."""
    env = make_env(name, obs="local")
    rng = np.random.default_rng(2)
    env.reset(seed=2)
    for _ in range(20):
        obs, state, *_ = env.step(_random_actions(env.spec, rng))
        fac = env._env.observation_factorization
        if fac is not None:
            mapped = env._env.map_global_state_to_local_observations(state)
            for i, a in enumerate(env.agents):
                np.testing.assert_allclose(obs[i, : len(mapped[a])], mapped[a])
        live = env.local_observations_from_mamujoco()
        if name.split("-")[0] in ("hopper", "walker2d"):
            qvel_ok = np.all(np.abs(env.mujoco_data.qvel) < 10)
            if not qvel_ok:
                continue
        np.testing.assert_allclose(obs, live, atol=1e-12)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_action_round_trip_matches_mamujoco(name):
    env = MaMuJoCoEnv(name)
    g = np.random.default_rng(3).uniform(-1, 1, (5, env.global_action_dim))
    local = env.to_local_actions(g)
    np.testing.assert_array_equal(env.to_global_actions(local), g)
    for b in range(5):
        theirs = env._env.map_global_action_to_local_actions(g[b])
        for i, a in enumerate(env.agents):
            np.testing.assert_array_equal(local[b, i, : env.action_dims[i]], theirs[a])
        per_agent = {a: local[b, i, : env.action_dims[i]] for i, a in enumerate(env.agents)}
        back = env._env.map_local_actions_to_global_action(per_agent)
        np.testing.assert_array_equal(back, g[b])


def test_ant_po_index_lists_exact():
    env = make_env("ant-4x2", obs="po")
    assert env.spec.obs_dims == (15, 4, 4, 4)
    assert env.spec.state_dim == 27
    # agent 0: torso z + quaternion (0-4), own hip1/ankle1 angles (5, 6), torso linear and
    # angular velocity (13-18), own joint velocities (19, 20); agents 1-3: own joints only.
    assert env.obs_index["po"] == [
        [0, 1, 2, 3, 4, 5, 6, 13, 14, 15, 16, 17, 18, 19, 20],
        [7, 8, 21, 22],
        [9, 10, 23, 24],
        [11, 12, 25, 26],
    ]
    # ownership agrees with MaMuJoCo: agent i drives hip(i+1), ankle(i+1)
    parts = [[j.label for j in p] for p in env._env.agent_action_partitions]
    assert parts == [["hip1", "ankle1"], ["hip2", "ankle2"], ["hip3", "ankle3"], ["hip4", "ankle4"]]


def test_ant_local_dims_without_contact_forces():
    env = make_env("ant-4x2", obs="local")
    assert env.spec.obs_dims == (18, 18, 18, 18) and env.spec.state_dim == 27


def test_reacher_po_schemes():
    ind = make_env("reacher-2x1", obs="po-independent")
    lead = make_env("reacher-2x1", obs="po-leader")
    assert ind.spec.obs_dims == (5, 5) and lead.spec.obs_dims == (8, 6)
    # state: cos q0, cos q1, sin q0, sin q1, target x, y, qvel0, qvel1, fingertip-target x, y
    assert ind.obs_index["po-independent"] == [[0, 2, 6, 4, 5], [1, 3, 7, 4, 5]]
    assert lead.obs_index["po-leader"] == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 6, 7]]
    assert make_env("reacher-2x1", obs="po").spec.obs_scheme == "po-independent"


def test_observe_batched_numpy_and_torch():
    env = make_env("ant-4x2", obs="po")
    states = np.random.default_rng(0).normal(size=(7, 27))
    out_np = env.observe(states)
    out_t = env.observe(torch.as_tensor(states))
    assert out_np.shape == (7, 4, 15)
    np.testing.assert_allclose(out_t.numpy(), out_np)
    assert np.all(out_np[:, 1:, 4:] == 0)  # zero padding past the true widths


def test_seeding_gives_identical_episodes():
    def episode(seed):
        env = make_env("ant-4x2", obs="fo")
        rng = np.random.default_rng(5)
        _, s, _ = env.reset(seed=seed)
        states = [s]
        for _ in range(10):
            states.append(env.step(_random_actions(env.spec, rng))[1])
        return np.array(states)

    np.testing.assert_array_equal(episode(11), episode(11))
    assert not np.array_equal(episode(11), episode(12))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(EnvError, match="po.*not available for halfcheetah-2x3"):
        make_env("halfcheetah-2x3", obs="po")
    with pytest.raises(EnvError, match="Did you mean: ant-4x2"):
        make_env("ant-4x3")
    env = make_env("ant-4x2")
    env.reset(seed=0)
    with pytest.raises(EnvError, match="shape"):
        env.step(np.zeros((4, 3)))
    with pytest.raises(EnvError, match="NaN"):
        env.step(np.full((4, 2), np.nan))


@pytest.mark.parametrize("name", ["ant-4x2", "hopper-3x1", "walker2d-2x3", "reacher-2x1", "halfcheetah-2x3"])
def test_termination_rule_matches_the_live_env(name):
    """env.terminated(next_state) == the env's own `terminated` flag on random-action episodes
    (hopper and walker fall within tens of steps; ant and the others must never disagree)."""
    env = make_env(name)
    rng = np.random.default_rng(0)
    seen_terminal, steps = 0, 0
    for ep in range(6 if name != "ant-4x2" else 2):
        env.reset(seed=ep)
        for _ in range(200):
            a = rng.uniform(-1, 1, (env.spec.n_agents, env.spec.max_action_dim))
            _, s, _, term, trunc, _ = env.step(a)
            steps += 1
            assert bool(env.terminated(s[None])[0]) == term, (name, steps)
            assert bool(env.terminated(torch.as_tensor(s[None]))[0]) == term
            seen_terminal += term
            if term or trunc:
                break
    if name in ("hopper-3x1", "walker2d-2x3"):
        assert seen_terminal > 0  # the test saw the rule fire
    env.close()


def test_ant_termination_rule_on_constructed_states():
    env = make_env("ant-4x2")
    _, s, _ = env.reset(seed=0)
    states = np.repeat(s[None], 4, 0)
    states[1, 0] = 1.05  # torso too high (a jump)
    states[2, 0] = 0.1   # torso on the ground
    states[3, 5] = np.nan
    np.testing.assert_array_equal(env.terminated(states), [False, True, True, True])
    assert env.has_termination_rule and not make_env("coordination").has_termination_rule


def test_halfcheetah_leaves_no_mujoco_log_and_is_gymnasiums_model(tmp_path, monkeypatch):
    """Built without the deprecated ``settotalmass`` compiler attribute (which makes MuJoCo write
    MUJOCO_LOG.TXT into the working directory), scaled to the same total mass: the same model
    arrays and trajectories as Gymnasium's own HalfCheetah-v5."""
    monkeypatch.chdir(tmp_path)
    env = make_env("halfcheetah-2x3")
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")  # Gymnasium's own model still logs the deprecation here
    ref = gym.make("HalfCheetah-v5")
    m, m_ref = env._single.unwrapped.model, ref.unwrapped.model
    assert np.array_equal(m.body_mass, m_ref.body_mass) and np.array_equal(m.body_inertia, m_ref.body_inertia)
    assert np.array_equal(m.dof_invweight0, m_ref.dof_invweight0)
    _, state, _ = env.reset(seed=3)
    obs, _ = ref.reset(seed=3)
    assert np.array_equal(state, obs)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(-1, 1, 6)
        _, state, r, *_ = env.step(env.to_local_actions(a))
        obs, r_ref, *_ = ref.step(a)
        assert np.array_equal(state, obs) and r == r_ref
