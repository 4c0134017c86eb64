"""The online MAG / MAMBA / MA-PPO engine on real SMAX battles (offmarl/algos/online.py,
offmarl/worldmodel/latent.py, offmarl/data/replay.py). Small sizes so the set stays fast; the
SMAX programs are compiled once per machine (JAX's persistent cache, see envs/smac.py)."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from offmarl.algos.online import OnlineAlgorithm, OnlineConfig
from offmarl.planners.mag import plan
from offmarl.worldmodel.latent import LatentLookahead, LatentModelConfig, imagine

torch.set_num_threads(1)  # small nets on a shared CPU: more threads only contend

TINY_MODEL = {"embed": 32, "deter": 32, "stoch_groups": 4, "stoch_classes": 4, "hidden": 32, "attn_heads": 2,
              "batch": 4, "seq_len": 10, "error_hidden": (32,)}


def tiny(algo: str = "mag", **kw) -> OnlineConfig:
    opts = {"n_envs": 4, "collect_steps": 40, "prefill_steps": 40, "model_updates": 2, "imagine_horizon": 4,
            "mappo_rollout": 10, **kw}
    cfg = OnlineConfig(algo=algo, model=LatentModelConfig(**TINY_MODEL), **opts)
    cfg.planner.l, cfg.planner.h = 3, 3
    cfg.mappo.actor_hidden = cfg.mappo.critic_hidden = (32,)
    cfg.mappo.minibatch_size = 64
    cfg.mappo.epochs = 1
    return cfg


@pytest.fixture(scope="module")
def collected():
    """An untrained MAG engine that has played ~300 real SMAX 2s3z steps into its replay."""
    algo = OnlineAlgorithm(None, tiny("mag", collect_steps=300), "cpu", seed=0)
    algo._reset()
    algo._collect_into_replay()
    return algo


def test_replay_episode_boundaries_and_dead_agents(collected):
    r = collected.replay
    assert len(r) >= 300 + 4  # + the first rows
    d, c = r.data, r.count
    for s in range(r.n_streams):
        first, term, alive, avail = d["first"][s, :c[s]], d["terminal"][s, :c[s]], d["alive"][s, :c[s]], \
            d["avail"][s, :c[s]]
        assert first[0]
        # a terminal row is always followed by the next episode's first row
        nxt = np.flatnonzero(term) + 1
        assert first[nxt[nxt < c[s]]].all()
        # dead agents stay dead within an episode (absorbing) and may only "stop"
        same_ep = ~first[1:]
        assert not (~alive[:-1] & alive[1:] & same_ep[:, None]).any()
        dead = ~alive
        assert (avail[dead][:, 4]).all() and not avail[dead][:, :4].any() and not avail[dead][:, 5:].any()
    assert d["terminal"].any(), "300 random-policy steps of 2s3z should finish at least one battle"
    b = r.sample(3, 10, torch.Generator().manual_seed(0))
    assert b["obs"].shape == (10, 3, 5, 127) and b["avail"].shape == (10, 3, 5, 10) and b["first"].shape == (10, 3)


def test_world_model_shapes_and_loss_falls(collected):
    model = copy.deepcopy(collected.model)
    g = torch.Generator().manual_seed(0)
    batch = collected.replay.sample(8, 10, g)
    out = model.observe(batch["obs"], batch["action"], batch["first"], g)
    d = model.cfg.feat
    assert out["feat"].shape == (10, 8, 5, d) and out["prior"].shape == (10, 8, 5, 4, 4)
    dec = model.decode(out["feat"][0])
    assert dec["obs"].shape == (8, 5, 127) and dec["avail"].shape == (8, 5, 10) and dec["reward"].shape == (8,)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _, _ = model.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


def posterior_starts(algo: OnlineAlgorithm, seed: int) -> torch.Tensor:
    """Posterior states [B*T, N, D] of 4 replayed sequences of 10 rows."""
    g = torch.Generator().manual_seed(seed)
    batch = algo.replay.sample(4, 10, g)
    with torch.no_grad():
        return algo.model.observe(batch["obs"], batch["action"], batch["first"], g)["feat"].flatten(0, 1)


def test_imagined_actions_never_predicted_unavailable(collected):
    algo = collected
    start = posterior_starts(algo, 1)
    out, _ = imagine(algo.model, algo.policy, start, 6, torch.Generator().manual_seed(1))
    taken = out["avail"].gather(-1, out["actions"][..., None]).squeeze(-1)
    assert taken.all()
    assert out["avail"].any(-1).all()  # the predicted mask is never empty
    # an untrained model predicts masks that differ from "everything available"
    assert not out["avail"].all()


def test_planner_picks_per_start_state(collected):
    """Candidate c of start b scores |(c - b) mod L| (R_m = first feature, h = 2): each start state must
    pick its own candidate b mod L, in one batched call."""
    algo = collected
    b_n, l_n, n, d = 7, 3, 5, algo.model.cfg.feat
    cand = torch.zeros(b_n, l_n, n, d)
    for b in range(b_n):
        for c in range(l_n):
            cand[b, c, :, 0] = (c - b) % l_n

    class FirstFeature(torch.nn.Module):
        transition = True

        def forward(self, feat, actions, next_obs, next_reward):
            return feat[..., 0].abs()

    world = LatentLookahead(algo.model, algo.policy, FirstFeature())
    idx, scores = plan(cand, None, world, h=2, generator=torch.Generator().manual_seed(0))
    assert idx.tolist() == [b % l_n for b in range(b_n)]
    assert scores.shape == (b_n, l_n)


def test_planner_l1_equals_plain_imagination_and_l3_replaces(collected):
    algo = collected
    start = posterior_starts(algo, 2)
    plain, _ = imagine(algo.model, algo.policy, start, 5, torch.Generator().manual_seed(7))
    one, _ = imagine(algo.model, algo.policy, start, 5, torch.Generator().manual_seed(7), l=1, select=algo._select)
    for k in plain:
        assert torch.equal(plain[k], one[k]), k
    three, info = imagine(algo.model, algo.policy, start, 5, torch.Generator().manual_seed(7), l=3,
                          select=algo._select)
    assert 0 < info["planner_frac_replaced"] <= 1 and info["planner_score_gain"] >= 0
    assert not torch.equal(plain["next_obs"], three["next_obs"])


def _run(algo: OnlineAlgorithm, iters: range) -> list[dict]:
    return [algo.update(i) for i in iters]


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def _named(name: str) -> OnlineConfig:
    if name == "mamba-latent":
        cfg = tiny("mamba", agent_input="latent")
        cfg.mappo.critic = "attention"
        return cfg
    if name == "mag-deviation":  # the planner scored by the distance from the prior's mean, own terms only
        cfg = tiny("mag")
        cfg.planner.score, cfg.planner.discount = "deviation", 0.0
        return cfg
    return tiny(name)


def test_deviation_scored_planner_trains_no_error_model(tmp_path):
    """planner.score=deviation online: the planner chooses (some candidates replaced) with the
    label-free LatentDeviationScore; no R_m is trained or checkpointed."""
    from offmarl.worldmodel.error_model import LatentDeviationScore

    algo = OnlineAlgorithm(None, _named("mag-deviation"), "cpu", seed=2)
    assert isinstance(algo.error_model, LatentDeviationScore) and not algo.trains_error_model
    rows = _run(algo, range(2))
    assert not any("error_model_loss" in r for r in rows)
    assert any(r.get("planner_frac_replaced", 0) > 0 for r in rows)
    assert "error_model" not in algo.state_dict()


@pytest.mark.parametrize("name", ["mag", "mag-deviation", "mappo", "mamba-latent"])
def test_same_seed_same_numbers_and_exact_resume(name, tmp_path):
    """Two runs with one seed agree; a run checkpointed after 2 iterations and resumed in a fresh
    process-like object continues with the same metrics as the uninterrupted run."""
    whole = _numbers(_run(OnlineAlgorithm(None, _named(name), "cpu", seed=3), range(3)))
    again = OnlineAlgorithm(None, _named(name), "cpu", seed=3)
    first = _numbers(_run(again, range(2)))
    assert first == whole[:2]
    assert any("policy_loss" in r for r in whole)
    path = tmp_path / "ckpt.pt"
    torch.save({"algo": again.state_dict(), "gens": {k: g.get_state() for k, g in again.generators.items()}}, path)
    ckpt = torch.load(path, weights_only=False)
    resumed = OnlineAlgorithm(None, _named(name), "cpu", seed=3)
    resumed.load_state_dict(ckpt["algo"])
    for k, g in resumed.generators.items():
        g.set_state(ckpt["gens"][k])
    assert _numbers(_run(resumed, range(2, 3))) == whole[2:]


def test_update_per_episode_runs_one_update_per_finished_episode():
    """MAMBA's schedule (``update_per: episode``): as many model + PPO updates as real episodes ended."""
    algo = OnlineAlgorithm(None, tiny("mamba", collect_steps=200, update_per="episode"), "cpu", seed=1)
    seen = []
    for step in range(3):
        before, ppo_before = algo.episodes, algo.mappo.iterations
        m = algo.update(step)
        if "updates" in m:
            assert m["updates"] == algo.episodes - before
            assert algo.mappo.iterations - ppo_before == m["updates"] * algo.cfg.ppo_rounds
            seen.append(m["updates"])
    assert seen and max(seen) >= 2  # 50 steps per copy end several SMAX episodes


