"""ITD3+BC: TD3+BC (Fujimoto & Gu 2021) run independently by every agent.

Agent i has its own twin critic on (own observation, own action) and its own deterministic
actor; the team reward is each agent's reward. All agents are trained at once (batched weights),
but nothing is shared between them.

    critic_i   Q_i(o_i, a_i) <- r + gamma (1 - terminal) min_j Q_target_ij(o_i', a_i')
               a_i' = clip(pi_target_i(o_i') + clip(N(0, 0.2), -0.5, 0.5), -1, 1)  (target smoothing)
    actor_i    every 2nd step: min  -lambda_i Q_i1(o_i, pi_i(o_i)) + (pi_i(o_i) - a_i)^2,
               lambda_i = alpha / mean|Q_i1(o_i, pi_i(o_i))|, alpha = 2.5; then Polyak targets.

Discrete form (no deterministic action to perturb): critic_i outputs one value per own action,
Q_i(o_i, .) (the DQN head); the actor is a categorical pi_i(. | o_i) over available actions;
    target    r + gamma (1 - terminal) sum_a pi_target_i(a | o_i') min_j Q_target_ij(o_i', a)
              (the expectation under the stochastic target policy replaces target smoothing)
    actor     min  -lambda_i sum_a pi_i(a | o_i) Q_i1(o_i, a) + CE(pi_i, a_i)
              (exact expected Q — no sampling — plus the cross-entropy BC term).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offmarl.nn.actor_critic import ActorCriticBase, TD3BCConfig, independent_next_value
from offmarl.nn.agents import check_action_box, soft_update_, standardise
from offmarl.nn.critics import AgentCritics
from offmarl.nn.losses import bc_mse
from offmarl.loop import BuildsWhole, LoopConfig


@dataclass
class Config(TD3BCConfig):
    """TD3+BC's values (offmarl/nn/actor_critic.py: TD3BCConfig) and the training length."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # TD3+BC paper: 1M steps


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "itd3bc")


class Algorithm(ActorCriticBase, BuildsWhole):
    """ITD3+BC: per-agent twin critics on (o_i, a_i) (built by ActorCriticBase, offmarl/nn/actor_critic.py)."""

    name = "itd3bc"

    # ------------------------------------------------------------------ critic
    def data_q(self, obs, actions) -> torch.Tensor:
        """Both twins at the data's actions: [2, B, N]."""
        if self.layout.discrete:
            return AgentCritics.at(self.critic(obs), actions)
        return self.critic(obs, actions)

    # ------------------------------------------------------------------ actor
    def actor_loss(self, obs, actions, avail):
        """Returns (loss summed over agents, metrics)."""
        if self.layout.discrete:
            log_probs = self.actor.log_probs(obs, avail)
            with torch.no_grad():
                q1 = self.critic.q1(obs)  # [B, N, K]: does not depend on the actor
            q_pi = (log_probs.exp() * q1).sum(-1)
            bc = -log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1).mean(0)
        else:
            pi = self.actor(obs)
            q_pi = self.critic.q1(obs, pi)
            bc = bc_mse(pi, actions, self.actor.action_mask)
        lam = self.cfg.alpha / q_pi.abs().mean(0).detach()  # [N], one lambda per agent
        loss = (-lam * q_pi.mean(0) + bc).sum()
        return loss, {"actor_loss": loss.detach(), "bc_loss": bc.sum().detach(), "lambda": lam.mean()}

    def update(self, step: int) -> dict:
        cfg = self.cfg
        b = self.dataset.sample(cfg.batch_size, self.generators["sample"], self.device)
        obs = standardise(self.obs_norm, b["observations"])
        next_obs = standardise(self.obs_norm, b["next_observations"])
        next_v = independent_next_value(self.actor_target, self.critic_target, next_obs,
                                        b.get("next_avail_actions"), cfg, self.generators["sample"])  # [B, N]
        target = b["rewards"][:, None] + cfg.gamma * (1.0 - b["terminals"].float())[:, None] * next_v
        q = self.data_q(obs, b["actions"])
        critic_loss = (q - target).pow(2).mean(1).sum()  # each twin's and agent's MSE, summed
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q[0].mean().detach()}

        if step % cfg.policy_delay == 0:
            actor_loss, actor_metrics = self.actor_loss(obs, b["actions"], b.get("avail_actions"))
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            soft_update_(self.critic_target, self.critic, cfg.tau)
            soft_update_(self.actor_target, self.actor, cfg.tau)
            metrics.update(actor_metrics)
        return metrics
