"""Offline MARL baselines (offmarl/algos/{iql,ma_iql,bc,td3bc,matd3bc,cql,omar}.py).

Two small fixed datasets: the unfavourable coordination game (agent 0 mostly right, agent 1
mostly left; discrete) and 500 random-action transitions of the real Reacher 2x1 (continuous).
Networks are shrunk (2x32, batch 32) so that the whole file runs in well under a minute.
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from offmarl.data.dataset import MultiAgentDataset
from offmarl.data.generate import generate_coordination
from offmarl.driver import algorithm_module as algo_module
from offmarl.driver import real_env_evaluator, resolve_config
from offmarl.errors import OffmarlError
from offmarl.evaluation import evaluate_policy
from offmarl.loop import LoopConfig, train
from offmarl.nn.agents import JointActionCode
from offmarl.nn.layers import EnsembleMLP, PerAgentMLP
from offmarl.runs import RunDir

ALGOS = ["iql", "ma-iql", "ibc", "itd3bc", "matd3bc", "icql", "omar"]
LOSS_KEY = {"ibc": "bc_loss"}  # the others: critic_loss
DATASETS = ["coordination", "reacher"]


def coordination_dataset(size: int = 200, seed: int = 0) -> MultiAgentDataset:
    # the registry's coordination-unfavorable recipe (P(right) = 0.8 / 0.2), made small
    return generate_coordination((0.8, 0.2), size, seed, meta_fields={
        "name": "coordination-unfavorable", "ref_min_return": 0.0, "ref_max_return": 1.0})


@pytest.fixture(scope="module")
def datasets(reacher_random_dataset):
    return {"coordination": coordination_dataset(), "reacher": reacher_random_dataset}


def small_config(algo: str, **changes):
    mod = algo_module(algo)
    cfg = mod.Config()
    fields = {f.name for f in dataclasses.fields(cfg)}
    small = {"hidden": (32, 32), "batch_size": 32}
    if "normalize_reward" in fields:
        small["normalize_reward"] = False
    small.update(changes)
    return dataclasses.replace(cfg, **small)


def build(algo: str, ds, seed: int = 0, **changes):
    return algo_module(algo).Algorithm(ds, small_config(algo, **changes), "cpu", seed)


def run_updates(algo, start: int, n: int) -> list[dict]:
    return [algo.update(step) for step in range(start, start + n)]


def params_of(algo) -> dict:
    return {f"{name}.{k}": v.clone() for name, part in algo._parts().items() if isinstance(part, torch.nn.Module)
            for k, v in part.state_dict().items()}


# ----------------------------------------------------------------------------- every algorithm
@pytest.mark.parametrize("which", DATASETS)
@pytest.mark.parametrize("name", ALGOS)
def test_updates_reduce_the_loss(name, which, datasets):
    algo = build(name, datasets[which])
    key = LOSS_KEY.get(name, "critic_loss")
    losses = [float(m[key]) for m in run_updates(algo, 0, 200)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), (name, which, losses[:10], losses[-10:])


@pytest.mark.parametrize("name", ALGOS)
def test_continuous_actions_stay_in_the_box(name, datasets):
    ds = datasets["reacher"]
    algo = build(name, ds)
    run_updates(algo, 0, 20)
    gen = torch.Generator().manual_seed(0)
    obs = torch.as_tensor(ds.observations[:64]) * torch.linspace(1, 100, 64)[:, None, None]  # also far off-data
    for deterministic in (True, False):
        actions, logp = algo.policy.act(obs, None, None, deterministic, gen)
        assert actions.shape == (64, 2, 1) and actions.dtype == torch.float32
        assert logp.shape == (64, 2)
        assert torch.all(actions.abs() <= 1.0) and torch.isfinite(logp).all()


@pytest.mark.parametrize("name", ALGOS)
def test_discrete_actions_are_available(name, datasets):
    algo = build(name, datasets["coordination"])
    run_updates(algo, 0, 20)
    obs = torch.ones(8, 2, 1)
    only = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]]).repeat(2, 1)  # [8, 2]: the one allowed action
    avail = torch.nn.functional.one_hot(only, 2).bool()
    gen = torch.Generator().manual_seed(0)
    for deterministic in (True, False):
        actions, logp = algo.policy.act(obs, None, avail, deterministic, gen)
        assert actions.dtype == torch.long and actions.shape == (8, 2)
        assert torch.equal(actions, only)
        assert torch.allclose(logp, torch.zeros_like(logp), atol=1e-5)  # the only available action: p = 1


@pytest.mark.parametrize("which", DATASETS)
@pytest.mark.parametrize("name", ALGOS)
def test_same_seed_same_numbers_and_bit_exact_resume(name, which, datasets):
    ds = datasets[which]
    straight = build(name, ds, seed=3)
    straight_metrics = run_updates(straight, 0, 12)

    again = build(name, ds, seed=3)
    assert [{k: float(v) for k, v in m.items()} for m in run_updates(again, 0, 12)] == \
           [{k: float(v) for k, v in m.items()} for m in straight_metrics]

    first = build(name, ds, seed=3)
    run_updates(first, 0, 7)
    buf = io.BytesIO()
    torch.save({"algo": first.state_dict(), "gens": {k: g.get_state() for k, g in first.generators.items()}}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    resumed = build(name, ds, seed=99)  # a different seed: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["algo"])
    for k, g in resumed.generators.items():
        g.set_state(ckpt["gens"][k])
    tail = run_updates(resumed, 7, 5)
    assert [{k: float(v) for k, v in m.items()} for m in tail] == \
           [{k: float(v) for k, v in m.items()} for m in straight_metrics[7:]]
    want, got = params_of(straight), params_of(resumed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("which", DATASETS)
@pytest.mark.parametrize("name", ALGOS)
def test_end_to_end_training_writes_eval(name, which, datasets, tmp_path):
    ds = datasets[which]
    loop = LoopConfig(steps=50, eval_every=25, eval_episodes=2, final_eval_episodes=2, eval_envs=2,
                      log_every=10, checkpoint_every=25)
    algo = algo_module(name).Algorithm(ds, small_config(name, loop=loop), "cpu", 0)
    run = RunDir.create(tmp_path, name, ds.meta.name, 0, {"algo": name})
    try:
        result = train(algo, run, loop, real_env_evaluator(algo, ds.meta, 0, loop.eval_envs, "cpu"), "cpu")
    finally:
        run.close()
    saved = json.loads((run.path / "eval.json").read_text())
    assert saved["episodes"] == 2 and np.isfinite(saved["normalised_mean"])
    assert result["return_mean"] == saved["return_mean"]
    rows = run.metrics("train")
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float))
    assert run.has_checkpoint("latest")


@pytest.mark.parametrize("name", ALGOS)
def test_coordination_datasets_select_the_small_budget(name):
    cfg, applied = resolve_config(name, "coordination-unfavorable", None, None, [], None, {})
    assert applied == [f"coordination.yaml:{name}"]
    assert cfg.hidden == (64, 64) and cfg.loop.steps == 3000
    assert algo_module(name).Config().loop.steps == 1_000_000


# ----------------------------------------------------------------------------- specifics
@pytest.mark.slow
def test_centralised_iql_solves_unfavourable_coordination(datasets):
    """The MOMA-PPO paper's upper bound: one agent choosing the joint action agrees with itself."""
    for seed in (0, 1):
        algo = build("iql", datasets["coordination"], seed=seed, hidden=(64, 64), batch_size=64, lr=1e-3)
        run_updates(algo, 0, 600)
        res = evaluate_policy(algo.policy, "coordination", "fo", episodes=4, n_envs=4, ref_min=0.0, ref_max=1.0)
        assert res["normalised_mean"] == 1.0, seed


