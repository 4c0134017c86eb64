"""The online world model: MAMBA's per-agent recurrent latent model (DreamerV2 style), its
imagination, and MAG's error predictor R_m on top of it (REFERENCE §4).

Per agent i, with the agents mixed by attention at every transition:

    e_t^i   = enc(o_t^i)                                           observation embedding
    x_t     = Transformer_agents( W [z_{t-1}^i, onehot(a_{t-1}^i)] + pos_i )   the agents see each other
    h_t^i   = GRU(x_t^i, h_{t-1}^i)                                 deterministic state
    prior   p(z_t^i | h_t^i)       posterior  q(z_t^i | h_t^i, e_t^i)   G categoricals x C classes
    heads on feat_t^i = [h_t^i, z_t^i]: observation o_t^i, team reward r_t, continuation
            (1 - terminal_t), available actions avail_t^i (Bernoulli per action), and the
            agent's previous action a_{t-1}^i (MAMBA's "info" head)

Training (``loss``): reconstruction terms + KL balancing (DreamerV2: 0.8 on the prior, 0.2 on
the posterior), straight-through gradients through the categorical samples.

One latent STATE is one tensor per agent, ``feat`` [..., N, D] with D = deter + G*C, so the MAG
planner can reshape states freely (planners/mag.py: ``plan``).

Imagination (``imagine``): from posterior states of replayed sequences the CURRENT policy acts
on the decoded observation, restricted to the predicted available actions (threshold 0.5, the
most likely action if none passes, so the mask is never empty), and the model steps with its
prior. A predicted continuation below 0.5 ends the imagined trajectory (later steps are padding:
valid False), and MA-PPO's GAE(lambda) then computes the lambda-returns.

MAG (``planner`` given): at every imagined step L candidate next states are L samples of the
prior (candidate 0 is the sample plain imagination draws, with the same generator calls); R_m
judges each candidate's own transition and its H-1 step continuation under the current policy
(mean over the agents alive before and after each step, stopping at predicted termination), and each
start state keeps its own best candidate (``offmarl.planners.mag.plan``). With L = 1 the planner
draws nothing and imagination is plain imagination, bit for bit.

R_m (``ErrorPredictor``) takes the transition, per agent i: (feat_t^i, a_t^i, o_hat_{t+1}^i,
r_hat_{t+1}^i), the predicted next observation and reward of the prior sample it judges (MAG:
the model agents' action is the prediction), and that sample's deviation from the prior's mean
prediction (``prior_mean_outcome``; offline the same input made R_m rank candidates, docs/mag.md).
It is trained on real sequences with MAG's label for that same sample:
||o_hat_{t+1}^i - o_{t+1}^i|| + |r_hat_{t+1}^i - r_{t+1}|, from the posterior state at t under
the action taken, for agents alive at t and t+1 (a dead agent's observation is zeros: easy to
"predict", nothing to judge).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.functional import sample_categorical
from offmarl.nn.layers import mlp


@dataclass
class LatentModelConfig:
    """Sizes: the default is a CPU preset; ``mamba-reference`` in configs/online.yaml sets
    MAMBA's (paper Table 1 / REFERENCE §4)."""
    embed: int = 128  # CPU preset; MAMBA 256
    deter: int = 128  # CPU preset; MAMBA 256 (GRU state)
    stoch_groups: int = 16  # CPU preset; MAMBA 32 categoricals
    stoch_classes: int = 16  # CPU preset; MAMBA 32 classes
    hidden: int = 128  # CPU preset; MAMBA 256 (heads, transition input)
    attn_layers: int = 1  # CPU preset; MAMBA 3 transformer layers across agents
    attn_heads: int = 4  # CPU preset; MAMBA 8
    dropout: float = 0.0  # CPU preset; MAMBA 0.1
    kl_balance: float = 0.8  # DreamerV2 / MAMBA KL balancing
    kl_scale: float = 1.0  # DreamerV2 default beta
    free_nats: float = 0.0  # DreamerV2 Atari (no free bits)
    lr: float = 2e-4  # MAMBA Table 1 (MAG appendix B: 5e-4)
    grad_clip: float = 100.0  # DreamerV2 / MAMBA model grad clip
    batch: int = 16  # CPU preset; MAMBA 40 sequences
    seq_len: int = 20  # MAMBA sequence length
    error_hidden: tuple[int, ...] = (128, 128)  # CPU preset; MAG R_m 4 x 256
    error_lr: float = 5e-4  # ours: Adam default scale for a small regressor (MAG does not state it)

    def __post_init__(self):
        self.error_hidden = tuple(int(h) for h in self.error_hidden)
        if self.hidden % self.attn_heads:
            raise OffmarlError(f"online.model.hidden ({self.hidden}) must be divisible by "
                               f"online.model.attn_heads ({self.attn_heads})")

    @property
    def stoch(self) -> int:
        return self.stoch_groups * self.stoch_classes

    @property
    def feat(self) -> int:
        return self.deter + self.stoch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["error_hidden"] = list(self.error_hidden)
        return d


