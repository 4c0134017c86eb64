"""Per-agent networks, critics and evaluation adapters shared by the offline MARL baselines.

Every network here holds ALL agents' (or all critic members') weights in one
``EnsembleMLP`` (weights ``[E, in, out]``), so N agents cost one batched matmul per layer and
never a Python loop. Tensors keep the dataset layout: ``obs [..., N, O]``, continuous
``actions [..., N, A]`` (zero in padded dims), discrete ``actions [..., N]`` long.

Pieces:
    AgentLayout          what the baselines need to know about a dataset's agents
    AgentCritics         per-agent twin Q_i(o_i, a_i) (continuous) or Q_i(o_i, .) (discrete)
    JointCritics         centralised twin Q(s, a_1..a_N)
    DeterministicActors  a_i = tanh(MLP_i(o_i))                      (TD3+BC, CQL, OMAR)
    GaussianActors       N(tanh(MLP_i(o_i)), exp(log_std_i))         (IQL, MA-IQL, IBC)
    CategoricalActors    softmax(MLP_i(o_i)) over available actions  (every discrete form)
    AgentPolicy / CentralisedPolicy   the evaluation contract of offmarl/evaluation.py
    soft_update_, clip_grad_norm_per_agent_, seeded_init, state_of / load_state_of
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.layers import EnsembleMLP, Standardiser

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL iql.py GaussianPolicy


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


# --------------------------------------------------------------------------- building blocks
class PerAgentMLP(nn.Module):
    """E independent MLPs (one per agent, or per critic member) in one ``EnsembleMLP``:
    x [..., E, in] -> [..., E, out]."""

    def __init__(self, n_members: int, in_dim: int, hidden, out_dim: int):
        super().__init__()
        self.net = EnsembleMLP(n_members, in_dim, list(hidden), out_dim)

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        lead = x.shape[:-2]
        h = x.reshape(-1, *x.shape[-2:]).transpose(0, 1)  # [E, L, in]
        if members is None:
            out = self.net(h)
        else:  # a subset of members (e.g. only Q1 of twin critics): slice the weights, same maths
            for layer in self.net.hidden:
                h = self.net.act(torch.baddbmm(layer.bias[members], h, layer.weight[members]))
            out = torch.baddbmm(self.net.out.bias[members], h, self.net.out.weight[members])
        return out.transpose(0, 1).reshape(*lead, out.shape[0], out.shape[-1])


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


# --------------------------------------------------------------------------- actors
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
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)) * self.action_mask

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
