"""Loss terms the offline baselines share. Shapes: B batch, N agents, A action dims."""
from __future__ import annotations

import torch


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric L2 |tau - 1(diff < 0)| diff^2 (IQL eq. 5): tau > 0.5 leans towards the max."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def awr_weights(advantage: torch.Tensor, cfg) -> torch.Tensor:
    """exp(beta * A) clipped at exp_adv_max (IQL eq. 7, CORL iql.py)."""
    return torch.exp(cfg.beta * advantage).clamp(max=cfg.exp_adv_max)


def bc_mse(pi: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Per-agent mean squared error over the batch and the agent's real action dims
    (pi, actions [B, N, A]; ``action_mask [N, A]``; padded dims are 0 in both): [N]."""
    return (pi - actions).pow(2).sum(-1).mean(0) / action_mask.sum(-1)


def action_l2(pi: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Sum over agents of mean(pi_i^2) over the batch and the agent's real dims (the OMAR
    release's 1e-3 * pi^2 actor regulariser): pi [B, N, A] -> []."""
    return (pi.pow(2).sum(-1).mean(0) / action_mask.sum(-1)).sum()
