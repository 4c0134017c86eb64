"""The online world model: MAMBA's per-agent recurrent latent model (DreamerV2 style), its
imagination, and MAG's error predictor R_m on top of it
(MAMBA: Egorov & Shpilman, AAMAS 2022; github.com/jbr-ai-labs/mamba).

Per agent i, with the agents mixed by attention at every transition:

    e_t^i   = enc(o_t^i)                                           observation embedding
    x_t     = Transformer_agents( W [z_{t-1}^i, onehot(a_{t-1}^i)] + pos_i )   the agents see each other
    h_t^i   = GRU(x_t^i, h_{t-1}^i)                                 deterministic state
    prior   p(z_t^i | h_t^i)       posterior  q(z_t^i | h_t^i, e_t^i)   G categoricals x C classes
    heads on feat_t^i = [h_t^i, z_t^i]: observation o_t^i, team reward r_t, the agent's own
            continuation (alive_t^i and not terminal_t: MAMBA's per-agent "done"), available
            actions avail_t^i (Bernoulli per action), and the agent's previous action
            a_{t-1}^i (MAMBA's "info" head)

The previous action enters as a one-hot, or zeros at an episode's first row and for an agent that
was dead at the previous row (MAMBA resets the action with the state). A dead agent's observation
(all zeros in SMAX) is zeroed before the encoder and every loss term is masked to the agents alive
at that row (MAMBA's ``fake`` mask), so a dead agent's observation changes no loss.

Training (``loss``): reconstruction terms + KL balancing (DreamerV2 / MAMBA: 0.8 on the prior,
0.2 on the posterior; per categorical, the mean over the G categoricals as MAMBA's
``state_divergence_loss``), straight-through gradients through the categorical samples.

One latent STATE is one tensor per agent, ``feat`` [..., N, D] with D = deter + G*C, so the MAG
planner can reshape states freely (planners/mag.py: ``plan``).

Imagination (``imagine``): from posterior states of replayed sequences the CURRENT policy acts
on the decoded observation, restricted to the predicted available actions (threshold 0.5, the
most likely action if none passes, so the mask is never empty), and the model steps with its
prior. The battle continues while any agent continues (its probability: the largest per-agent
continuation probability); that probability discounts the returns softly (MAMBA's
``discount_arr``, MA-PPO's ``discounts``), and below 0.5 it ends the imagined battle (later steps
are padding: valid False). An agent whose own continuation falls below 0.5 is dead for the rest of
the imagined battle (zero previous action, left out of the reward mean).

MAG (``planner`` given): at every imagined step L candidate next states are L samples of the
prior (candidate 0 is the sample plain imagination draws, with the same generator calls); R_m
judges each candidate's own transition and its H-1 step continuation under the current policy
(mean over the agents alive before and after each step, stopping at predicted termination), and each
start state keeps its own best candidate (``offmarl.planners.mag.plan``). With L = 1 the planner
draws nothing and imagination is plain imagination, bit for bit.

R_m (worldmodel/error_model.py ``LatentErrorModel``, trained by its ``latent_error_model_step``
on ``error_labels``) takes the transition, per agent i: (feat_t^i, a_t^i, o_hat_{t+1}^i,
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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.functional import sample_categorical
from offmarl.nn.layers import mlp

if TYPE_CHECKING:  # error_model.py imports this module (R_m's labels); no import back at run time
    from offmarl.worldmodel.error_model import LatentErrorModel


@dataclass
class LatentModelConfig:
    """Sizes: the default is a CPU preset; ``mamba-reference`` in configs/online.yaml sets
    MAMBA's (paper Table 1)."""
    embed: int = 128  # CPU preset; MAMBA 256
    deter: int = 128  # CPU preset; MAMBA 256 (GRU state)
    stoch_groups: int = 16  # CPU preset; MAMBA 32 categoricals
    stoch_classes: int = 16  # CPU preset; MAMBA 32 classes
    hidden: int = 128  # CPU preset; MAMBA 256 (heads, transition input)
    attn_layers: int = 1  # CPU preset; MAMBA 3 transformer layers across agents
    attn_heads: int = 4  # CPU preset; MAMBA 8
    dropout: float = 0.0  # CPU preset; MAMBA 0.1
    kl_balance: float = 0.8  # DreamerV2 / MAMBA KL balancing (weight on the prior's term)
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
    """KL(lhs || rhs) of categoricals given by logits [..., G, C], the mean over the G categoricals
    -> [...] (MAMBA's ``state_divergence_loss``: per-categorical KL, ``mean(-1)``)."""
    lp, lq = torch.log_softmax(lhs, -1), torch.log_softmax(rhs, -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean(-1)


def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of x over the entries where the weight w (same shape, 0/1) is set."""
    return (x * w).sum() / w.sum().clamp_min(1.0)


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

    def deterministic(self, feat: torch.Tensor, actions: torch.Tensor,
                      act_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h_t from the previous state feat [M, N, D] and joint action [M, N] (long) -> [M, N, deter].
        act_mask [M, N] (bool/float): where False the previous action enters as zeros (episode
        start, dead agent)."""
        h, z = self.split(feat)
        onehot = F.one_hot(actions, self.k).to(z.dtype)
        if act_mask is not None:
            onehot = onehot * act_mask.to(z.dtype)[..., None]
        x = F.elu(self.in_proj(torch.cat([z, onehot], -1))) + self.agent_pos
        x = self.mixer(x)
        m = x.shape[0]
        return self.gru(x.reshape(m * self.n, -1), h.reshape(m * self.n, -1)).view(m, self.n, -1)

    def prior_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.prior(h).unflatten(-1, (self.cfg.stoch_groups, self.cfg.stoch_classes))

    def initial(self, m: int, device) -> torch.Tensor:
        return torch.zeros(m, self.n, self.cfg.feat, device=device)

    # -- posterior over real sequences ----------------------------------------------------------
    def _posterior_step(self, feat, prev_a, prev_ok, embed, generator):
        h = self.deterministic(feat, prev_a, prev_ok)
        prior = self.prior_logits(h)
        post = self.posterior(torch.cat([h, embed], -1)).unflatten(-1, prior.shape[-2:])
        z = _sample_onehot(post, generator)[0]
        z = z + torch.softmax(post, -1) - torch.softmax(post, -1).detach()  # straight-through
        return torch.cat([h, z.flatten(-2)], -1), prior, post

    def observe_step(self, feat: torch.Tensor, prev_action: torch.Tensor, prev_ok: torch.Tensor, obs: torch.Tensor,
                     alive: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One posterior step while acting in the env (``observe`` row by row): the previous state
        feat [M, N, D] (zeros at an episode's start), the previous joint action [M, N] and where it
        counts prev_ok [M, N] (False at the start and for agents dead before), the new observation
        obs [M, N, O] and alive [M, N] -> the posterior state [M, N, D]."""
        embed = self.encoder(obs * alive[..., None].to(obs.dtype))
        return self._posterior_step(feat, prev_action, prev_ok, embed, generator)[0]

    def observe(self, obs: torch.Tensor, actions: torch.Tensor, first: torch.Tensor,
                generator: torch.Generator | None = None, alive: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """obs [T, B, N, O], actions [T, B, N] (taken AT each row), first [T, B] bool, alive
        [T, B, N] bool (None: every agent alive) -> feat [T, B, N, D] (posterior, straight-through
        samples), prior / post logits [T, B, N, G, C]. The state is reset before every ``first``
        row and before row 0; the previous action is zeros there and for agents dead at the
        previous row; dead agents' observations are zeroed before the encoder."""
        t_len, b = obs.shape[:2]
        if alive is not None:
            obs = obs * alive[..., None].to(obs.dtype)
        embed = self.encoder(obs)
        feat = self.initial(b, obs.device)
        prev_a = torch.zeros(b, self.n, dtype=torch.long, device=obs.device)
        prev_ok = torch.zeros(b, self.n, dtype=torch.bool, device=obs.device)
        feats, priors, posts = [], [], []
        for t in range(t_len):
            if t:
                cont = ~first[t]
                feat = feat * cont.to(feat.dtype)[:, None, None]
                prev_ok = cont[:, None].expand(b, self.n)
                if alive is not None:
                    prev_ok = prev_ok & alive[t - 1]
            feat, prior, post = self._posterior_step(feat, prev_a, prev_ok, embed[t], generator)
            feats.append(feat)
            priors.append(prior)
            posts.append(post)
            prev_a = actions[t]
        return {"feat": torch.stack(feats), "prior": torch.stack(priors), "post": torch.stack(posts)}

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """batch from SequenceReplay.sample ([T, B, ...]) -> (total loss, terms, feat [T, B, N, D])."""
        cfg = self.cfg
        alive = batch["alive"]
        out = self.observe(batch["obs"], batch["action"], batch["first"], generator, alive=alive)
        feat = out["feat"]
        w = alive.to(feat.dtype)  # [T, B, N]: every term counts the agents alive at the row only
        obs_err = 0.5 * (self.obs_head(feat) - batch["obs"]).square().sum(-1)
        obs_loss = _masked_mean(obs_err, w)
        reward_err = 0.5 * (self.reward_head(feat).squeeze(-1) - batch["reward"][..., None]).square()
        reward_loss = _masked_mean(reward_err, w)
        # per-agent continuation: the agent lives on and the battle goes on; learned at the rows
        # where the agent was alive the row before (its death is learned, its time dead is not)
        cont_target = (alive & ~batch["terminal"][..., None]).to(feat.dtype)
        was_alive = torch.cat([alive[:1], alive[:-1] & ~batch["first"][1:, :, None]
                               | alive[1:] & batch["first"][1:, :, None]], 0).to(feat.dtype)
        cont_ce = F.binary_cross_entropy_with_logits(self.cont_head(feat).squeeze(-1), cont_target, reduction="none")
        cont_loss = _masked_mean(cont_ce, was_alive)
        avail_ce = F.binary_cross_entropy_with_logits(self.avail_head(feat), batch["avail"].to(feat.dtype),
                                                      reduction="none").mean(-1)
        avail_loss = _masked_mean(avail_ce, w)
        # previous action: rows 1.. that continue an episode, agents alive at the previous row
        prev_logits = self.prev_action_head(feat[1:])
        has_prev = ((~batch["first"][1:])[..., None] & alive[:-1]).to(feat.dtype)
        ce = F.cross_entropy(prev_logits.flatten(0, -2), batch["action"][:-1].flatten(), reduction="none")
        prev_loss = _masked_mean(ce.view(has_prev.shape), has_prev)
        # KL balancing: train the prior towards the posterior faster than the reverse
        kl_prior = _masked_mean(_kl(out["post"].detach(), out["prior"]), w)
        kl_post = _masked_mean(_kl(out["post"], out["prior"].detach()), w)
        kl = (cfg.kl_balance * kl_prior.clamp_min(cfg.free_nats)
              + (1 - cfg.kl_balance) * kl_post.clamp_min(cfg.free_nats))
        total = obs_loss + reward_loss + cont_loss + avail_loss + prev_loss + cfg.kl_scale * kl
        terms = {"model_loss": total.detach(), "obs_loss": obs_loss.detach(), "reward_loss": reward_loss.detach(),
                 "cont_loss": cont_loss.detach(), "avail_loss": avail_loss.detach(),
                 "prev_action_loss": prev_loss.detach(),
                 "kl": kl_prior.detach()}
        return total, terms, feat

    # -- heads used in imagination --------------------------------------------------------------
    def decode(self, feat: torch.Tensor, outcome: bool = True, alive: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
        """feat [M, N, D] -> obs [M, N, O], avail [M, N, K] bool (never empty), and with ``outcome``
        reward [M] (mean over the ``alive`` [M, N] agents' predictions of the team reward; all
        agents when None or none alive), cont_agents [M, N] (per-agent continuation probability)
        and cont [M] (the battle continues while any agent does: their largest probability).
        The planner's look-ahead needs only what the policy acts on (outcome=False)."""
        avail_p = torch.sigmoid(self.avail_head(feat))
        avail = avail_p > 0.5
        best = F.one_hot(avail_p.argmax(-1), self.k).bool()
        avail = torch.where(avail.any(-1, keepdim=True), avail, best)
        out = {"obs": self.obs_head(feat), "avail": avail}
        if outcome:
            r = self.reward_head(feat).squeeze(-1)
            if alive is None:
                out["reward"] = r.mean(-1)
            else:
                w = alive.to(r.dtype)
                w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
                out["reward"] = (r * w).sum(-1) / w.sum(-1)
            out["cont_agents"] = torch.sigmoid(self.cont_head(feat).squeeze(-1))
            out["cont"] = out["cont_agents"].max(-1).values
        return out

    def candidates(self, feat: torch.Tensor, actions: torch.Tensor, l: int, generator: torch.Generator | None,
                   plan_generator: torch.Generator | None = None, act_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """L candidate next states per row: feat [M, N, D], actions [M, N] -> [M, L, N, D].
        Candidate 0 is the prior sample drawn with ``generator`` (what plain imagination draws);
        candidates 1..L-1 are further samples of the same prior drawn with ``plan_generator``.
        act_mask [M, N]: agents whose action enters as zeros where False (dead)."""
        h = self.deterministic(feat, actions, act_mask)
        logits = self.prior_logits(h)
        z = _sample_onehot(logits, generator)
        if l > 1:
            z = torch.cat([z, _sample_onehot(logits, plan_generator, l - 1)], 0)
        hs = h.unsqueeze(0).expand(z.shape[0], *h.shape)
        return torch.cat([hs, z.flatten(-2)], -1).transpose(0, 1)


def predicted_outcome(model: LatentWorldModel, nxt: torch.Tensor, obs: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What R_m sees of a predicted next state nxt [M, N, D]: per-agent observation [M, N, O] and
    reward [M, N], and the mean continuation probability [M]. ``obs``: the observation head's output
    at nxt when the caller has already decoded it."""
    return (model.obs_head(nxt) if obs is None else obs, model.reward_head(nxt).squeeze(-1),
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

    def __init__(self, model: LatentWorldModel, policy, error_model: LatentErrorModel,
                 alive_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, features: bool = False):
        self.model, self.policy, self.error_model = model, policy, error_model
        self.alive_fn = alive_fn or _all_alive
        self.features = features  # the policy reads the states themselves (latent agents)
        # the decoding of the last scored next states: the next look-ahead step acts on them, so it
        # reuses it instead of decoding the same states again (same ops, same numbers)
        # (kept: the states themselves, so their memory cannot be reused by other tensors meanwhile)
        self._decoded: tuple[torch.Tensor, tuple, dict[str, torch.Tensor]] | None = None

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return x.data_ptr(), tuple(x.shape), x.stride(), x.dtype

    def _decode(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._decoded is not None and self._decoded[1] == self._key(states):
            return self._decoded[2]
        return self.model.decode(states, outcome=False)

    def tile(self, memory: Any, l: int) -> Any:
        return None

    def _score(self, feat, actions, avail, nxt):
        # one decoding of nxt: the score's observation, the alive mask and the next look-ahead step
        d = self.model.decode(nxt, outcome=False)
        self._decoded = (nxt, self._key(nxt), d)
        o_hat, r_hat, cont = predicted_outcome(self.model, nxt, d["obs"])
        dev = _deviation(self.model, nxt, o_hat, r_hat) if getattr(self.error_model, "deviation", False) else None
        err = (self.error_model(feat, actions, o_hat, r_hat) if dev is None
               else self.error_model(feat, actions, o_hat, r_hat, dev))
        if not self.error_model.transition:
            return err.sum(-1), torch.ones_like(cont), torch.ones_like(cont, dtype=torch.bool)
        # alive before AND after the transition: a predicted death is neither rewarded (its zeros are
        # easy to "predict") nor penalised
        alive = (self.alive_fn(avail) & self.alive_fn(d["avail"])).to(err.dtype)
        n_alive = alive.sum(-1)
        score = (err * alive).sum(-1) / n_alive.clamp_min(1.0)
        return score, (n_alive > 0).to(err.dtype), cont >= 0.5

    def judge(self, context: dict[str, torch.Tensor], candidates: torch.Tensor):
        """context: feat [B, N, D], actions [B, N], avail [B, N, K] of the committed step;
        candidates [B, L, N, D]."""
        b, l = candidates.shape[:2]
        self._decoded = None
        rep = {k: v.repeat_interleave(l, 0) for k, v in context.items()}
        return self._score(rep["feat"], rep["actions"], rep["avail"], candidates.reshape(b * l, *candidates.shape[2:]))

    def advance(self, states: torch.Tensor, memory: Any, generator: torch.Generator | None, last: bool):
        d = self._decode(states)
        inputs = states if self.features else d["obs"]
        actions, _ = self.policy.act(inputs, None, d["avail"], deterministic=False, generator=generator)
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
            l: int = 1, select: Selector | None = None, alive: torch.Tensor | None = None,
            features: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """H imagined steps from posterior states ``start`` [B, N, D] under ``policy`` (MAPPOPolicy);
    ``alive`` [B, N]: the agents alive at the start rows (None: all). ``features``: the policy
    reads the latent states (prior features, MAMBA) instead of the decoded observations; the
    batch's obs / next_obs are then the features.

    l, select: MAG. ``select(candidates [B, L, N, D], plan_generator, context) -> (idx [B], scores
    [B, L])`` picks each start state's candidate (context: the step's feat, actions, avail; the
    algorithm passes ``planners.mag.plan`` over a ``LatentLookahead``); l = 1 (MAMBA) never calls it.
    -> MA-PPO batch of [H, B, ...] tensors (states = the agents' decoded observations
    concatenated [H, B, N*O], obs [H, B, N, O], avail, actions, logp, rewards, dones, timeouts,
    valid, discounts (the battle's continuation probability at the next state), next_states,
    next_obs) and info (imagined_valid_frac, imagined_reward_mean, imagined_cont_mean,
    planner_frac_replaced, planner_score_gain).
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
    agents = torch.ones(start.shape[:2], dtype=torch.bool, device=dev) if alive is None else alive.bool()
    feat, alive = start, torch.ones(b, dtype=torch.bool, device=dev)  # alive: the imagined battle goes on
    d = model.decode(feat, outcome=False)
    keys = ("obs", "avail", "actions", "logp", "rewards", "dones", "valid", "discounts", "next_obs")
    rec: dict[str, list] = {k: [] for k in keys}
    # planner statistics summed on the device and read once after the loop (no host sync per step)
    replaced, gain, n_valid = (torch.zeros((), device=dev) for _ in range(3))
    for _ in range(horizon):
        inputs = feat if features else d["obs"]
        actions, logp = policy.act(inputs, None, d["avail"], deterministic=False, generator=generator)
        cand = model.candidates(feat, actions, l, generator, plan_gen, act_mask=agents)
        if l > 1:
            idx, scores = select(cand, plan_gen, {"feat": feat, "actions": actions, "avail": d["avail"]})
            chosen = scores.gather(1, idx[:, None]).squeeze(1)
            replaced += ((idx != 0) & alive).sum()
            gain += ((scores[:, 0] - chosen) * alive).sum()
            n_valid += alive.sum()
            nxt = cand[rows, idx]
        else:
            nxt = cand[:, 0]
        nd = model.decode(nxt, alive=agents)
        done = nd["cont"] < 0.5
        for k, v in (("obs", inputs), ("avail", d["avail"]), ("actions", actions), ("logp", logp),
                     ("rewards", nd["reward"]), ("dones", done & alive), ("valid", alive.clone()),
                     ("discounts", nd["cont"]), ("next_obs", nxt if features else nd["obs"])):
            rec[k].append(v)
        alive = alive & ~done
        agents = agents & (nd["cont_agents"] >= 0.5)
        feat, d = nxt, nd
    batch = {k: torch.stack(v) for k, v in rec.items()}
    batch["states"] = batch["obs"].flatten(-2)
    batch["next_states"] = batch["next_obs"].flatten(-2)
    batch["timeouts"] = torch.zeros_like(batch["dones"])
    valid = batch["valid"]
    info = {"imagined_valid_frac": float(valid.float().mean()),
            "imagined_reward_mean": float(batch["rewards"][valid].mean()) if valid.any() else 0.0,
            "imagined_cont_mean": float(batch["discounts"][valid].mean()) if valid.any() else 0.0}
    if l > 1:
        info["planner_frac_replaced"] = float(replaced / n_valid.clamp_min(1.0))
        info["planner_score_gain"] = float(gain / n_valid.clamp_min(1.0))
    return batch, info


__all__ = ["LatentLookahead", "LatentModelConfig", "LatentWorldModel", "error_labels", "imagine",
           "predicted_outcome", "prior_mean_outcome", "real_continuation_errors"]
