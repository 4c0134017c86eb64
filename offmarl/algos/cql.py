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

Discrete form: Q_i(o_i, .) gives one value per own action, so the CQL logsumexp is exact over
the available actions (discrete CQL(H)); the target is the expectation under the target
categorical actor (as ITD3+BC's discrete form); the actor minimises -sum_a pi_i(a|o_i) Q_i1(o_i, a).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from offmarl.algos.td3bc import ActorCriticBase, independent_next_value
from offmarl.nn.agents import (AgentCritics, check_action_box, clip_grad_norm_per_agent_, mask_logits, soft_update_,
                               standardise)
from offmarl.loop import LoopConfig

DISCRETE_OK = True
CONTINUOUS_OK = True
NEEDS_FULL_OBS = False


@dataclass
class Config:
    hidden: tuple[int, ...] = (256, 256)  # OMAR release, MaMuJoCo: hidden_dim 256, 2 hidden layers
    batch_size: int = 256                 # OMAR release, MaMuJoCo
    lr: float = 3e-4                      # OMAR release, MaMuJoCo (actor and critic)
    gamma: float = 0.99                   # TD3/CQL standard; the OMAR release silently keeps 0.95 (REFERENCE §5)
    tau: float = 0.005                    # OMAR release, MaMuJoCo
    cql_alpha: float = 1.0                # OMAR release --cql_alpha (per-dataset values: configs/omar.yaml)
    num_sampled_actions: int = 10         # OMAR release --num_sampled_actions (per source: uniform, pi(o), pi(o'))
    lse_temp: float = 1.0                 # OMAR release --lse_temp: logsumexp temperature
    cql_sample_noise: float = 0.2         # OMAR release --cql_sample_noise_level: std around pi's actions
    policy_noise: float = 0.0             # OMAR release: no target smoothing (TD3 would use 0.2)
    noise_clip: float = 0.5               # TD3: target smoothing clip (unused while policy_noise = 0)
    policy_delay: int = 1                 # OMAR release: actor and targets updated every step
    grad_clip: float = 0.5                # OMAR release: clip_grad_norm(0.5) on each agent's critic and actor
    actor_l2: float = 1e-3                # OMAR release: + 1e-3 * mean(pi(o)^2) in the actor loss
    normalize_obs: bool = True            # ours: data standardisation in place of the release's input BatchNorm
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # OMAR release, MaMuJoCo: 1e6


def gaussian_log_density(noise: torch.Tensor, std: float, mask: torch.Tensor) -> torch.Tensor:
    """log N(noise; 0, std^2 I) over the real action dims: [..., N, A] -> [..., N]."""
    return ((-0.5 * (noise / std).pow(2) - math.log(std) - 0.5 * math.log(2 * math.pi)) * mask).sum(-1)


def action_l2(pi: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Sum over agents of mean(pi_i^2) over the batch and the agent's real dims."""
    return (pi.pow(2).sum(-1).mean(0) / action_mask.sum(-1)).sum()


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "icql")


class Algorithm(ActorCriticBase):
    """ICQL: per-agent twin critics on (o_i, a_i) (the subclass OMAR keeps them)."""

    name = "icql"

    # ------------------------------------------------------------------ CQL regulariser
    def sampled_logsumexp(self, obs, next_obs) -> torch.Tensor:
        """Continuous CQL(H): temp * logsumexp((Q - log mu) / temp) over 3 x M sampled actions
        per observation (uniform, noisy pi(o), noisy pi(o')), all scored at o: [2, B, N]."""
        cfg, gen, mask = self.cfg, self.generators["sample"], self.actor.action_mask
        batch, m = obs.shape[0], cfg.num_sampled_actions
        shape = (batch, m, *mask.shape)  # [B, M, N, A]
        with torch.no_grad():
            uniform = (torch.rand(shape, generator=gen, device=obs.device) * 2.0 - 1.0) * mask
            log_mu_uniform = (-math.log(2.0) * mask.sum(-1)).expand(batch, m, -1)  # density 1/2 per dim
            sampled, log_mu = [uniform], [log_mu_uniform]
            for source in (obs, next_obs):
                noise = torch.randn(shape, generator=gen, device=obs.device) * cfg.cql_sample_noise * mask
                sampled.append((self.actor(source).unsqueeze(1) + noise).clamp(-1.0, 1.0))
                log_mu.append(gaussian_log_density(noise, cfg.cql_sample_noise, mask))
            actions, log_mu = torch.cat(sampled, 1), torch.cat(log_mu, 1)  # [B, 3M, N, A], [B, 3M, N]
        q = self.critic(obs.unsqueeze(1).expand(-1, actions.shape[1], -1, -1), actions)  # [2, B, 3M, N]
        return cfg.lse_temp * torch.logsumexp((q - log_mu) / cfg.lse_temp, dim=2)

    def q_and_logsumexp(self, obs, next_obs, actions, avail):
        """Both twins at the data's actions and the CQL logsumexp term: ([2, B, N], [2, B, N])."""
        if self.layout.discrete:  # exact: one output per own action
            q_all = self.critic(obs)  # [2, B, N, K]
            q_all_avail = mask_logits(q_all, avail, self.actor.action_mask)
            lse = self.cfg.lse_temp * torch.logsumexp(q_all_avail / self.cfg.lse_temp, dim=-1)
            return AgentCritics.at(q_all, actions), lse
        return self.critic(obs, actions), self.sampled_logsumexp(obs, next_obs)

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

    def update(self, step: int) -> dict:
        cfg, n = self.cfg, self.layout.n_agents
        b = self.dataset.sample(cfg.batch_size, self.generators["sample"], self.device)
        obs = standardise(self.obs_norm, b["observations"])
        next_obs = standardise(self.obs_norm, b["next_observations"])
        avail = b.get("avail_actions")
        next_v = independent_next_value(self.actor_target, self.critic_target, next_obs,
                                        b.get("next_avail_actions"), cfg, self.generators["sample"])  # [B, N]
        target = b["rewards"][:, None] + cfg.gamma * (1.0 - b["terminals"].float())[:, None] * next_v
        q, lse = self.q_and_logsumexp(obs, next_obs, b["actions"], avail)  # [2, B, N] each
        td_loss = (q - target).pow(2).mean(1).sum()  # each twin's and agent's MSE, summed
        cql_gap = (lse - q).mean(1).sum()
        critic_loss = td_loss + cfg.cql_alpha * cql_gap
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        clip_grad_norm_per_agent_(list(self.critic.parameters()), n, cfg.grad_clip)
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach(), "td_loss": td_loss.detach(),
                   "cql_gap": cql_gap.detach(), "q_mean": q[0].mean().detach()}

        if step % cfg.policy_delay == 0:
            actor_loss, actor_metrics = self.actor_loss(obs, b["actions"], avail)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            clip_grad_norm_per_agent_(list(self.actor.parameters()), n, cfg.grad_clip)
            self.actor_opt.step()
            soft_update_(self.critic_target, self.critic, cfg.tau)
            soft_update_(self.actor_target, self.actor, cfg.tau)
            metrics.update(actor_metrics)
        return metrics
