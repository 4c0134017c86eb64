"""MAG planner: choose each imagined next state by the model error its continuation accumulates.

MAG (Models as AGents, AAAI 2023) treats the world model's predictions as the actions of "model
agents" and the current joint policy as their environment; the model agents' reward is minus the
model error. Its practical form is random shooting (Algorithm 1, lines 8-13), here per start state:

    for t = 0 .. k-1 (the rollout's steps):
        a_t ~ pi(o_t)                                        as in model_rollout
        candidates s^c_{t+1}, c = 0..L-1                      different elites and/or Gaussian samples
        continuation of each candidate, j = 1 .. H-1:         a^c_{t+j} ~ pi(obs(s^c_{t+j}));
                                                              s^c_{t+j+1} = model step (random elite)
        score_c = sum_{j=1}^{H-1} gamma^{j-1} R_m(s^c_{t+j}, a^c_{t+j})    (or eps_g there)
        c*(b) = argmin_c score_c(b)                           PER START STATE b
        commit candidate c*(b)'s first step (next state, reward, done) as the rollout's step t

The paper's sum also has the j = 0 term R_m(s_t, a_t); it is the same for every candidate, so it is
left out. All B x L continuations run as one batch of B*L rows; the only Python loop is over H.

Deviation from the MAG release, on purpose: it takes ONE candidate for the whole batch (argmin over
L of the batch-averaged score); we take the argmin per start state (``select_candidates``).

Randomness (so that L = 1 reproduces ``model_rollout`` exactly and resume stays exact): the
rollout's own generator draws, per step and in this order, the policy's actions, candidate 0's
elite (and Gaussian noise when ``sample``) — exactly the draws of ``EnsembleWorldModel.step``.
With L > 1, one 62-bit seed is drawn from that generator at the start of ``rollout``; it seeds a
second generator that draws everything else (other candidates, continuation actions and steps).
With L = 1 nothing else is drawn and the rollout equals ``model_rollout`` bit for bit.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from offmarl.errors import OffmarlError
from offmarl.worldmodel.ensemble import EnsembleWorldModel
from offmarl.worldmodel.error_model import ErrorModel, ErrorModelConfig, load_or_fit_error_model
from offmarl.worldmodel.rollout import (Policy, RolloutConfig, RolloutRecorder, clip_states, record_step, shift_history,
                                       start_history)
from offmarl.worldmodel.uncertainty import eps_g

CANDIDATE_MODES = ("elites", "samples", "both")
SCORES = ("error_model", "uncertainty")


class Scorer(Protocol):
    uses_ensemble: bool  # True: needs the model's prediction at (states, joint) (``out`` below)

    def __call__(self, states: torch.Tensor, joint: torch.Tensor, out: dict[str, torch.Tensor] | None
                 ) -> torch.Tensor:
        """states [M, S], joint [M, NA], out = model.step(...) or None -> predicted error [M]."""


class ErrorModelScorer:
    """MAG's scorer: the learned model-error predictor R_m."""
    uses_ensemble = False

    def __init__(self, error_model: ErrorModel):
        self.error_model = error_model

    def __call__(self, states, joint, out=None):
        return self.error_model(states, joint)


class UncertaintyScorer:
    """Ensemble disagreement eps_g at (state, joint action): no extra network, no labels."""
    uses_ensemble = True

    def __call__(self, states, joint, out=None):
        return eps_g(out["elite_means"])


class LookaheadWorld(Protocol):
    """What the planner looks ahead in: a model, the current joint policy and a scorer behind one
    interface, so that the SAME planner serves the offline ensemble (states [M, S]) and the online
    latent model (states [M, N, D]). Rows are independent; row ``b * L + c`` is candidate c of
    start state b."""

    def tile(self, memory: Any, l: int) -> Any:
        """Each start state's memory (policy history, recurrent context; None if there is none)
        repeated L times, row ``b * L + c`` as above."""

    def advance(self, states: torch.Tensor, memory: Any, generator: torch.Generator | None, last: bool
                ) -> tuple[torch.Tensor | None, Any, torch.Tensor]:
        """One look-ahead step from ``states`` [M, ...]: the current policy acts, the scorer gives
        the predicted one-step model error of (states, actions) [M], and unless ``last`` the model
        predicts the next states. -> (next_states [M, ...] or None, next memory, score [M])."""


