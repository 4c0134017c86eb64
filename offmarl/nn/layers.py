"""Layers written once and shared: plain MLPs, the vectorised ensemble layer, the per-agent MLP,
a standardiser."""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from offmarl.nn.functional import row_chunks


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int, activation=nn.ReLU,
        out_activation=None) -> nn.Sequential:
    """in_dim -> hidden... -> out_dim with ``activation`` between layers."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), activation()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    if out_activation is not None:
        layers.append(out_activation())
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in ONE batched matmul (mbrl-lib / MOPO practice).

    weight: [E, in, out], bias: [E, 1, out]; x: [E, B, in] -> [E, B, out].
    Also usable for per-agent networks (E = number of agents) without a Python loop.
    """

    def __init__(self, n_members: int, in_dim: int, out_dim: int, weight_decay: float = 0.0):
        super().__init__()
        self.n_members, self.in_dim, self.out_dim = n_members, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(n_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_dim))
        self.weight_decay = weight_decay
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same init as nn.Linear, member by member
        bound = 1.0 / math.sqrt(self.in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x [E, B, in] -> [E, B, out]; with ``members`` (indices, [M]) x is [M, B, in] and only
        those members are evaluated."""
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])

    def extra_repr(self) -> str:
        return f"members={self.n_members}, in={self.in_dim}, out={self.out_dim}"


class EnsembleMLP(nn.Module):
    """E MLPs with identical shapes evaluated together: x [E, B, in] -> [E, B, out]."""

    def __init__(self, n_members: int, in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int,
                 activation=nn.ReLU):
        super().__init__()
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(n_members, a, b) for a, b in itertools.pairwise(dims))
        self.out = EnsembleLinear(n_members, dims[-1], out_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x [E, B, in] -> [E, B, out]; ``members`` ([M] indices): only those, x [M, B, in].
        Large batches without gradients on CPU go through in row slices (``row_chunks``)."""
        if torch.is_grad_enabled():
            return self._layers(x, members)
        chunks = row_chunks(x, dim=1)
        if chunks is not None:
            return torch.cat([self._layers(c, members, inplace=True) for c in chunks], dim=1)
        return self._layers(x, members, inplace=True)

    def _layers(self, x: torch.Tensor, members: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
        relu_ = inplace and isinstance(self.act, nn.ReLU)  # no graph: the layer's fresh output can be reused
        for layer in self.hidden:
            x = torch.relu_(layer(x, members)) if relu_ else self.act(layer(x, members))
        return self.out(x, members)


class AgentMajorLinear(nn.Module):
    """x [N, ..., in] -> [N, ..., out]: N separate linear maps in one batched matmul
    (``shared=False``, ``EnsembleLinear`` with E = N) or one map for every agent."""

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, shared: bool):
        super().__init__()
        self.n_agents, self.in_dim, self.out_dim, self.shared = n_agents, in_dim, out_dim, shared
        self.layer = nn.Linear(in_dim, out_dim) if shared else EnsembleLinear(n_agents, in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self.layer(x)
        lead = x.shape[1:-1]
        y = self.layer(x.reshape(self.n_agents, -1, self.in_dim))
        return y.reshape(self.n_agents, *lead, self.out_dim)

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        """Multiply the weights by ``factor`` and zero the bias (small output layers: CleanRL/PPO practice)."""
        self.layer.weight.mul_(factor)
        self.layer.bias.zero_()


class PerAgentMLP(nn.Module):
    """One MLP per agent (or per critic member), all evaluated in one batched matmul per layer:
    x [..., N, in] -> [..., N, out], the dataset's batch-major layout; never a loop over agents.

    ``shared=True``: one MLP for every agent with the agent's one-hot appended to its input (the
    only way a shared network can tell agents apart; MAMBA's shared actor, github.com/jbr-ai-labs/mamba).
    Separate weights are ``[N, in, out]`` per layer (``EnsembleLinear``).
    """

    def __init__(self, n_agents: int, in_dim: int, hidden: tuple[int, ...] | list[int], out_dim: int,
                 shared: bool = False, activation=nn.ReLU):
        super().__init__()
        self.n_agents, self.shared = n_agents, shared
        dims = [in_dim + (n_agents if shared else 0), *hidden, out_dim]
        self.layers = nn.ModuleList(AgentMajorLinear(n_agents, a, b, shared) for a, b in itertools.pairwise(dims))
        self.act = activation()
        if shared:
            self.register_buffer("agent_ids", torch.eye(n_agents), persistent=False)
        self.register_load_state_dict_pre_hook(_rename_ensemble_mlp_keys)

    @property
    def out_layer(self) -> AgentMajorLinear:
        return self.layers[-1]

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """``members``: only these networks (e.g. Q1 of twin critics), x [..., len(members), in];
        the weights are sliced, the maths is the same (separate weights only)."""
        lead = x.shape[:-2]
        h = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)  # agent-major inside: [N, L, in]
        if self.shared:
            h = torch.cat([h, self.agent_ids[:, None, :].expand(*h.shape[:-1], self.n_agents)], -1)
        if members is None:
            for layer in self.layers[:-1]:
                h = self.act(layer(h))
            out = self.layers[-1](h)
        else:
            for layer in self.layers[:-1]:
                h = self.act(torch.baddbmm(layer.layer.bias[members], h, layer.layer.weight[members]))
            last = self.layers[-1].layer
            out = torch.baddbmm(last.bias[members], h, last.weight[members])
        return out.transpose(0, 1).reshape(*lead, out.shape[0], out.shape[-1])


def _rename_ensemble_mlp_keys(module: PerAgentMLP, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the per-agent MLPs were merged into one class kept the
    weights under ``net.hidden.<i>`` / ``net.out`` (an ``EnsembleMLP``): load them unchanged."""
    last = len(module.layers) - 1
    for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
        part, _, rest = key[len(prefix) + 4:].partition(".")
        if part == "out":
            state_dict[f"{prefix}layers.{last}.layer.{rest}"] = state_dict.pop(key)
        elif part == "hidden":
            index, _, name = rest.partition(".")
            state_dict[f"{prefix}layers.{index}.layer.{name}"] = state_dict.pop(key)


class Standardiser(nn.Module):
    """Fixed (fitted once) per-feature mean/std, stored as buffers so they travel with
    ``state_dict`` and ``.to(device)``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.eps = eps

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardiser:
        x = x.reshape(-1, x.shape[-1])
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(self.eps))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean
