"""CUDA correctness (issue 16); the whole module is skipped without a CUDA device.

With the same weights, inputs and seed, the ensemble world model, a model rollout and an MA-PPO
update give finite results on CUDA that are close to the CPU's; and nothing inside
``model_rollout``'s step loop waits for the device (the number of host<->device synchronisations
does not grow with the horizon). Data: a small ant-medium generated with the real MaMuJoCo ant.

CPU and CUDA random generators draw different numbers from the same seed, so the step-by-step
comparison of a rollout removes every random draw: the policy's mode instead of a sample, and
one elite listed twice (the random elite pick then always lands on the same member).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

from offmarl.algos.mappo import MAPPO, MAPPOConfig
from offmarl.data.registry import build
from offmarl.envs import make_env
from offmarl.planners.mag import MAGPlanner
from offmarl.worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from offmarl.worldmodel.error_model import ErrorModel
from offmarl.worldmodel.rollout import RolloutConfig, dataset_box, model_rollout
from offmarl.worldmodel.scorers import ErrorModelScorer, UncertaintyScorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ant():
    """(dataset, env, world model fitted on the CPU, MA-PPO with the data's normalisers, on the CPU)."""
    ds = build("ant-medium", size=600, seed=0, n_envs=4)
    env = make_env(ds.meta.env, obs=ds.meta.obs_scheme)
    torch.manual_seed(0)
    model = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(max_steps=200, eval_every=100))
    model.fit(ds, device=CPU)
    mappo = MAPPO.from_spec(env.spec, MAPPOConfig(), CPU)
    t = ds.tensors(CPU)
    mappo.update_normalisers(t["observations"], t["states"])
    yield ds, env, model.eval(), mappo
    env.close()


class PolicyMode:
    """The policy's mode: a rollout without random actions, comparable across devices."""

    def __init__(self, policy):
        self.policy = policy

    def act(self, obs, hist, avail=None, deterministic=False, generator=None):
        return self.policy.act(obs, hist, avail, deterministic=True)

    def env_actions(self, actions):
        return self.policy.env_actions(actions)


def on(device: torch.device, ds, model, mappo):
    """Copies of the world model and the MA-PPO agents on ``device``, and the dataset's box there."""
    return copy.deepcopy(model).to(device), copy.deepcopy(mappo).to(device), dataset_box(ds, device)


def rollout(ds, env, model, policy, box, device, b=256, horizon=10, planner=None, seed=0):
    start = {"states": ds.tensors(device)["states"][:b]}
    cfg = RolloutConfig(horizon=horizon, eps_g_threshold=1e9)
    gen = torch.Generator(device=device).manual_seed(seed)
    return model_rollout(model, policy, start, env.observe, cfg, box, gen, done_fn=env.terminated, gamma=0.99,
                         planner=planner)


def test_ensemble_predict_and_gradients_on_cuda_match_cpu(ant):
    ds, _, model, _ = ant
    gpu = copy.deepcopy(model).to(CUDA)
    t = ds.tensors(CPU)
    s, joint = t["states"][:256], model.encode_actions(t["actions"][:256])
    for c, g in zip(model.predict(s, joint), gpu.predict(s.to(CUDA), joint.to(CUDA))):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-4)

    # forward + backward of the vectorised layer stack on the same standardised batch
    x = model.input_norm(torch.cat([s, joint], -1)).expand(model.config.members, -1, -1)
    y = (t["next_states"][:256] - s).expand(model.config.members, -1, -1)
    grads = []
    for net, dev in ((copy.deepcopy(model.net), CPU), (copy.deepcopy(model.net).to(CUDA), CUDA)):
        loss = (net(x.to(dev))[..., :model.state_dim] - y.to(dev)).square().mean()
        loss.backward()
        grads.append([p.grad.cpu() for p in net.parameters()])
    for c, g in zip(*grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, c, rtol=1e-3, atol=1e-5)


def test_rollout_on_cuda_matches_cpu(ant):
    ds, env, model, mappo = ant
    runs = []
    for dev in (CPU, CUDA):
        m, a, box = on(dev, ds, model, mappo)
        best = int(model.holdout_mse.argmin())
        m.elite_idx = torch.tensor([best, best], device=dev)  # every random elite pick lands on the same member
        runs.append(rollout(ds, env, m, PolicyMode(a.policy), box, dev)[0])
    cpu, gpu = runs
    assert cpu["valid"].sum() > cpu["valid"].shape[1], "the comparison needs rollouts that last more than a step"
    torch.testing.assert_close(gpu["valid"].cpu(), cpu["valid"])
    v = cpu["valid"]
    for key in ("states", "next_states", "actions", "raw_rewards", "rewards"):
        assert torch.isfinite(gpu[key]).all(), key
        torch.testing.assert_close(gpu[key].cpu()[v], cpu[key][v], rtol=1e-3, atol=1e-3, msg=key)


