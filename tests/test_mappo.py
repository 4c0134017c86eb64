"""MA-PPO: GAE by hand, action masks, log-probabilities, learning on two toy games,
determinism, bit-for-bit resume, shapes of every network variant, presets."""
import copy
import io
import math

import pytest
import torch

from offmarl.algos.mappo import MAPPO, MAPPOConfig, RunningNorm, compute_gae
from offmarl.envs.base import EnvSpec
from offmarl.errors import OffmarlError
from offmarl.nn.history import HistoryEncoder

TINY = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), history_dim=8, history_heads=2, minibatch_size=16)


def make_spec(discrete: bool, n=3, obs_dims=(5, 4, 5), action_dims=(3, 2, 3), state_dim=7) -> EnvSpec:
    return EnvSpec(name="toy", n_agents=n, obs_dims=obs_dims, state_dim=state_dim, discrete=discrete,
                   action_dims=action_dims, episode_limit=10, obs_scheme="fo")


def make_inputs(spec: EnvSpec, batch: int, history_len: int, gen: torch.Generator):
    n, o, a = spec.n_agents, spec.max_obs_dim, spec.max_action_dim
    obs = torch.randn(batch, n, o, generator=gen)
    hist = None
    if history_len:
        acts = (torch.randint(0, a, (batch, history_len, n), generator=gen) if spec.discrete
                else torch.randn(batch, history_len, n, a, generator=gen))
        hist = {"hist_obs": torch.randn(batch, history_len, n, o, generator=gen), "hist_actions": acts,
                "hist_mask": torch.rand(batch, history_len, generator=gen) > 0.3}
        hist["hist_mask"][0] = False  # one row with an empty history (episode start)
    avail = None
    if spec.discrete:
        avail = torch.rand(batch, n, a, generator=gen) > 0.4
        avail[..., 0] = True
    return obs, hist, avail


def make_batch(agent: MAPPO, h: int, b: int, gen: torch.Generator) -> dict:
    spec = agent.spec
    obs, hist, avail = make_inputs(spec, h * b, agent.cfg.history_len, gen)
    actions, logp = agent.policy.act(obs, hist, avail, generator=gen)
    grid = lambda x: x.reshape(h, b, *x.shape[1:])
    batch = dict(states=torch.randn(h, b, spec.state_dim, generator=gen), obs=grid(obs), actions=grid(actions),
                 logp=grid(logp), rewards=torch.randn(h, b, generator=gen), dones=torch.zeros(h, b),
                 timeouts=torch.zeros(h, b), valid=torch.ones(h, b, dtype=torch.bool),
                 next_states=torch.randn(h, b, spec.state_dim, generator=gen),
                 next_obs=torch.randn(h, b, spec.n_agents, spec.max_obs_dim, generator=gen))
    batch["dones"][-1, 0] = 1
    batch["timeouts"][-1, 1] = 1
    batch["valid"][-1, 2] = False
    if hist is not None:
        batch.update({k: grid(v) for k, v in hist.items()})
    if avail is not None:
        batch["avail"] = grid(avail)
    return batch


# ---------------------------------------------------------------------------------------------
def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.5
    # column 0: done at t=1; column 1: time-out at t=1, padding at t=2
    rewards = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 5.0]])
    values = torch.tensor([[0.5, 2.0], [1.0, 1.0], [1.5, 0.0]])
    next_values = torch.tensor([[1.0, 1.0], [1.5, 3.0], [2.0, 7.0]])
    dones = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    timeouts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    # column 0: d2 = 3 + .9*2 - 1.5 = 3.3 (last step bootstraps); d1 = 2 - 1 = 1 (done: no
    # bootstrap, trace cut); d0 = 1 + .9*1 - .5 = 1.4 -> A0 = 1.4 + .45*1 = 1.85
    # column 1: t=2 padding -> 0; d1 = 1 + .9*3 - 1 = 2.7 (time-out: bootstrap, trace cut);
    # d0 = 1 + .9*1 - 2 = -.1 -> A0 = -.1 + .45*2.7 = 1.115
    want_adv = torch.tensor([[1.85, 1.115], [1.0, 2.7], [3.3, 0.0]])
    want_ret = torch.tensor([[2.35, 3.115], [2.0, 3.7], [4.8, 0.0]])
    adv, ret = compute_gae(rewards, values, next_values, dones, timeouts, valid, gamma, lam)
    torch.testing.assert_close(adv, want_adv)
    torch.testing.assert_close(ret, want_ret)
    # a valid step followed by padding is a time-out even when not flagged as one
    adv2, _ = compute_gae(rewards, values, next_values, dones, torch.zeros_like(timeouts), valid, gamma, lam)
    torch.testing.assert_close(adv2, want_adv)


