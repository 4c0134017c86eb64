"""What every offline baseline shares around its networks: the agents' layout, checkpoint
bookkeeping, standardisers, target updates, and the evaluation adapters.

Tensors keep the dataset layout: ``obs [..., N, O]``, continuous ``actions [..., N, A]`` (zero in
padded dims), discrete ``actions [..., N]`` long. The networks are in ``offmarl/nn/actors.py``
and ``offmarl/nn/critics.py`` (every agent's weights in one ``PerAgentMLP``), the losses in
``offmarl/nn/losses.py``, the actor-critic skeleton of TD3+BC / CQL / OMAR in
``offmarl/nn/actor_critic.py``.

Pieces:
    AgentLayout          what the baselines need to know about a dataset's agents
    JointActionCode      index <-> per-agent actions of a discrete joint action
    AgentPolicy / CentralisedPolicy   the evaluation contract of offmarl/evaluation.py
    soft_update_, clip_grad_norm_per_agent_, seeded_init, CheckpointParts, fit_standardiser
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.layers import Standardiser


# --------------------------------------------------------------------------- bookkeeping
@contextlib.contextmanager
def seeded_init(seed: int):
    """Build networks from a private CPU RNG stream: the same seed gives the same weights
    whatever the global RNG has done, and the global stream is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def state_of(parts: dict) -> dict:
    """state_dict of every module / optimiser / scheduler in ``parts`` (checkpointing)."""
    return {name: part.state_dict() for name, part in parts.items()}


def load_state_of(parts: dict, state: dict) -> None:
    missing = sorted(set(parts) - set(state))
    if missing:
        raise OffmarlError(f"checkpoint lacks {', '.join(missing)}: it was written by another algorithm or version")
    for name, part in parts.items():
        part.load_state_dict(state[name])