@pytest.mark.parametrize("planned", [False, True])
def test_stochastic_rollout_on_cuda_is_finite_and_repeatable(ant, planned):
    ds, env, model, mappo = ant
    m, a, box = on(CUDA, ds, model, mappo)
    planner = MAGPlanner(UncertaintyScorer(), l=4, h=4) if planned else None
    (b1, info1), (b2, _) = (rollout(ds, env, m, a.policy, box, CUDA, planner=planner, seed=3) for _ in range(2))
    for key, v in b1.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), key
        torch.testing.assert_close(b2[key], v, msg=key)
    assert all(torch.isfinite(torch.tensor(float(x))) for x in info1.values()), info1


def count_syncs(fn) -> int:
    """Host<->device synchronisations during ``fn()`` (torch's sync debug mode, one warning each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("scorer", [None, "uncertainty", "error_model"])
def test_no_host_device_sync_inside_the_rollout_loop(ant, scorer):
    """The summary after the loop syncs a fixed number of times; a sync per step would grow with H."""
    ds, env, model, mappo = ant
    m, a, box = on(CUDA, ds, model, mappo)
    planner = None
    if scorer == "uncertainty":
        planner = MAGPlanner(UncertaintyScorer(), l=4, h=4)
    elif scorer == "error_model":
        rm = ErrorModel(m.state_dim, m.joint_action_dim).to(CUDA)  # unfitted: the same kernels as a fitted R_m
        planner = MAGPlanner(ErrorModelScorer(rm), l=4, h=4)
    rollout(ds, env, m, a.policy, box, CUDA, horizon=2, planner=planner)  # warm-up (lazy caches, allocator)
    short = count_syncs(lambda: rollout(ds, env, m, a.policy, box, CUDA, horizon=2, planner=planner))
    long = count_syncs(lambda: rollout(ds, env, m, a.policy, box, CUDA, horizon=8, planner=planner))
    assert short > 0, "the sync counter saw nothing: the summary's float() calls should have been counted"
    assert long == short, f"{long - short} more host<->device syncs for 6 more steps: something in the loop syncs"


def test_mappo_update_on_cuda_matches_cpu(ant):
    ds, env, model, mappo = ant
    # one epoch, one minibatch: every metric comes from identical weights and rows on both devices
    cfg = dataclasses.replace(MAPPOConfig(), epochs=1, minibatch_size=10 ** 6)
    torch.manual_seed(1)
    cpu = MAPPO.from_spec(env.spec, cfg, CPU)
    t = ds.tensors(CPU)
    cpu.update_normalisers(t["observations"], t["states"])
    gpu = copy.deepcopy(cpu).to(CUDA)
    m, _, box = on(CPU, ds, model, mappo)
    best = int(model.holdout_mse.argmin())
    m.elite_idx = torch.tensor([best, best])
    batch, _ = rollout(ds, env, m, PolicyMode(cpu.policy), box, CPU)  # logp of the updating agent's policy
    out_c = cpu.update(batch, torch.Generator().manual_seed(0))  # a CPU generator: the same row order for both
    out_g = gpu.update({k: v.to(CUDA) for k, v in batch.items()}, torch.Generator().manual_seed(0))
    assert out_g["n_valid"] == out_c["n_valid"]
    for key, value in out_c.items():
        assert out_g[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    # one Adam step moves each weight by about +-lr; only weights whose gradient is at float noise may differ
    for pc, pg in zip(cpu.policy.parameters(), gpu.policy.parameters()):
        assert torch.isfinite(pg).all()
        off = (pg.detach().cpu() - pc.detach()).abs() > 1e-5
        assert off.float().mean() < 1e-3

    # the default update (5 epochs, several Adam steps) on CUDA: finite
    agent = copy.deepcopy(cpu).to(CUDA)
    agent.cfg = MAPPOConfig()
    out = agent.update({k: v.to(CUDA) for k, v in batch.items()}, torch.Generator(device=CUDA).manual_seed(0))
    assert all(torch.isfinite(torch.tensor(float(v))) for v in out.values())
    assert all(torch.isfinite(p).all() for p in agent.policy.parameters())