@torch.no_grad()
def plan(candidates: torch.Tensor, memory: Any, world: LookaheadWorld, h: int, discount: float = 1.0,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAG's choice (Algorithm 1): for each start state, the candidate next state whose (H-1)-step
    continuation under the current joint policy accumulates the least predicted error.

    candidates: [B, L, ...] next-state candidates of B start states; memory: the start states'
    memory AFTER the committed step (``world.tile`` repeats it per candidate).
    returns idx [B] (``select_candidates``), scores [B, L]. All B x L continuations run as one
    batch; the only Python loop is over the H - 1 look-ahead steps.
    """
    b, l = candidates.shape[:2]
    states = candidates.reshape(b * l, *candidates.shape[2:])
    mem = world.tile(memory, l)
    score = states.new_zeros(b * l)
    for j in range(1, h):
        states, mem, s = world.advance(states, mem, generator, last=j == h - 1)
        score += (discount ** (j - 1)) * s
    scores = score.view(b, l)
    return select_candidates(scores), scores


def select_candidates(scores: torch.Tensor) -> torch.Tensor:
    """scores [B, L] (accumulated predicted error) -> idx [B]: each start state's own argmin."""
    return scores.argmin(dim=1)


@torch.no_grad()
def sample_candidates(model: EnsembleWorldModel, states: torch.Tensor, joint: torch.Tensor, l: int,
                      mode: str = "elites", generator: torch.Generator | None = None,
                      plan_generator: torch.Generator | None = None, sample: bool = False
                      ) -> dict[str, torch.Tensor]:
    """L candidate model transitions per row.

    Candidate 0 is drawn exactly as ``model.step`` draws its transition (same generator calls);
    candidates 1..L-1 use ``plan_generator``: "elites" = the other elites in a random order per row
    (distinct while L <= elites), "samples" = Gaussian samples of candidate 0's elite, "both" =
    Gaussian samples of the other elites. ``sample`` (the rollout's MOPO option) adds the Gaussian
    noise to every candidate.
    states [B, S], joint [B, NA] -> next_states [B, L, S], rewards [B, L], done_prob [B, L],
    elite_means / elite_logvars [Ee, B, S+1] (of (states, joint), shared by the candidates)
    """
    mean, logvar, done_prob = model.predict(states, joint)
    em, el, ed = mean[model.elite_idx], logvar[model.elite_idx], done_prob[model.elite_idx]
    ne, b, dev = em.shape[0], states.shape[0], states.device
    rows = torch.arange(b, device=dev)
    pick0 = torch.randint(ne, (b,), generator=generator, device=dev)
    out0 = em[pick0, rows]
    if sample:
        noise = torch.randn(out0.shape, generator=generator, device=out0.device, dtype=out0.dtype)
        out0 = out0 + noise * torch.exp(0.5 * el[pick0, rows])
    outs, dones = out0.unsqueeze(1), ed[pick0, rows].unsqueeze(1)
    if l > 1:
        if mode == "samples":
            picks = pick0.unsqueeze(1).expand(b, l - 1)
        else:  # a random order of the elites per row with pick0 first, then the others (wrapping if L > Ee)
            key = torch.rand(b, ne, generator=plan_generator, device=dev)
            key[rows, pick0] = -1.0
            order = key.argsort(dim=1)
            picks = order[:, torch.arange(1, l, device=dev) % ne]
        other = em[picks, rows[:, None]]  # [B, L-1, S+1]
        if mode in ("samples", "both") or sample:
            noise = torch.randn(other.shape, generator=plan_generator, device=dev, dtype=other.dtype)
            other = other + noise * torch.exp(0.5 * el[picks, rows[:, None]])
        outs = torch.cat([outs, other], dim=1)
        dones = torch.cat([dones, ed[picks, rows[:, None]]], dim=1)
    return {"next_states": outs[..., :-1], "rewards": outs[..., -1], "done_prob": dones,
            "elite_means": em, "elite_logvars": el}


@torch.no_grad()
def plan_next_states(model: EnsembleWorldModel, policy: Policy, candidates: torch.Tensor,
                     obs_fn: Callable[[torch.Tensor], torch.Tensor], hist: dict[str, torch.Tensor] | None,
                     scorer: Scorer, horizon: int, discount: float = 1.0, box: dict[str, torch.Tensor] | None = None,
                     generator: torch.Generator | None = None, sample: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each start state, the candidate next state whose (H-1)-step continuation under the current
    joint policy accumulates the least predicted error.

    candidates: [B, L, S] (already clipped to the box if rollouts clip); hist: each start state's
    history AFTER the committed (obs, action) was shifted in ({hist_obs [B, K, N, O], ...}) or None;
    box: clip continuation states to it (None: no clipping); generator: the planning stream.
    returns idx [B] (see ``select_candidates``), scores [B, L]
    """
    b, l, s = candidates.shape
    states = candidates.reshape(b * l, s)  # row b * L + c = candidate c of start state b
    if hist is not None:
        hist = {k: v.repeat_interleave(l, dim=0) for k, v in hist.items()}
    score = states.new_zeros(b * l)
    for j in range(1, horizon):
        obs = obs_fn(states)
        actions, _ = policy.act(obs, hist, avail=None, deterministic=False, generator=generator)
        env_actions = policy.env_actions(actions) if hasattr(policy, "env_actions") else actions
        joint = model.encode_actions(env_actions)
        last = j == horizon - 1
        out = model.step(states, joint, generator, sample=sample) if (not last or scorer.uses_ensemble) else None
        score += (discount ** (j - 1)) * scorer(states, joint, out)
        if not last:
            if hist is not None:
                hist = shift_history(hist, obs, env_actions)
            states = clip_states(out["next_states"], box)
    scores = score.view(b, l)
    return select_candidates(scores), scores


class MAGPlanner:
    """Model rollouts whose every step is chosen among L candidates by an H-step lookahead."""

    def __init__(self, model: EnsembleWorldModel, scorer: Scorer, l: int = 5, h: int = 7, discount: float = 1.0,
                 candidates: str = "elites", info: dict[str, Any] | None = None):
        if candidates not in CANDIDATE_MODES:
            raise OffmarlError(f"MAG planner: candidates={candidates!r}; choose one of {', '.join(CANDIDATE_MODES)}")
        if l < 1:
            raise OffmarlError(f"MAG planner: l={l} must be >= 1 (1 = plain model rollouts)")
        if l > 1 and h < 2:
            raise OffmarlError(f"MAG planner: h={h} gives no lookahead to compare {l} candidates; use h >= 2")
        ne = len(model.elite_idx)
        if candidates == "elites" and l > ne:
            raise OffmarlError(f"MAG planner: candidates='elites' gives at most {ne} distinct candidates (the "
                               f"model's elites), l={l}; lower l or use candidates='both'")
        self.model, self.scorer, self.l, self.h = model, scorer, l, h
        self.discount, self.candidates = discount, candidates
        self.info = dict(info or {})

    @classmethod
    def from_config(cls, cfg, model: EnsembleWorldModel, dataset, device,
                    obs_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    cache_dir: str | None = None, log=print) -> MAGPlanner:
        """cfg: moma_ppo.PlannerConfig. With score='error_model', R_m is loaded from / fitted into
        ``cache_dir`` (the world model's folder; None = fit without caching)."""
        if cfg.score not in SCORES:
            raise OffmarlError(f"MAG planner: score={cfg.score!r}; choose one of {', '.join(SCORES)}")
        info: dict[str, Any] = {}
        if cfg.score == "error_model":
            if obs_fn is None:
                from offmarl.envs import make_env

                obs_fn = make_env(dataset.meta.env, obs=dataset.meta.obs_scheme).observe
            ecfg = ErrorModelConfig(hidden=tuple(cfg.error_hidden), steps=cfg.error_steps, lr=cfg.error_lr,
                                    batch_size=cfg.error_batch_size, max_labels=cfg.error_max_labels,
                                    seed=cfg.error_seed)
            rm, info = load_or_fit_error_model(model, dataset, obs_fn, ecfg, cache_dir, device)
            log(("loaded" if info.get("cached") else "fitted") + f" MAG error model R_m {info.get('path')} "
                f"(holdout mse {info.get('holdout_mse', float('nan')):.4g} vs label variance "
                f"{info.get('holdout_label_var', float('nan')):.4g})")
            scorer: Scorer = ErrorModelScorer(rm)
        else:
            scorer = UncertaintyScorer()
        return cls(model, scorer, cfg.l, cfg.h, cfg.discount, cfg.candidates, info)

    @torch.no_grad()
    def rollout(self, policy: Policy, start: dict[str, torch.Tensor | None],
                obs_fn: Callable[[torch.Tensor], torch.Tensor], cfg: RolloutConfig,
                box: dict[str, torch.Tensor] | None, generator: torch.Generator | None = None,
                done_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Same contract and bookkeeping as ``model_rollout`` (batch [H, B, ...], info); info adds
        planner_seconds (time spent sampling the extra candidates and looking ahead),
        planner_frac_replaced (steps where a candidate other than 0 won), planner_score_gain (mean
        score of candidate 0 minus the chosen one's, over valid steps)."""
        t_start = time.perf_counter()
        model = self.model
        states = start["states"]
        b, dev = states.shape[0], states.device
        k = cfg.history
        if cfg.clip_to_box and box is None:
            raise OffmarlError("MAG planner: clip_to_box=True needs a box (see dataset_box)")
        plan_gen = None
        if self.l > 1:  # the only extra draw from the rollout generator (see the module docstring)
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=dev))
            plan_gen = torch.Generator(device=dev).manual_seed(seed)
        clip_box = box if cfg.clip_to_box else None
        obs = obs_fn(states)
        hist = start_history(start, obs, model, k, "MAG planner")

        recorder = RolloutRecorder(b, dev)
        plan_seconds, replaced, gain, n_valid = 0.0, 0.0, 0.0, 0.0
        rows = torch.arange(b, device=dev)
        for h in range(cfg.horizon):
            alive = recorder.alive
            actions, logp = policy.act(obs, hist, avail=None, deterministic=False, generator=generator)
            env_actions = policy.env_actions(actions) if hasattr(policy, "env_actions") else actions
            joint = model.encode_actions(env_actions)
            t0 = time.perf_counter()
            cand = sample_candidates(model, states, joint, self.l, self.candidates, generator, plan_gen, cfg.sample)
            cand_states, cand_r = cand["next_states"], cand["rewards"]
            unclipped = cand_states
            if cfg.clip_to_box:
                cand_states = clip_states(cand_states, box)
                cand_r = cand_r.clamp(min=box["reward_low"], max=box["reward_high"])
            nxt = None if hist is None else shift_history(hist, obs, env_actions)
            if self.l > 1:
                idx, scores = plan_next_states(model, policy, cand_states, obs_fn, nxt, self.scorer, self.h,
                                               self.discount, clip_box, plan_gen, cfg.sample)
                chosen = scores.gather(1, idx[:, None]).squeeze(1)
                replaced += float(((idx != 0) & alive).sum())
                gain += float(((scores[:, 0] - chosen) * alive).sum())
                n_valid += float(alive.sum())
            else:
                idx = torch.zeros(b, dtype=torch.long, device=dev)
            plan_seconds += time.perf_counter() - t0
            next_states = cand_states[rows, idx]
            raw_r = cand_r[rows, idx]
            rec, end = record_step(cfg, h, box, done_fn, obs_fn, alive, states, obs, actions, logp, hist, nxt,
                                   next_states, unclipped[rows, idx], raw_r, cand["done_prob"][rows, idx],
                                   cand["elite_means"], cand["elite_logvars"])
            recorder.add(rec, end)
            states, obs, hist = rec["next_states"], rec["next_obs"], nxt

        batch, info = recorder.finish()
        info.update({
            "planner_seconds": plan_seconds,
            "planner_rollout_seconds": time.perf_counter() - t_start,
            "planner_frac_replaced": replaced / max(n_valid, 1.0),
            "planner_score_gain": gain / max(n_valid, 1.0),
        })
        return batch, info
