"""Per-agent actors of the offline baselines: every agent's weights in one ``PerAgentMLP``,
obs [..., N, O] -> actions [..., N, A] (continuous, zero in padded dims) or [..., N] long.

    DeterministicActors  a_i = tanh(MLP_i(o_i))                      (TD3+BC, CQL, OMAR)
    GaussianActors       N(tanh(MLP_i(o_i)), exp(log_std_i))         (IQL, MA-IQL, IBC)
    CategoricalActors    softmax(MLP_i(o_i)) over available actions  (every discrete form)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.nn.agents import AgentLayout
from offmarl.nn.functional import gaussian_log_prob
from offmarl.nn.layers import PerAgentMLP

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL iql.py GaussianPolicy


class DeterministicActors(nn.Module):
    """a_i = tanh(MLP_i(o_i)) in [-1, 1] for every agent at once (TD3+BC, CQL, OMAR actors);
    padded action dims are held at 0. obs [..., N, O] -> actions [..., N, A]."""

    def __init__(self, layout: AgentLayout, hidden):
        super().__init__()
        self.net = PerAgentMLP(layout.n_agents, layout.obs_dim, hidden, layout.action_dim)
        self.register_buffer("action_mask", layout.action_mask.float())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_mask

    def act(self, obs, avail=None, deterministic=True, generator=None):
        actions = self(obs)
        return actions, actions.new_zeros(actions.shape[:-1])


class GaussianActors(nn.Module):
    """pi_i(a | o_i) = N(tanh(MLP_i(o_i)), exp(log_std_i)) with a state-independent log-std per
    agent and dim (CORL iql.py GaussianPolicy), evaluated deterministically at its mean.
    ``n_agents=1`` over (state -> joint action) gives the centralised IQL actor."""

    def __init__(self, n_agents: int, in_dim: int, hidden, action_mask: torch.Tensor):
        super().__init__()
        self.net = PerAgentMLP(n_agents, in_dim, hidden, action_mask.shape[-1])
        self.log_std = nn.Parameter(torch.zeros(n_agents, action_mask.shape[-1]))
        self.register_buffer("action_mask", action_mask.float())

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_mask

    def log_prob_dims(self, obs: torch.Tensor, actions: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
        """Per-dim log-density [..., N, A] of ``actions`` (0 in padded dims)."""
        mean = self.mean(obs) if mean is None else mean
        return gaussian_log_prob(actions, mean, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)) * self.action_mask

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi_i(a_i | o_i): [..., N]."""
        return self.log_prob_dims(obs, actions).sum(-1)

    def act(self, obs, avail=None, deterministic=True, generator=None):
        mean = self.mean(obs)
        if deterministic:
            actions = mean
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
            actions = mean + self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp() * eps * self.action_mask
        logp = self.log_prob_dims(obs, actions, mean).sum(-1)
        return actions.clamp(-1.0, 1.0), logp


def mask_logits(logits: torch.Tensor, avail: torch.Tensor | None, static_mask: torch.Tensor) -> torch.Tensor:
    """Unavailable actions get the most negative finite logit: probability exactly 0, never picked,
    and no NaN if a row has no available action at all."""
    allowed = static_mask.bool() if avail is None else (avail.bool() & static_mask.bool())
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


def gumbel_noise(shape, generator, device) -> torch.Tensor:
    """Standard Gumbel noise drawn from ``generator`` (torch's own gumbel_softmax takes none)."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_softmax_st(logits: torch.Tensor, generator, temperature: float = 1.0) -> torch.Tensor:
    """Straight-through Gumbel-softmax (Jang et al. 2017; MADDPG's discrete actions): a hard
    one-hot sample [..., K] in the forward pass, the softmax's gradient in the backward pass."""
    soft = torch.softmax((logits + gumbel_noise(logits.shape, generator, logits.device)) / temperature, -1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class CategoricalActors(nn.Module):
    """pi_i(. | o_i) = softmax(MLP_i(o_i)) restricted to the available actions.
    obs [..., N, O] -> logits [..., N, K]. ``n_agents=1`` with K^N outputs gives the
    centralised IQL actor over joint actions."""

    def __init__(self, n_agents: int, in_dim: int, hidden, action_mask: torch.Tensor):
        super().__init__()
        self.net = PerAgentMLP(n_agents, in_dim, hidden, action_mask.shape[-1])
        self.register_buffer("action_mask", action_mask.bool())

    def logits(self, obs: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        return mask_logits(self.net(obs), avail, self.action_mask)

    def log_probs(self, obs: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(self.logits(obs, avail), -1)

    def act(self, obs, avail=None, deterministic=True, generator=None):
        logits = self.logits(obs, avail)
        if deterministic:
            actions = logits.argmax(-1)
        else:  # Gumbel-max: an exact sample that honours ``generator``
            actions = (logits + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1)
        logp = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return actions, logp


