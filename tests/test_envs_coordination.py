import numpy as np
import pytest

from offmarl.envs import EnvError, make_env


def test_payoffs():
    env = make_env("coordination")
    for a0 in (0, 1):
        for a1 in (0, 1):
            obs, state, _ = env.reset(seed=0)
            assert obs.shape == (2, 1) and state.shape == (1,)
            _, _, r, term, trunc, _ = env.step(np.array([a0, a1]))
            assert r == (1.0 if a0 == a1 else 0.0)
            assert term and not trunc


def test_one_step_episodes_and_errors():
    env = make_env("coordination")
    env.reset()
    env.step(np.array([0, 0]))
    with pytest.raises(EnvError, match="reset"):
        env.step(np.array([0, 0]))
    env.reset()
    with pytest.raises(EnvError, match="0 \\(left\\) or 1"):
        env.step(np.array([0, 2]))
    assert env.avail_actions().all()
    assert env.spec.discrete and env.spec.n_actions == 2 and env.spec.episode_limit == 1
