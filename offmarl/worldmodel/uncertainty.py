"""Uncertainty estimates of an ensemble prediction and the penalised reward (MOMA-PPO, MOPO).

Notation: the elites' MEAN predictions of [next state, reward] for one transition form the rows of
M [E, D]; m = mean over rows; X = M - m (centred, [E, D]).

    eps_g = || Cov_E(M) ||_F,   Cov_E(M) = X^T X / (E - 1)                 (MOMA-PPO reference code)
    eps_r = Var_E(M[:, -1])     (unbiased, divides by E - 1)
    eps_a = max_e || sqrt(exp(logvar_e)) ||_2                               (MOPO aleatoric)
    r~    = r - lambda_g * eps_g - lambda_r * eps_r - lambda_a * eps_a

The covariance is the unbiased one (``torch.cov`` / ``np.cov`` convention: E - 1). The D x D matrix
is never formed: ||X^T X||_F = ||X X^T||_F (both are sqrt(sum_i s_i^4) over the singular values
s_i of X), so eps_g needs one E x E Gram matrix per transition — O(E^2 D) instead of O(E D^2) work and memory.
"""
from __future__ import annotations

import torch


def eps_g(elite_means: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of the across-elite covariance of the mean prediction.

    elite_means: [E, B, D] (E >= 2 elites, D = state width + 1 for the reward) -> [B]
    """
    e = elite_means.shape[0]
    if e < 2:
        raise ValueError(f"eps_g needs at least 2 elites to measure disagreement, got {e}")
    x = (elite_means - elite_means.mean(0, keepdim=True)).transpose(0, 1)  # [B, E, D]
    gram = torch.bmm(x, x.transpose(1, 2))  # [B, E, E]
    return torch.linalg.matrix_norm(gram, ord="fro") / (e - 1)


def eps_r(elite_means: torch.Tensor) -> torch.Tensor:
    """Unbiased variance across elites of the mean reward (the last feature).

    elite_means: [E, B, D] -> [B]
    """
    if elite_means.shape[0] < 2:
        raise ValueError(f"eps_r needs at least 2 elites, got {elite_means.shape[0]}")
    return elite_means[..., -1].var(dim=0, unbiased=True)


def eps_aleatoric(logvar: torch.Tensor) -> torch.Tensor:
    """MOPO's penalty: the largest (over members) L2 norm of the predicted standard deviation.

    logvar: [E, B, D] -> [B]
    """
    return torch.exp(0.5 * logvar).norm(dim=-1).amax(dim=0)


def penalised_reward(r: torch.Tensor, eps_g: torch.Tensor, eps_r: torch.Tensor, lambda_g: float = 0.1,
                     lambda_r: float = 0.05, eps_a: torch.Tensor | None = None, lambda_a: float = 0.0) -> torch.Tensor:
    """r~ = r - lambda_g eps_g - lambda_r eps_r [- lambda_a eps_a]; defaults from the MOMA-PPO reference.

    All inputs [B] -> [B].
    """
    out = r - lambda_g * eps_g - lambda_r * eps_r
    if eps_a is not None and lambda_a != 0.0:
        out = out - lambda_a * eps_a
    return out
