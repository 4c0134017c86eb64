"""MA-PPO: multi-agent PPO with decentralised actors and a centralised critic.

The one MA-PPO of offmarl. MOMA-PPO trains it on world-model rollouts (offline); the online
SMAC loop trains it on imagined trajectories (MOMA-PPO: github.com/PBarde/moma-ppo;
MAMBA: Egorov & Shpilman, AAMAS 2022). It reads top to bottom:

    MAPPOConfig        every hyper-parameter with its source (reference preset: MAPPOConfig.reference())
    RunningNorm        running mean/var of observations, states and returns
    MAPPOPolicy        per-agent Gaussian (continuous) or masked categorical (discrete) actors,
                       optional self-attention memory over the last K (obs, action) pairs
    MAPPOCritic        V(s), or per-agent V_i(o_i) mixed by a QMIX-like hypernetwork on s
    compute_gae        generalised advantage estimation with dones, time-outs and padding
    MAPPO              optimisers, adaptive entropy coefficient, ``update(batch)``, checkpoints

Shapes: B batch, N agents, O = spec.max_obs_dim (zero-padded), A = spec.max_action_dim
(continuous width or number of discrete actions), K history length, S state width, H horizon.

Continuous actions are NOT squashed: the Gaussian sample is what ``logp`` refers to and what
``update`` must get back; the environment (or world model) gets ``policy.env_actions(actions)``,
the sample clipped to the action box. A penalty on means outside the box keeps the policy inside
it (MOMA-PPO reference), so clipping rarely bites.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.envs.base import EnvSpec
from offmarl.errors import OffmarlError
from offmarl.nn.functional import HALF_LOG_2PI, gaussian_log_prob, soft_clamp
from offmarl.nn.history import HistoryEncoder
from offmarl.nn.layers import PerAgentMLP, mlp


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class MAPPOConfig:
    # networks
    actor_hidden: tuple[int, ...] = (256, 256)  # MOMA-PPO reference: Gaussian actor 2x256 (MOMA-PPO code)
    critic_hidden: tuple[int, ...] = (256, 256)  # ours: same width as the actor (reference width not recorded)
    share_parameters: bool = False  # reference: separate networks per agent; True = one net + agent one-hot (MAMBA §4)
    history_len: int = 0  # K past (obs, action) pairs in the memory; reference 10 under PO; 0 = no memory
    history_dim: int = 128  # reference memory width (MOMA-PPO code)
    history_heads: int = 4  # ours (reference head count not recorded)
    history_layers: int = 1  # ours: 1 attention block (brief allows 1-2)
    # reference: per-agent V_i mixed by a QMIX-like hypernetwork; "state" = V(s); "attention" =
    # MAMBA's critic: every agent's input embedded, one self-attention layer across agents, a value
    # per agent, their mean
    critic: str = "mixer"
    mixer_embed_dim: int = 32  # QMIX (pymarl) mixing_embed_dim
    hypernet_hidden: int = 64  # QMIX (pymarl) hypernet_embed
    log_std_min: float = -6.0  # reference log-std bounds [-6, 0] (MOMA-PPO code)
    log_std_max: float = 0.0  # reference
    normalise_obs: bool = True  # ours: running mean/var of obs and states (SB3 VecNormalize practice)
    obs_clip: float = 10.0  # SB3 VecNormalize clip_obs
    # optimisation
    lr: float = 3e-4  # fast preset (CleanRL PPO default); reference 5e-5
    critic_lr: float | None = None  # None = lr (reference uses one lr)
    epochs: int = 5  # reference and MAMBA: 5 epochs per batch
    minibatch_size: int = 4096  # fast preset; reference 64
    max_grad_norm: float = 1.0  # reference grad clip 1
    # PPO
    gamma: float = 0.99  # reference (and MAMBA)
    gae_lambda: float = 0.98  # MOMA-PPO reference; MAMBA uses 0.95
    clip: float = 0.2  # reference
    joint_ratio: bool = True  # reference: joint ratio = product of agent ratios; False = per-agent clipped ratios
    value_clip: float = 0.2  # reference clips values; range = policy clip (PPO2 / MAPPO of Yu et al.); 0 = off
    value_norm: bool = True  # ours: critic learns normalised returns (Yu et al. 2022 MAPPO ValueNorm)
    normalise_advantages: bool = True  # PPO practice (CleanRL, SB3), over the whole batch
    # entropy
    entropy_mode: str = "adaptive"  # reference: adaptive coefficient; "fixed" = constant entropy_coef (MAMBA)
    entropy_coef: float = 0.01  # fixed value, or initial value when adaptive (ours; MAMBA fixed 0.001)
    target_entropy: float = -2.0  # reference target JOINT entropy (sum over agents); continuous actions
    entropy_lr: float = 1e-3  # ours: Adam lr of log(entropy_coef) (reference value not recorded)
    entropy_annealing: float = 1.0  # fixed mode: coefficient x this after every actor step (MAMBA 0.99998); 1 = off
    # reference: the entropy bonus is the JOINT entropy (sum over agents); True = the mean over
    # agents (MAMBA's actor_loss: per-agent entropy, mean over rows and agents)
    entropy_per_agent: bool = False
    box_penalty_coef: float = 1.0  # ours: weight of the out-of-box penalty on mean actions (reference has one)
    # offline only: weight of a behaviour-cloning anchor on dataset pairs added to the actor loss,
    # mean over agents of ||mean(o_D) - a_D||^2 (continuous) or -log pi(a_D | o_D) (discrete) — TD3+BC's
    # anchor (Fujimoto & Gu 2021) on a PPO actor; the caller passes the pairs (``update(anchor=...)``); 0 = off
    bc_coef: float = 0.0

    def __post_init__(self):
        self.actor_hidden = tuple(int(h) for h in self.actor_hidden)
        self.critic_hidden = tuple(int(h) for h in self.critic_hidden)
        if self.critic not in ("state", "mixer", "attention"):
            raise OffmarlError(f"mappo.critic = {self.critic!r}; choose 'state' (V(s)), 'mixer' (QMIX-like) or "
                               "'attention' (MAMBA: attention across agents)")
        if self.entropy_mode not in ("fixed", "adaptive"):
            raise OffmarlError(f"mappo.entropy_mode = {self.entropy_mode!r}; choose 'fixed' or 'adaptive'")
        if not 0.0 < self.entropy_annealing <= 1.0:
            raise OffmarlError(f"mappo.entropy_annealing = {self.entropy_annealing}; use a factor in (0, 1] (1 = off)")
        if self.entropy_annealing < 1.0 and self.entropy_mode != "fixed":
            raise OffmarlError("mappo.entropy_annealing < 1 anneals a fixed coefficient; set mappo.entropy_mode=fixed")
        if self.entropy_mode == "adaptive" and self.entropy_coef <= 0:
            raise OffmarlError("mappo.entropy_coef must be > 0 when entropy_mode is 'adaptive' (it is the initial "
                               "value of a log-parameterised coefficient)")
        if self.history_len < 0:
            raise OffmarlError(f"mappo.history_len = {self.history_len}; use 0 (no memory) or a positive K")
        if self.history_len and self.history_dim % self.history_heads:
            raise OffmarlError(f"mappo.history_dim ({self.history_dim}) must be divisible by "
                               f"mappo.history_heads ({self.history_heads})")
        if self.minibatch_size < 1 or self.epochs < 1:
            raise OffmarlError("mappo.minibatch_size and mappo.epochs must be >= 1")
        if self.bc_coef < 0:
            raise OffmarlError(f"mappo.bc_coef = {self.bc_coef}; use a weight >= 0 (0 = no behaviour anchor)")
        if self.log_std_min >= self.log_std_max:
            raise OffmarlError("mappo.log_std_min must be smaller than mappo.log_std_max")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MAPPOConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise OffmarlError(f"unknown mappo option(s) {unknown}; known options: {sorted(known)}")
        return cls(**d)

    @classmethod
    def reference(cls, **overrides) -> MAPPOConfig:
        """The MOMA-PPO reference schedule (MOMA-PPO code): lr 5e-5, minibatch 64, 5 epochs, on
        about 2000 synthetic transitions per iteration (the caller's rollout size)."""
        return cls(**{"lr": 5e-5, "minibatch_size": 64, "entropy_lr": 3e-4, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["actor_hidden"], d["critic_hidden"] = list(self.actor_hidden), list(self.critic_hidden)
        return d


# ----------------------------------------------------------------------------------------------
# Running normaliser
# ----------------------------------------------------------------------------------------------
class RunningNorm(nn.Module):
    """Running mean/variance over the leading axis (Chan et al. parallel update), kept as
    buffers so that it travels with ``state_dict`` and ``.to(device)``. Starts as identity."""

    def __init__(self, shape: tuple[int, ...], eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.eps = eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """x: [M, *shape]."""
        x = x.reshape(-1, *self.mean.shape).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        w = (n / total).to(self.mean.dtype)
        delta = b_mean - self.mean
        m2 = self.var * (1 - w) + b_var * w + delta.square() * w * (1 - w)
        self.mean.add_(delta * w)
        self.var.copy_(m2)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        y = (x - self.mean) / torch.sqrt(self.var + self.eps)
        return y if clip is None else y.clamp(-clip, clip)

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.sqrt(self.var + self.eps) + self.mean


# ----------------------------------------------------------------------------------------------
# Actors
# ----------------------------------------------------------------------------------------------
class MAPPOPolicy(nn.Module):
    """Decentralised actors: agent i sees only its (padded) observation and, with a memory,
    the encoding of its own last K (obs, action) pairs.

    Observations are normalised inside (``obs_norm``), so callers pass raw observations.
    """

    def __init__(self, spec: EnvSpec, cfg: MAPPOConfig):
        super().__init__()
        n, o, a = spec.n_agents, spec.max_obs_dim, spec.max_action_dim
        self.n_agents, self.obs_dim, self.action_dim, self.discrete = n, o, a, spec.discrete
        self.history_len = cfg.history_len
        self.log_std_min, self.log_std_max, self.obs_clip = cfg.log_std_min, cfg.log_std_max, cfg.obs_clip
        self.action_low, self.action_high = float(spec.action_low), float(spec.action_high)
        self.obs_norm = RunningNorm((n, o))
        # agents with fewer actions than A: their padded dims / actions never exist
        dims = torch.tensor(spec.action_dims)
        self.register_buffer("action_mask", torch.arange(a)[None, :] < dims[:, None], persistent=False)  # [N, A]
        self.history = None
        if cfg.history_len > 0:
            self.history = HistoryEncoder(n, o, a, spec.discrete, cfg.history_len, cfg.history_dim,
                                          cfg.history_heads, cfg.history_layers, cfg.share_parameters)
        in_dim = o + (cfg.history_dim if self.history is not None else 0)
        self.net = PerAgentMLP(n, in_dim, cfg.actor_hidden, a if spec.discrete else 2 * a, cfg.share_parameters)
        # near-zero initial logits / means (CleanRL and SB3 initialise the policy head at 0.01)
        self.net.out_layer.scale_(0.01)

    # -- internals --------------------------------------------------------------------------
    def _check(self, obs: torch.Tensor, hist: dict | None) -> None:
        if obs.dim() != 3 or obs.shape[1:] != (self.n_agents, self.obs_dim):
            raise OffmarlError(f"MAPPOPolicy: obs has shape {tuple(obs.shape)}; expected [B, {self.n_agents}, "
                               f"{self.obs_dim}] (batch, n_agents, spec.max_obs_dim, zero-padded)")
        if self.history is not None and (hist is None or "hist_obs" not in hist or "hist_actions" not in hist):
            raise OffmarlError(f"MAPPOPolicy: this policy has a memory (history_len={self.history_len}); pass "
                               "hist={'hist_obs': [B, K, N, O], 'hist_actions': [B, K, N, A] or [B, K, N], "
                               "'hist_mask': [B, K] (optional)}")

    def _mask(self, avail: torch.Tensor | None) -> torch.Tensor:
        """Discrete: [N, A] or [B, N, A] bool of the actions that may be taken."""
        mask = self.action_mask if avail is None else avail.bool() & self.action_mask
        # no available action at all (should not happen): allow every real action rather than NaN
        return mask | ~mask.any(-1, keepdim=True) & self.action_mask

    def _heads(self, obs: torch.Tensor, hist: dict | None, avail: torch.Tensor | None):
        """-> masked logits [B, N, A] (discrete) or (mean, log_std) [B, N, A] (continuous)."""
        self._check(obs, hist)
        x = self.obs_norm(obs, self.obs_clip)
        if self.history is not None:
            h_obs = self.obs_norm(hist["hist_obs"], self.obs_clip)
            mem = self.history(h_obs, hist["hist_actions"], hist.get("hist_mask"))
            x = torch.cat([x, mem], -1)
        out = self.net(x)  # [B, N, A] or [B, N, 2A]
        if self.discrete:
            return out.masked_fill(~self._mask(avail), float("-inf"))
        mean, raw_log_std = out.chunk(2, -1)
        return mean, soft_clamp(raw_log_std, self.log_std_min, self.log_std_max)

    def _gaussian_logp(self, actions, mean, log_std) -> torch.Tensor:
        return (gaussian_log_prob(actions, mean, log_std) * self.action_mask).sum(-1)

    def evaluate(self, obs, hist, avail, actions):
        """-> logp [B, N], entropy [B, N], mean action [B, N, A] (continuous) or None."""
        heads = self._heads(obs, hist, avail)
        if self.discrete:
            log_probs = torch.log_softmax(heads, -1)
            logp = log_probs.gather(-1, actions.long()[..., None]).squeeze(-1)
            finite = torch.isfinite(log_probs)
            entropy = -(log_probs.exp() * torch.where(finite, log_probs, 0.0)).sum(-1)
            return logp, entropy, None
        mean, log_std = heads
        entropy = ((0.5 + HALF_LOG_2PI + log_std) * self.action_mask).sum(-1)
        return self._gaussian_logp(actions, mean, log_std), entropy, mean

    # -- public API ---------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, hist: dict | None = None, avail: torch.Tensor | None = None,
            deterministic: bool = False, generator: torch.Generator | None = None):
        """Sample (or take the mode of) every agent's action.

        obs: [B, N, O] raw; hist: {'hist_obs' [B, K, N, O], 'hist_actions' [B, K, N, A] float or
        [B, K, N] int, 'hist_mask' [B, K] bool (optional)} or None; avail: [B, N, A] bool or None;
        generator: on the policy's device, makes sampling repeatable.
        -> actions [B, N, A] float (unclipped; padded dims 0) or [B, N] long, logp [B, N]
        """
        heads = self._heads(obs, hist, avail)
        if self.discrete:
            if deterministic:
                actions = heads.argmax(-1)
            else:
                probs = torch.softmax(heads, -1).reshape(-1, self.action_dim)
                # zero-probability (masked) actions are never drawn by multinomial
                actions = torch.multinomial(probs, 1, generator=generator).view(heads.shape[:-1])
            logp = torch.log_softmax(heads, -1).gather(-1, actions[..., None]).squeeze(-1)
            return actions, logp
        mean, log_std = heads
        if deterministic:
            actions = mean
        else:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            actions = mean + noise * log_std.exp()
        actions = actions * self.action_mask
        return actions, self._gaussian_logp(actions, mean, log_std)

    def evaluate_actions(self, obs: torch.Tensor, hist: dict | None, avail: torch.Tensor | None,
                         actions: torch.Tensor):
        """-> logp [B, N] of ``actions`` (as returned by ``act``), entropy [B, N] (per agent)."""
        logp, entropy, _ = self.evaluate(obs, hist, avail, actions)
        return logp, entropy

    def env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """What the environment / world model receives: continuous samples clipped to the box."""
        if self.discrete:
            return actions
        return actions.clamp(self.action_low, self.action_high)


# ----------------------------------------------------------------------------------------------
# Critic
# ----------------------------------------------------------------------------------------------
class MAPPOCritic(nn.Module):
    """Centralised value of the team reward, in normalised units (see ``value_norm``).

    "state": V(s) = MLP(s).
    "mixer": V(s, o) = w2(s)^T elu(W1(s)^T v + b1(s)) + b2(s), v_i = V_i(o_i), with W1, w2 >= 0
    produced by hypernetworks on the state (QMIX's monotonic mixing, applied to values).
    "attention": V(o) = mean_i MLP(Attn_agents(W o + pos)_i) (MAMBA's critic; the state is unused).
    """

    def __init__(self, spec: EnvSpec, cfg: MAPPOConfig):
        super().__init__()
        n, s = spec.n_agents, spec.state_dim
        self.kind, self.n_agents, self.embed = cfg.critic, n, cfg.mixer_embed_dim
        self.state_norm = RunningNorm((s,))
        self.value_norm = RunningNorm(())
        if cfg.critic == "state":
            self.v = mlp(s, cfg.critic_hidden, 1)
        elif cfg.critic == "attention":
            hid = cfg.critic_hidden[0]
            self.embed_in = nn.Linear(spec.max_obs_dim, hid)
            self.agent_pos = nn.Parameter(torch.zeros(n, hid))
            # MAMBA's critic: 1 attention layer (its AttentionEncoder), heads: ours (a divisor of the width)
            heads = next(h for h in (4, 2, 1) if hid % h == 0)
            self.attn = nn.TransformerEncoder(nn.TransformerEncoderLayer(hid, heads, 2 * hid, 0.0, batch_first=True),
                                              1, enable_nested_tensor=False)
            self.head = mlp(hid, cfg.critic_hidden[1:], 1)
        else:
            e, hh = cfg.mixer_embed_dim, cfg.hypernet_hidden
            self.agent_v = PerAgentMLP(n, spec.max_obs_dim, cfg.critic_hidden, 1, cfg.share_parameters)
            self.hyper_w1 = mlp(s, (hh,), n * e)
            self.hyper_b1 = nn.Linear(s, e)
            self.hyper_w2 = mlp(s, (hh,), e)
            self.hyper_b2 = mlp(s, (e,), 1)

    def forward(self, states: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """states: [B, S], obs: [B, N, O], both already normalised -> [B]."""
        if self.kind == "state":
            return self.v(states).squeeze(-1)
        if self.kind == "attention":
            x = self.attn(F.relu(self.embed_in(obs)) + self.agent_pos)
            return self.head(x).squeeze(-1).mean(-1)
        v = self.agent_v(obs).squeeze(-1)  # [B, N]
        w1 = self.hyper_w1(states).abs().view(-1, self.n_agents, self.embed)
        hidden = F.elu(torch.bmm(v.unsqueeze(1), w1).squeeze(1) + self.hyper_b1(states))  # [B, E]
        return (hidden * self.hyper_w2(states).abs()).sum(-1) + self.hyper_b2(states).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Generalised advantage estimation
# ----------------------------------------------------------------------------------------------
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor,
                timeouts: torch.Tensor, valid: torch.Tensor, gamma: float, lam: float,
                discounts: torch.Tensor | None = None):
    """GAE (Schulman et al. 2016) over [H, B] rollouts, a reverse loop over H only.

    dones:    terminal by the task: no bootstrap, trace cut.
    timeouts: truncated (time limit, rollout end): bootstrap from next_values, trace cut.
    valid:    False for padding after a rollout ended: zero advantage and return; a valid step
              whose successor is padding is treated as a time-out.
    discounts: optional [H, B] soft continuation in [0, 1] multiplying gamma at every step (a
              world model's predicted probability that the episode goes on: MAMBA's
              ``compute_return`` with ``discount_arr``); None = 1.
    The last step H-1 always bootstraps from next_values.
    -> advantages [H, B], returns [H, B] (= advantages + values on valid steps, 0 elsewhere)
    """
    valid_f = valid.to(values.dtype)
    not_done = 1.0 - dones.to(values.dtype)
    keep_trace = not_done * (1.0 - timeouts.to(values.dtype))
    g = gamma if discounts is None else gamma * discounts.to(values.dtype)
    deltas = (rewards + g * not_done * next_values - values) * valid_f
    g = torch.as_tensor(g, dtype=values.dtype, device=values.device).expand_as(values)
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[0])
    next_valid = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        next_adv = deltas[t] + g[t] * lam * keep_trace[t] * next_valid * next_adv
        advantages[t] = next_adv
        next_valid = valid_f[t]
    return advantages, (advantages + values) * valid_f


# ----------------------------------------------------------------------------------------------
# The learner
# ----------------------------------------------------------------------------------------------
REQUIRED_KEYS = ("states", "obs", "actions", "logp", "rewards", "dones", "timeouts", "valid",
                 "next_states", "next_obs")
HIST_KEYS = ("hist_obs", "hist_actions", "hist_mask")
METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "entropy_coef", "grad_norm",
           "critic_grad_norm", "box_penalty", "bc_loss")


def _adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    # the fused kernel: one call for all parameters (about 5x less per-step overhead on CPU
    # with small networks than the per-tensor loop)
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.Adam(params, lr=lr, fused=fused)


class MAPPO:
    """Policy + critic + optimisers + entropy coefficient; ``update`` runs one PPO iteration."""

    def __init__(self, spec: EnvSpec, cfg: MAPPOConfig | None = None, device: str | torch.device = "cpu"):
        self.spec, self.cfg = spec, cfg or MAPPOConfig()
        self.device = torch.device(device)
        self.policy = MAPPOPolicy(spec, self.cfg).to(self.device)
        self.critic = MAPPOCritic(spec, self.cfg).to(self.device)
        self.log_alpha = torch.tensor(math.log(max(self.cfg.entropy_coef, 1e-30)), device=self.device,
                                      requires_grad=self.cfg.entropy_mode == "adaptive")
        self._build_optimisers()
        self.iterations = 0

    def _build_optimisers(self) -> None:
        cfg = self.cfg
        self.actor_opt = _adam(self.policy.parameters(), cfg.lr, self.device)
        self.critic_opt = _adam(self.critic.parameters(), cfg.critic_lr or cfg.lr, self.device)
        adaptive = cfg.entropy_mode == "adaptive"
        self.alpha_opt = _adam([self.log_alpha], cfg.entropy_lr, self.device) if adaptive else None
        self._fixed_alpha = torch.tensor(cfg.entropy_coef, device=self.device)

    @classmethod
    def from_spec(cls, spec: EnvSpec, cfg: MAPPOConfig | None = None,
                  device: str | torch.device = "cpu") -> MAPPO:
        return cls(spec, cfg, device)

    @property
    def entropy_coef(self) -> torch.Tensor:
        return self.log_alpha.detach().exp() if self.alpha_opt is not None else self._fixed_alpha

    # -- values and normalisers ---------------------------------------------------------------
    def _critic_inputs(self, states: torch.Tensor, obs: torch.Tensor):
        return (self.critic.state_norm(states, self.cfg.obs_clip),
                self.policy.obs_norm(obs, self.cfg.obs_clip))

    @torch.no_grad()
    def values(self, states: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """states [B, S], obs [B, N, O] raw -> V [B] in return units."""
        return self.critic.value_norm.denormalise(self.critic(*self._critic_inputs(states, obs)))

    @torch.no_grad()
    def update_normalisers(self, obs: torch.Tensor, states: torch.Tensor) -> None:
        """Add obs [M, N, O] and states [M, S] to the running statistics (e.g. the dataset once
        before training; ``update`` adds every batch after its optimisation)."""
        if self.cfg.normalise_obs:
            self.policy.obs_norm.update(obs.reshape(-1, self.spec.n_agents, self.spec.max_obs_dim))
            self.critic.state_norm.update(states.reshape(-1, self.spec.state_dim))

    def _check_batch(self, batch: dict) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in batch]
        if self.cfg.history_len > 0:
            missing += [k for k in HIST_KEYS[:2] if k not in batch]
        if missing:
            raise OffmarlError(f"MAPPO.update: batch is missing {missing}; it needs {list(REQUIRED_KEYS)} as "
                               "[H, B, ...] tensors (plus hist_obs, hist_actions when history_len > 0)")
        if batch["rewards"].dim() != 2:
            raise OffmarlError(f"MAPPO.update: batch['rewards'] has shape {tuple(batch['rewards'].shape)}; "
                               "expected [H, B] (horizon, rollouts)")

    # -- one PPO iteration ----------------------------------------------------------------------
    def behaviour_loss(self, obs: torch.Tensor, hist: dict | None, avail: torch.Tensor | None,
                       actions: torch.Tensor, nll: bool = False) -> torch.Tensor:
        """Behaviour cloning on dataset pairs (obs [M, N, O] raw, actions [M, N, A] or [M, N]), mean over
        rows and agents: ||mean - a||^2 summed over action dims (continuous), or -log pi(a | o) (discrete,
        or ``nll``: the Gaussian negative log-likelihood, which fits the std as well)."""
        logp, _, mean = self.policy.evaluate(obs, hist, avail, actions)
        if mean is None or nll:
            return -logp.mean()
        return ((mean - actions).square() * self.policy.action_mask).sum(-1).mean()

    def update(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
               anchor: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One iteration on a rollout batch of [H, B, ...] tensors (see docs/mappo.md for keys).

        ``logp`` must come from ``policy.act`` with the current parameters and normalisers.
        ``anchor``: dataset pairs {'obs' [M, N, O], 'actions', optional 'avail' and hist keys} for the
        behaviour-cloning term (``cfg.bc_coef`` > 0); every epoch spreads them over the minibatches.
        Returns the mean over minibatches of each metric, plus explained_variance and n_valid.
        """
        cfg = self.cfg
        self._check_batch(batch)
        h, b = batch["rewards"].shape
        flat = {k: v.to(self.device).reshape(h * b, *v.shape[2:]) for k, v in batch.items()
                if not k.startswith("next_hist") and k != "next_avail"}

        # values before the update (return units), then advantages on the [H, B] grid
        with torch.no_grad():
            values = self.values(flat["states"], flat["obs"]).view(h, b)
            next_values = self.values(flat["next_states"], flat["next_obs"]).view(h, b)
            discounts = flat["discounts"].view(h, b) if "discounts" in flat else None
            adv, ret = compute_gae(flat["rewards"].view(h, b).float(), values, next_values,
                                   flat["dones"].view(h, b), flat["timeouts"].view(h, b),
                                   flat["valid"].view(h, b).bool(), cfg.gamma, cfg.gae_lambda, discounts)

        # keep valid rows only (one host sync for their count)
        idx = flat["valid"].bool().nonzero().squeeze(1)
        m = idx.numel()
        if m == 0:
            raise OffmarlError("MAPPO.update: batch['valid'] is False everywhere; nothing to learn from")
        obs, actions, logp_old = flat["obs"][idx], flat["actions"][idx], flat["logp"][idx]
        avail = flat["avail"][idx] if "avail" in flat else None
        hist = {k: flat[k][idx] for k in HIST_KEYS if k in flat} if cfg.history_len > 0 else None
        adv, ret, values_old = adv.view(-1)[idx], ret.view(-1)[idx], values.view(-1)[idx]
        with torch.no_grad():
            states_n, obs_n = self._critic_inputs(flat["states"][idx], obs)
            explained_var = 1 - (ret - values_old).var(unbiased=False) / ret.var(unbiased=False).clamp_min(1e-8)
            vnorm = self.critic.value_norm
            if cfg.value_norm:
                vnorm.update(ret)
            target_n, old_n = vnorm(ret), vnorm(values_old)
            if cfg.normalise_advantages and m > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)

        n_minibatches = max(1, round(m / cfg.minibatch_size))
        use_anchor = anchor is not None and cfg.bc_coef > 0
        if cfg.bc_coef > 0 and anchor is None:
            raise OffmarlError("MAPPO.update: mappo.bc_coef > 0 needs dataset pairs (anchor=...); the behaviour "
                               "anchor is for offline training — set mappo.bc_coef=0 otherwise")
        gen_device = generator.device if generator is not None else "cpu"
        rows = []
        for _ in range(cfg.epochs):
            perm = torch.randperm(m, generator=generator, device=gen_device).to(self.device)
            chunks = [None] * n_minibatches
            if use_anchor:
                n_anchor = anchor["obs"].shape[0]
                chunks = torch.randperm(n_anchor, generator=generator, device=gen_device).to(
                    self.device).tensor_split(n_minibatches)
            for mb, amb in zip(perm.tensor_split(n_minibatches), chunks):
                bc = None if amb is None else {k: v[amb] for k, v in anchor.items()}
                rows.append(self._minibatch_step(
                    obs[mb], None if hist is None else {k: v[mb] for k, v in hist.items()},
                    None if avail is None else avail[mb], actions[mb], logp_old[mb], adv[mb],
                    states_n[mb], obs_n[mb], target_n[mb], old_n[mb], bc))

        # new statistics apply from the next rollout on, so ``logp`` above stayed consistent
        self.update_normalisers(obs, flat["states"][idx])
        self.iterations += 1
        means = torch.stack(rows).mean(0)
        values_out = torch.cat([means, explained_var.view(1)]).tolist()  # the one device->host copy
        out = dict(zip(METRICS + ("explained_variance",), values_out))
        out["n_valid"] = m
        return out

    def _minibatch_step(self, obs, hist, avail, actions, logp_old, adv, states_n, obs_n, target_n, old_n,
                        bc=None):
        cfg = self.cfg
        alpha = self.entropy_coef
        # actor: clipped surrogate on the joint ratio (product of agent ratios) or per agent
        logp, entropy, mean = self.policy.evaluate(obs, hist, avail, actions)
        log_ratio = logp - logp_old  # [M, N]
        if cfg.joint_ratio:
            log_ratio = log_ratio.sum(-1)  # [M]
            a = adv
        else:
            a = adv[:, None]
        log_ratio = log_ratio.clamp(-20.0, 20.0)  # exp() overflow guard; such ratios are clipped anyway
        ratio = log_ratio.exp()
        policy_loss = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
        joint_entropy = entropy.mean() if cfg.entropy_per_agent else entropy.sum(-1).mean()
        if mean is not None:
            outside = (F.relu(mean - self.policy.action_high) + F.relu(self.policy.action_low - mean)) \
                * self.policy.action_mask
            box_penalty = outside.square().sum((-1, -2)).mean()
        else:
            box_penalty = torch.zeros((), device=self.device)
        actor_loss = policy_loss - alpha * joint_entropy + cfg.box_penalty_coef * box_penalty
        if bc is not None:
            bc_hist = {k: bc[k] for k in HIST_KEYS if k in bc} or None
            bc_loss = self.behaviour_loss(bc["obs"], bc_hist, bc.get("avail"), bc["actions"])
            actor_loss = actor_loss + cfg.bc_coef * bc_loss
        else:
            bc_loss = torch.zeros((), device=self.device)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.actor_opt.step()

        # critic: clipped value loss in normalised units
        v = self.critic(states_n, obs_n)
        value_loss = (v - target_n).square()
        if cfg.value_clip > 0:
            v_clipped = old_n + (v - old_n).clamp(-cfg.value_clip, cfg.value_clip)
            value_loss = torch.max(value_loss, (v_clipped - target_n).square())
        value_loss = 0.5 * value_loss.mean()
        self.critic_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        critic_grad_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
        self.critic_opt.step()

        # adaptive entropy coefficient: raise it while joint entropy < target, lower it above
        if self.alpha_opt is not None:
            alpha_loss = self.log_alpha * (joint_entropy.detach() - cfg.target_entropy)
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
        elif cfg.entropy_annealing < 1.0:  # MAMBA: the fixed coefficient decays after every actor step
            self._fixed_alpha = self._fixed_alpha * cfg.entropy_annealing

        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clip_frac = ((ratio - 1).abs() > cfg.clip).float().mean()
            return torch.stack([policy_loss.detach(), value_loss.detach(), joint_entropy.detach(), approx_kl,
                                clip_frac, alpha, grad_norm, critic_grad_norm, box_penalty.detach(),
                                bc_loss.detach()])

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit (the caller saves its generator state)."""
        return {
            "config": self.cfg.to_dict(),
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "alpha_opt": None if self.alpha_opt is None else self.alpha_opt.state_dict(),
            "fixed_entropy_coef": self._fixed_alpha.detach().clone(),  # annealed value (fixed mode)
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        shape_keys = ("actor_hidden", "critic_hidden", "share_parameters", "history_len", "history_dim",
                      "history_layers", "critic", "entropy_mode")
        diff = {k: (saved[k], self.cfg.to_dict()[k]) for k in shape_keys if k in saved and
                saved[k] != self.cfg.to_dict()[k]}
        if diff:
            raise OffmarlError(f"MAPPO checkpoint was made with other network options {diff} "
                               "(saved, current); build MAPPO with the checkpoint's config")
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if self.alpha_opt is not None and state.get("alpha_opt") is not None:
            self.alpha_opt.load_state_dict(state["alpha_opt"])
        if state.get("fixed_entropy_coef") is not None:
            self._fixed_alpha = state["fixed_entropy_coef"].to(self.device).clone()
        self.iterations = int(state.get("iterations", 0))

    def to(self, device: str | torch.device) -> MAPPO:
        """Move networks, entropy coefficient and optimiser state (e.g. resume on another device)."""
        opt_states = [o.state_dict() for o in (self.actor_opt, self.critic_opt, self.alpha_opt) if o is not None]
        self.device = torch.device(device)
        self.policy.to(self.device)
        self.critic.to(self.device)
        self.log_alpha = self.log_alpha.detach().to(self.device).requires_grad_(self.log_alpha.requires_grad)
        fixed = self._fixed_alpha.to(self.device)  # keeps an annealed coefficient
        self._build_optimisers()
        self._fixed_alpha = fixed
        for opt, st in zip([o for o in (self.actor_opt, self.critic_opt, self.alpha_opt) if o is not None],
                           opt_states):
            opt.load_state_dict(st)  # Adam moves its moments to the parameters' device
        return self
