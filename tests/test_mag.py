"""MAG planner: per-start-state selection, a planner that keeps candidate 0 reproduces the plain rollout, shapes,
and the R_m fit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from offmarl.driver import train_from_options
from offmarl.errors import OffmarlError
from offmarl.planners.mag import MAGPlanner, PlannerConfig, plan, select_candidates
from offmarl.worldmodel import (
    EnsembleConfig,
    EnsembleLookahead,
    EnsembleWorldModel,
    ErrorModelScorer,
    RolloutConfig,
    UncertaintyScorer,
    dataset_box,
    make_planner,
    model_rollout,
)
from offmarl.worldmodel.error_model import ErrorModelConfig, load_or_fit_error_model, model_error_labels

S, N, A = 4, 2, 1  # the widths of the linear toy world (conftest.py: linear_toy)
TINY = {"members": 3, "elites": 2, "hidden": (32, 32), "max_steps": 200, "eval_every": 50, "patience": 3,
        "batch_size": 64}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]


@pytest.fixture(scope="module")
def fitted(linear_toy):
    ds = linear_toy.dataset(t=1500)
    torch.manual_seed(0)
    model = EnsembleWorldModel.for_dataset(ds, EnsembleConfig(**TINY))
    model.fit(ds)
    return ds, model.eval()


class FirstDimScorer:
    """Fake R_m: the error is |state[0]| (small near 0), so the best candidate depends on the start."""
    uses_ensemble = False

    def __call__(self, states, joint, out):
        return states[:, 0].abs()


# ---------------------------------------------------------------- selection
def test_select_candidates_is_per_row_argmin():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 1.0], [2.0, 2.0, -1.0]])
    assert select_candidates(scores).tolist() == [1, 0, 2]
    # the MAG release's batch-averaged choice would give every row candidate 2 (column mean 0.33 < ...)
    assert int(scores.mean(0).argmin()) == 2


def test_planner_picks_each_start_states_own_best(linear_toy):
    # two elites: +1 or -1 on state[0]; from state[0] = +2 the best next state is 1 (elite 1), from -2 it is -1
    model = linear_toy.constant_model([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]])
    planner = MAGPlanner(FirstDimScorer(), l=2, h=2, candidates="elites")
    start = torch.zeros(6, S)
    start[:, 0] = torch.tensor([2.0, -2.0, 2.0, -2.0, 2.0, -2.0])
    cfg = RolloutConfig(horizon=1, clip_to_box=False, eps_g_threshold=1e9)
    for seed in range(3):  # whatever elite candidate 0 drew, the committed step is the right one
        batch, info = model_rollout(model, linear_toy.policy(), {"states": start}, linear_toy.observe, cfg, None,
                                    torch.Generator().manual_seed(seed), gamma=0.99, planner=planner)
        assert batch["next_states"][0, :, 0].tolist() == [1.0, -1.0] * 3
        assert 0.0 <= info["planner_frac_replaced"] <= 1.0 and info["planner_score_gain"] >= 0.0
    # low level: H = 3 scores the continuation (next state after one more random elite step, then |s0|)
    cands = torch.tensor([[[1.0, 0, 0, 0], [3.0, 0, 0, 0]], [[-3.0, 0, 0, 0], [-1.0, 0, 0, 0]]])
    world = EnsembleLookahead(model, linear_toy.policy(), linear_toy.observe, FirstDimScorer())
    idx, scores = plan(cands, None, world, 3, generator=torch.Generator().manual_seed(0))
    assert idx.tolist() == [0, 1] and scores.shape == (2, 2)


def test_invalid_planner_options_are_clear(linear_toy):
    model = linear_toy.constant_model([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]])
    with pytest.raises(OffmarlError, match="distinct"):  # before any R_m fit
        make_planner(PlannerConfig(kind="mag", l=3, h=3, candidates="elites"), model, None, linear_toy.observe, None)
    with pytest.raises(OffmarlError, match="lookahead"):
        MAGPlanner(UncertaintyScorer(), l=2, h=1)
    with pytest.raises(OffmarlError, match="candidates"):
        MAGPlanner(UncertaintyScorer(), l=2, h=2, candidates="best")
    with pytest.raises(OffmarlError, match="planner.score"):
        PlannerConfig(score="oracle")


# ---------------------------------------------------------------- the planner around a plain rollout
class PreferCandidate0:
    """A scorer that ranks the candidates by their index (row b * L + c scores c): candidate 0,
    the one a plain rollout draws, always wins."""
    uses_ensemble = False

    def __init__(self, l):
        self.l = l

    def __call__(self, states, joint, out=None):
        return (torch.arange(states.shape[0], device=states.device) % self.l).to(states.dtype)


@pytest.mark.parametrize("sample,history", [(False, 0), (True, 3)])
def test_planner_that_keeps_candidate_0_reproduces_the_plain_rollout(fitted, sample, history, linear_toy):
    """L = 3 candidates, H = 3 look-ahead steps, a scorer that always prefers candidate 0: the
    planner's machinery runs (candidates, look-ahead continuations, per-state selection), yet
    the rollout must be the plain one, bit for bit: candidate 0 is what a plain rollout draws,
    and everything else comes from the planning stream, seeded by ONE draw from the rollout's
    generator at the start (the plain rollout's generator skips that draw here)."""
    ds, model = fitted
    box = dataset_box(ds)
    cfg = RolloutConfig(horizon=5, sample=sample, eps_g_threshold=0.5)
    start = {"states": ds.tensors("cpu")["states"][:64]}
    plain_gen = torch.Generator().manual_seed(7)
    torch.randint(0, 2 ** 62, (1,), generator=plain_gen)  # the draw that seeds the planning stream
    want, want_info = model_rollout(model, linear_toy.policy(), start, linear_toy.observe, cfg, box,
                                    plain_gen, gamma=0.99, history=history)
    planner = MAGPlanner(PreferCandidate0(2), l=2, h=3)
    got, info = model_rollout(model, linear_toy.policy(), start, linear_toy.observe, cfg, box,
                              torch.Generator().manual_seed(7), gamma=0.99, history=history, planner=planner)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert info["planner_frac_replaced"] == 0.0 and info["planner_seconds"] > 0
    # and the planner is not a no-op: preferring the last candidate changes the rollout
    class PreferLast(PreferCandidate0):
        def __call__(self, states, joint, out=None):
            return -super().__call__(states, joint, out)

    other, other_info = model_rollout(model, linear_toy.policy(), start, linear_toy.observe, cfg, box,
                                      torch.Generator().manual_seed(7), gamma=0.99, history=history,
                                      planner=MAGPlanner(PreferLast(2), l=2, h=3))
    assert other_info["planner_frac_replaced"] > 0.5 and not torch.equal(other["next_states"], want["next_states"])


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["elites", "samples", "both"])
def test_shapes(fitted, device, mode, linear_toy):
    ds, model = fitted
    model = model.to(device)
    b, l, hh, k = 7, 2, 3, 2
    box = dataset_box(ds, device)
    states = ds.tensors(device)["states"][:b]
    cand = model.sample_candidates(states, torch.zeros(b, N * A, device=device), 2,
                                   torch.Generator(device=device).manual_seed(0),
                                   torch.Generator(device=device).manual_seed(1), mode)
    assert cand["next_states"].shape == (b, 2, S) and cand["rewards"].shape == (b, 2)
    assert cand["done_prob"].shape == (b, 2)
    cfg = RolloutConfig(horizon=hh, eps_g_threshold=2.0)
    planner = MAGPlanner(UncertaintyScorer(), l=l, h=4, candidates=mode)
    batch, info = model_rollout(model, linear_toy.policy(device), {"states": states}, linear_toy.observe, cfg, box,
                                torch.Generator(device=device).manual_seed(0), gamma=0.99, history=k, planner=planner)
    assert batch["next_states"].shape == (hh, b, S) and batch["obs"].shape == (hh, b, N, S)
    assert batch["hist_obs"].shape == (hh, b, k, N, S) and batch["actions"].shape == (hh, b, N, A)
    for key in ("rewards", "dones", "timeouts", "valid", "eps_g", "done_prob"):
        assert batch[key].shape == (hh, b), key
    assert batch["next_states"].device.type == device
    assert info["planner_seconds"] > 0
    model.to("cpu")


