"""The actor-critic skeleton that ITD3+BC, MATD3+BC, ICQL and OMAR share, written once.

    TD3BCConfig, ConservativeConfig   the hyper-parameters of the two families (each
                           algorithm's Config adds its training length and its own extras)
    ActorCriticBase        observation (and state) standardiser, actor (categorical for discrete
                           actions, deterministic otherwise), twin critics, Polyak targets, Adam
                           optimisers, the sampling generator, the acting policy, checkpoint parts
    ConservativeActorCritic  ICQL's critic learning (Kumar et al. 2020, as the OMAR release):
                           TD target + cql_alpha * (logsumexp_a Q - Q(data)), per-agent gradient
                           clipping, an actor step with the subclass's ``actor_loss``
    smoothed_target_actions, independent_next_value   TD3's target side, per agent

Shapes: B batch, N agents, A action dims (K discrete actions), M sampled actions per source.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from offmarl.nn.actors import CategoricalActors, DeterministicActors, mask_logits
from offmarl.nn.agents import (
    AgentLayout,
    AgentPolicy,
    CheckpointParts,
    check_action_box,
    clip_grad_norm_per_agent_,
    fit_standardiser,
    seeded_init,
    soft_update_,
    standardise,
)
from offmarl.nn.critics import AgentCritics
from offmarl.nn.functional import HALF_LOG_2PI


@dataclass
class TD3BCConfig:
    """ITD3+BC's and MATD3+BC's hyper-parameters (TD3+BC, Fujimoto & Gu 2021)."""

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


@dataclass
class ConservativeConfig:
    """ICQL's and OMAR's hyper-parameters (the OMAR release's MaMuJoCo values, Pan et al. 2022)."""

    hidden: tuple[int, ...] = (256, 256)  # OMAR release, MaMuJoCo: hidden_dim 256, 2 hidden layers
    batch_size: int = 256                 # OMAR release, MaMuJoCo
    lr: float = 3e-4                      # OMAR release, MaMuJoCo (actor and critic)
    gamma: float = 0.99                   # TD3/CQL standard; the OMAR release silently keeps 0.95 (Pan et al. 2022)
    tau: float = 0.005                    # OMAR release, MaMuJoCo
    cql_alpha: float = 1.0                # OMAR release --cql_alpha (per-dataset values: blocks of configs/omar.yaml)
    num_sampled_actions: int = 10         # OMAR release --num_sampled_actions (per source: uniform, pi(o), pi(o'))
    lse_temp: float = 1.0                 # OMAR release --lse_temp: logsumexp temperature
    cql_sample_noise: float = 0.2         # OMAR release --cql_sample_noise_level: std around pi's actions
    policy_noise: float = 0.0             # OMAR release: no target smoothing (TD3 would use 0.2)
    noise_clip: float = 0.5               # TD3: target smoothing clip (unused while policy_noise = 0)
    policy_delay: int = 1                 # OMAR release: actor and targets updated every step
    grad_clip: float = 0.5                # OMAR release: clip_grad_norm(0.5) on each agent's critic and actor
    actor_l2: float = 1e-3                # OMAR release: + 1e-3 * mean(pi(o)^2) in the actor loss
    normalize_obs: bool = True            # ours: data standardisation in place of the release's input BatchNorm


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


def gaussian_log_density(noise: torch.Tensor, std: float, mask: torch.Tensor) -> torch.Tensor:
    """log N(noise; 0, std^2 I) over the real action dims: [..., N, A] -> [..., N].

    Kept apart from ``nn.functional.gaussian_log_prob`` on purpose: that one scales by
    exp(-log std) where this divides by std, which differs in the last bit for ~3% of the values,
    and ICQL/OMAR runs are reproduced bit for bit across versions."""
    return ((-0.5 * (noise / std).pow(2) - math.log(std) - HALF_LOG_2PI) * mask).sum(-1)


class ActorCriticBase(CheckpointParts):
    """What ITD3+BC, MATD3+BC and ICQL/OMAR share, written once: the observation standardiser
    (and the state's, for a critic on the state), the actor (categorical for discrete actions,
    deterministic otherwise), twin critics of class ``critic_cls``, their Polyak targets, the Adam
    optimisers, the sampling generator, the acting policy and the checkpoint parts."""

    name: str  # the algorithm's --algo name, for error messages
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


class ConservativeActorCritic(ActorCriticBase):
    """ICQL's per-agent twin critics on (o_i, a_i) with the CQL(H) regulariser; subclasses
    (ICQL, OMAR) give ``actor_loss(obs, actions, avail) -> (loss, metrics)``.

    critic_i  MSE to r + gamma (1 - terminal) min_j Q_target_ij(o_i', pi_target_i(o_i'))
              + cql_alpha * [ temp * logsumexp_a (Q_ij(o_i, a) - log mu(a)) / temp  -  Q_ij(o_i, a_i) ]
              continuous: the logsumexp runs over M uniform actions, M noisy pi_i(o_i) and M noisy
              pi_i(o_i') actions (noise std cql_sample_noise), each corrected by the log-density
              mu it was drawn from (CQL(H) importance sampling; the OMAR release subtracts the
              Gaussian DENSITY instead of its log for the noisy actions — we use the log);
              discrete: exact over the available actions (Q_i(o_i, .) has one output per action).
    both      gradient norm clipped to grad_clip per agent; targets Polyak-averaged after each
              actor step.
    """

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

    def actor_loss(self, obs, actions, avail) -> tuple[torch.Tensor, dict]:
        """obs [B, N, O], actions [B, N, A] | [B, N], avail [B, N, K] | None -> (loss, metrics)."""
        raise NotImplementedError("ICQL: offmarl/algos/cql.py; OMAR: offmarl/algos/omar.py")

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
