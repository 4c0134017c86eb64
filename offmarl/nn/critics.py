"""Twin critics of the offline baselines (every critic member's weights in one ``PerAgentMLP``)
and IQL's in-sample value learner.

    AgentCritics   per-agent twin Q_i(o_i, a_i) (continuous) or Q_i(o_i, .) (discrete)
    JointCritics   centralised twin Q(s, a_1..a_N)
    IQLConfig, CentralValues  IQL's hyper-parameters; twin Q(s, a) + V(s) by expectile regression
                   (IQL and MA-IQL)
    CosineAdam     the actor's optimiser of IQL and MA-IQL
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from offmarl.nn.agents import AgentLayout, soft_update_
from offmarl.nn.layers import PerAgentMLP, mlp
from offmarl.nn.losses import expectile_loss


class _Twin(nn.Module):
    """Two Q-networks for each of G groups in one ``EnsembleMLP`` of 2G members
    (member ``t * G + g`` = twin t of group g)."""

    def __init__(self, n_groups: int, in_dim: int, hidden, out_dim: int):
        super().__init__()
        self.n_groups = n_groups
        self.net = PerAgentMLP(2 * n_groups, in_dim, hidden, out_dim)

    def both(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., G, in] -> [2, ..., G, out]."""
        y = self.net(torch.cat([x, x], dim=-2))
        return y.view(*y.shape[:-2], 2, self.n_groups, y.shape[-1]).movedim(-3, 0)

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Q1 only (actor losses score with Q1, as TD3): x [..., G, in] -> [..., G, out]."""
        return self.net(x, members=slice(0, self.n_groups))


class AgentCritics(nn.Module):
    """Independent twin critics, one pair per agent, on the agent's own observation and action.

    continuous: Q_i(o_i, a_i)   -> forward(obs, actions) [2, ..., N]
    discrete:   Q_i(o_i, .)      -> forward(obs) [2, ..., N, K]  (one output per own action,
                                    the DQN head); ``at(q, actions)`` picks the taken action.
    """

    def __init__(self, layout: AgentLayout, hidden):
        super().__init__()
        self.layout = layout
        n, o, a = layout.n_agents, layout.obs_dim, layout.action_dim
        self.twin = _Twin(n, o if layout.discrete else o + a, hidden, a if layout.discrete else 1)

    def _input(self, obs, actions):
        return obs if self.layout.discrete else torch.cat([obs, actions], -1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        q = self.twin.both(self._input(obs, actions))
        return q if self.layout.discrete else q.squeeze(-1)

    def q1(self, obs: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        q = self.twin.first(self._input(obs, actions))
        return q if self.layout.discrete else q.squeeze(-1)

    @staticmethod
    def at(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Discrete: q [..., N, K] at actions [..., N] long -> [..., N]."""
        return q.gather(-1, actions.expand(*q.shape[:-1]).unsqueeze(-1)).squeeze(-1)


class JointCritics(nn.Module):
    """Centralised twin critics Q(s, a_1, ..., a_N) on the global state and the joint action
    (one-hot per agent when discrete): forward(state [..., S], actions [..., N, A|K]) -> [2, ...]."""

    def __init__(self, layout: AgentLayout, hidden):
        super().__init__()
        self.layout = layout
        self.twin = _Twin(1, layout.state_dim + layout.joint_action_width, hidden, 1)

    def _input(self, state, actions):
        joint = self.layout.action_features(actions).flatten(-2)
        return torch.cat([state, joint], -1).unsqueeze(-2)

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.twin.both(self._input(state, actions))[..., 0, 0]

    def q1(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.twin.first(self._input(state, actions))[..., 0, 0]


@dataclass
class IQLConfig:
    """IQL's and MA-IQL's hyper-parameters (Kostrikov et al. 2022, locomotion)."""

    hidden: tuple[int, ...] = (256, 256)  # IQL paper App. B / CORL iql.py: 2x256 MLPs (critics, V, each actor)
    batch_size: int = 256                 # IQL paper App. B
    lr: float = 3e-4                      # IQL paper App. B: actor, Q and V learning rate
    gamma: float = 0.99                   # IQL paper App. B
    tau: float = 0.005                    # IQL paper App. B: target-Q Polyak rate
    expectile: float = 0.7                # IQL paper (Kostrikov et al., 2022), locomotion
    beta: float = 3.0                     # IQL paper, locomotion: AWR inverse temperature
    exp_adv_max: float = 100.0            # CORL iql.py EXP_ADV_MAX: clip of exp(beta * adv)
    normalize_obs: bool = True            # CORL iql.py normalize=True: standardise states (and observations)
    normalize_reward: bool = True         # IQL paper App. B: r * 1000 / (max - min episode return)


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


class CosineAdam:
    """Adam whose learning rate decays on a cosine over the whole run, stepped once per update:
    IQL's actor optimiser (IQL paper / CORL iql.py), used by IQL and MA-IQL."""

    def __init__(self, module: nn.Module, lr: float, steps: int):
        self.opt = torch.optim.Adam(module.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(steps, 1))

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()

    def parts(self, name: str) -> dict:
        """Checkpoint parts ``<name>_opt`` and ``<name>_sched``."""
        return {f"{name}_opt": self.opt, f"{name}_sched": self.sched}
