"""IQL (Kostrikov et al. 2022) as ONE centralised agent acting on the joint action.

The MOMA-PPO paper's "IQL" column (Barde et al., MOMA-PPO slides): a single learner sees the global
state and picks the joint action, so agreeing on a convention is free — the upper bound on
strategy agreement that decentralised methods are measured against.

    critics   twin Q(s, a_1..a_N) and V(s), learned in-sample:
              V <- expectile_0.7 of min Q_target(s, a)                 (no out-of-data actions)
              Q <- r + gamma (1 - terminal) V(s')
    actor     advantage-weighted regression on the data's joint action:
              max  E[ min(exp(beta (Q_target - V)), 100) log pi(a_joint | s) ]
              continuous: Gaussian over the N*A joint action (tanh mean, state-independent std)
              discrete:   ONE categorical over all K^N joint actions — a product of per-agent
                          categoricals could not express "both left OR both right" and would
                          miscoordinate exactly like MA-IQL does on the coordination game.

Execution: the joint action is split into per-agent slices. The actor needs the global state,
which evaluation provides only as observations; under the ``fo`` scheme every agent's
observation IS the state, so the policy reads ``obs[:, 0]``. Any other scheme is rejected at
construction ("iql is centralised: use --obs fo").

The critic part (``CentralValues``, offmarl/nn/critics.py) is MA-IQL's too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offmarl.errors import OffmarlError
from offmarl.loop import BuildsWhole, LoopConfig
from offmarl.nn.actors import CategoricalActors, GaussianActors
from offmarl.nn.agents import (
    AgentLayout,
    CentralisedPolicy,
    CheckpointParts,
    JointActionCode,
    check_action_box,
    fit_standardiser,
    return_range_scale,
    seeded_init,
)
from offmarl.nn.critics import CentralValues, CosineAdam, IQLConfig
from offmarl.nn.losses import awr_weights


@dataclass
class Config(IQLConfig):
    """IQL's values (offmarl/nn/critics.py: IQLConfig), the joint actor's size limit, the training length."""

    max_joint_actions: int = 4096         # ours: largest K^N the discrete joint actor may enumerate
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # IQL paper: 1M steps


def check_dataset(dataset, cfg: Config) -> None:
    """Refuse what the centralised agent cannot use (``offmarl train`` calls this before it
    creates the run directory; the Algorithm calls it too)."""
    meta = dataset.meta
    if meta.obs_scheme != "fo" or any(d != meta.state_dim for d in meta.obs_dims):
        raise OffmarlError(
            f"iql is centralised: use --obs fo (dataset {meta.name or dataset.origin!r} has observation scheme "
            f"{meta.obs_scheme!r}; the centralised actor reads the global state from the observations, which only "
            "the fo scheme provides). For partial observations use ma-iql.")
    check_action_box(dataset, "iql")
    if meta.discrete:
        JointActionCode(meta.n_agents, max(meta.action_dims), cfg.max_joint_actions, "iql")


class Algorithm(CheckpointParts, BuildsWhole):
    def __init__(self, dataset, cfg: Config, device, seed: int, log=print):
        check_dataset(dataset, cfg)
        self.cfg, self.dataset, self.device = cfg, dataset, torch.device(device)
        self.layout = lay = AgentLayout(dataset.meta)
        self.reward_scale = return_range_scale(dataset) if cfg.normalize_reward else 1.0
        self.code = None
        with seeded_init(seed):
            self.state_norm = fit_standardiser(torch.as_tensor(dataset.states), cfg.normalize_obs).to(self.device)
            self.values = CentralValues(lay, cfg, self.device)
            if lay.discrete:
                self.code = JointActionCode(lay.n_agents, lay.action_dim, cfg.max_joint_actions, "iql", self.device)
                joint_mask = self.code.joint_avail(lay.action_mask.to(self.device))[None]  # [1, K^N]
                self.actor = CategoricalActors(1, lay.state_dim, cfg.hidden, joint_mask)
            else:
                self.actor = GaussianActors(1, lay.state_dim, cfg.hidden, lay.action_mask.reshape(1, -1))
        self.actor.to(self.device)
        self.actor_opt = CosineAdam(self.actor, cfg.lr, cfg.loop.steps)
        self.generators = {"sample": torch.Generator(device=self.device).manual_seed(seed)}
        self.policy = CentralisedPolicy(self.actor, self.state_norm, lay, self.code)

    def actor_log_prob(self, state: torch.Tensor, batch: dict) -> torch.Tensor:
        """log pi(a_joint | s) of the data's joint action: [B]."""
        s = state.unsqueeze(1)  # one "agent": the centralised actor
        if self.layout.discrete:
            avail = batch.get("avail_actions")
            joint_avail = None if avail is None else self.code.joint_avail(avail).unsqueeze(1)
            log_probs = self.actor.log_probs(s, joint_avail)[:, 0]  # [B, K^N]
            return log_probs.gather(-1, self.code.encode(batch["actions"]).unsqueeze(-1)).squeeze(-1)
        return self.actor.log_prob(s, batch["actions"].flatten(-2).unsqueeze(1))[:, 0]

    def update(self, step: int) -> dict:
        cfg = self.cfg
        b = self.dataset.sample(cfg.batch_size, self.generators["sample"], self.device)
        state, next_state = self.state_norm(b["states"]), self.state_norm(b["next_states"])
        reward = b["rewards"] * self.reward_scale
        advantage, metrics = self.values.update(state, b["actions"], reward, b["terminals"].float(), next_state)

        actor_loss = -(awr_weights(advantage, cfg) * self.actor_log_prob(state, b)).mean()
        self.actor_opt.step(actor_loss)
        metrics["actor_loss"] = actor_loss.detach()
        return metrics

    def _parts(self) -> dict:
        return {**self.values.parts(), "actor": self.actor, **self.actor_opt.parts("actor"),
                "state_norm": self.state_norm}
