"""World model: uncertainty maths, fitting, caching, loading errors, and synthetic rollouts."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

# the linear toy world of conftest.py (fixture ``linear_toy``), by name for module-level use
from conftest import LinearGaussianPolicy, constant_model, linear_dataset
from conftest import observe_all as observe

from offmarl.atomic import atomic_path, atomic_torch_save, atomic_write_text
from offmarl.data.dataset import DatasetMeta, MultiAgentDataset
from offmarl.envs import make_env
from offmarl.errors import OffmarlError
from offmarl.worldmodel import (
    EnsembleConfig,
    EnsembleWorldModel,
    RolloutConfig,
    cache_key,
    calibrate_eps_g_threshold,
    dataset_box,
    encode_joint_action,
    eps_aleatoric,
    eps_g,
    eps_r,
    load_or_fit,
    load_world_model,
    model_rollout,
    penalised_reward,
)
from offmarl.worldmodel.ensemble import FORMAT
from offmarl.worldmodel.termination import (
    calibrate_termination,
    replay_windows,
    termination_rule,
    termination_scores,
    window_starts,
)

S, N, A = 4, 2, 1  # tiny widths: state 4, two agents with one action each
TINY = {"members": 3, "elites": 2, "hidden": (32, 32), "max_steps": 300, "eval_every": 50, "patience": 3,
        "batch_size": 64}


# ---------------------------------------------------------------- uncertainty
def test_eps_g_and_eps_r_hand_computed():
    # 3 elites, one transition, D = 2 ([one state dim, reward]):
    # mean = [2, 3]; centred X = [[-1,-1],[1,-1],[0,2]]; X^T X = [[2,0],[0,6]]; Cov = X^T X / 2 = [[1,0],[0,3]]
    # eps_g = ||Cov||_F = sqrt(1 + 9) = sqrt(10); eps_r = var([2, 2, 5], ddof=1) = 6 / 2 = 3
    m = torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]], [[2.0, 5.0]]])  # [E=3, B=1, D=2]
    assert eps_g(m).item() == pytest.approx(np.sqrt(10.0), rel=1e-6)
    assert eps_r(m).item() == pytest.approx(3.0, rel=1e-6)
    assert np.linalg.norm(np.cov(m[:, 0].numpy(), rowvar=False)) == pytest.approx(np.sqrt(10.0))


def test_eps_g_matches_numpy_cov_without_dxd():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 7, 9, generator=g, dtype=torch.float64)  # [E, B, D]
    want = [np.linalg.norm(np.cov(m[:, i].numpy(), rowvar=False), "fro") for i in range(7)]
    np.testing.assert_allclose(eps_g(m).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(eps_r(m).numpy(), np.var(m[..., -1].numpy(), axis=0, ddof=1), rtol=1e-10)


def test_penalised_reward_and_aleatoric():
    r, g, v = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])
    assert penalised_reward(r, g, v).item() == pytest.approx(1.0 - 0.2 - 0.2)
    logvar = torch.log(torch.tensor([[[1.0, 1.0]], [[4.0, 0.0]]]))  # stds [1,1] and [2,0]
    a = eps_aleatoric(logvar)
    assert a.item() == pytest.approx(2.0)
    assert penalised_reward(r, g, v, eps_a=a, lambda_a=0.5).item() == pytest.approx(1.0 - 0.4 - 1.0)


# ---------------------------------------------------------------- model
def test_encode_joint_action():
    cont = torch.arange(6.0).view(1, 2, 3)
    assert encode_joint_action(cont, discrete=False).tolist() == [[0, 1, 2, 3, 4, 5]]
    disc = torch.tensor([[2, 0]])
    assert encode_joint_action(disc, discrete=True, n_actions=3).tolist() == [[0, 0, 1, 1, 0, 0]]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_predict_and_step_shapes(device):
    model = EnsembleWorldModel(S, A, N, config=EnsembleConfig(members=4, elites=3, hidden=(16,))).to(device)
    b = 5
    states, joint = torch.randn(b, S, device=device), torch.randn(b, N * A, device=device)
    mean, logvar, done = model.predict(states, joint)
    assert mean.shape == (4, b, S + 1) and logvar.shape == (4, b, S + 1) and done.shape == (4, b)
    assert mean.device.type == device
    gen = torch.Generator(device=device).manual_seed(0)
    out = model.step(states, joint, gen, sample=True)
    assert out["next_states"].shape == (b, S) and out["rewards"].shape == (b,) and out["done_prob"].shape == (b,)
    assert out["elite_means"].shape == (3, b, S + 1)
    with pytest.raises(OffmarlError, match="expects states"):
        model.predict(torch.randn(b, S + 1, device=device), joint)


def test_predict_members_evaluates_only_those_and_matches_the_full_ensemble():
    """Rollouts evaluate only the elites (``predict(..., elite_idx)``): the same numbers as the full
    ensemble's rows of those members, so skipping the other members changes nothing but the cost."""
    model = EnsembleWorldModel(S, A, N, config=EnsembleConfig(members=5, elites=3, hidden=(16, 16)))
    model.elite_idx.copy_(torch.tensor([4, 0, 2]))
    states, joint = torch.randn(7, S), torch.randn(7, N * A)
    full = model.predict(states, joint)
    sub = model.predict(states, joint, model.elite_idx)
    for f, s in zip(full, sub):
        assert s.shape[0] == 3
        torch.testing.assert_close(s, f[model.elite_idx], rtol=0, atol=1e-6)