def test_discrete_masks_never_sample_unavailable_actions():
    gen = torch.Generator().manual_seed(0)
    spec = make_spec(True, action_dims=(5, 3, 5), obs_dims=(4, 4, 4))
    agent = MAPPO.from_spec(spec, MAPPOConfig(**TINY))
    obs = torch.randn(2000, 3, 4, generator=gen)
    avail = torch.rand(2000, 3, 5, generator=gen) > 0.6
    avail[torch.arange(2000), :, torch.randint(0, 3, (2000,), generator=gen)] = True  # >= 1 real one
    real = agent.policy.action_mask  # agent 1 has only 3 actions
    for _ in range(3):
        actions, logp = agent.policy.act(obs, None, avail, generator=gen)
        allowed = (avail & real).gather(-1, actions[..., None]).squeeze(-1)
        assert bool(allowed.all()) and bool(torch.isfinite(logp).all())
    # every allowed action does get drawn sometimes: the mask removes, it does not distort
    counts = torch.zeros(3, 5).index_put_((torch.arange(3).expand(2000, 3).reshape(-1), actions.reshape(-1)),
                                          torch.ones(6000), accumulate=True)
    assert bool((counts[:, :3] > 0).all()) and bool((counts[1, 3:] == 0).all())
    greedy, _ = agent.policy.act(obs, None, avail, deterministic=True)
    assert bool((avail & real).gather(-1, greedy[..., None]).all())


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("history_len,shared", [(0, False), (3, True)])
def test_logp_of_sampled_actions_matches_evaluate_actions(discrete, history_len, shared):
    gen = torch.Generator().manual_seed(1)
    spec = make_spec(discrete)
    agent = MAPPO.from_spec(spec, MAPPOConfig(**TINY, history_len=history_len, share_parameters=shared))
    obs, hist, avail = make_inputs(spec, 64, history_len, gen)
    actions, logp = agent.policy.act(obs, hist, avail, generator=gen)
    logp2, entropy = agent.policy.evaluate_actions(obs, hist, avail, actions)
    torch.testing.assert_close(logp, logp2)
    assert entropy.shape == (64, 3) and bool(torch.isfinite(entropy).all())
    if not discrete:  # padded action dims (agent 1 has 2 of 3) stay 0 and carry no probability
        assert bool((actions[:, 1, 2] == 0).all())
        mean, log_std = agent.policy._heads(obs, hist, None)
        dist = torch.distributions.Normal(mean[:, 0], log_std[:, 0].exp())
        torch.testing.assert_close(logp[:, 0], dist.log_prob(actions[:, 0]).sum(-1))
        torch.testing.assert_close(entropy[:, 0], dist.entropy().sum(-1))


def _play(agent: MAPPO, reward_fn, iterations: int, batch: int, gen: torch.Generator, anchor=None) -> list[float]:
    """One-step game: constant observation/state, every episode ends after one action."""
    n = agent.spec.n_agents
    obs, states = torch.ones(batch, n, 1), torch.ones(batch, 1)
    returns = []
    for _ in range(iterations):
        actions, logp = agent.policy.act(obs, generator=gen)
        rewards = reward_fn(agent.policy.env_actions(actions))
        returns.append(float(rewards.mean()))
        one = lambda x: x[None]
        agent.update(dict(states=one(states), obs=one(obs), actions=one(actions), logp=one(logp),
                          rewards=one(rewards), dones=torch.ones(1, batch), timeouts=torch.zeros(1, batch),
                          valid=torch.ones(1, batch, dtype=torch.bool), next_states=one(states),
                          next_obs=one(obs)), gen, anchor=anchor)
    return returns