# -- MAMBA fidelity: dead agents, continuation, per-agent PPO ------------------------------------
def test_dead_agent_observation_changes_no_loss(collected):
    """Agent 0 dead from row 4 on: whatever its observation there, every loss term is the same."""
    model = copy.deepcopy(collected.model)
    batch = collected.replay.sample(6, 10, torch.Generator().manual_seed(5))
    batch["alive"] = batch["alive"].clone()
    batch["alive"][4:, :, 0] = False
    _, base, _ = model.loss(batch, torch.Generator().manual_seed(9))
    other = dict(batch, obs=batch["obs"].clone())
    other["obs"][4:, :, 0] = torch.randn(other["obs"][4:, :, 0].shape, generator=torch.Generator().manual_seed(1))
    _, changed, _ = model.loss(other, torch.Generator().manual_seed(9))
    for k in base:
        assert torch.equal(base[k], changed[k]), k
    # a living agent's observation does change the loss (the check above can fail)
    other["obs"][:, :, 1] += 1.0
    _, living, _ = model.loss(other, torch.Generator().manual_seed(9))
    assert living["obs_loss"] != base["obs_loss"]


def test_previous_action_is_zeros_at_episode_start(collected):
    """The action before a ``first`` row does not reach that row's state."""
    model = collected.model
    batch = collected.replay.sample(3, 10, torch.Generator().manual_seed(2))
    first = batch["first"].clone()
    first[5] = True
    actions = batch["action"].clone()
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    with torch.no_grad():
        a = model.observe(batch["obs"], actions, first, g(), alive=batch["alive"])["feat"]
        actions[4] = (actions[4] + 1) % model.k
        b = model.observe(batch["obs"], actions, first, g(), alive=batch["alive"])["feat"]
    assert torch.equal(a[5:], b[5:])
    actions[3] = (actions[3] + 1) % model.k  # within an episode the previous action matters
    with torch.no_grad():
        c = model.observe(batch["obs"], actions, first, g(), alive=batch["alive"])["feat"]
    assert not torch.equal(b[4], c[4])