class CheckpointParts:
    """``state_dict`` / ``load_state_dict`` of an offline algorithm from its ``_parts()`` dict
    (modules, optimisers, schedulers, standardisers), written once for every algorithm."""

    def _parts(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return state_of(self._parts())

    def load_state_dict(self, state: dict) -> None:
        load_state_of(self._parts(), state)


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging target <- (1 - tau) target + tau source, one fused op for all weights."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


@torch.no_grad()
def clip_grad_norm_per_agent_(parameters, n_agents: int, max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each agent separately (the OMAR release clips each agent's
    networks on their own). Every parameter's leading dim is a multiple of N, member ``e``
    belonging to agent ``e % N`` (the layout of the modules in this file)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    sq = sum(g.reshape(-1, n_agents, g[0].numel()).pow(2).sum((0, 2)) for g in grads)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.view(-1, n_agents, g[0].numel()).mul_(scale[None, :, None])


def standardise(norm: Standardiser, x: torch.Tensor) -> torch.Tensor:
    """``x [..., N, O]`` standardised by ``norm`` fitted on the flattened ``N * O`` features."""
    return norm(x.flatten(-2)).view_as(x)


def fit_standardiser(x: torch.Tensor, enabled: bool) -> Standardiser:
    """Per-feature standardiser of ``x [T, ...]`` (identity when not ``enabled``). The std floor
    1e-3 follows CORL's ``compute_mean_std(eps=1e-3)``: near-constant features stay bounded."""
    flat = x.reshape(x.shape[0], -1)
    norm = Standardiser(flat.shape[1], eps=1e-3)
    if enabled:
        norm.fit(flat.cpu())
    return norm


def return_range_scale(dataset) -> float:
    """1000 / (max episode return - min episode return): the IQL paper's locomotion reward
    scaling (Kostrikov et al. 2022, App. B; CORL iql.py ``modify_reward``); 1 if all equal."""
    returns = dataset.episode_returns()
    spread = float(returns.max() - returns.min())
    return 1000.0 / spread if spread > 0 else 1.0


# --------------------------------------------------------------------------- layout
class AgentLayout:
    """What the baselines need to know about a dataset's agents (from ``DatasetMeta``).

    action_dim is A (widest continuous action) or K (most discrete actions);
    action_mask [N, A|K] marks the dims / actions each agent really has (padding excluded).
    """

    def __init__(self, meta):
        self.n_agents = int(meta.n_agents)
        self.obs_dim = int(max(meta.obs_dims))
        self.state_dim = int(meta.state_dim)
        self.discrete = bool(meta.discrete)
        self.action_dims = tuple(int(a) for a in meta.action_dims)
        self.action_dim = max(self.action_dims)
        self.action_mask = torch.arange(self.action_dim)[None, :] < torch.tensor(self.action_dims)[:, None]

    @property
    def joint_action_width(self) -> int:
        """Width of the joint action fed to a centralised critic: N * A (or N * K one-hots)."""
        return self.n_agents * self.action_dim

    def action_features(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions as critic inputs ``[..., N, A|K]`` float: continuous unchanged, discrete
        indices one-hot encoded (already-relaxed one-hots pass through)."""
        if self.discrete and not actions.is_floating_point():
            return F.one_hot(actions, self.action_dim).float()
        return actions


def check_action_box(dataset, where: str) -> None:
    """The actors squash with tanh into [-1, 1], the MaMuJoCo action box."""
    if dataset.meta.discrete:
        return
    worst = float(abs(dataset.actions).max())
    if worst > 1.0 + 1e-4:
        raise OffmarlError(
            f"{where}: dataset {dataset.meta.name or dataset.origin!r} has actions up to |a| = {worst:.3f}, "
            "outside the [-1, 1] box the actors produce; rescale the actions to [-1, 1]")


# --------------------------------------------------------------------------- joint discrete actions
class JointActionCode:
    """Mixed-radix code of discrete joint actions: index = sum_i a_i * K^(N-1-i).
    ``digits [K^N, N]`` decodes; used by the centralised IQL actor over all K^N joint actions."""

    def __init__(self, n_agents: int, n_actions: int, max_joint: int, where: str, device="cpu"):
        size = n_actions ** n_agents
        if size > max_joint:
            raise OffmarlError(
                f"{where}: the centralised actor enumerates all {n_actions}^{n_agents} = {size} joint actions, "
                f"more than max_joint_actions={max_joint}; use ma-iql (decentralised actors) for this environment "
                f"or raise --set max_joint_actions=...")
        self.n_agents, self.n_actions, self.size = n_agents, n_actions, size
        # kept on the training device: .to(x.device) below is then a no-op, never a host copy
        self.radix = (n_actions ** torch.arange(n_agents - 1, -1, -1)).to(device)
        self.digits = (torch.arange(size, device=device)[:, None] // self.radix[None, :]) % n_actions  # [K^N, N]
        self.agents = torch.arange(n_agents, device=device)

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """[..., N] long -> [...] joint index."""
        return (actions * self.radix.to(actions.device)).sum(-1)

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """[...] joint index -> [..., N] per-agent actions."""
        return self.digits.to(index.device)[index]

    def joint_avail(self, avail: torch.Tensor) -> torch.Tensor:
        """Per-agent availability [..., N, K] -> joint availability [..., K^N]."""
        return avail[..., self.agents.to(avail.device), self.digits.to(avail.device)].all(-1)

    def marginal_log_probs(self, log_probs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log P(a_i) of each agent's component under a joint distribution.
        log_probs [..., K^N], actions [..., N] -> [..., N]."""
        match = self.digits.to(actions.device) == actions.unsqueeze(-2)  # [..., K^N, N]
        lp = log_probs.unsqueeze(-1).masked_fill(~match, -math.inf)
        return torch.logsumexp(lp, dim=-2)


# --------------------------------------------------------------------------- evaluation adapters
class AgentPolicy:
    """Decentralised execution: agent i acts on its own observation with its own actor.
    Implements ``act`` of the evaluation contract (offmarl/evaluation.py)."""

    history_len = 0

    def __init__(self, actor: nn.Module, obs_norm: Standardiser):
        self.actor, self.obs_norm = actor, obs_norm

    @torch.no_grad()
    def act(self, obs, hist=None, avail=None, deterministic=True, generator=None):
        """obs [B, N, O], avail [B, N, K] | None -> (actions [B, N, A] | [B, N] long, logp [B, N])."""
        return self.actor.act(standardise(self.obs_norm, obs), avail, deterministic, generator)


class CentralisedPolicy:
    """One centralised actor on the global state emits the joint action; agent i executes its
    slice. At evaluation the state is read from agent 0's observation, which is exact only under
    the full-observation scheme (``fo``: every agent observes the whole state) — IQL checks that
    at construction."""

    history_len = 0

    def __init__(self, actor: nn.Module, state_norm: Standardiser, layout: AgentLayout,
                 code: JointActionCode | None = None):
        self.actor, self.state_norm, self.layout, self.code = actor, state_norm, layout, code

    @torch.no_grad()
    def act(self, obs, hist=None, avail=None, deterministic=True, generator=None):
        lay = self.layout
        state = self.state_norm(obs[:, 0, : lay.state_dim]).unsqueeze(1)  # [B, 1, S]
        if lay.discrete:
            joint_avail = None if avail is None else self.code.joint_avail(avail.bool()).unsqueeze(1)
            index, _ = self.actor.act(state, joint_avail, deterministic, generator)  # [B, 1]
            actions = self.code.decode(index[:, 0])
            log_probs = self.actor.log_probs(state, joint_avail)[:, 0]
            return actions, self.code.marginal_log_probs(log_probs, actions)
        joint, _ = self.actor.act(state, None, deterministic, generator)  # [B, 1, N*A]
        logp = self.actor.log_prob_dims(state, joint)
        shape = (obs.shape[0], lay.n_agents, lay.action_dim)
        return joint.view(shape), logp.view(shape).sum(-1)