def test_continuous_bandit_moves_actions_to_the_rewarded_point():
    torch.manual_seed(0)
    spec = make_spec(False, n=2, obs_dims=(1, 1), action_dims=(1, 1), state_dim=1)
    agent = MAPPO.from_spec(spec, MAPPOConfig(**{**TINY, "minibatch_size": 64}, lr=1e-3))
    returns = _play(agent, lambda a: -(a - 0.5).square().sum((-1, -2)), 10, 256, torch.Generator().manual_seed(0))
    mean, _ = agent.policy.act(torch.ones(1, 2, 1), deterministic=True)
    assert returns[0] < -0.5 and returns[-1] > -0.1, returns
    assert bool(((mean - 0.5).abs() < 0.2).all()), mean


def test_behaviour_anchor_holds_the_policy_near_the_data():
    """The bandit rewards 0.5; the data's actions are -0.5. With a strong BC anchor the means stay at
    the data's side; without it they reach the reward (the test above)."""
    spec = make_spec(False, n=2, obs_dims=(1, 1), action_dims=(1, 1), state_dim=1)
    anchor = {"obs": torch.ones(512, 2, 1), "actions": torch.full((512, 2, 1), -0.5)}
    ends = {}
    for coef in (0.0, 10.0):
        torch.manual_seed(0)
        agent = MAPPO.from_spec(spec, MAPPOConfig(**{**TINY, "minibatch_size": 64}, lr=1e-3, bc_coef=coef))
        _play(agent, lambda a: -(a - 0.5).square().sum((-1, -2)), 10, 256, torch.Generator().manual_seed(0),
              anchor=anchor if coef else None)
        ends[coef] = agent.policy.act(torch.ones(1, 2, 1), deterministic=True)[0]
    assert bool((ends[0.0] > 0.3).all()) and bool((ends[10.0] < -0.2).all()), ends


def test_behaviour_loss_is_mse_of_means_or_the_likelihood():
    spec = make_spec(False, n=2, obs_dims=(1, 1), action_dims=(2, 1), state_dim=1)
    agent = MAPPO.from_spec(spec, MAPPOConfig(**TINY))
    obs, actions = torch.randn(8, 2, 1), torch.randn(8, 2, 2)
    mean, log_std = agent.policy._heads(obs, None, None)
    mse = ((mean - actions).square() * agent.policy.action_mask).sum(-1).mean()
    assert torch.allclose(agent.behaviour_loss(obs, None, None, actions), mse)
    logp, _ = agent.policy.evaluate_actions(obs, None, None, actions)
    assert torch.allclose(agent.behaviour_loss(obs, None, None, actions, nll=True), -logp.mean())
    with pytest.raises(OffmarlError, match="bc_coef > 0 needs dataset pairs"):
        MAPPO.from_spec(spec, MAPPOConfig(**TINY, bc_coef=1.0)).update(
            make_batch(MAPPO.from_spec(spec, MAPPOConfig(**TINY)), 2, 4, torch.Generator().manual_seed(0)))


def test_coordination_game_agrees_on_a_convention():
    torch.manual_seed(0)
    spec = make_spec(True, n=2, obs_dims=(1, 1), action_dims=(2, 2), state_dim=1)
    agent = MAPPO.from_spec(spec, MAPPOConfig(**{**TINY, "minibatch_size": 128}, lr=3e-3))
    returns = _play(agent, lambda a: (a[:, 0] == a[:, 1]).float(), 10, 256, torch.Generator().manual_seed(0))
    assert returns[0] < 0.7 and returns[-1] > 0.9, returns


def _train(seed: int, iterations: int, agent: MAPPO | None = None, gen: torch.Generator | None = None):
    torch.manual_seed(seed)
    agent = agent or MAPPO.from_spec(make_spec(False), MAPPOConfig(**TINY, history_len=2))
    gen = gen or torch.Generator().manual_seed(seed)
    metrics = [agent.update(make_batch(agent, 3, 16, gen), gen) for _ in range(iterations)]
    return agent, gen, metrics


