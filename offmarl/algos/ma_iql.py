"""MA-IQL: IQL with centralised training and decentralised execution (CTDE).

The critics are IQL's, on the global state and the joint action (``iql.CentralValues``):
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

from offmarl.algos.iql import CentralValues, awr_weights
from offmarl.nn.agents import (AgentLayout, AgentPolicy, CategoricalActors, CheckpointParts, GaussianActors,
                               check_action_box, fit_standardiser, return_range_scale, seeded_init, standardise)
from offmarl.loop import BuildsWhole, LoopConfig

DISCRETE_OK = True
CONTINUOUS_OK = True
NEEDS_FULL_OBS = False


@dataclass
class Config:
    hidden: tuple[int, ...] = (256, 256)  # IQL paper App. B: 2x256 MLPs (critics and each actor)
    batch_size: int = 256                 # IQL paper App. B
    lr: float = 3e-4                      # IQL paper App. B: actor, Q and V learning rate
    gamma: float = 0.99                   # IQL paper App. B
    tau: float = 0.005                    # IQL paper App. B: target-Q Polyak rate
    expectile: float = 0.7                # IQL paper, locomotion (REFERENCE §5)
    beta: float = 3.0                     # IQL paper, locomotion: AWR inverse temperature
    exp_adv_max: float = 100.0            # CORL iql.py EXP_ADV_MAX: clip of exp(beta * adv)
    normalize_obs: bool = True            # CORL iql.py normalize=True: standardise states and observations
    normalize_reward: bool = True         # IQL paper App. B: r * 1000 / (max - min episode return)
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
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        # IQL paper / CORL: cosine decay of the actor learning rate over the whole run
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, max(cfg.loop.steps, 1))
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
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_sched.step()
        metrics["actor_loss"] = actor_loss.detach()
        return metrics

    def _parts(self) -> dict:
        return {**self.values.parts(), "actor": self.actor, "actor_opt": self.actor_opt,
                "actor_sched": self.actor_sched, "state_norm": self.state_norm, "obs_norm": self.obs_norm}