def _cont_bias(model, value: float):
    model = copy.deepcopy(model)
    with torch.no_grad():
        last = model.cont_head[-1]
        last.weight.zero_()
        last.bias.fill_(value)
    return model


def test_model_that_predicts_termination_ends_imagined_battles(collected):
    algo = collected
    start = posterior_starts(algo, 3)
    ending = _cont_bias(algo.model, -10.0)  # every agent's continuation ~0: the battle ends at once
    out, info = imagine(ending, algo.policy, start, 5, torch.Generator().manual_seed(1))
    assert info["imagined_valid_frac"] == pytest.approx(1 / 5)
    assert out["dones"][0].all() and not out["valid"][1:].any()
    going = _cont_bias(algo.model, 10.0)  # ~1: no battle ends, the discount is the probability
    out, info = imagine(going, algo.policy, start, 5, torch.Generator().manual_seed(1))
    assert info["imagined_valid_frac"] == 1.0 and not out["dones"].any()
    assert torch.allclose(out["discounts"], torch.sigmoid(torch.tensor(10.0)).expand_as(out["discounts"]))


def test_gae_soft_discount():
    from offmarl.algos.mappo import compute_gae
    g = torch.Generator().manual_seed(0)
    r, v, nv = (torch.randn(6, 3, generator=g) for _ in range(3))
    z = torch.zeros(6, 3, dtype=torch.bool)
    ok = torch.ones(6, 3, dtype=torch.bool)
    plain = compute_gae(r, v, nv, z, z, ok, 0.99, 0.95)
    ones = compute_gae(r, v, nv, z, z, ok, 0.99, 0.95, torch.ones(6, 3))
    half = compute_gae(r, v, nv, z, z, ok, 0.99, 0.95, torch.full((6, 3), 0.5))
    assert torch.allclose(plain[0], ones[0])
    assert torch.allclose(half[0], compute_gae(r, v, nv, z, z, ok, 0.495, 0.95)[0])