def test_same_seed_gives_identical_metrics():
    a1, _, m1 = _train(0, 2)
    a2, _, m2 = _train(0, 2)
    assert m1 == m2
    for p, q in zip(a1.policy.parameters(), a2.policy.parameters()):
        assert torch.equal(p, q)
    _, _, m3 = _train(1, 2)
    assert m3 != m1


def test_resume_from_state_dict_is_bit_for_bit():
    agent, gen, _ = _train(0, 2)
    buf = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "gen": gen.get_state()}, buf)
    _, _, m_cont = _train(0, 1, agent, gen)

    buf.seek(0)
    saved = torch.load(buf)
    fresh = MAPPO.from_spec(make_spec(False), MAPPOConfig(**TINY, history_len=2))
    fresh.load_state_dict(saved["agent"])
    fresh.to("cpu")  # rebuilds the optimisers from their state: must stay bit-for-bit
    gen2 = torch.Generator()
    gen2.set_state(saved["gen"])
    torch.manual_seed(0)
    _, _, m_res = _train(0, 1, fresh, gen2)
    assert m_res == m_cont
    for p, q in zip(agent.critic.state_dict().values(), fresh.critic.state_dict().values()):
        assert torch.equal(p, q)
    for p, q in zip(agent.policy.state_dict().values(), fresh.policy.state_dict().values()):
        assert torch.equal(p, q)
    assert torch.equal(agent.log_alpha, fresh.log_alpha)


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("history_len", [0, 2])
@pytest.mark.parametrize("critic", ["state", "mixer"])
def test_shapes_of_every_variant(discrete, shared, history_len, critic):
    gen = torch.Generator().manual_seed(0)
    spec = make_spec(discrete)
    cfg = MAPPOConfig(**TINY, history_len=history_len, share_parameters=shared, critic=critic, epochs=1)
    agent = MAPPO.from_spec(spec, cfg)
    obs, hist, avail = make_inputs(spec, 5, history_len, gen)
    actions, logp = agent.policy.act(obs, hist, avail, generator=gen)
    assert actions.shape == ((5, 3) if discrete else (5, 3, 3)) and logp.shape == (5, 3)
    assert actions.dtype == (torch.long if discrete else torch.float32)
    assert agent.values(torch.randn(5, 7), obs).shape == (5,)
    metrics = agent.update(make_batch(agent, 2, 4, gen), gen)
    assert set(metrics) >= {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "entropy_coef",
                            "grad_norm", "explained_variance"}
    assert all(isinstance(v, (int, float)) and not math.isnan(v) for v in metrics.values()), metrics
    assert metrics["n_valid"] == 7  # 8 rows, one padded


def test_separate_agents_have_separate_parameters():
    spec = make_spec(False)
    sep = MAPPO.from_spec(spec, MAPPOConfig(**TINY))
    shared = MAPPO.from_spec(spec, MAPPOConfig(**TINY, share_parameters=True))
    assert sep.policy.net.layers[0].layer.weight.shape == (3, 5, 16)  # [agents, in, out]
    assert shared.policy.net.layers[0].layer.weight.shape == (16, 5 + 3)  # agent one-hot appended
    # with separate networks, changing agent 0's observation changes agent 0's action only
    obs = torch.randn(1, 3, 5)
    m1, _ = sep.policy.act(obs, deterministic=True)
    obs[0, 0] += 1.0
    m2, _ = sep.policy.act(obs, deterministic=True)
    assert not torch.equal(m1[0, 0], m2[0, 0]) and torch.equal(m1[0, 1:], m2[0, 1:])


def test_history_encoder_ignores_padded_steps():
    torch.manual_seed(0)
    enc = HistoryEncoder(n_agents=2, obs_dim=3, action_dim=2, discrete=False, history_len=4, dim=8, heads=2)
    obs, act = torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 2)
    mask = torch.tensor([[False, False, True, True]])
    out = enc(obs, act, mask)
    obs2, act2 = obs.clone(), act.clone()
    obs2[:, :2] = 99.0
    act2[:, :2] = -5.0
    torch.testing.assert_close(enc(obs2, act2, mask), out)
    assert out.shape == (1, 2, 8)
    assert bool(torch.isfinite(enc(obs, act, torch.zeros(1, 4, dtype=torch.bool))).all())


