"""MATD3+BC: TD3+BC with a centralised critic and decentralised deterministic actors.

One twin critic sees the global state and the joint action; each agent's actor sees only its
own observation (CTDE). TD3+BC's hyper-parameters throughout (the same values as ITD3+BC).

    critic   Q(s, a_1..a_N) <- r + gamma (1 - terminal) min_j Q_target_j(s', a')
             a'_i = clip(pi_target_i(o_i') + clip(N(0, 0.2), -0.5, 0.5), -1, 1)
    actors   every 2nd step: min  -lambda Q_1(s, pi_1(o_1), ..., pi_N(o_N)) + sum_i (pi_i(o_i) - a_i)^2
             lambda = alpha / mean|Q_1|. All agents' current actions enter the critic together
             (the centralised policy gradient of FACMAC, Peng et al. 2021), rather than
             MADDPG's "own action from pi, the others' from the data", which would pull each
             agent towards the other agents' dataset behaviour.

Discrete form (MADDPG's): categorical actors whose actions reach the critic as straight-through
Gumbel-softmax samples (hard one-hot forward, softmax gradient backward, temperature 1); the
critic reads one-hot joint actions; the target next action is a Gumbel-max sample of the target
actors; the BC term is the cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from offmarl.nn.actor_critic import ActorCriticBase, TD3BCConfig, smoothed_target_actions
from offmarl.nn.actors import gumbel_softmax_st
from offmarl.nn.agents import check_action_box, soft_update_, standardise
from offmarl.nn.critics import JointCritics
from offmarl.nn.losses import bc_mse
from offmarl.loop import BuildsWhole, LoopConfig


@dataclass
class Config(TD3BCConfig):
    """TD3+BC's values (as ITD3+BC; offmarl/nn/actor_critic.py: TD3BCConfig) plus the discrete
    form's temperature."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # TD3+BC paper: 1M steps
    gumbel_temperature: float = 1.0       # MADDPG discrete actions: Gumbel-softmax temperature


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "matd3bc")


class Algorithm(ActorCriticBase, BuildsWhole):
    """MATD3+BC: twin joint critics on (s, a_1..a_N)."""

    name = "matd3bc"
    critic_cls = JointCritics
    uses_state = True

    @torch.no_grad()
    def next_joint_action(self, next_obs, next_avail) -> torch.Tensor:
        """The target actors' next joint action: [B, N, A] (continuous) | [B, N] long (discrete)."""
        gen = self.generators["sample"]
        if self.layout.discrete:
            return self.actor_target.act(next_obs, next_avail, deterministic=False, generator=gen)[0]
        return smoothed_target_actions(self.actor_target, next_obs, self.cfg, gen)

    def update(self, step: int) -> dict:
        cfg, lay = self.cfg, self.layout
        b = self.dataset.sample(cfg.batch_size, self.generators["sample"], self.device)
        state, next_state = self.state_norm(b["states"]), self.state_norm(b["next_states"])
        obs = standardise(self.obs_norm, b["observations"])
        next_obs = standardise(self.obs_norm, b["next_observations"])
        with torch.no_grad():
            next_q = self.critic_target(next_state, self.next_joint_action(next_obs, b.get("next_avail_actions")))
            target = b["rewards"] + cfg.gamma * (1.0 - b["terminals"].float()) * next_q.min(0).values
        q = self.critic(state, b["actions"])  # [2, B]
        critic_loss = (q - target).pow(2).mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q[0].mean().detach()}

        if step % cfg.policy_delay == 0:
            if lay.discrete:
                logits = self.actor.logits(obs, b.get("avail_actions"))
                joint = gumbel_softmax_st(logits, self.generators["sample"], cfg.gumbel_temperature)
                bc = F.cross_entropy(logits.flatten(0, 1), b["actions"].flatten(), reduction="none")
                bc = bc.view(b["actions"].shape).mean(0)  # [N]
            else:
                joint = self.actor(obs)
                bc = bc_mse(joint, b["actions"], self.actor.action_mask)
            q_pi = self.critic.q1(state, joint)  # [B]
            lam = cfg.alpha / q_pi.abs().mean().detach()
            actor_loss = -lam * q_pi.mean() + bc.sum()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            soft_update_(self.critic_target, self.critic, cfg.tau)
            soft_update_(self.actor_target, self.actor, cfg.tau)
            metrics.update({"actor_loss": actor_loss.detach(), "bc_loss": bc.sum().detach(), "lambda": lam})
        return metrics