def test_large_no_grad_cpu_batches_go_in_row_slices_with_the_same_result(monkeypatch):
    """Big no-gradient CPU batches (the planner's ~16k candidate continuations) run through the
    world model and R_m in row slices with one torch thread (cache-sized activations, in-place
    ReLU): the numbers are those of the whole batch; with gradients, or more threads, nothing is
    sliced."""
    from offmarl.nn import functional
    from offmarl.worldmodel.error_model import ErrorModel, ErrorModelConfig

    monkeypatch.setattr(functional, "CPU_CHUNK_ROWS", 16)
    threads = torch.get_num_threads()
    model = EnsembleWorldModel(S, A, N, config=EnsembleConfig(members=5, elites=3, hidden=(16, 16)))
    rm = ErrorModel(S, N * A, ErrorModelConfig(hidden=(8, 8)))
    states, joint = torch.randn(101, S), torch.randn(101, N * A)
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            assert functional.row_chunks(states) is None
        whole = model.predict(states, joint, model.elite_idx)
        whole_rm = rm(states, joint, states, joint[:, 0], whole[0].mean(0))
        torch.set_num_threads(1)
        with torch.no_grad():
            assert len(functional.row_chunks(states)) == 7
        assert functional.row_chunks(states) is None  # gradients recorded: one graph, never sliced
        sliced = model.predict(states, joint, model.elite_idx)
        sliced_rm = rm(states, joint, states, joint[:, 0], whole[0].mean(0))
    finally:
        torch.set_num_threads(threads)
    for w, c in zip(whole, sliced):
        torch.testing.assert_close(c, w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sliced_rm, whole_rm, rtol=1e-6, atol=1e-6)
    # the whole path (more threads) must not have changed the model's numbers in place
    torch.testing.assert_close(model.predict(states[:3], joint[:3], model.elite_idx)[0], whole[0][:, :3])


def test_step_uses_one_elite_mean_per_row():
    model = constant_model([[0.0] * S + [1.0], [0.0] * S + [2.0], [0.0] * S + [3.0]], elites=2)
    model.elite_idx.copy_(torch.tensor([0, 2]))
    out = model.step(torch.zeros(64, S), torch.zeros(64, N * A), torch.Generator().manual_seed(0))
    assert set(out["rewards"].tolist()) == {1.0, 3.0}  # only elites' means, both drawn


def test_fit_lowers_holdout_loss_and_picks_elites():
    ds = linear_dataset()
    model = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**TINY))
    seen = []
    stats = model.fit(ds, device="cpu", progress=seen.append)
    assert seen and seen[-1]["step"] == stats["steps"] and len(seen[-1]["holdout_mse"]) == 3
    assert np.all(np.array(stats["holdout_mse"]) < 0.5 * np.array(stats["initial_holdout_mse"]))
    assert stats["n_holdout"] == 400 and stats["n_train"] == 1600
    assert stats["elites"] == list(np.argsort(stats["holdout_mse"])[:2])
    # predictions in raw units: next state close to the true linear dynamics
    t = ds.tensors()
    mean, _, done = model.predict(t["states"][:100], model.encode_actions(t["actions"][:100]))
    err = (mean[:, :, :S] - t["next_states"][:100]).abs().mean()
    assert err < 0.5 * (t["next_states"][:100] - t["states"][:100]).abs().mean()
    assert done.max() < 0.5  # no terminals in the data


def test_discrete_fit_with_an_action_never_taken_stays_finite():
    # agent 1 always takes action 0 in the data: its one-hot columns for actions 1, 2 are constant
    g = torch.Generator().manual_seed(0)
    t, k = 600, 3
    states = torch.randn(t, S, generator=g)
    actions = torch.stack([torch.randint(k, (t,), generator=g), torch.zeros(t, dtype=torch.long)], dim=1)
    data = {"states": states, "actions": actions, "next_states": states + 0.1 * actions[:, :1],
            "rewards": (actions[:, 0] == 1).float(), "terminals": torch.zeros(t, dtype=torch.bool)}
    model = EnsembleWorldModel(S, k, N, discrete=True, config=EnsembleConfig(**{**TINY, "max_steps": 100}))
    model.fit(data)
    mean, _, _ = model.predict(states[:8], model.encode_actions(torch.full((8, N), 2)))
    assert torch.isfinite(mean).all() and mean.abs().max() < 100


def test_save_load_roundtrip_and_errors(tmp_path):
    ds = linear_dataset(t=300)
    model = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**{**TINY, "max_steps": 20, "grad_clip": 1.0}))
    model.fit(ds)
    path = model.save(tmp_path / "wm.pt", metadata={"note": "test"})
    again = load_world_model(path, dataset=ds)
    x, a = torch.randn(3, S), torch.randn(3, N * A)
    torch.testing.assert_close(again.predict(x, a)[0], model.predict(x, a)[0])
    assert again.elite_idx.tolist() == model.elite_idx.tolist() and again.metadata["note"] == "test"
    with pytest.raises(OffmarlError, match="does not exist"):
        EnsembleWorldModel.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(OffmarlError, match="cannot be read"):
        load_world_model(tmp_path / "junk.pt")
    wide = EnsembleWorldModel(S + 1, A, N, config=EnsembleConfig(**TINY))
    wide.save(tmp_path / "wide.pt")
    with pytest.raises(OffmarlError, match="state 5"):
        load_world_model(tmp_path / "wide.pt", dataset=ds)


def test_load_or_fit_caches(tmp_path, monkeypatch):
    ds = linear_dataset(t=300)
    cfg = EnsembleConfig(**{**TINY, "max_steps": 100})
    m1, info1 = load_or_fit(ds, cfg, tmp_path, "cpu")

    def refit(*args, **kwargs):
        raise AssertionError("the cached model was fitted again")

    monkeypatch.setattr(EnsembleWorldModel, "fit", refit)  # the second call must only load
    m2, info2 = load_or_fit(ds, cfg, tmp_path, "cpu")
    assert not info1["cached"] and info2["cached"]
    assert info2["key"] == cache_key(ds.dynamics_checksum(), cfg) and (tmp_path / info2["key"] / "stats.json").is_file()
    x, a = torch.randn(3, S), torch.randn(3, N * A)
    torch.testing.assert_close(m1.predict(x, a)[0], m2.predict(x, a)[0])
    assert cache_key(ds.dynamics_checksum(), EnsembleConfig(**{**TINY, "seed": 1})) != info2["key"]


# ---------------------------------------------------------------- rollouts
def test_box_clipping():
    ds = linear_dataset(t=300)
    box = dataset_box(ds)
    model = constant_model([[100.0] * S + [100.0], [-100.0] * S + [-100.0]])  # far outside the data
    start = {"states": ds.tensors()["states"][:16]}
    batch, _ = model_rollout(model, LinearGaussianPolicy(), start, observe,
                             RolloutConfig(horizon=3, eps_g_threshold=1e9), box, torch.Generator(), gamma=0.99)
    hi, lo = box["state_high"], box["state_low"]
    assert torch.all((batch["next_states"] == hi) | (batch["next_states"] == lo))
    assert torch.all((batch["raw_rewards"] == box["reward_high"]) | (batch["raw_rewards"] == box["reward_low"]))


@pytest.mark.parametrize("spread,fires", [(3.0, True), (0.5, False)])
def test_uncertainty_termination(spread, fires):
    # 3 elites disagree on one state dim by 0, spread, 2*spread: Cov has one non-zero entry,
    # eps_g = var([0, s, 2s], ddof=1) = s^2 -> 9 (> 2, fires) or 0.25 (< 2, does not)
    model = constant_model([[i * spread] + [0.0] * S for i in range(3)])
    cfg = RolloutConfig(horizon=4, clip_to_box=False, uncertain_end="terminal", eps_g_threshold=2.0)
    batch, info = model_rollout(model, LinearGaussianPolicy(), {"states": torch.zeros(8, S)}, observe, cfg, None,
                                torch.Generator().manual_seed(0), gamma=0.99, history=2)
    torch.testing.assert_close(batch["eps_g"][0], torch.full((8,), spread ** 2))
    if fires:
        assert info["frac_uncertainty_terminated"] == 1.0
        assert batch["dones"][0].all() and not batch["valid"][1:].any() and not batch["timeouts"].any()
        assert info["mean_length"] == 1.0
    else:
        assert info["frac_uncertainty_terminated"] == 0.0
        assert batch["valid"].all() and not batch["dones"].any()
        assert batch["timeouts"][-1].all() and not batch["timeouts"][:-1].any()


@pytest.mark.parametrize("mode", ["halt", "timeout", "terminal"])
def test_uncertain_end_modes(mode):
    # eps_g = 9 > 2 at the first step: every row ends there, in the way `mode` says
    model = constant_model([[i * 3.0] + [0.0] * S for i in range(3)])
    box = {"state_low": torch.full((S,), -1e3), "state_high": torch.full((S,), 1e3),
           "reward_low": torch.tensor(-2.0), "reward_high": torch.tensor(1e3)}
    cfg = RolloutConfig(horizon=4, uncertain_end=mode, eps_g_threshold=2.0)
    batch, info = model_rollout(model, LinearGaussianPolicy(), {"states": torch.zeros(8, S)}, observe, cfg, box,
                                torch.Generator().manual_seed(0), gamma=0.9)
    assert info["frac_uncertainty_terminated"] == 1.0 and info["mean_length"] == 1.0
    assert not batch["valid"][1:].any()
    plain = batch["raw_rewards"][0] - cfg.lambda_g * 9.0 - cfg.lambda_r * batch["eps_r"][0]
    if mode == "timeout":  # bootstrap from V(next state): no terminal, no extra penalty
        assert batch["timeouts"][0].all() and not batch["dones"].any()
        torch.testing.assert_close(batch["rewards"][0], plain)
    else:
        assert batch["dones"][0].all() and not batch["timeouts"].any()
        halt = 0.9 * -2.0 / (1 - 0.9) if mode == "halt" else 0.0  # gamma * r_min / (1 - gamma)
        torch.testing.assert_close(batch["rewards"][0], plain + halt)
    with pytest.raises(OffmarlError, match="uncertain_end"):
        RolloutConfig(uncertain_end="stop")


def test_env_termination_rule_on_unclipped_predictions():
    # every member predicts state dim 0 += 5: outside the data box, so clipping would hide it;
    # the env rule "state[0] > 1 ends the episode" must see the UNCLIPPED prediction
    model = constant_model([[5.0] + [0.0] * S for _ in range(3)])
    box = {"state_low": torch.full((S,), -1.0), "state_high": torch.full((S,), 1.0),
           "reward_low": torch.tensor(-1.0), "reward_high": torch.tensor(1.0)}
    rule = lambda s: s[..., 0] > 1.0
    start = {"states": torch.zeros(8, S)}
    for termination, fires in [("env", True), ("model", False)]:
        cfg = RolloutConfig(horizon=3, termination=termination, eps_g_threshold=1e9)
        batch, info = model_rollout(model, LinearGaussianPolicy(), start, observe, cfg, box,
                                    torch.Generator().manual_seed(0), done_fn=rule, gamma=0.99)
        assert torch.all(batch["next_states"][..., 0] <= 1.0)  # clipped in the batch
        assert bool(batch["dones"][0].all()) is fires and info["frac_model_terminated"] == float(fires)
    with pytest.raises(OffmarlError, match="termination"):
        RolloutConfig(termination="learned")


def test_calibrated_threshold_is_a_quantile_of_eps_g_on_data():
    model = constant_model([[i * 1.5] + [0.0] * S for i in range(3)])  # eps_g = 1.5^2 on every input
    thr = calibrate_eps_g_threshold(model, linear_dataset(t=300), quantile=0.9, n=100, generator=torch.Generator())
    assert thr == pytest.approx(2.25, rel=1e-5)


def test_rollout_shapes_masks_and_determinism():
    ds = linear_dataset()
    model = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**{**TINY, "max_steps": 50}))
    model.fit(ds)
    with torch.no_grad():  # make the model end some rollouts: termination probability ~0.3 everywhere
        model.net.out.bias[:, 0, -1] += -0.85 - model.net.out.bias[:, 0, -1]
        model.net.out.weight[:, :, -1] = 0.0
    k, b, h = 3, 32, 5
    start = ds.sample_histories(b, k, generator=torch.Generator().manual_seed(1))
    cfg = RolloutConfig(horizon=h, done_threshold=0.29, sample=True, eps_g_threshold=2.0)
    box = dataset_box(ds)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return model_rollout(model, LinearGaussianPolicy(), start, observe, cfg, box, gen,
                             gamma=0.99, history=k)

    batch, info = run(0)
    assert batch["states"].shape == (h, b, S) and batch["obs"].shape == (h, b, N, S)
    assert batch["actions"].shape == (h, b, N, A) and batch["logp"].shape == (h, b, N)
    assert batch["hist_obs"].shape == (h, b, k, N, S) and batch["next_hist_actions"].shape == (h, b, k, N, A)
    for key in ("rewards", "raw_rewards", "eps_g", "eps_r", "dones", "timeouts", "valid"):
        assert batch[key].shape == (h, b), key
    v, d = batch["valid"], batch["dones"]
    assert v[0].all()
    # valid up to and including the terminal step, never after it
    assert torch.equal(v[1:], v[:-1] & ~d[:-1])
    assert not (d & batch["timeouts"]).any() and torch.equal(batch["timeouts"][-1], v[-1] & ~d[-1])
    # history: shifted in (obs, action), newest last; next_* of step t is step t+1's input
    torch.testing.assert_close(batch["next_hist_obs"][:, :, -1], batch["obs"])
    torch.testing.assert_close(batch["hist_obs"][1:], batch["next_hist_obs"][:-1])
    assert batch["next_hist_mask"][:, :, -1].all()
    torch.testing.assert_close(batch["next_obs"], observe(batch["next_states"].flatten(0, 1)).view(h, b, N, S))
    torch.testing.assert_close(batch["rewards"], batch["raw_rewards"] - 0.1 * batch["eps_g"] - 0.05 * batch["eps_r"])
    assert 0.0 < info["mean_length"] < h
    again, _ = run(0)
    other, _ = run(1)
    for key in batch:
        assert torch.equal(batch[key], again[key]), key
    assert not torch.equal(batch["actions"], other["actions"])


def test_rollout_without_history_and_discrete_actions():
    model = EnsembleWorldModel(S, 3, N, discrete=True, config=EnsembleConfig(members=3, elites=2, hidden=(8,)))

    class Uniform:
        def act(self, obs, hist, avail=None, deterministic=False, generator=None):
            assert hist is not None and hist["hist_actions"].dtype == torch.long
            a = torch.randint(3, obs.shape[:2], generator=generator)
            return a, torch.full(a.shape, -np.log(3.0))

    batch, _ = model_rollout(model, Uniform(), {"states": torch.zeros(4, S)}, observe,
                             RolloutConfig(horizon=2, clip_to_box=False, eps_g_threshold=1e9), None,
                             torch.Generator(), gamma=0.99, history=2)
    assert batch["actions"].shape == (2, 4, N) and batch["hist_actions"].shape == (2, 4, 2, N)
    assert not batch["hist_mask"][0].any() and batch["next_hist_mask"][0, :, -1].all()


def test_rollout_needs_a_threshold():
    model = constant_model([[0.0] * (S + 1)] * 2)
    with pytest.raises(OffmarlError, match="eps_g_threshold is None"):
        model_rollout(model, LinearGaussianPolicy(), {"states": torch.zeros(2, S)}, observe,
                      RolloutConfig(clip_to_box=False), None, torch.Generator(), gamma=0.99)


def test_step_is_sample_candidates_with_one_candidate():
    ds = linear_dataset(t=300)
    model = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**{**TINY, "max_steps": 20}))
    model.fit(ds)
    t = ds.tensors()
    s, joint = t["states"][:16], model.encode_actions(t["actions"][:16])
    for sample in (False, True):
        one = model.step(s, joint, torch.Generator().manual_seed(3), sample=sample)
        cand = model.sample_candidates(s, joint, 3, torch.Generator().manual_seed(3), torch.Generator(), "both",
                                       sample)
        assert torch.equal(cand["next_states"][:, 0], one["next_states"])
        assert torch.equal(cand["rewards"][:, 0], one["rewards"]) and cand["next_states"].shape == (16, 3, S)
    with pytest.raises(OffmarlError, match="distinct"):
        model.sample_candidates(s, joint, 3, mode="elites")


# ---------------------------------------------------------------- trainer and store
def _improved_any(best: list[float], mse: list[float], min_improvement: float) -> bool:
    return any((b - m) / max(b, 1e-12) > min_improvement for b, m in zip(best, mse))


@pytest.mark.parametrize("patience", [2, 4])
def test_epoch_early_stopping_stops_on_patience_and_only_there(patience):
    """A small real fit (the linear dataset) with epoch-based early stopping: the fit stops at the first
    evaluation that completes ``patience`` evaluations in a row without any member improving by more
    than min_improvement, and never earlier; every evaluation is exactly one epoch apart."""
    ds = linear_dataset(t=400)
    cfg = EnsembleConfig(**{**TINY, "early_stopping": "epochs", "patience": patience, "min_improvement": 0.05,
                            "max_epochs": 400})
    model = EnsembleWorldModel.for_dataset(ds, cfg)
    seen = []
    stats = model.fit(ds, progress=seen.append)
    epoch_len = -(-stats["n_train"] // cfg.batch_size)
    assert [p["step"] for p in seen] == [epoch_len * (i + 1) for i in range(len(seen))]
    assert stats["stopped_early"] and stats["steps"] == seen[-1]["step"] < 400 * epoch_len
    # replay the rule on the reported numbers: count evaluations without improvement
    best, run, stops = list(stats["initial_holdout_mse"]), 0, []
    for p in seen:
        if _improved_any(best, p["holdout_mse"], cfg.min_improvement):
            run = 0
        else:
            run += 1
        best = p["best_holdout_mse"]
        stops.append(run >= patience)
    assert stops[-1] and not any(stops[:-1])
    assert len(seen) > patience  # it improved at first: the stop is not the trivial one
    # the progress report: per-dimension holdout MSE over [delta state, reward], worst dimension, an ETA
    assert len(seen[0]["holdout_dim_mse"]) == S + 1 and 0 <= seen[0]["worst_dim"] <= S
    assert seen[0]["eta_seconds"] >= 0 and seen[0]["epoch"] == pytest.approx(1.0)


def test_epoch_cap_without_patience_runs_to_the_cap():
    ds = linear_dataset(t=300)
    cfg = EnsembleConfig(**{**TINY, "early_stopping": "epochs", "patience": 10**6, "max_epochs": 3})
    stats = EnsembleWorldModel.for_dataset(ds, cfg).fit(ds)
    assert not stats["stopped_early"] and stats["epochs"] == 3.0
    with pytest.raises(OffmarlError, match="early_stopping"):
        EnsembleConfig(early_stopping="never")


def test_default_stopping_is_the_step_cap():
    ds = linear_dataset(t=300)
    seen = []
    stats = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**{**TINY, "max_steps": 120, "eval_every": 50})).fit(
        ds, progress=seen.append)
    assert [p["step"] for p in seen] == [50, 100, 120] and stats["steps"] == 120


def test_silu_option_and_cache_keys(tmp_path):
    ds = linear_dataset(t=300)
    silu = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**{**TINY, "activation": "silu", "max_steps": 30}))
    assert isinstance(silu.net.act, torch.nn.SiLU)
    silu.fit(ds)
    again = load_world_model(silu.save(tmp_path / "silu.pt"))
    x, a = torch.randn(3, S), torch.randn(3, N * A)
    torch.testing.assert_close(again.predict(x, a)[0], silu.predict(x, a)[0])
    with pytest.raises(OffmarlError, match="activation"):
        EnsembleConfig(activation="tanh")
    # keys of entries fitted before the new options existed: the options at their defaults leave the key as it was
    cfg = EnsembleConfig(**TINY)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("early_stopping", "max_epochs", "activation")}
    payload = json.dumps({"data": "abc", "config": old, "format": FORMAT}, sort_keys=True)
    assert cache_key("abc", cfg) == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert cache_key("abc", EnsembleConfig(**{**TINY, "activation": "silu"})) != cache_key("abc", cfg)


def test_atomic_writes_leave_nothing_behind(tmp_path):
    atomic_write_text(tmp_path / "a" / "x.txt", "one")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a" / "x.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "a" / "x.txt").read_text() == "one" and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "x.txt"]
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "a" / "w.pt")
    assert torch.equal(torch.load(tmp_path / "a" / "w.pt")["w"], torch.ones(2))


# ---------------------------------------------------------------- HALT value, calibrated termination
@pytest.mark.parametrize("q", [0.0, 0.05, 0.3])
def test_halt_value_follows_its_configured_statistic(q):
    ds = linear_dataset(t=400)
    r = torch.as_tensor(ds.rewards)
    expected = (torch.quantile(r, q) if q > 0 else r.min()).clamp(max=0.0)
    box = dataset_box(ds, halt_quantile=q)
    torch.testing.assert_close(box["halt_reward"], expected)
    box = {**box, "state_low": torch.full((S,), -1e3), "state_high": torch.full((S,), 1e3),
           "reward_low": torch.tensor(-1e3), "reward_high": torch.tensor(1e3)}  # no clipping in this test
    model = constant_model([[i * 3.0] + [0.0] * S for i in range(3)])  # eps_g = 9 > 2: every row HALTs at step 0
    cfg = RolloutConfig(horizon=4, uncertain_end="halt", eps_g_threshold=2.0, halt_quantile=q)
    batch, info = model_rollout(model, LinearGaussianPolicy(), {"states": torch.zeros(8, S)}, observe, cfg, box,
                                torch.Generator().manual_seed(0), gamma=0.9)
    plain = batch["raw_rewards"][0] - cfg.lambda_g * 9.0 - cfg.lambda_r * batch["eps_r"][0]
    torch.testing.assert_close(batch["rewards"][0], plain + 0.9 * expected / (1 - 0.9))
    assert info["frac_halted"] == 1.0
    with pytest.raises(OffmarlError, match="halt_quantile"):
        model_rollout(model, LinearGaussianPolicy(), {"states": torch.zeros(8, S)}, observe,
                      RolloutConfig(horizon=4, eps_g_threshold=2.0, halt_quantile=0.5), box, gamma=0.9)
    with pytest.raises(OffmarlError, match="halt_quantile"):
        RolloutConfig(halt_quantile=1.0)