def test_online_ppo_clips_per_agent_and_offline_keeps_joint_ratio():
    from offmarl.algos.mappo import MAPPO, MAPPOConfig
    from offmarl.envs.base import EnvSpec
    assert MAPPOConfig().joint_ratio and not MAPPOConfig().entropy_per_agent  # offline MOMA-PPO unchanged
    online = OnlineConfig().mappo
    assert not online.joint_ratio and online.entropy_per_agent
    n, o, k, h, b = 3, 4, 5, 4, 8
    spec = EnvSpec(name="toy", n_agents=n, obs_dims=(o,) * n, state_dim=n * o, discrete=True,
                   action_dims=(k,) * n, episode_limit=10, obs_scheme="fo")
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(h, b, n, o, generator=g)
    metrics = {}
    for joint in (True, False):
        torch.manual_seed(0)
        cfg = dataclasses.replace(online, joint_ratio=joint, entropy_per_agent=not joint, epochs=1,
                                  minibatch_size=10_000, actor_hidden=(8,), critic_hidden=(8,))
        agent = MAPPO(spec, cfg)
        actions, logp = agent.policy.act(obs.flatten(0, 1), None, None, deterministic=False,
                                         generator=torch.Generator())
        actions, logp = actions.view(h, b, n), logp.view(h, b, n).clone()
        logp[..., 0] += 1.0  # agent 0's ratio e^-1: outside the clip range; the others' ratio 1
        batch = {"obs": obs, "states": obs.flatten(-2), "actions": actions, "logp": logp,
                 "rewards": torch.randn(h, b, generator=g), "dones": torch.zeros(h, b, dtype=torch.bool),
                 "timeouts": torch.zeros(h, b, dtype=torch.bool), "valid": torch.ones(h, b, dtype=torch.bool),
                 "next_obs": obs, "next_states": obs.flatten(-2)}
        metrics[joint] = agent.update(batch, torch.Generator().manual_seed(1))
    assert metrics[True]["clip_frac"] == 1.0  # the joint ratio carries agent 0's deviation to every row
    assert metrics[False]["clip_frac"] == pytest.approx(1 / n)  # per agent: only agent 0 is clipped
    # MAMBA's entropy (second run) is the mean over agents: 1/N of the joint (summed) entropy
    assert metrics[False]["entropy"] == pytest.approx(metrics[True]["entropy"] / n, rel=1e-5)


# -- latent agents (MAMBA: actor and critic on the model's features) ----------------------------
def test_latent_agents_read_features_and_saved_policy_evaluates_with_only_the_env(tmp_path):
    from offmarl.evaluation import evaluate_policy
    cfg = _named("mamba-latent")
    algo = OnlineAlgorithm(None, cfg, "cpu", seed=4)
    _run(algo, range(2))
    n, d = algo.spec.n_agents, cfg.model.feat
    assert algo.mappo.policy.obs_dim == d  # the actor reads features
    g = torch.Generator().manual_seed(0)
    batch = algo.replay.sample(2, 10, g)
    with torch.no_grad():
        start = algo.model.observe(batch["obs"], batch["action"], batch["first"], g, alive=batch["alive"])["feat"]
    out, _ = imagine(algo.model, algo.mappo.policy, start.flatten(0, 1), 3, g, features=True)
    assert out["obs"].shape == (3, 20, n, d) and out["states"].shape == (3, 20, n * d)
    assert torch.equal(out["obs"][0], start.flatten(0, 1))  # the posterior start, then prior features
    assert algo.mappo.values(out["states"][0], out["obs"][0]).shape == (20,)  # attention critic over agents
    # the checkpoint's policy acts from real observations alone: model + actor restored
    path = tmp_path / "ckpt.pt"
    torch.save(algo.state_dict(), path)
    ev = OnlineAlgorithm.for_evaluation(None, cfg, "cpu", seed=4)
    ev.load_state_dict(torch.load(path, weights_only=False))
    obs, avail = batch["obs"][0], batch["avail"][0]
    algo.policy.reset_state()
    a1, l1 = algo.policy.act(obs, None, avail, True, torch.Generator().manual_seed(1))
    a2, l2 = ev.policy.act(obs, None, avail, True, torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2) and torch.equal(l1, l2)
    assert torch.equal(algo.policy.state[0], ev.policy.state[0])
    collecting = [t.clone() for t in algo.collector.state]
    res = evaluate_policy(ev.policy, "smac-2s3z", "local", episodes=2, n_envs=2, seed=0,
                          env_kwargs={"backend": "smax"})
    assert len(res["returns"]) == 2 and all(np.isfinite(res["returns"])) and 0 <= res["win_rate"] <= 1
    # evaluating the run's own policy leaves the collection's recurrent state (its open episodes) alone
    evaluate_policy(algo.policy, "smac-2s3z", "local", episodes=2, n_envs=2, seed=0, env_kwargs={"backend": "smax"})
    assert all(torch.equal(a, b) for a, b in zip(collecting, algo.collector.state))
