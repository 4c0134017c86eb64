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

import copy
from dataclasses import dataclass, field

import torch

from offmarl.nn.agents import (AgentCritics, AgentLayout, AgentPolicy, CategoricalActors, CheckpointParts,
                               DeterministicActors, check_action_box, fit_standardiser, seeded_init, soft_update_,
                               standardise)
from offmarl.loop import BuildsWhole, LoopConfig

DISCRETE_OK = True
CONTINUOUS_OK = True
NEEDS_FULL_OBS = False


@dataclass
class Config:
    hidden: tuple[int, ...] = (256, 256)  # TD3+BC paper / CORL td3_bc.py: 2x256 actor and critics
    batch_size: int = 256                 # TD3+BC paper / CORL td3_bc.py
    lr: float = 3e-4                      # TD3+BC paper: actor and critic learning rate
    gamma: float = 0.99                   # TD3+BC paper
    tau: float = 0.005                    # TD3+BC paper: Polyak rate of both targets
    policy_noise: float = 0.2             # TD3: target smoothing std (continuous only)
    noise_clip: float = 0.5               # TD3: target smoothing clip (continuous only)
    policy_delay: int = 2                 # TD3: actor and targets updated every 2nd critic step
    alpha: float = 2.5                    # TD3+BC paper: lambda = alpha / mean|Q|
    normalize_obs: bool = True            # TD3+BC paper: standardised states (CORL normalize=True)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # TD3+BC paper: 1M steps


def smoothed_target_actions(actor_target: DeterministicActors, next_obs, cfg, generator) -> torch.Tensor:
    """TD3 target policy smoothing: pi_target(o') + clipped Gaussian noise, back in the box."""
    action = actor_target(next_obs)
    noise = (torch.randn(action.shape, generator=generator, device=action.device) * cfg.policy_noise)
    noise = noise.clamp(-cfg.noise_clip, cfg.noise_clip) * actor_target.action_mask
    return (action + noise).clamp(-1.0, 1.0)


@torch.no_grad()
def independent_next_value(actor_target, critic_target: AgentCritics, next_obs, next_avail, cfg,
                           generator) -> torch.Tensor:
    """min_j Q_target_ij(o_i', a_i') at the target policy's next action, per agent: [B, N].
    Continuous: the smoothed target action; discrete: the expectation under pi_target."""
    if critic_target.layout.discrete:
        probs = actor_target.log_probs(next_obs, next_avail).exp()
        return (probs * critic_target(next_obs).min(0).values).sum(-1)
    action = smoothed_target_actions(actor_target, next_obs, cfg, generator)
    return critic_target(next_obs, action).min(0).values


def bc_mse(pi: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Per-agent mean squared error over the batch and the agent's real action dims
    (``action_mask [N, A]``; padded dims are 0 in both): [N]."""
    return (pi - actions).pow(2).sum(-1).mean(0) / action_mask.sum(-1)


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "itd3bc")


class ActorCriticBase(CheckpointParts, BuildsWhole):
    """What ITD3+BC, MATD3+BC and ICQL/OMAR share, written once: the observation standardiser
    (and the state's, for a critic on the state), the actor (categorical for discrete actions,
    deterministic otherwise), twin critics of class ``critic_cls``, their Polyak targets, the Adam
    optimisers, the sampling generator, the acting policy and the checkpoint parts."""

    name = "itd3bc"
    critic_cls = AgentCritics
    uses_state = False  # True: also standardise the global state (a joint critic's input)

    def __init__(self, dataset, cfg, device, seed: int, log=print):
        check_action_box(dataset, self.name)
        self.cfg, self.dataset, self.device = cfg, dataset, torch.device(device)
        self.layout = lay = AgentLayout(dataset.meta)
        with seeded_init(seed):
            if self.uses_state:
                self.state_norm = fit_standardiser(torch.as_tensor(dataset.states), cfg.normalize_obs).to(self.device)
            self.obs_norm = fit_standardiser(torch.as_tensor(dataset.observations), cfg.normalize_obs).to(self.device)
            if lay.discrete:
                self.actor = CategoricalActors(lay.n_agents, lay.obs_dim, cfg.hidden, lay.action_mask)
            else:
                self.actor = DeterministicActors(lay, cfg.hidden)
            self.critic = self.critic_cls(lay, cfg.hidden)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.generators = {"sample": torch.Generator(device=self.device).manual_seed(seed)}
        self.policy = AgentPolicy(self.actor, self.obs_norm)

    def _parts(self) -> dict:
        parts = {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                 "critic_target": self.critic_target, "actor_opt": self.actor_opt, "critic_opt": self.critic_opt}
        if self.uses_state:
            parts["state_norm"] = self.state_norm
        parts["obs_norm"] = self.obs_norm
        return parts


class Algorithm(ActorCriticBase):
    """ITD3+BC: per-agent twin critics on (o_i, a_i)."""

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
