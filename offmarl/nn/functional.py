"""Small tensor functions that several parts of offmarl share (written once here)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def soft_clamp(x: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    """Smooth clamp into (low, high) (mbrl-lib / PETS log-variance bounds): unlike a hard clamp
    its gradient never vanishes, so a value pushed past a bound can always come back."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor | float, log_std: torch.Tensor | float) -> torch.Tensor:
    """Element-wise log N(x; mean, exp(log_std)^2). Callers sum over the dimensions they need
    (and mask padded ones first)."""
    log_std = torch.as_tensor(log_std, dtype=x.dtype, device=x.device)
    z = (x - mean) * torch.exp(-log_std)
    return -0.5 * z.square() - log_std - HALF_LOG_2PI


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None, n: int = 1) -> torch.Tensor:
    """n draws from each row of probs [M, C] (rows need not be normalised) -> indices [M, n] (long).

    Inverse-CDF sampling: one uniform per draw against the row's cumulative sum. It draws from the
    same distribution as ``torch.multinomial(probs, n, replacement=True)`` (other numbers for a
    given generator) and is ~9x faster on CPU for many short rows (the latent model's categoricals).
    A zero-probability class is never drawn: u lies in (0, total], so index k needs
    cdf[k-1] < u <= cdf[k]."""
    cdf = probs.cumsum(-1)
    u = (1.0 - torch.rand(probs.shape[0], n, generator=generator, device=probs.device, dtype=cdf.dtype)) * cdf[:, -1:]
    return (cdf.unsqueeze(1) < u.unsqueeze(-1)).sum(-1)


def shift_in(hist: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """A memory window hist [B, K, ...] (oldest first): drop the oldest entry, append ``new`` [B, ...]."""
    return torch.cat([hist[:, 1:], new.unsqueeze(1).to(hist.dtype)], dim=1)


# Rows per slice for large batches evaluated without gradients on CPU with one torch thread
# (``row_chunks``). A fresh [5 members, 16000 rows, 200] activation is 64 MB: allocated, page-faulted
# and streamed through memory at every layer it costs about as much as the matmul; in slices of ~1k
# rows the activations stay in cache. World model forward on [5, 16000, 12] (4 x 200 hidden), one
# thread: 0.72 s whole vs 0.34 s in 1024-row slices, the same output bits; MAG's planned
# reacher rollout (1000 x 10) 26.2 -> 17.1 s. With two threads the slices measured
# SLOWER (each small op waits for both threads), so they are used with one thread only
# (OFFMARL_NUM_THREADS=1, the setting recommended for small nets on CPU). benchmarks/planner_speed.py.
CPU_CHUNK_ROWS = 1024


def row_chunks(x: torch.Tensor, dim: int = 0, rows: int | None = None) -> list[torch.Tensor] | None:
    """Slices of ``x`` along ``dim`` of ``rows`` rows each when slicing pays (a CPU tensor, one torch
    thread, no gradient recording, more than two slices' worth of rows); None otherwise (evaluate
    whole: GPUs want the big batch, and training keeps one graph). Only for functions that treat
    rows independently (MLPs): the result is the same as evaluating the whole batch. ``rows``:
    default ``CPU_CHUNK_ROWS`` (read at each call, so a benchmark can change it)."""
    rows = rows or CPU_CHUNK_ROWS
    if (x.device.type != "cpu" or torch.is_grad_enabled() or x.shape[dim] <= 2 * rows
            or torch.get_num_threads() != 1):
        return None
    return list(torch.split(x, rows, dim=dim))
