"""The analysis helpers of benchmarks/ that docs/ results rest on."""
import importlib.util
from pathlib import Path

import pytest
import torch

from offmarl.envs import make_env

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _RisingModel:
    """Each step adds ``dz`` to the torso height of every elite's prediction (elite 1 adds ``dz_other``)."""

    def __init__(self, dz: float, dz_other: float | None = None):
        self.dz, self.dz_other = dz, dz if dz_other is None else dz_other

    def encode_actions(self, a):
        return a.flatten(1)

    def step(self, s, a, generator=None, sample=False):
        nxt, other = s.clone(), s.clone()
        nxt[:, 0] += self.dz
        other[:, 0] += self.dz_other
        reward = torch.zeros(len(s), 1)
        means = torch.stack([torch.cat([nxt, reward], 1), torch.cat([other, reward], 1)])
        return {"next_states": nxt, "elite_means": means}


class _ZeroPolicy:
    def act(self, obs, hist, avail, deterministic, generator):
        return torch.zeros(obs.shape[0], obs.shape[1], 2), None


@pytest.mark.parametrize("dz, dz_other, any_elite, expected", [
    (0.1, None, False, 1.0),   # torso height 0.6 -> 1.1 within 6 steps: ant's rule ends every row
    (0.0, None, False, 0.0),   # stays at 0.6: healthy
    (0.0, 0.5, False, 0.0),    # only the other elite predicts a jump (1.1); the chosen one decides
    (0.0, 0.5, True, 1.0),     # ... unless any elite may end the row
])
def test_foresight_counts_rows_ended_by_the_env_rule(dz, dz_other, any_elite, expected):
    gap = _load("policy_model_gap")
    env = make_env("ant-4x2")
    try:
        start = torch.zeros(env.spec.state_dim)
        start[0] = 0.6
        start[1] = 1.0  # upright quaternion
        share = gap.foresight(env, _RisingModel(dz, dz_other), _ZeroPolicy(), start.numpy(), steps=8, rows=4,
                              sample=False, seed=0, any_elite=any_elite)
    finally:
        env.close()
    assert share == expected
