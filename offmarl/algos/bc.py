"""IBC: independent behaviour cloning, one policy per agent on its local observation.

    continuous: Gaussian maximum likelihood, max E[ sum_i log N(a_i; tanh(MLP_i(o_i)), sigma_i) ]
                with a state-independent sigma_i. The mean's optimum is the MSE regressor
                E[a_i | o_i] (CORL's any_percent_bc trains that mean by MSE); evaluation acts at
                the mean, so the two coincide at evaluation — the learned sigma only matters for
                stochastic actions. Same actor class as IQL / MA-IQL (AWR with unit weights).
    discrete:   cross-entropy of a categorical over the agent's available actions.

Independent cloning reproduces each agent's marginal behaviour; on the unfavourable
coordination game (agent 0 mostly right, agent 1 mostly left) it miscoordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offmarl.nn.agents import (AgentLayout, AgentPolicy, CategoricalActors, CheckpointParts, GaussianActors,
                               check_action_box, fit_standardiser, seeded_init, standardise)
from offmarl.loop import BuildsWhole, LoopConfig

DISCRETE_OK = True
CONTINUOUS_OK = True
NEEDS_FULL_OBS = False


@dataclass
class Config:
    hidden: tuple[int, ...] = (256, 256)  # CORL any_percent_bc.py: 2x256 actor
    batch_size: int = 256                 # CORL any_percent_bc.py
    lr: float = 3e-4                      # CORL any_percent_bc.py (Adam)
    normalize_obs: bool = True            # CORL any_percent_bc.py normalize=True
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # CORL: 1M steps


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "ibc")


class Algorithm(CheckpointParts, BuildsWhole):
    def __init__(self, dataset, cfg: Config, device, seed: int, log=print):
        check_dataset(dataset, cfg)
        self.cfg, self.dataset, self.device = cfg, dataset, torch.device(device)
        self.layout = lay = AgentLayout(dataset.meta)
        with seeded_init(seed):
            self.obs_norm = fit_standardiser(torch.as_tensor(dataset.observations), cfg.normalize_obs).to(self.device)
            actors = CategoricalActors if lay.discrete else GaussianActors
            self.actor = actors(lay.n_agents, lay.obs_dim, cfg.hidden, lay.action_mask).to(self.device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.generators = {"sample": torch.Generator(device=self.device).manual_seed(seed)}
        self.policy = AgentPolicy(self.actor, self.obs_norm)

    def update(self, step: int) -> dict:
        b = self.dataset.sample(self.cfg.batch_size, self.generators["sample"], self.device)
        obs = standardise(self.obs_norm, b["observations"])
        if self.layout.discrete:
            log_probs = self.actor.log_probs(obs, b.get("avail_actions"))
            log_prob = log_probs.gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)
        else:
            log_prob = self.actor.log_prob(obs, b["actions"])
        # summed over agents: independent losses on independent weights
        loss = -log_prob.sum(-1).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {"bc_loss": loss.detach()}

    def _parts(self) -> dict:
        return {"actor": self.actor, "actor_opt": self.actor_opt, "obs_norm": self.obs_norm}
