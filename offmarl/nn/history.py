"""Per-agent layers and the history (memory) encoder of MA-PPO.

Every module here works on AGENT-MAJOR tensors ``[N, ..., D]`` so that N separate per-agent
networks run as one batched matmul (``EnsembleLinear`` with E = N) — never a Python loop over
agents. With ``shared=True`` the same modules become one network for all agents; the agent
identity then enters as a one-hot appended to the input (MAMBA's shared actor, github.com/jbr-ai-labs/mamba).
(The per-agent MLP, ``offmarl.nn.layers.PerAgentMLP``, takes the dataset's batch-major
``[..., N, D]``; the attention over K steps works agent-major.)

HistoryEncoder (MOMA-PPO's memory for partial observability, github.com/PBarde/moma-ppo): each agent embeds
its last K (observation, action) pairs, runs masked multi-head self-attention over them and
mean-pools the real steps into one ``dim``-wide vector (128 in the reference); the last block's
feed-forward runs on the pooled vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.layers import AgentMajorLinear, PerAgentMLP


class AgentMajorLayerNorm(nn.Module):
    """LayerNorm over the last axis of [N, ..., D] with per-agent (or shared) affine parameters."""

    def __init__(self, n_agents: int, dim: int, shared: bool):
        super().__init__()
        n = 1 if shared else n_agents
        self.weight = nn.Parameter(torch.ones(n, dim))
        self.bias = nn.Parameter(torch.zeros(n, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.weight.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
        return F.layer_norm(x, x.shape[-1:]) * self.weight.view(shape) + self.bias.view(shape)


class _AttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block (self-attention + 2-layer feed-forward), per agent.

    ``pool=True`` (the last block): the attention outputs are mean-pooled over the real steps
    BEFORE the output projection and the feed-forward, which then run once per history instead
    of once per step. The projection is affine, so projecting the mean equals the mean of the
    projections; only the feed-forward moves after the pooling. This makes the encoder about
    2.5x cheaper for K = 10 (the feed-forward was half the per-step cost).
    """

    def __init__(self, n_agents: int, dim: int, heads: int, shared: bool):
        super().__init__()
        self.heads = heads
        self.norm1 = AgentMajorLayerNorm(n_agents, dim, shared)
        self.qkv = AgentMajorLinear(n_agents, dim, 3 * dim, shared)
        self.proj = AgentMajorLinear(n_agents, dim, dim, shared)
        self.norm2 = AgentMajorLayerNorm(n_agents, dim, shared)
        self.ff1 = AgentMajorLinear(n_agents, dim, 2 * dim, shared)
        self.ff2 = AgentMajorLinear(n_agents, 2 * dim, dim, shared)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pool_weights: torch.Tensor | None = None):
        """x: [N, B, K, D]; key_mask: [B, K] bool, True = a step that may be attended to;
        pool_weights: [B, K] summing to 1 (or 0 for an empty history) -> [N, B, D] pooled,
        or None -> [N, B, K, D]."""
        n, b, k, d = x.shape
        h, dh = self.heads, d // self.heads
        q, kk, v = self.qkv(self.norm1(x)).view(n * b, k, 3, h, dh).permute(2, 0, 3, 1, 4)  # 3 x [NB, h, K, dh]
        mask = key_mask[None, :, None, None, :].expand(n, b, 1, 1, k).reshape(n * b, 1, 1, k)
        att = F.scaled_dot_product_attention(q, kk, v, attn_mask=mask).transpose(1, 2).reshape(n, b, k, d)
        if pool_weights is not None:
            w = pool_weights[None, :, :, None]
            x, att = (x * w).sum(2), (att * w).sum(2)  # [N, B, D]
        x = x + self.proj(att)
        return x + self.ff2(F.relu(self.ff1(self.norm2(x))))


class HistoryEncoder(nn.Module):
    """Encode each agent's last K (obs, action) pairs into one vector, all agents at once.

    hist_obs:     [B, K, N, O] (already normalised), oldest step first
    hist_actions: [B, K, N, A] float (continuous) or [B, K, N] int (discrete, one-hot inside)
    hist_mask:    [B, K] bool, True for real steps (False = padding before the episode start);
                  None = every step is real
    returns       [B, N, dim]; rows with no real step get the encoding of an empty history.
    """

    def __init__(self, n_agents: int, obs_dim: int, action_dim: int, discrete: bool, history_len: int,
                 dim: int = 128, heads: int = 4, layers: int = 1, shared: bool = False):
        super().__init__()
        if dim % heads:
            raise OffmarlError(f"history_dim ({dim}) must be divisible by history_heads ({heads})")
        self.n_agents, self.obs_dim, self.action_dim = n_agents, obs_dim, action_dim
        self.discrete, self.history_len, self.dim = discrete, history_len, dim
        self.embed = PerAgentMLP(n_agents, obs_dim + action_dim, (), dim, shared)
        # learned position of each of the K slots (slot K-1 = the most recent step)
        self.position = nn.Parameter(torch.zeros(1 if shared else n_agents, 1, history_len, dim))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(_AttentionBlock(n_agents, dim, heads, shared) for _ in range(layers))
        self.norm = AgentMajorLayerNorm(n_agents, dim, shared)

    def forward(self, hist_obs: torch.Tensor, hist_actions: torch.Tensor,
                hist_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, k, n = hist_obs.shape[:3]
        if k != self.history_len or n != self.n_agents:
            raise OffmarlError(f"hist_obs has shape {tuple(hist_obs.shape)}; expected [B, {self.history_len}, "
                             f"{self.n_agents}, {self.obs_dim}] (history_len, n_agents, obs dim)")
        if self.discrete:
            actions = F.one_hot(hist_actions.long().clamp_min(0), self.action_dim).to(hist_obs.dtype)
        else:
            actions = hist_actions.to(hist_obs.dtype)
        tokens = torch.cat([hist_obs, actions], -1)  # [B, K, N, O + A]
        x = self.embed(tokens).permute(2, 0, 1, 3) + self.position  # [N, B, K, dim]
        if hist_mask is None:
            hist_mask = torch.ones(b, k, dtype=torch.bool, device=x.device)
        hist_mask = hist_mask.bool()
        # an all-padding history would make softmax over no keys = NaN: let it attend to
        # everything, then zero it out in the pooling below
        key_mask = hist_mask | ~hist_mask.any(-1, keepdim=True)
        weights = hist_mask.to(x.dtype)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)  # mean over real steps; 0 if none
        for block in self.blocks[:-1]:
            x = block(x, key_mask)
        pooled = self.blocks[-1](x, key_mask, weights)  # [N, B, dim]
        return self.norm(pooled).transpose(0, 1)  # [B, N, dim]