# ---------------------------------------------------------------- R_m
def test_error_labels_are_the_papers(fitted, linear_toy):
    model = linear_toy.constant_model([[0.5, 0, 0, 0, 2.0], [0.5, 0, 0, 0, 2.0]])
    s = torch.zeros(3, S)
    ns = torch.zeros(3, S)
    ns[:, 0] = torch.tensor([0.5, 0.0, 1.5])
    r = torch.tensor([2.0, 0.0, 1.0])
    lab = model_error_labels(model, s, torch.zeros(3, N, A), ns, r, linear_toy.observe)
    # each of the N = 2 agents sees the whole state: 2 * |0.5 - ns0| + |2 - r|
    assert lab.tolist() == pytest.approx([0.0, 2 * 0.5 + 2.0, 2 * 1.0 + 1.0])


def test_error_model_fits_and_caches(fitted, tmp_path, linear_toy):
    ds, model = fitted
    cfg = ErrorModelConfig(hidden=(64, 64), steps=400, batch_size=128)
    rm, info = load_or_fit_error_model(model, ds, linear_toy.observe, cfg, tmp_path, "cpu")
    assert not info["cached"] and info["loss_last"] < info["loss_first"]
    assert info["holdout_mse"] < info["holdout_label_var"]  # R_m explains part of the model's error
    rm2, info2 = load_or_fit_error_model(model, ds, linear_toy.observe, cfg, tmp_path, "cpu")
    assert info2["cached"] and info2["path"] == info["path"]
    x = ds.tensors("cpu")
    joint = model.encode_actions(x["actions"][:5])
    step = model.step(x["states"][:5], joint, torch.Generator().manual_seed(0))
    args = (x["states"][:5], joint, step["next_states"], step["rewards"], step["elite_means"].mean(0))
    assert torch.equal(rm(*args), rm2(*args))
    # used as the planner's scorer end to end
    planner = MAGPlanner(ErrorModelScorer(rm), l=2, h=3)
    batch, _ = model_rollout(model, linear_toy.policy(), {"states": x["states"][:8]}, linear_toy.observe,
                             RolloutConfig(horizon=2, eps_g_threshold=2.0), dataset_box(ds),
                             torch.Generator().manual_seed(0), gamma=0.99, planner=planner)
    assert batch["states"].shape == (2, 8, S)