def rising_dataset(episodes: int = 120, seed: int = 0) -> MultiAgentDataset:
    """State dim 0 ("height") starts in [0, 0.5] and rises 0.1 per step; the episode terminates on the
    transition whose next height exceeds 1 (the test env's rule: height <= 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(episodes):
        z = rng.uniform(0.0, 0.5)
        while True:
            s = np.r_[z, rng.normal(size=S - 1)]
            rows.append((s, np.r_[z + 0.1, s[1:]], z + 0.1 > 1.0))
            z += 0.1
            if rows[-1][2]:
                break
    states = np.array([r[0] for r in rows], np.float32)
    next_states = np.array([r[1] for r in rows], np.float32)
    terminals = np.array([r[2] for r in rows])
    t = len(rows)
    actions = rng.uniform(-1, 1, size=(t, N, A)).astype(np.float32)
    meta = DatasetMeta(env="rising-test", obs_scheme="fo", n_agents=N, obs_dims=(S,) * N, action_dims=(A,) * N,
                       state_dim=S, discrete=False, name="rising-test")
    obs, next_obs = np.repeat(states[:, None], N, axis=1), np.repeat(next_states[:, None], N, axis=1)
    return MultiAgentDataset(states, next_states, obs, next_obs, actions, np.ones(t, np.float32), terminals,
                             np.zeros(t, bool), meta)


class HeightRuleEnv:
    termination_conditions = ((0, float("-inf"), 1.0, False),)  # healthy while height <= 1


def test_calibrated_termination_fires_at_the_fitted_threshold():
    ds = rising_dataset()
    # every member under-predicts the rise (0.05 instead of 0.1 per step): with the env's plain rule
    # the model terminates too rarely within k steps, as the mean predictions do on ant-medium
    model = constant_model([[0.05] + [0.0] * (S - 1) + [1.0] for _ in range(3)])
    rule = termination_rule(HeightRuleEnv(), ds)
    torch.testing.assert_close(rule.scale, torch.tensor([float(ds.states[:, 0].std())]))
    k = 5
    fitted, cal = calibrate_termination(model, ds, rule, k, n=10_000, generator=torch.Generator().manual_seed(0))
    before, after = cal["before"], cal["after"]
    assert before["model_rate"] < before["real_rate"] - 0.1 and fitted.margin > 0
    assert abs(after["model_rate"] - after["real_rate"]) <= 0.5 / after["positives"]  # matched up to one window
    assert after["recall"] > before["recall"] + 0.2
    # the calibrated rule fires exactly where the slack crosses the fitted margin
    edge = 1.0 - fitted.margin * float(rule.scale[0])
    below, above = torch.zeros(2, S), torch.zeros(2, S)
    below[:, 0], above[:, 0] = edge - 1e-4, edge + 1e-4
    assert not fitted(below).any() and fitted(above).all()
    assert not rule(above).any()  # the plain rule (margin 0) does not fire there
    assert fitted(torch.full((1, S), float("nan"))).all()
    # windows cut by nothing here (every episode terminates); the scores agree with a hand count
    starts, w = window_starts(ds, k, 10_000, torch.Generator().manual_seed(0))
    assert w.sum().item() == pytest.approx(1.0)
    rep = replay_windows(model, ds, starts, k, None, torch.Generator().manual_seed(1), rule)
    z0 = torch.as_tensor(ds.states[:, 0])[starts]
    pred = z0 + 0.05 * rep["steps"] > edge
    sc = termination_scores(rep["slack"], rep["valid"], rep["real_done"], fitted.margin, w)
    assert sc["model_rate"] == pytest.approx(float((w * pred).sum()), abs=1e-6)
    # the real rate is the share of ALL eligible windows that end within k, whatever the stratification
    ends = np.flatnonzero(ds.episode_ends)
    left = ends[np.searchsorted(ends, np.arange(len(ds)))] - np.arange(len(ds)) + 1
    assert sc["real_rate"] == pytest.approx(float((left <= k).mean()), abs=1e-6)


def test_margin_zero_is_the_ant_rule():
    env = make_env("ant-4x2")
    ds = rising_dataset()  # only its state std is used (the rule's scale)
    rule = termination_rule(env, ds)
    z = torch.linspace(0.0, 1.3, 27)
    states = torch.zeros(27, 27)
    states[:, 0] = z
    assert torch.equal(rule(states), torch.as_tensor(env.terminated(states)))
    assert termination_rule(make_env("reacher-2x1"), ds) is None  # no bounds on states: the caller keeps its rule