def _sample_onehot(logits: torch.Tensor, generator: torch.Generator | None, n: int = 1) -> torch.Tensor:
    """logits [..., G, C] -> n one-hot samples [n, ..., G, C] (float)."""
    c = logits.shape[-1]
    probs = torch.softmax(logits.float(), -1).reshape(-1, c)
    idx = sample_categorical(probs, generator, n)  # [M, n]
    onehot = F.one_hot(idx.T, c).to(logits.dtype)  # [n, M, C]
    return onehot.view(n, *logits.shape)


def _kl(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """KL(lhs || rhs) of categoricals given by logits [..., G, C], summed over G -> [...]."""
    lp, lq = torch.log_softmax(lhs, -1), torch.log_softmax(rhs, -1)
    return (lp.exp() * (lp - lq)).sum((-1, -2))


class LatentWorldModel(nn.Module):
    """The per-agent latent model; every tensor carries the agent axis N before its features."""

    def __init__(self, n_agents: int, obs_dim: int, n_actions: int, cfg: LatentModelConfig):
        super().__init__()
        self.n, self.obs_dim, self.k, self.cfg = n_agents, obs_dim, n_actions, cfg
        g, c, d, hid = cfg.stoch_groups, cfg.stoch_classes, cfg.deter, cfg.hidden
        self.encoder = mlp(obs_dim, (hid,), cfg.embed, activation=nn.ELU)
        self.in_proj = nn.Linear(g * c + n_actions, hid)
        self.agent_pos = nn.Parameter(torch.zeros(n_agents, hid))  # MAMBA: agent-index positional encoding
        layer = nn.TransformerEncoderLayer(hid, cfg.attn_heads, 2 * hid, cfg.dropout, batch_first=True)
        self.mixer = nn.TransformerEncoder(layer, cfg.attn_layers, enable_nested_tensor=False)
        self.gru = nn.GRUCell(hid, d)
        self.prior = mlp(d, (hid,), g * c, activation=nn.ELU)
        self.posterior = mlp(d + cfg.embed, (hid,), g * c, activation=nn.ELU)
        f = cfg.feat
        self.obs_head = mlp(f, (hid, hid), obs_dim, activation=nn.ELU)
        self.reward_head = mlp(f, (hid,), 1, activation=nn.ELU)
        self.cont_head = mlp(f, (hid,), 1, activation=nn.ELU)
        self.avail_head = mlp(f, (hid,), n_actions, activation=nn.ELU)
        self.prev_action_head = mlp(f, (hid,), n_actions, activation=nn.ELU)

    # -- pieces ---------------------------------------------------------------------------------
    def split(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feat [..., D] -> deter [..., deter], stoch [..., G*C]."""
        return feat[..., :self.cfg.deter], feat[..., self.cfg.deter:]

    def deterministic(self, feat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """h_t from the previous state feat [M, N, D] and joint action [M, N] (long) -> [M, N, deter]."""
        h, z = self.split(feat)
        x = F.elu(self.in_proj(torch.cat([z, F.one_hot(actions, self.k).to(z.dtype)], -1))) + self.agent_pos
        x = self.mixer(x)
        m = x.shape[0]
        return self.gru(x.reshape(m * self.n, -1), h.reshape(m * self.n, -1)).view(m, self.n, -1)

    def prior_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.prior(h).unflatten(-1, (self.cfg.stoch_groups, self.cfg.stoch_classes))

    def initial(self, m: int, device) -> torch.Tensor:
        return torch.zeros(m, self.n, self.cfg.feat, device=device)

    # -- posterior over real sequences ----------------------------------------------------------
    def observe(self, obs: torch.Tensor, actions: torch.Tensor, first: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """obs [T, B, N, O], actions [T, B, N] (taken AT each row), first [T, B] bool
        -> feat [T, B, N, D] (posterior, straight-through samples), prior / post logits
        [T, B, N, G, C]. The state is reset before every ``first`` row and before row 0."""
        t_len, b = obs.shape[:2]
        embed = self.encoder(obs)
        feat = self.initial(b, obs.device)
        prev_a = torch.zeros(b, self.n, dtype=torch.long, device=obs.device)
        feats, priors, posts = [], [], []
        for t in range(t_len):
            keep = (~first[t]).to(feat.dtype)[:, None, None] if t else torch.zeros_like(feat[:, :1, :1])
            feat = feat * keep
            prev_a = prev_a * keep[..., 0].long()
            h = self.deterministic(feat, prev_a)
            prior = self.prior_logits(h)
            post = self.posterior(torch.cat([h, embed[t]], -1)).unflatten(-1, prior.shape[-2:])
            z = _sample_onehot(post, generator)[0]
            z = z + torch.softmax(post, -1) - torch.softmax(post, -1).detach()  # straight-through
            feat = torch.cat([h, z.flatten(-2)], -1)
            feats.append(feat)
            priors.append(prior)
            posts.append(post)
            prev_a = actions[t]
        return {"feat": torch.stack(feats), "prior": torch.stack(priors), "post": torch.stack(posts)}

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """batch from SequenceReplay.sample ([T, B, ...]) -> (total loss, terms, feat [T, B, N, D])."""
        cfg = self.cfg
        out = self.observe(batch["obs"], batch["action"], batch["first"], generator)
        feat = out["feat"]
        obs_loss = 0.5 * (self.obs_head(feat) - batch["obs"]).square().sum(-1).mean()
        reward_loss = 0.5 * (self.reward_head(feat).squeeze(-1) - batch["reward"][..., None]).square().mean()
        cont_target = (~batch["terminal"]).float()[..., None].expand(feat.shape[:-1])
        cont_loss = F.binary_cross_entropy_with_logits(self.cont_head(feat).squeeze(-1), cont_target)
        avail_loss = F.binary_cross_entropy_with_logits(self.avail_head(feat), batch["avail"].float())
        # previous action: rows 1.. that continue an episode
        prev_logits = self.prev_action_head(feat[1:])
        has_prev = (~batch["first"][1:]).float()[..., None].expand(prev_logits.shape[:-1])
        ce = F.cross_entropy(prev_logits.flatten(0, -2), batch["action"][:-1].flatten(), reduction="none")
        prev_loss = (ce * has_prev.flatten()).sum() / has_prev.sum().clamp_min(1.0)
        # KL balancing: train the prior towards the posterior faster than the reverse
        kl_prior = _kl(out["post"].detach(), out["prior"]).mean()
        kl_post = _kl(out["post"], out["prior"].detach()).mean()
        kl = (cfg.kl_balance * kl_prior.clamp_min(cfg.free_nats)
              + (1 - cfg.kl_balance) * kl_post.clamp_min(cfg.free_nats))
        total = obs_loss + reward_loss + cont_loss + avail_loss + prev_loss + cfg.kl_scale * kl
        terms = {"model_loss": total.detach(), "obs_loss": obs_loss.detach(), "reward_loss": reward_loss.detach(),
                 "cont_loss": cont_loss.detach(), "avail_loss": avail_loss.detach(),
                 "prev_action_loss": prev_loss.detach(),
                 "kl": kl_prior.detach()}
        return total, terms, feat

    # -- heads used in imagination --------------------------------------------------------------
    def decode(self, feat: torch.Tensor, outcome: bool = True) -> dict[str, torch.Tensor]:
        """feat [M, N, D] -> obs [M, N, O], avail [M, N, K] bool (never empty), and with ``outcome``
        reward [M] (mean over agents' predictions of the team reward), cont [M] (mean continuation
        probability). The planner's look-ahead needs only what the policy acts on (outcome=False)."""
        avail_p = torch.sigmoid(self.avail_head(feat))
        avail = avail_p > 0.5
        best = F.one_hot(avail_p.argmax(-1), self.k).bool()
        avail = torch.where(avail.any(-1, keepdim=True), avail, best)
        out = {"obs": self.obs_head(feat), "avail": avail}
        if outcome:
            out["reward"] = self.reward_head(feat).squeeze(-1).mean(-1)
            out["cont"] = torch.sigmoid(self.cont_head(feat).squeeze(-1)).mean(-1)
        return out

    def candidates(self, feat: torch.Tensor, actions: torch.Tensor, l: int, generator: torch.Generator | None,
                   plan_generator: torch.Generator | None = None) -> torch.Tensor:
        """L candidate next states per row: feat [M, N, D], actions [M, N] -> [M, L, N, D].
        Candidate 0 is the prior sample drawn with ``generator`` (what plain imagination draws);
        candidates 1..L-1 are further samples of the same prior drawn with ``plan_generator``."""
        h = self.deterministic(feat, actions)
        logits = self.prior_logits(h)
        z = _sample_onehot(logits, generator)
        if l > 1:
            z = torch.cat([z, _sample_onehot(logits, plan_generator, l - 1)], 0)
        hs = h.unsqueeze(0).expand(z.shape[0], *h.shape)
        return torch.cat([hs, z.flatten(-2)], -1).transpose(0, 1)


class ErrorPredictor(nn.Module):
    """MAG's R_m on the latent model: per agent, (feat [M, N, D], action [M, N], predicted next
    observation [M, N, O], predicted next reward [M, N]) -> predicted one-step error [M, N],
    shared weights across agents. ``transition=False``: the earlier R_m(feat, action)."""

    def __init__(self, feat_dim: int, n_actions: int, hidden: tuple[int, ...], obs_dim: int = 0,
                 transition: bool = True, deviation: bool = True):
        super().__init__()
        self.k, self.transition = n_actions, bool(transition and obs_dim > 0)
        self.deviation = self.transition and deviation
        extra = (obs_dim + 1) * (2 if self.deviation else 1) if self.transition else 0
        self.net = mlp(feat_dim + n_actions + extra, hidden, 1)

    def forward(self, feat: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor | None = None,
                next_reward: torch.Tensor | None = None, deviation: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """deviation: (next_obs - the prior's mean prediction, next_reward - its mean) (``prior_mean_outcome``)."""
        parts = [feat, F.one_hot(actions, self.k).to(feat.dtype)]
        if self.transition:
            parts += [next_obs.to(feat.dtype), next_reward.to(feat.dtype).unsqueeze(-1)]
            if self.deviation:
                parts += [deviation[0].to(feat.dtype), deviation[1].to(feat.dtype).unsqueeze(-1)]
        return F.softplus(self.net(torch.cat(parts, -1)).squeeze(-1))  # errors are >= 0


def predicted_outcome(model: LatentWorldModel, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What R_m sees of a predicted next state nxt [M, N, D]: per-agent observation [M, N, O] and
    reward [M, N], and the mean continuation probability [M]."""
    return (model.obs_head(nxt), model.reward_head(nxt).squeeze(-1),
            torch.sigmoid(model.cont_head(nxt).squeeze(-1)).mean(-1))


def prior_mean_outcome(model: LatentWorldModel, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's mean prediction at a sampled next state nxt [M, N, D] (same deterministic part,
    the stochastic part replaced by its expected one-hot): observation [M, N, O], reward [M, N].
    A candidate's deviation from it tells R_m how far this sample is from the model's average."""
    h, _ = model.split(nxt)
    mean_z = torch.softmax(model.prior_logits(h), -1).flatten(-2)
    mean = torch.cat([h, mean_z], -1)
    return model.obs_head(mean), model.reward_head(mean).squeeze(-1)


def _deviation(model: LatentWorldModel, nxt: torch.Tensor, o_hat: torch.Tensor, r_hat: torch.Tensor):
    o_bar, r_bar = prior_mean_outcome(model, nxt)
    return o_hat - o_bar, r_hat - r_bar


@torch.no_grad()
def error_labels(model: LatentWorldModel, feat: torch.Tensor, batch: dict[str, torch.Tensor],
                 generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """MAG's R_m label on real sequences: from the posterior state at row t and the action taken,
    one prior sample of t+1; label_i = ||o_hat^i - o^i||_2 + |r_hat^i - r| at t+1.
    feat [T, B, N, D] -> labels [T-1, B, N], weight [T-1, B, N] (row t+1 continues row t's episode
    and agent i is alive at t and t+1), next_obs [T-1, B, N, O] and next_reward [T-1, B, N] (the sample's
    predictions: R_m's transition input)."""
    t_len, b = feat.shape[:2]
    src = feat[:-1].flatten(0, 1)
    act = batch["action"][:-1].flatten(0, 1)
    nxt = model.candidates(src, act, 1, generator)[:, 0]
    o_hat, r_hat, _ = predicted_outcome(model, nxt)
    o, r = batch["obs"][1:].flatten(0, 1), batch["reward"][1:].flatten(0, 1)
    labels = (o_hat - o).norm(dim=-1) + (r_hat - r[:, None]).abs()
    valid = ~batch["first"][1:] & ~batch["terminal"][:-1]
    weight = valid[..., None] & batch["alive"][:-1] & batch["alive"][1:]
    shape = (t_len - 1, b, -1)
    o_dev, r_dev = _deviation(model, nxt, o_hat, r_hat)
    return {"labels": labels.view(shape), "weight": weight, "next_obs": o_hat.view(t_len - 1, b, *o_hat.shape[1:]),
            "next_reward": r_hat.view(shape),
            "deviation": (o_dev.view(t_len - 1, b, *o_dev.shape[1:]), r_dev.view(shape))}


def _all_alive(avail: torch.Tensor) -> torch.Tensor:
    return torch.ones(avail.shape[:-1], dtype=torch.bool, device=avail.device)


class LatentLookahead:
    """``LookaheadWorld`` (planners/mag.py) over the latent model: states are feat [M, N, D]; the
    current policy acts on decoded observations within the predicted available actions; a step's
    score is R_m's per-agent error averaged over the agents alive before and after the step
    (``alive_fn(avail [M, N, K]) -> [M, N]``, from the decoded available actions; None = all), and a
    look-ahead stops where the predicted continuation is below 0.5. No memory (the latent state
    is the memory). An R_m(feat, a) (``transition=False``) scores as before the transition input:
    the sum over all agents, no stop (kept to measure the difference)."""

    def __init__(self, model: LatentWorldModel, policy, error_model: ErrorPredictor,
                 alive_fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model, self.policy, self.error_model = model, policy, error_model
        self.alive_fn = alive_fn or _all_alive

    def tile(self, memory: Any, l: int) -> Any:
        return None

    def _score(self, feat, actions, avail, nxt):
        o_hat, r_hat, cont = predicted_outcome(self.model, nxt)
        dev = _deviation(self.model, nxt, o_hat, r_hat) if getattr(self.error_model, "deviation", False) else None
        err = (self.error_model(feat, actions, o_hat, r_hat) if dev is None
               else self.error_model(feat, actions, o_hat, r_hat, dev))
        if not self.error_model.transition:
            return err.sum(-1), torch.ones_like(cont), torch.ones_like(cont, dtype=torch.bool)
        # alive before AND after the transition: a predicted death is neither rewarded (its zeros are
        # easy to "predict") nor penalised
        alive = (self.alive_fn(avail) & self.alive_fn(self.model.decode(nxt, outcome=False)["avail"])).to(err.dtype)
        n_alive = alive.sum(-1)
        score = (err * alive).sum(-1) / n_alive.clamp_min(1.0)
        return score, (n_alive > 0).to(err.dtype), cont >= 0.5

    def judge(self, context: dict[str, torch.Tensor], candidates: torch.Tensor):
        """context: feat [B, N, D], actions [B, N], avail [B, N, K] of the committed step;
        candidates [B, L, N, D]."""
        b, l = candidates.shape[:2]
        rep = {k: v.repeat_interleave(l, 0) for k, v in context.items()}
        return self._score(rep["feat"], rep["actions"], rep["avail"], candidates.reshape(b * l, *candidates.shape[2:]))

    def advance(self, states: torch.Tensor, memory: Any, generator: torch.Generator | None, last: bool):
        d = self.model.decode(states, outcome=False)
        actions, _ = self.policy.act(d["obs"], None, d["avail"], deterministic=False, generator=generator)
        nxt = self.model.candidates(states, actions, 1, generator)[:, 0]
        score, w, cont = self._score(states, actions, d["avail"], nxt)
        return (None if last else nxt), None, score, w, cont


@torch.no_grad()
def real_continuation_errors(model: LatentWorldModel, feats: torch.Tensor, data: dict[str, torch.Tensor],
                             ts: torch.Tensor, es: torch.Tensor, alive_real: torch.Tensor, k: int,
                             generator: torch.Generator | None) -> torch.Tensor:
    """Continue latent states feats [M, N, D] (states reached at t+1 from real rows (ts, es) of
    ``data`` [T, E, ...], each row repeated M // len(ts) times consecutively) under the REAL
    actions a_{t+1..t+k-1} -> per-step observation error [M, k] against o_{t+1..t+k}: the L2
    norm per agent, averaged over the agents alive (``alive_real`` [T, E, N]) at t+j-1 and t+j."""
    rep = feats.shape[0] // len(ts)
    ti, ei = ts.repeat_interleave(rep), es.repeat_interleave(rep)
    out, f = [], feats
    for j in range(1, k + 1):
        err = (model.obs_head(f) - data["obs"][ti + j, ei]).norm(dim=-1)
        alive = (alive_real[ti + j - 1, ei] & alive_real[ti + j, ei]).to(err.dtype)
        out.append((err * alive).sum(-1) / alive.sum(-1).clamp_min(1.0))
        if j < k:
            f = model.candidates(f, data["action"][ti + j, ei], 1, generator)[:, 0]
    return torch.stack(out, -1)


Selector = Callable[[torch.Tensor, torch.Generator, dict], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def imagine(model: LatentWorldModel, policy, start: torch.Tensor, horizon: int, generator: torch.Generator | None,
            l: int = 1, select: Selector | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """H imagined steps from posterior states ``start`` [B, N, D] under ``policy`` (MAPPOPolicy).

    l, select: MAG. ``select(candidates [B, L, N, D], plan_generator, context) -> (idx [B], scores
    [B, L])`` picks each start state's candidate (context: the step's feat, actions, avail; the
    algorithm passes ``planners.mag.plan`` over a ``LatentLookahead``); l = 1 (MAMBA) never calls it.
    -> MA-PPO batch of [H, B, ...] tensors (states = the agents' decoded observations
    concatenated [H, B, N*O], obs [H, B, N, O], avail, actions, logp, rewards, dones, timeouts,
    valid, next_states, next_obs) and info (planner_frac_replaced, planner_score_gain).
    """
    b = start.shape[0]
    dev = start.device
    plan_gen = None
    if l > 1:  # the only extra draw from the imagination generator
        if select is None:
            raise OffmarlError(f"imagine: l={l} candidates need a select function (the MAG planner)")
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=dev))
        plan_gen = torch.Generator(device=dev).manual_seed(seed)
    rows = torch.arange(b, device=dev)
    feat, alive = start, torch.ones(b, dtype=torch.bool, device=dev)
    d = model.decode(feat)
    keys = ("obs", "avail", "actions", "logp", "rewards", "dones", "valid", "next_obs")
    rec: dict[str, list] = {k: [] for k in keys}
    # planner statistics summed on the device and read once after the loop (no host sync per step)
    replaced, gain, n_valid = (torch.zeros((), device=dev) for _ in range(3))
    for _ in range(horizon):
        actions, logp = policy.act(d["obs"], None, d["avail"], deterministic=False, generator=generator)
        cand = model.candidates(feat, actions, l, generator, plan_gen)
        if l > 1:
            idx, scores = select(cand, plan_gen, {"feat": feat, "actions": actions, "avail": d["avail"]})
            chosen = scores.gather(1, idx[:, None]).squeeze(1)
            replaced += ((idx != 0) & alive).sum()
            gain += ((scores[:, 0] - chosen) * alive).sum()
            n_valid += alive.sum()
            nxt = cand[rows, idx]
        else:
            nxt = cand[:, 0]
        nd = model.decode(nxt)
        done = nd["cont"] < 0.5
        for k, v in (("obs", d["obs"]), ("avail", d["avail"]), ("actions", actions), ("logp", logp),
                     ("rewards", nd["reward"]), ("dones", done & alive), ("valid", alive.clone()),
                     ("next_obs", nd["obs"])):
            rec[k].append(v)
        alive = alive & ~done
        feat, d = nxt, nd
    batch = {k: torch.stack(v) for k, v in rec.items()}
    batch["states"] = batch["obs"].flatten(-2)
    batch["next_states"] = batch["next_obs"].flatten(-2)
    batch["timeouts"] = torch.zeros_like(batch["dones"])
    info = {"imagined_valid_frac": float(batch["valid"].float().mean()),
            "imagined_reward_mean": float(batch["rewards"][batch["valid"]].mean()) if batch["valid"].any() else 0.0}
    if l > 1:
        info["planner_frac_replaced"] = float(replaced / n_valid.clamp_min(1.0))
        info["planner_score_gain"] = float(gain / n_valid.clamp_min(1.0))
    return batch, info


__all__ = ["ErrorPredictor", "LatentLookahead", "LatentModelConfig", "LatentWorldModel", "error_labels", "imagine",
           "predicted_outcome", "prior_mean_outcome", "real_continuation_errors"]