# ---------------------------------------------------------------- MOMA-PPO end to end
@pytest.mark.slow
def test_moma_ppo_with_mag_planner_end_to_end_and_resume(tmp_path, coordination_file):
    """planner.kind=mag trains, logs the planner's cost, caches R_m next to the world model, and resumes exactly."""
    path = coordination_file(size=1000)
    over = ["world_model.hidden=[16,16]", "world_model.max_steps=100", "world_model.eval_every=50",
            "rollout_batch=64", "rollout.horizon=3", "ppo.minibatch_size=64", "ppo.epochs=1",
            "loop.eval_every=4", "loop.eval_episodes=1", "loop.final_eval_episodes=1", "loop.log_every=1",
            "loop.checkpoint_every=2", "planner.kind=mag", "planner.l=2",
            "planner.h=3", "planner.error_steps=50", "planner.error_hidden=[16,16]"]

    def train(out, steps, resume=None):
        if resume:  # a run continues with its own config and data
            return train_from_options(resume=resume, steps=steps, device="cpu", log=lambda *a, **k: None)
        return train_from_options(str(path), "moma-ppo", steps=steps, seed=0, device="cpu", out=str(out),
                                  overrides=over + [f"cache_dir={out / 'cache'}"],
                                  resume=resume, log=lambda *a, **k: None)

    def rows(run_dir):
        drop = {"time", "steps_per_s", "planner_seconds", "planner_rollout_seconds"}
        lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in drop} for r in lines if r["phase"] in ("train", "eval")]

    full = train(tmp_path / "a", 4)
    train_rows = [r for r in rows(full["run_dir"]) if r["phase"] == "train"]
    assert train_rows and all("planner_frac_replaced" in r for r in train_rows)
    # one cache per run, as tests/test_moma_ppo.py: a run that LOADS the world model draws its init from the
    # global RNG (load_world_model builds the module outside fork_rng) and then differs from a fitting run
    assert list((tmp_path / "a" / "cache").glob("*/error_model-*.pt"))
    part = train(tmp_path / "b", 2)
    cfg = Path(part["run_dir"]) / "config.yaml"
    c = yaml.safe_load(cfg.read_text())
    c["config"]["loop"]["steps"] = 4
    cfg.write_text(yaml.safe_dump(c))
    (Path(part["run_dir"]) / "eval.json").unlink()
    train(tmp_path / "b", None, resume=part["run_dir"])
    assert rows(full["run_dir"]) == [r for r in rows(part["run_dir"]) if r["phase"] != "final_eval"]


def test_plan_takes_latent_states_of_any_shape():
    """The planner contract the online model uses: states [M, N, D], a memory tiled per candidate."""

    class Halving:  # next latent = latent / 2; error = sum |latent|; memory counts the steps per row
        def tile(self, memory, l):
            return memory.repeat_interleave(l, dim=0)

        def advance(self, states, memory, generator, last):
            score = states.abs().sum(dim=(1, 2))
            ones = torch.ones_like(score)
            return (None if last else states / 2), memory + 1, score, ones, ones.bool()

    b, l, n, d = 3, 4, 2, 5
    cands = torch.arange(b * l * n * d, dtype=torch.float32).view(b, l, n, d) % 7 - 3
    idx, scores = plan(cands, torch.zeros(b), Halving(), h=3, discount=0.5)
    flat = cands.abs().sum(dim=(2, 3))
    # j = 1: the candidate (weight 0.5), j = 2: its successor (weight 0.25); the weighted mean
    torch.testing.assert_close(scores, (0.5 * flat + 0.25 * flat / 2) / 0.75)
    assert idx.tolist() == flat.argmin(dim=1).tolist()


def test_discount_0_scores_the_candidates_own_terms_without_a_look_ahead():
    """discount 0 weighs look-ahead step j >= 1 by 0: the plan is the judge's argmin, and no continuation runs."""

    class JudgeOnly:
        def judge(self, context, candidates):
            score = candidates.abs().sum(-1).flatten()
            ones = torch.ones_like(score)
            return score, ones, ones.bool()

        def tile(self, memory, l):
            return memory

        def advance(self, states, memory, generator, last):
            raise AssertionError("discount 0 must not look ahead")

    cands = torch.tensor([[[3.0], [1.0], [2.0]], [[0.5], [4.0], [-0.1]]])  # [B=2, L=3, 1]
    idx, scores = plan(cands, None, JudgeOnly(), h=4, discount=0.0, context={}, continuations=4)
    torch.testing.assert_close(scores, cands.abs().squeeze(-1))
    assert idx.tolist() == [1, 2]


def test_deviation_scorer_prefers_the_prediction_nearest_the_elites_mean(linear_toy):
    """score = sum_i ||obs_i(s_hat') - obs_i(s_bar')|| + |r_hat - r_bar| (no network)."""
    from offmarl.worldmodel.scorers import DeviationScorer, make_scorer

    scorer = make_scorer("deviation", linear_toy.observe)
    assert isinstance(scorer, DeviationScorer)
    b = 5
    mean = torch.zeros(2, b, S + 1)  # two elites, both predicting s' = 0, r = 0
    near, far = torch.full((b, S), 0.1), torch.full((b, S), 1.0)
    r = torch.zeros(b)
    d_near = scorer(None, None, {"next_states": near, "rewards": r, "elite_means": mean})
    d_far = scorer(None, None, {"next_states": far, "rewards": r + 1, "elite_means": mean})
    assert (d_near < d_far).all()
    obs = linear_toy.observe(far)
    torch.testing.assert_close(d_far, obs.norm(dim=-1).sum(-1) + 1.0)
    with pytest.raises(OffmarlError, match="deviation"):
        PlannerConfig(score="nearest")
