"""IQL (Kostrikov et al. 2022) as ONE centralised agent acting on the joint action.

The MOMA-PPO paper's "IQL" column (REFERENCE.md §1.1, §5): a single learner sees the global
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

The critic part (``CentralValues``) is shared with MA-IQL (offmarl/algos/ma_iql.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from offmarl.errors import OffmarlError
from offmarl.nn.agents import (AgentLayout, CategoricalActors, CentralisedPolicy, CheckpointParts, GaussianActors,
                               JointActionCode, JointCritics, check_action_box, fit_standardiser, return_range_scale,
                               seeded_init, soft_update_)
from offmarl.nn.layers import mlp
from offmarl.loop import BuildsWhole, LoopConfig

DISCRETE_OK = True
CONTINUOUS_OK = True
NEEDS_FULL_OBS = True


@dataclass
class Config:
    hidden: tuple[int, ...] = (256, 256)  # IQL paper App. B / CORL iql.py: 2x256 MLPs everywhere
    batch_size: int = 256                 # IQL paper App. B
    lr: float = 3e-4                      # IQL paper App. B: actor, Q and V learning rate
    gamma: float = 0.99                   # IQL paper App. B
    tau: float = 0.005                    # IQL paper App. B: target-Q Polyak rate
    expectile: float = 0.7                # IQL paper, locomotion (REFERENCE §5)
    beta: float = 3.0                     # IQL paper, locomotion: AWR inverse temperature
    exp_adv_max: float = 100.0            # CORL iql.py EXP_ADV_MAX: clip of exp(beta * adv)
    normalize_obs: bool = True            # CORL iql.py normalize=True: standardise states with data stats
    normalize_reward: bool = True         # IQL paper App. B: r * 1000 / (max - min episode return)
    max_joint_actions: int = 4096         # ours: largest K^N the discrete joint actor may enumerate
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # IQL paper: 1M steps


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric L2 |tau - 1(diff < 0)| diff^2 (IQL eq. 5): tau > 0.5 leans towards the max."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


class CentralValues:
    """IQL's in-sample value learning on the global state and the joint action:
    twin Q(s, a), its Polyak target, and V(s). Used by IQL and MA-IQL."""

    def __init__(self, layout: AgentLayout, cfg, device):
        self.cfg = cfg
        self.critic = JointCritics(layout, cfg.hidden).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(layout.state_dim, list(cfg.hidden), 1).to(device)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.lr)

    def parts(self) -> dict:
        return {"critic": self.critic, "critic_target": self.critic_target, "value": self.value,
                "critic_opt": self.critic_opt, "value_opt": self.value_opt}

    def update(self, state, actions, reward, terminal, next_state):
        """One V step then one Q step (CORL order). state [B, S], actions [B, N, A] | [B, N] long,
        reward / terminal [B]. Returns the advantage [B] for the actor and metrics."""
        with torch.no_grad():
            next_v = self.value(next_state).squeeze(-1)
            target_q = self.critic_target(state, actions).min(0).values
        v = self.value(state).squeeze(-1)
        advantage = target_q - v
        value_loss = expectile_loss(advantage, self.cfg.expectile)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()

        target = reward + self.cfg.gamma * (1.0 - terminal) * next_v
        q = self.critic(state, actions)  # [2, B]
        critic_loss = (q - target).pow(2).mean(-1).sum()  # MSE of each twin, summed (CORL)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        soft_update_(self.critic_target, self.critic, self.cfg.tau)
        metrics = {"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
                   "q_mean": q[0].mean().detach(), "v_mean": v.mean().detach(),
                   "advantage_mean": advantage.mean().detach()}
        return advantage.detach(), metrics


def awr_weights(advantage: torch.Tensor, cfg) -> torch.Tensor:
    """exp(beta * A) clipped at exp_adv_max (IQL eq. 7, CORL iql.py)."""
    return torch.exp(cfg.beta * advantage).clamp(max=cfg.exp_adv_max)


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
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        # IQL paper / CORL: cosine decay of the actor learning rate over the whole run
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, max(cfg.loop.steps, 1))
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
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_sched.step()
        metrics["actor_loss"] = actor_loss.detach()
        return metrics

    def _parts(self) -> dict:
        return {**self.values.parts(), "actor": self.actor, "actor_opt": self.actor_opt,
                "actor_sched": self.actor_sched, "state_norm": self.state_norm}
