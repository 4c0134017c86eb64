"""Layers written once and shared: plain MLPs, the vectorised ensemble layer, a standardiser."""
from __future__ import annotations

import math

import torch
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"members={self.n_members}, in={self.in_dim}, out={self.out_dim}"


class EnsembleMLP(nn.Module):
    """E MLPs with identical shapes evaluated together: x [E, B, in] -> [E, B, out]."""

    def __init__(self, n_members: int, in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int,
                 activation=nn.ReLU):
        super().__init__()
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(n_members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = EnsembleLinear(n_members, dims[-1], out_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)


class Standardiser(nn.Module):
    """Fixed (fitted once) per-feature mean/std, stored as buffers so they travel with
    ``state_dict`` and ``.to(device)``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.eps = eps

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "Standardiser":
        x = x.reshape(-1, x.shape[-1])
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(self.eps))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean
