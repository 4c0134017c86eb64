"""ICQL: independent TD3-style actor-critic with the CQL regulariser (Kumar et al. 2020),
as the ICQL baseline of the OMAR paper (Pan et al. 2022) and its public release.

Every agent i has its own twin critic on (o_i, a_i) and its own deterministic actor; nothing
is shared between agents (all agents batched in one set of weights).

    critic_i  MSE to r + gamma (1 - terminal) min_j Q_target_ij(o_i', pi_target_i(o_i'))
              + cql_alpha * [ temp * logsumexp_a (Q_ij(o_i, a) - log mu(a)) / temp  -  Q_ij(o_i, a_i) ]
              where the logsumexp runs over 10 uniform actions, 10 noisy pi_i(o_i) and 10 noisy
              pi_i(o_i') actions (noise std 0.2), each corrected by the log-density mu it was
              drawn from (CQL(H) importance sampling; the OMAR release subtracts the Gaussian
              DENSITY instead of its log for the noisy actions — we use the log).
    actor_i   min  -Q_i1(o_i, pi_i(o_i)) + 1e-3 * pi_i(o_i)^2    (OMAR release)
    both      gradient norm clipped to 0.5 per agent; targets Polyak-averaged every step.

The critic side (target, CQL logsumexp, clipping, the update itself) is OMAR's too and lives in
``ConservativeActorCritic`` (offmarl/nn/actor_critic.py); this file holds ICQL's actor loss.

Discrete form: Q_i(o_i, .) gives one value per own action, so the CQL logsumexp is exact over
the available actions (discrete CQL(H)); the target is the expectation under the target
categorical actor (as ITD3+BC's discrete form); the actor minimises -sum_a pi_i(a|o_i) Q_i1(o_i, a).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offmarl.nn.actor_critic import ConservativeActorCritic, ConservativeConfig
from offmarl.nn.agents import check_action_box
from offmarl.nn.losses import action_l2
from offmarl.loop import BuildsWhole, LoopConfig


@dataclass
class Config(ConservativeConfig):
    """The OMAR release's values (offmarl/nn/actor_critic.py: ConservativeConfig) and the training length."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # OMAR release, MaMuJoCo: 1e6


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "icql")


class Algorithm(ConservativeActorCritic, BuildsWhole):
    """ICQL: per-agent twin critics on (o_i, a_i) with the CQL regulariser; the actor climbs Q_1."""

    name = "icql"

    # ------------------------------------------------------------------ actor
    def actor_loss(self, obs, actions, avail):
        """ICQL: maximise Q_1 of the own action (+ the release's small action L2)."""
        if self.layout.discrete:
            with torch.no_grad():
                q1 = self.critic.q1(obs)  # [B, N, K]
            q_pi = (self.actor.log_probs(obs, avail).exp() * q1).sum(-1)
            loss = -q_pi.mean(0).sum()
        else:
            pi = self.actor(obs)
            q_pi = self.critic.q1(obs, pi)
            loss = -q_pi.mean(0).sum() + self.cfg.actor_l2 * action_l2(pi, self.actor.action_mask)
        return loss, {"actor_loss": loss.detach(), "q_pi": q_pi.mean().detach()}
