"""MAG planner: choose each imagined next state by the model error R_m predicts for it and its continuation.

MAG (Models as AGents, AAAI 2023) treats the world model's predictions as the actions of "model
agents" and the current joint policy as their environment; the model agents' reward is minus the
model error. Its practical form is random shooting (Algorithm 1, lines 8-13), here per start state:

    for t = 0 .. k-1 (the rollout's steps; the loop is the model's, e.g. worldmodel.model_rollout):
        a_t ~ pi(o_t)
        candidates (s^c_{t+1}, r^c_{t+1}), c = 0..L-1         offered by the model (sample_candidates)
        term j = 0:   R_m(s_t, a_t, s^c_{t+1}, r^c_{t+1})       the candidate itself is judged (``judge``)
        continuation of each candidate, j = 1 .. H-1:         a^c_{t+j} ~ pi(obs(s^c_{t+j}));
                                                              s^c_{t+j+1}, r^c_{t+j+1} = model step
                      R_m(s^c_{t+j}, a^c_{t+j}, s^c_{t+j+1}, r^c_{t+j+1})   (``advance``)
        score_c = the discount^j-weighted MEAN of these terms over the steps the look-ahead takes
        c*(b) = argmin_c score_c(b)                           PER START STATE b
        the loop commits candidate c*(b)'s first step as its step t

R_m takes the TRANSITION (paper, "Approximating R_m": the model agents' action a_m is the
prediction (o', R) itself), so the j = 0 term differs between candidates and is kept. Per step
the error is averaged over the agents alive before and after the step (a dead agent's observation
is zeros and trivially "predicted"; counting it would favour futures in which agents die), and the
look-ahead of a candidate stops where the model predicts termination (continuation < 0.5).

Deviations from the MAG release / paper, on purpose:
  * one candidate for the whole batch there (argmin over L of the batch-averaged score); here the
    argmin per start state (``select_candidates``);
  * the paper sums the H terms; we average over the steps actually taken (the same ranking when
    no candidate terminates; a sum would favour futures that end early);
  * ``continuations`` = K > 1 averages K independent continuations per candidate (noise control:
    one stochastic continuation is a noisy estimate; ``offmarl diagnose`` measures the score's
    repeatability).

The planner knows no model: it looks ahead through a ``LookaheadWorld`` (the model, the current
policy and a scorer of model error behind ``judge`` / ``tile`` / ``advance``), so the SAME ``plan``
serves the offline ensemble (states [M, S], worldmodel/rollout.py:EnsembleLookahead) and an online
latent model (states [M, N, D], worldmodel/latent.py:LatentLookahead). All B x L x K continuations
run as one batch; the only Python loop is over H.

Randomness (so that L = 1 reproduces plain rollouts exactly and resume stays exact): the rollout's
own generator draws only what a plain rollout draws (policy actions, candidate 0). With L > 1, one
62-bit seed is drawn from it at the start of a rollout (``MAGPlanner.plan_generator``); that second
generator draws everything else (other candidates, continuation actions and steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from offmarl.errors import OffmarlError

KINDS = ("none", "mag")
CANDIDATE_MODES = ("elites", "samples", "both")
SCORES = ("error_model", "uncertainty", "deviation")
ERROR_INPUTS = ("transition", "state_action")


@dataclass
class PlannerConfig:
    """The MAG planner's settings, ONE config for both loops: offline MOMA-PPO(+MAG)
    (``moma_ppo.Config.planner``; the defaults below) and the online loop (``online.OnlineConfig.planner``,
    built with the online defaults by ``online.online_planner``). Keys marked "offline only" mean
    nothing online (``OnlineConfig`` refuses a changed value, naming the online key that does the job);
    keys marked "online only" mean nothing offline."""
    kind: str = "none"          # none | mag (MAG planner over candidate predictions; docs/mag.md). Offline only:
    #                             online, --algo mag plans and mamba / mappo do not
    l: int = 4                  # L candidates per step (MAG SMAC table: 4-5; configs/moma-ppo.yaml `mag`)
    h: int = 4                  # H lookahead steps incl. the candidate's own (MAG SMAC: 6-10; ours 4, cost ~ L*(H-1))
    score: str = "error_model"  # error_model (MAG: learned R_m) | uncertainty (eps_g, no extra network) |
    #                             deviation (the prediction's distance from the elites' mean; no network).
    #                             Online: error_model (the latent model's R_m) | deviation (from the prior's
    #                             mean prediction, worldmodel/error_model.py LatentDeviationScore)
    discount: float = 0.5       # discount^j on look-ahead step j's score; MAG Algorithm 1: 1 (plain sum). Ours:
    #                             reacher po, K = 4, docs/mag.md "Diagnose": Spearman 0.26 -> 0.43, pick's error
    #                             vs random -7.6% -> -10.0% (the continuation's terms are noisy).
    #                             0: only the candidates' own terms, no look-ahead runs (ant-medium-v1: pick
    #                             vs random -3.1% vs -3.6% with it; 0.9 s vs ~12 s of planning per iteration)
    continuations: int = 4      # K continuations per candidate (ours; docs/mag.md "Diagnose", reacher po: score
    #                             repeatability 0.15 -> 0.27, pick's error vs random -6.1% -> -7.6% from K 1 -> 4)
    candidates: str = "elites"  # elites (different elites' means) | samples (Gaussian draws) | both.
    #                             Offline only: online candidates are samples of the latent model's prior
    # R_m's fit, offline only (R_m is fitted once on the dataset). Online R_m trains alongside the latent
    # model, one step per model step (online.model_updates), with online.model.error_hidden / error_lr
    error_hidden: tuple[int, ...] = (256, 256, 256, 256)  # R_m widths (MAG appendix B: 4 x 256)
    error_steps: int = 3_000    # R_m Adam steps (ours)
    error_lr: float = 1e-3      # R_m Adam lr (ours)
    error_batch_size: int = 256  # R_m batch (ours)
    error_max_labels: int = 200_000  # dataset transitions labelled with the model's error (ours)
    error_seed: int = 0         # R_m labels, split and init
    error_inputs: str = "transition"  # transition (MAG paper: R_m(s, a, s', r)) | state_action (before: R_m(s, a))
    check_every: int = 10       # online only: every N updates log planner_spearman etc. on a replay batch
    #                             (0 = never; ours). Offline, `offmarl diagnose` measures the planner

    def __post_init__(self):
        self.error_hidden = tuple(int(x) for x in self.error_hidden)
        if self.continuations < 1:
            raise OffmarlError(f"planner.continuations={self.continuations} must be >= 1")
        if self.check_every < 0:
            raise OffmarlError(f"planner.check_every={self.check_every} must be >= 0 (0 = never)")
        for key, value, allowed in (("kind", self.kind, KINDS), ("score", self.score, SCORES),
                                    ("candidates", self.candidates, CANDIDATE_MODES),
                                    ("error_inputs", self.error_inputs, ERROR_INPUTS)):
            if value not in allowed:
                raise OffmarlError(f"planner.{key}={value!r} is unknown; choose one of {', '.join(allowed)}")


# PlannerConfig keys that mean nothing in the online loop, and what does their job there
OFFLINE_ONLY = {"kind": "--algo (mag plans; mamba and mappo do not)",
                "candidates": "none (online candidates are prior samples)",
                "error_hidden": "model.error_hidden", "error_steps": "model_updates",
                "error_lr": "model.error_lr", "error_batch_size": "model.batch",
                "error_max_labels": "none (R_m trains on every replayed sequence)", "error_seed": "--seed"}
# PlannerConfig keys that mean nothing in the offline loop
ONLINE_ONLY = ("check_every",)


class Scorer(Protocol):
    """Predicted one-step model error of transitions; lower is better."""
    uses_ensemble: bool  # True: needs the ensemble's elite predictions in ``out`` (not only the chosen one)

    def __call__(self, states: torch.Tensor, joint: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """states [M, ...], joint [M, NA], out = the model's step from there (next_states [M, ...],
        rewards [M], and elite_means when ``uses_ensemble``) -> error [M]."""


class LookaheadWorld(Protocol):
    """What the planner looks ahead in: a model, the current joint policy and a scorer behind one
    interface, so that the SAME planner serves the offline ensemble (states [M, S]) and the online
    latent model (states [M, N, D]). Rows are independent; row ``(b * L + c) * K + k`` is
    continuation k of candidate c of start state b."""

    def judge(self, context: Any, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The j = 0 term: the scorer on the committed step's transition to each candidate.
        context: what the loop knows of the step (start states, actions, candidate rewards);
        candidates [B, L, ...] -> (score [B*L], weight [B*L] (0: nothing to score), continues
        [B*L] bool (False: the candidate is predicted terminal, the look-ahead stops there))."""

    def tile(self, memory: Any, l: int) -> Any:
        """Each start state's memory (policy history, recurrent context; None if there is none)
        repeated ``l`` times, row ``b * l + c``."""

    def advance(self, states: torch.Tensor, memory: Any, generator: torch.Generator | None, last: bool
                ) -> tuple[torch.Tensor | None, Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One look-ahead step from ``states`` [M, ...]: the current policy acts, the model predicts
        the next states and the scorer scores the transition. -> (next_states [M, ...] (None if
        ``last``), next memory, score [M], weight [M], continues [M] bool)."""


@torch.no_grad()
def plan(candidates: torch.Tensor, memory: Any, world: LookaheadWorld, h: int, discount: float = 1.0,
         generator: torch.Generator | None = None, context: Any = None, continuations: int = 1
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """MAG's choice (Algorithm 1): for each start state, the candidate next state with the least
    predicted model error over its own transition (j = 0, ``world.judge``; skipped when
    ``context`` is None) and its (H-1)-step continuation under the current joint policy.

    candidates: [B, L, ...] next-state candidates of B start states; memory: the start states'
    memory AFTER the committed step (``world.tile`` repeats it per continuation); generator: the
    planning stream (``MAGPlanner.plan_generator``); continuations: K continuations per candidate,
    their scores averaged.
    returns idx [B] (``select_candidates``), scores [B, L]: the weighted mean of the step scores
    over the steps each look-ahead takes (weight discount^j, times the world's weight).
    """
    b, l = candidates.shape[:2]
    k = int(continuations)
    flat = candidates.reshape(b * l, *candidates.shape[2:])
    total, weight = flat.new_zeros(b * l), flat.new_zeros(b * l)
    live = torch.ones(b * l, dtype=torch.bool, device=flat.device)
    if context is not None:
        s0, w0, live = world.judge(context, candidates)
        total, weight = s0 * w0, w0.to(total.dtype)
    if context is not None and discount == 0:  # only the candidates' own terms count: no look-ahead to run
        scores = total / weight.clamp_min(1e-12)
        return select_candidates(scores.view(b, l)), scores.view(b, l)
    if k > 1:
        flat, total, weight, live = (x.repeat_interleave(k, 0) for x in (flat, total, weight, live))
    states, mem = flat, world.tile(memory, l * k)
    for j in range(1, h):
        states, mem, s, w, cont = world.advance(states, mem, generator, last=j == h - 1)
        wj = (discount ** j) * w * live
        total, weight = total + wj * s, weight + wj
        live = live & cont
    scores = (total / weight.clamp_min(1e-12)).view(b, l, k).mean(-1)
    return select_candidates(scores), scores


def select_candidates(scores: torch.Tensor) -> torch.Tensor:
    """scores [B, L] (accumulated predicted error) -> idx [B]: each start state's own argmin."""
    return scores.argmin(dim=1)


class MAGPlanner:
    """The plug-in a rollout loop takes: how many candidates to ask the model for (``l``, ``candidates``),
    how far to look ahead (``h``, ``discount``) and what to minimise (``scorer``, used by the loop's
    LookaheadWorld). ``info`` describes how the scorer was made (e.g. R_m's fit)."""

    def __init__(self, scorer: Scorer, l: int = 4, h: int = 4, discount: float = 1.0, candidates: str = "elites",
                 info: dict[str, Any] | None = None, continuations: int = 1):
        if candidates not in CANDIDATE_MODES:
            raise OffmarlError(f"MAG planner: candidates={candidates!r}; choose one of {', '.join(CANDIDATE_MODES)}")
        if l < 1:
            raise OffmarlError(f"MAG planner: l={l} must be >= 1 (1 = plain model rollouts)")
        if l > 1 and h < 2:
            raise OffmarlError(f"MAG planner: h={h} gives no lookahead to compare {l} candidates; use h >= 2")
        if continuations < 1:
            raise OffmarlError(f"MAG planner: continuations={continuations} must be >= 1")
        self.scorer, self.l, self.h, self.discount, self.candidates = scorer, l, h, discount, candidates
        self.continuations = int(continuations)
        self.info = dict(info or {})

    @classmethod
    def from_config(cls, cfg: PlannerConfig, scorer: Scorer, info: dict[str, Any] | None = None) -> MAGPlanner:
        return cls(scorer, cfg.l, cfg.h, cfg.discount, cfg.candidates, info, cfg.continuations)

    def plan_generator(self, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
        """The planning stream of one rollout: seeded by ONE draw from the rollout's generator when
        L > 1 (none at all when L = 1, so L = 1 draws exactly what a plain rollout draws)."""
        if self.l == 1:
            return None
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=device))
        return torch.Generator(device=device).manual_seed(seed)

    def choose(self, candidates: torch.Tensor, memory: Any, world: LookaheadWorld,
               generator: torch.Generator | None, context: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``plan`` with this planner's H, discount and K -> idx [B], scores [B, L]."""
        return plan(candidates, memory, world, self.h, self.discount, generator, context, self.continuations)


# ---------------------------------------------------------------- how well the planner ranks (offmarl diagnose)
def rank_rows(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis (0 .. L-1; ties broken by position)."""
    return x.argsort(-1).argsort(-1).to(torch.float64)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of Spearman's rho between a [B, L] and b [B, L]; rows where either is constant
    are left out. NaN if none is left."""
    ra, rb = rank_rows(a), rank_rows(b)
    ok = (a.max(-1).values > a.min(-1).values) & (b.max(-1).values > b.min(-1).values)
    if not ok.any():
        return float("nan")
    ra, rb = ra[ok] - ra[ok].mean(-1, keepdim=True), rb[ok] - rb[ok].mean(-1, keepdim=True)
    rho = (ra * rb).sum(-1) / (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    return float(rho.mean())


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two vectors."""
    return spearman_rows(a.reshape(1, -1), b.reshape(1, -1))


def planner_figures(score: torch.Tensor, score2: torch.Tensor, real: torch.Tensor, one_step: torch.Tensor
                    ) -> dict[str, float]:
    """score, score2 [B, L] (two independent scorings), real [B, L] (real multi-step error), one_step
    [B, L] (real error of the candidate itself) -> the planner figures (module doc)."""
    pick = score.argmin(1)
    rows = torch.arange(len(pick))
    real_pick, mean_real = real[rows, pick], real.mean(1)
    return {
        "spearman": spearman_rows(score, real),
        "spearman_one_step": spearman_rows(score, one_step),
        "spearman_across_states": spearman(score.mean(1), real.mean(1)),
        "pick_beats_first": float((real_pick < real[:, 0]).float().mean()),
        "replaced": float((pick != 0).float().mean()),
        "pick_error_change": float(real_pick.mean() / mean_real.mean() - 1.0),
        "oracle_error_change": float(real.min(1).values.mean() / mean_real.mean() - 1.0),
        "score_repeatability": spearman_rows(score, score2),
        "start_states": int(score.shape[0]),
        "candidates": int(score.shape[1]),
    }
