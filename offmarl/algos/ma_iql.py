"""MA-IQL: IQL with centralised training and decentralised execution (CTDE).

The critics are IQL's, on the global state and the joint action (``CentralValues``, offmarl/nn/critics.py):
twin Q(s, a_1..a_N), V(s) by expectile regression. Each agent i has its own actor on its local
observation, trained by advantage-weighted regression with the JOINT advantage:

    max  E[ min(exp(beta (Q_target(s, a) - V(s))), 100) * sum_i log pi_i(a_i | o_i) ]

Continuous actors are Gaussians (tanh mean, state-independent std), discrete ones categoricals
over the agent's available actions. Each agent imitates the good joint actions' marginals —
which, with a dataset whose good joint actions are "both left" and "both right", can produce
"agent 0 right, agent 1 left" (the MOMA-PPO paper's 0.0 on the unfavourable coordination game).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offmarl.nn.actors import CategoricalActors, GaussianActors
from offmarl.nn.agents import (
    AgentLayout,
    AgentPolicy,
    CheckpointParts,
    check_action_box,
    fit_standardiser,
    return_range_scale,
    seeded_init,
    standardise,
)
from offmarl.nn.critics import CentralValues, CosineAdam, IQLConfig
from offmarl.nn.losses import awr_weights
from offmarl.loop import BuildsWhole, LoopConfig


@dataclass
class Config(IQLConfig):
    """IQL's values (offmarl/nn/critics.py: IQLConfig) and the training length."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # IQL paper: 1M steps


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "ma-iql")


class Algorithm(CheckpointParts, BuildsWhole):
    def __init__(self, dataset, cfg: Config, device, seed: int, log=print):
        check_dataset(dataset, cfg)
        self.cfg, self.dataset, self.device = cfg, dataset, torch.device(device)
        self.layout = lay = AgentLayout(dataset.meta)
        self.reward_scale = return_range_scale(dataset) if cfg.normalize_reward else 1.0
        with seeded_init(seed):
            self.state_norm = fit_standardiser(torch.as_tensor(dataset.states), cfg.normalize_obs).to(self.device)
            self.obs_norm = fit_standardiser(torch.as_tensor(dataset.observations), cfg.normalize_obs).to(self.device)
            self.values = CentralValues(lay, cfg, self.device)
            actors = CategoricalActors if lay.discrete else GaussianActors
            self.actor = actors(lay.n_agents, lay.obs_dim, cfg.hidden, lay.action_mask).to(self.device)
        self.actor_opt = CosineAdam(self.actor, cfg.lr, cfg.loop.steps)
        self.generators = {"sample": torch.Generator(device=self.device).manual_seed(seed)}
        self.policy = AgentPolicy(self.actor, self.obs_norm)

    def actor_log_prob(self, obs: torch.Tensor, batch: dict) -> torch.Tensor:
        """log pi_i(a_i | o_i) of the data's actions: [B, N]."""
        if self.layout.discrete:
            log_probs = self.actor.log_probs(obs, batch.get("avail_actions"))
            return log_probs.gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        return self.actor.log_prob(obs, batch["actions"])

    def update(self, step: int) -> dict:
        cfg = self.cfg
        b = self.dataset.sample(cfg.batch_size, self.generators["sample"], self.device)
        state, next_state = self.state_norm(b["states"]), self.state_norm(b["next_states"])
        reward = b["rewards"] * self.reward_scale
        advantage, metrics = self.values.update(state, b["actions"], reward, b["terminals"].float(), next_state)

        # every agent is weighted by the same joint advantage; summing over agents keeps their
        # gradients independent (separate weights, per-parameter Adam)
        log_prob = self.actor_log_prob(standardise(self.obs_norm, b["observations"]), b)
        actor_loss = -(awr_weights(advantage, cfg)[:, None] * log_prob).sum(-1).mean()
        self.actor_opt.step(actor_loss)
        metrics["actor_loss"] = actor_loss.detach()
        return metrics

    def _parts(self) -> dict:
        return {**self.values.parts(), "actor": self.actor, **self.actor_opt.parts("actor"),
                "state_norm": self.state_norm, "obs_norm": self.obs_norm}