def test_adaptive_entropy_coefficient_moves_towards_target():
    gen = torch.Generator().manual_seed(0)
    high = MAPPO.from_spec(make_spec(False), MAPPOConfig(**TINY, target_entropy=-50.0, epochs=1))
    low = MAPPO.from_spec(make_spec(False), MAPPOConfig(**TINY, target_entropy=50.0, epochs=1))
    for agent in (high, low):
        agent.update(make_batch(agent, 2, 8, gen), gen)
    assert float(high.entropy_coef) < 0.01 < float(low.entropy_coef)
    fixed = MAPPO.from_spec(make_spec(False), MAPPOConfig(**TINY, entropy_mode="fixed", entropy_coef=0.003))
    assert fixed.update(make_batch(fixed, 2, 8, gen), gen)["entropy_coef"] == pytest.approx(0.003)


def test_annealed_entropy_coefficient_decays_per_actor_step_and_survives_checkpoints():
    """MAMBA's schedule: a fixed coefficient times ``entropy_annealing`` after every actor step."""
    gen = torch.Generator().manual_seed(0)
    cfg = MAPPOConfig(**TINY, entropy_mode="fixed", entropy_coef=0.01, entropy_annealing=0.5, epochs=2)
    agent = MAPPO.from_spec(make_spec(True), cfg)
    first = agent.update(make_batch(agent, 2, 8, gen), gen)  # 16 rows / 16 per minibatch x 2 epochs = 2 steps
    assert float(agent.entropy_coef) == pytest.approx(0.01 * 0.5 ** 2)
    assert first["entropy_coef"] == pytest.approx((0.01 + 0.005) / 2)  # the mean over its steps
    fresh = MAPPO.from_spec(make_spec(True), cfg)
    fresh.load_state_dict(copy.deepcopy(agent.state_dict()))
    fresh.to("cpu")
    assert float(fresh.entropy_coef) == float(agent.entropy_coef)
    with pytest.raises(OffmarlError, match="entropy_mode=fixed"):
        MAPPOConfig(entropy_annealing=0.9)
    with pytest.raises(OffmarlError, match="entropy_annealing"):
        MAPPOConfig(entropy_mode="fixed", entropy_annealing=1.5)


def test_running_norm_matches_pooled_statistics():
    x = torch.randn(100, 4) * 3 + 1
    norm = RunningNorm((4,))
    norm.update(x[:30])
    norm.update(x[30:])
    torch.testing.assert_close(norm.mean, x.mean(0))
    torch.testing.assert_close(norm.var, x.var(0, unbiased=False))


def test_user_errors_name_the_fix():
    agent = MAPPO.from_spec(make_spec(False), MAPPOConfig(**TINY, history_len=2))
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(agent, 2, 4, gen)
    del batch["timeouts"]
    with pytest.raises(OffmarlError, match="timeouts"):
        agent.update(batch, gen)
    with pytest.raises(OffmarlError, match="hist="):
        agent.policy.act(torch.zeros(2, 3, 5))
    with pytest.raises(OffmarlError, match="max_obs_dim"):
        agent.policy.act(torch.zeros(2, 3, 4), {"hist_obs": None, "hist_actions": None})
    with pytest.raises(OffmarlError, match="critic"):
        MAPPOConfig(critic="qmix")
    with pytest.raises(OffmarlError, match="unknown mappo option"):
        MAPPOConfig.from_dict({"learning_rate": 1e-3})


def test_reference_preset_and_dict_round_trip():
    assert MAPPOConfig.reference().lr == 5e-5 and MAPPOConfig.reference().minibatch_size == 64
    assert copy.deepcopy(MAPPOConfig()).to_dict() == MAPPOConfig.from_dict(MAPPOConfig().to_dict()).to_dict()
