"""Shared tensor functions (offmarl/nn/functional.py)."""
from __future__ import annotations

import torch

from offmarl.nn.functional import sample_categorical


def test_sample_categorical_matches_probabilities_and_never_draws_zero_classes():
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8, 0.0],   # zero classes at both ends and between
                          [0.5, 0.5, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 3.0]])  # unnormalised: one class
    draws = sample_categorical(probs, gen, n=40_000)  # [3, n]
    assert draws.shape == (3, 40_000) and draws.dtype == torch.long
    counts = torch.stack([torch.bincount(d, minlength=5) for d in draws]).float() / 40_000
    assert torch.all(counts[probs == 0] == 0)
    # 4 standard errors of a binomial share at n = 40k: <= 0.01
    assert torch.allclose(counts, probs / probs.sum(-1, keepdim=True), atol=0.01)
    again = sample_categorical(probs, torch.Generator().manual_seed(0), n=40_000)
    assert torch.equal(draws, again)
