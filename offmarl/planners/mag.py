"""MAG planner: choose each imagined next state by the model error its continuation accumulates.

MAG (Models as AGents, AAAI 2023) treats the world model's predictions as the actions of "model
agents" and the current joint policy as their environment; the model agents' reward is minus the
model error. Its practical form is random shooting (Algorithm 1, lines 8-13), here per start state:

    for t = 0 .. k-1 (the rollout's steps; the loop is the model's, e.g. worldmodel.model_rollout):
        a_t ~ pi(o_t)
        candidates s^c_{t+1}, c = 0..L-1                      offered by the model (sample_candidates)
        continuation of each candidate, j = 1 .. H-1:         a^c_{t+j} ~ pi(obs(s^c_{t+j}));
                                                              s^c_{t+j+1} = model step (random elite)
        score_c = sum_{j=1}^{H-1} discount^{j-1} err(s^c_{t+j}, a^c_{t+j})   (``plan``)
        c*(b) = argmin_c score_c(b)                           PER START STATE b
        the loop commits candidate c*(b)'s first step as its step t

The paper's sum also has the j = 0 term err(s_t, a_t); it is the same for every candidate, so it is
left out. All B x L continuations run as one batch of B*L rows; the only Python loop is over H.

The planner knows no model: it looks ahead through a ``LookaheadWorld`` (the model, the current
policy and a scorer of model error behind ``tile`` / ``advance``), so the SAME ``plan`` serves the
offline ensemble (states [M, S], worldmodel/rollout.py:EnsembleLookahead) and an online latent
model (states [M, N, D]).

Deviation from the MAG release, on purpose: it takes ONE candidate for the whole batch (argmin over
L of the batch-averaged score); we take the argmin per start state (``select_candidates``).

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
SCORES = ("error_model", "uncertainty")


@dataclass
class PlannerConfig:
    kind: str = "none"          # none | mag (MAG planner over candidate predictions; docs/mag.md)
    l: int = 4                  # L candidates per step (MAG SMAC table: 4-5; configs/moma-ppo.yaml `mag`)
    h: int = 4                  # H lookahead steps incl. the candidate's own (MAG SMAC: 6-10; ours 4, cost ~ L*(H-1))
    score: str = "error_model"  # error_model (MAG: learned R_m) | uncertainty (eps_g, no extra network)
    discount: float = 1.0       # discount^(j-1) on the continuation's scores (MAG Algorithm 1: plain sum)
    candidates: str = "elites"  # elites (different elites' means) | samples (Gaussian draws) | both
    error_hidden: tuple[int, ...] = (256, 256, 256, 256)  # R_m widths (MAG appendix B: 4 x 256)
    error_steps: int = 3_000    # R_m Adam steps (ours)
    error_lr: float = 1e-3      # R_m Adam lr (ours)
    error_batch_size: int = 256  # R_m batch (ours)
    error_max_labels: int = 200_000  # dataset transitions labelled with the model's error (ours)
    error_seed: int = 0         # R_m labels, split and init

    def __post_init__(self):
        self.error_hidden = tuple(int(x) for x in self.error_hidden)
        for key, value, allowed in (("kind", self.kind, KINDS), ("score", self.score, SCORES),
                                    ("candidates", self.candidates, CANDIDATE_MODES)):
            if value not in allowed:
                raise OffmarlError(f"planner.{key}={value!r} is unknown; choose one of {', '.join(allowed)}")


class Scorer(Protocol):
    """Predicted one-step model error at (states, joint actions); lower is better."""
    uses_ensemble: bool  # True: needs the model's prediction at (states, joint) (``out`` below)

    def __call__(self, states: torch.Tensor, joint: torch.Tensor, out: dict[str, torch.Tensor] | None
                 ) -> torch.Tensor:
        """states [M, ...], joint [M, NA], out = the model's step from there or None -> error [M]."""


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
    memory AFTER the committed step (``world.tile`` repeats it per candidate); generator: the
    planning stream (``MAGPlanner.plan_generator``).
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


class MAGPlanner:
    """The plug-in a rollout loop takes: how many candidates to ask the model for (``l``, ``candidates``),
    how far to look ahead (``h``, ``discount``) and what to minimise (``scorer``, used by the loop's
    LookaheadWorld). ``info`` describes how the scorer was made (e.g. R_m's fit)."""

    def __init__(self, scorer: Scorer, l: int = 4, h: int = 4, discount: float = 1.0, candidates: str = "elites",
                 info: dict[str, Any] | None = None):
        if candidates not in CANDIDATE_MODES:
            raise OffmarlError(f"MAG planner: candidates={candidates!r}; choose one of {', '.join(CANDIDATE_MODES)}")
        if l < 1:
            raise OffmarlError(f"MAG planner: l={l} must be >= 1 (1 = plain model rollouts)")
        if l > 1 and h < 2:
            raise OffmarlError(f"MAG planner: h={h} gives no lookahead to compare {l} candidates; use h >= 2")
        self.scorer, self.l, self.h, self.discount, self.candidates = scorer, l, h, discount, candidates
        self.info = dict(info or {})

    @classmethod
    def from_config(cls, cfg: PlannerConfig, scorer: Scorer, info: dict[str, Any] | None = None) -> MAGPlanner:
        return cls(scorer, cfg.l, cfg.h, cfg.discount, cfg.candidates, info)

    def plan_generator(self, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
        """The planning stream of one rollout: seeded by ONE draw from the rollout's generator when
        L > 1 (none at all when L = 1, so L = 1 draws exactly what a plain rollout draws)."""
        if self.l == 1:
            return None
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=device))
        return torch.Generator(device=device).manual_seed(seed)

    def choose(self, candidates: torch.Tensor, memory: Any, world: LookaheadWorld,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``plan`` with this planner's H and discount -> idx [B], scores [B, L]."""
        return plan(candidates, memory, world, self.h, self.discount, generator)