def test_iql_needs_full_observations(datasets):
    ds = datasets["reacher"]
    po = dataclasses.replace(ds, meta=dataclasses.replace(ds.meta, obs_scheme="po-independent"))
    with pytest.raises(OffmarlError, match="--obs fo"):
        build("iql", po)


def test_iql_refuses_huge_joint_action_spaces(datasets):
    with pytest.raises(OffmarlError, match="ma-iql"):
        build("iql", datasets["coordination"], max_joint_actions=3)


def test_joint_action_code_round_trip_and_marginals():
    code = JointActionCode(n_agents=3, n_actions=4, max_joint=64, where="test")
    actions = torch.tensor([[0, 0, 0], [3, 2, 1], [1, 0, 3]])
    assert torch.equal(code.decode(code.encode(actions)), actions)
    probs = torch.softmax(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), -1)
    marg = code.marginal_log_probs(probs.log(), actions[:2]).exp()
    grid = probs.view(2, 4, 4, 4)
    assert torch.allclose(marg[0, 0], grid[0, 0].sum()) and torch.allclose(marg[1, 2], grid[1, :, :, 1].sum())
    avail = torch.ones(1, 3, 4, dtype=torch.bool)
    avail[0, 1, 2] = False
    assert int(code.joint_avail(avail).sum()) == 64 - 16


@pytest.mark.parametrize("name", ["ibc", "itd3bc", "icql"])
def test_independent_learners_ignore_the_other_agents(name, datasets):
    """Agent 0's weights must not depend on agent 1's observations (no hidden coupling through
    batching, gradient clipping or normalisation)."""
    ds = datasets["reacher"]
    rng = np.random.default_rng(0)
    obs, next_obs = ds.observations.copy(), ds.next_observations.copy()
    obs[:, 1], next_obs[:, 1] = rng.normal(size=obs[:, 1].shape), rng.normal(size=obs[:, 1].shape)
    other = dataclasses.replace(ds, observations=obs, next_observations=next_obs)  # a fresh tensor cache
    a, b = build(name, ds), build(name, other)
    run_updates(a, 0, 10)
    run_updates(b, 0, 10)
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters()):
        assert pa.shape[0] == ds.meta.n_agents == 2  # every parameter is per agent
        assert torch.equal(pa[0], pb[0])
        assert not torch.equal(pa[1], pb[1])  # agent 1 saw other observations: it learnt otherwise


def test_per_agent_mlp_loads_checkpoints_of_the_former_ensemble_layout():
    """Baseline checkpoints written before the per-agent MLPs were merged hold an EnsembleMLP
    under ``net.hidden.<i>`` / ``net.out``; they load unchanged and compute the same function."""
    old = EnsembleMLP(3, 5, [8, 8], 2)
    state = {f"net.{k}": v for k, v in old.state_dict().items()}
    new = PerAgentMLP(3, 5, (8, 8), 2)
    new.load_state_dict(state)
    x = torch.randn(4, 7, 3, 5)  # [..., N, in]
    expected = old(x.reshape(-1, 3, 5).transpose(0, 1)).transpose(0, 1).reshape(4, 7, 3, 2)
    assert torch.equal(new(x), expected)
    assert torch.allclose(new(x[..., 1:2, :], members=slice(1, 2)), expected[..., 1:2, :])
