"""Probabilistic ensemble world model of the GLOBAL state (MOMA-PPO, MOPO, mbrl-lib practice).

E members live in ONE vectorised network (``EnsembleMLP``: weights [E, in, out], one batched
matmul per layer), so fitting and stepping never loop over members in Python.

    input   x = standardise([state, joint action])              [B, S + NA]
    output  per member: Gaussian mean / log-variance over standardise([next_state - state, reward])
            [E, B, S + 1] each, and a termination logit          [E, B]

Loss per member (MOPO / mbrl-lib): Gaussian NLL (mean over batch and dims)
+ BCE(termination) + 0.01 * (sum max_logvar - sum min_logvar) (keeps the learned soft bounds on
the log-variance tight), summed over members. Each member trains on its own bootstrap resample of
the training split; one holdout split is shared; the best snapshot of every member (lowest holdout
MSE) is kept and restored at the end; the ``elites`` members with lowest holdout MSE are the ones
used in rollouts (MOMA-PPO reference: 7 trained, 5 kept).

Fitting runs in worldmodel/trainer.py (split, bootstrap, early stopping, best snapshots); files and
the cache in worldmodel/store.py: ``load_or_fit`` caches a fitted model under
``cache_dir/<cache_key>/`` so a second run on the same data and config skips training.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offmarl.atomic import atomic_torch_save, atomic_write_text
from offmarl.errors import OffmarlError
from offmarl.nn.functional import soft_clamp
from offmarl.nn.layers import EnsembleMLP, Standardiser
from offmarl.safeload import torch_load_plain
from offmarl.worldmodel import store, trainer
from offmarl.worldmodel.store import WorldModelError

FORMAT = "offmarl-worldmodel-v1"  # bump when the saved layout changes: old cache entries are then ignored
CANDIDATE_MODES = ("elites", "samples", "both")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}
# EnsembleConfig options added after format v1: they enter the cache key only when set to another value,
# so entries fitted before they existed (with these defaults) stay valid
KEY_OPTIONAL = {"early_stopping": "steps", "max_epochs": None, "activation": "relu"}


@dataclass
class EnsembleConfig:
    members: int = 7                      # MOMA-PPO reference: 7 members trained (MOPO: 7)
    elites: int = 5                       # MOMA-PPO reference / MOPO: 5 lowest-holdout-error members kept
    hidden: tuple[int, ...] = (200, 200, 200, 200)  # MOPO / mbrl-lib width, ~25x cheaper than the
    #                                       reference's (1024,)*4 (allowed: hidden=(1024,)*4)
    lr: float = 1e-3                      # mbrl-lib / MOPO Adam lr; the reference uses 3e-5 (x10k steps)
    weight_decay: float = 5e-5            # small L2 on hidden weights (mbrl-lib PETS uses 2.5e-5..1e-4)
    batch_size: int = 256                 # MOMA-PPO reference and MOPO: 256 per member
    max_steps: int = 10_000               # MOMA-PPO reference: 10k steps; ~5 min CPU on ant-medium (docs/worldmodel.md)
    eval_every: int = 250                 # steps between holdout evaluations (one "epoch" of early stopping)
    patience: int = 5                     # MOPO / mbrl-lib: stop when no member improves >1% for 5 evaluations
    min_improvement: float = 0.01         # MOPO / mbrl-lib: relative holdout improvement that counts (1%)
    holdout_fraction: float = 0.2         # MOPO / OfflineRL-Kit: holdout = min(20%, max_holdout)
    max_holdout: int = 1000               # OfflineRL-Kit: at most 1000 holdout transitions
    logvar_bound_coef: float = 0.01       # MOPO / mbrl-lib penalty on (max_logvar - min_logvar)
    grad_clip: float = 0.0                # per-member grad-norm clip; 0 = off (mbrl-lib); reference: 1.0
    seed: int = 0                         # initialisation, bootstrap and batch draws (part of the cache key)
    early_stopping: str = "steps"         # steps: evaluate every eval_every steps, cap max_steps (reference);
    #                                       epochs: evaluate every epoch, patience in epochs (MOPO/OfflineRL-Kit)
    max_epochs: int | None = None         # epochs mode only: cap (MOBILE: 30); None = stop on patience alone (MOPO)
    activation: str = "relu"              # relu (ours so far) | silu (MOPO / mbrl-lib "swish")

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if not 1 <= self.elites <= self.members:
            raise OffmarlError(f"EnsembleConfig: elites={self.elites} must be in [1, members={self.members}]")
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 1:
            raise OffmarlError("EnsembleConfig: batch_size, max_steps and eval_every must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise OffmarlError(f"EnsembleConfig: holdout_fraction={self.holdout_fraction} must be in (0, 1)")
        if self.activation not in ACTIVATIONS:
            raise OffmarlError(f"world_model.activation={self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.trainer_config()  # checks early_stopping / max_epochs

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def key_dict(self) -> dict[str, Any]:
        """``to_dict`` without the later options at their defaults (see KEY_OPTIONAL)."""
        return {k: v for k, v in self.to_dict().items() if not (k in KEY_OPTIONAL and v == KEY_OPTIONAL[k])}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "hidden" else v) for k, v in d.items() if k in names})

    def trainer_config(self) -> trainer.TrainerConfig:
        return trainer.TrainerConfig(
            lr=self.lr, batch_size=self.batch_size, max_steps=self.max_steps,
            holdout_fraction=self.holdout_fraction, max_holdout=self.max_holdout, eval_every=self.eval_every,
            patience=self.patience, min_improvement=self.min_improvement, early_stopping=self.early_stopping,
            max_epochs=self.max_epochs, grad_clip=self.grad_clip, bootstrap=True)


def encode_joint_action(actions: torch.Tensor, discrete: bool, n_actions: int = 0) -> torch.Tensor:
    """Per-agent actions -> the model's joint-action input.

    continuous: actions [B, N, A] float -> [B, N*A]
    discrete:   actions [B, N] int      -> one-hot [B, N*K] (K = ``n_actions``)
    """
    if discrete:
        return F.one_hot(actions.long(), n_actions).to(torch.float32).flatten(-2)
    return actions.flatten(-2).to(torch.float32)


class EnsembleWorldModel(nn.Module):
    """E probabilistic members over (delta state, reward) plus a termination head.

    state_dim:    S
    action_dim:   per-agent action width A (continuous) or number of actions K (discrete)
    n_agents:     N; the joint-action input is N*A (or N*K one-hot) wide
    """

    def __init__(self, state_dim: int, action_dim: int, n_agents: int, discrete: bool = False,
                 config: EnsembleConfig | None = None):
        super().__init__()
        self.config = config = config or EnsembleConfig()
        self.state_dim, self.action_dim, self.n_agents, self.discrete = state_dim, action_dim, n_agents, discrete
        self.joint_action_dim = n_agents * action_dim
        self.target_dim = state_dim + 1  # [delta state, reward]
        e, d = config.members, self.target_dim
        self.net = EnsembleMLP(e, state_dim + self.joint_action_dim, config.hidden, 2 * d + 1,
                               activation=ACTIVATIONS[config.activation])
        # learned soft bounds on the log-variance, per member (MOPO / mbrl-lib init: 0.5 and -10)
        self.max_logvar = nn.Parameter(torch.full((e, 1, d), 0.5))
        self.min_logvar = nn.Parameter(torch.full((e, 1, d), -10.0))
        self.input_norm = Standardiser(state_dim + self.joint_action_dim)
        self.target_norm = Standardiser(d)
        self.register_buffer("elite_idx", torch.arange(config.elites, dtype=torch.long))
        self.register_buffer("holdout_mse", torch.full((e,), float("inf")))
        self.metadata: dict[str, Any] = {}

    @classmethod
    def for_dataset(cls, dataset, config: EnsembleConfig | None = None) -> EnsembleWorldModel:
        m = dataset.meta
        return cls(m.state_dim, max(m.action_dims), m.n_agents, m.discrete, config)

    # ------------------------------------------------------------------ network
    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Policy actions [B, N, A] (or [B, N] int when discrete) -> joint action [B, NA]."""
        return encode_joint_action(actions, self.discrete, self.action_dim)

    def _forward_std(self, x_std: torch.Tensor, members: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_std: [E, B, in] standardised -> (mean [E, B, D], logvar [E, B, D], done logit [E, B]),
        all in standardised target units; ``members`` ([M] indices): only those, E = M."""
        out = self.net(x_std, members)
        d = self.target_dim
        mean, raw_logvar, logit = out[..., :d], out[..., d:2 * d], out[..., 2 * d]
        lo, hi = (self.min_logvar, self.max_logvar) if members is None else \
            (self.min_logvar[members], self.max_logvar[members])
        # soft clamp into [min_logvar, max_logvar] (PETS / MOPO / mbrl-lib)
        return mean, soft_clamp(raw_logvar, lo, hi), logit

    def _inputs(self, states: torch.Tensor, joint_actions: torch.Tensor, copies: int | None = None) -> torch.Tensor:
        """Standardised inputs [copies, B, in] (one view per evaluated member; default all members)."""
        x = self.input_norm(torch.cat([states, joint_actions.to(states.dtype)], dim=-1))
        return x.unsqueeze(0).expand(copies or self.config.members, *x.shape)

    @torch.no_grad()
    def predict(self, states: torch.Tensor, joint_actions: torch.Tensor, members: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every member's prediction in raw units (``members``: only those, e.g. ``elite_idx``;
        rollouts use only the elites, so they skip the other members' work).

        states: [B, S]; joint_actions: [B, NA] (see ``encode_actions``)
        returns mean [E, B, S+1] = [next_state, reward], logvar [E, B, S+1], done_prob [E, B]
        (E = len(members) when given)
        """
        self._check_widths(states, joint_actions)
        x = self._inputs(states, joint_actions, None if members is None else len(members))
        mean, logvar, logit = self._forward_std(x, members)
        mean = self.target_norm.inverse(mean)
        logvar = logvar + 2.0 * torch.log(self.target_norm.std)
        mean = torch.cat([states.unsqueeze(0) + mean[..., :-1], mean[..., -1:]], dim=-1)
        return mean, logvar, torch.sigmoid(logit)

    def check_candidates(self, l: int, mode: str) -> None:
        """Raise a clear error for candidate options this model cannot offer."""
        if mode not in CANDIDATE_MODES:
            raise OffmarlError(f"candidates={mode!r}; choose one of {', '.join(CANDIDATE_MODES)}")
        if l < 1:
            raise OffmarlError(f"l={l} candidates: must be >= 1 (1 = plain model rollouts)")
        ne = len(self.elite_idx)
        if mode == "elites" and l > ne:
            raise OffmarlError(f"candidates='elites' gives at most {ne} distinct candidates (the model's elites), "
                               f"l={l}; lower planner.l or use planner.candidates=both")

    @torch.no_grad()
    def sample_candidates(self, states: torch.Tensor, joint: torch.Tensor, l: int,
                          generator: torch.Generator | None = None, plan_generator: torch.Generator | None = None,
                          mode: str = "elites", sample: bool = False) -> dict[str, torch.Tensor]:
        """L candidate model transitions per row (the MAG planner's choices; ``step`` is L = 1).

        Candidate 0 is one elite drawn at random per row from ``generator``, its MEAN (MOMA-PPO
        reference) or, with ``sample``, a Gaussian sample of it (MOPO; noise also from ``generator``).
        Candidates 1..L-1 draw only from ``plan_generator``: "elites" = the other elites in a random
        order per row (distinct while L <= elites), "samples" = Gaussian samples of candidate 0's
        elite, "both" = Gaussian samples of the other elites; ``sample`` adds the noise to every
        candidate. Generators must live on the device of ``states``.
        states [B, S], joint [B, NA] -> next_states [B, L, S], rewards [B, L], done_prob [B, L],
        elite_means / elite_logvars [Ee, B, S+1] (of (states, joint), shared by the candidates)
        """
        self.check_candidates(l, mode)
        em, el, ed = self.predict(states, joint, self.elite_idx)  # the elites only
        ne, b, dev = em.shape[0], states.shape[0], states.device
        rows = torch.arange(b, device=dev)
        pick0 = torch.randint(ne, (b,), generator=generator, device=dev)
        out0 = em[pick0, rows]
        if sample:
            noise = torch.randn(out0.shape, generator=generator, device=out0.device, dtype=out0.dtype)
            out0 = out0 + noise * torch.exp(0.5 * el[pick0, rows])
        outs, dones = out0.unsqueeze(1), ed[pick0, rows].unsqueeze(1)
        if l > 1:
            if mode == "samples":
                picks = pick0.unsqueeze(1).expand(b, l - 1)
            else:  # a random order of the elites per row with pick0 first, then the others (wrapping if L > Ee)
                key = torch.rand(b, ne, generator=plan_generator, device=dev)
                key[rows, pick0] = -1.0
                order = key.argsort(dim=1)
                picks = order[:, torch.arange(1, l, device=dev) % ne]
            other = em[picks, rows[:, None]]  # [B, L-1, S+1]
            if mode in ("samples", "both") or sample:
                noise = torch.randn(other.shape, generator=plan_generator, device=dev, dtype=other.dtype)
                other = other + noise * torch.exp(0.5 * el[picks, rows[:, None]])
            outs = torch.cat([outs, other], dim=1)
            dones = torch.cat([dones, ed[picks, rows[:, None]]], dim=1)
        return {"next_states": outs[..., :-1], "rewards": outs[..., -1], "done_prob": dones,
                "elite_means": em, "elite_logvars": el}

    @torch.no_grad()
    def step(self, states: torch.Tensor, joint_actions: torch.Tensor, generator: torch.Generator | None = None,
             sample: bool = False) -> dict[str, torch.Tensor]:
        """One model transition per row: ``sample_candidates`` with L = 1 (same random draws).

        returns next_states [B, S], rewards [B], done_prob [B], elite_means [Ee, B, S+1],
        elite_logvars [Ee, B, S+1]
        """
        out = self.sample_candidates(states, joint_actions, 1, generator, None, "elites", sample)
        return {**out, "next_states": out["next_states"][:, 0], "rewards": out["rewards"][:, 0],
                "done_prob": out["done_prob"][:, 0]}

    def _check_widths(self, states: torch.Tensor, joint_actions: torch.Tensor) -> None:
        if states.shape[-1] != self.state_dim or joint_actions.shape[-1] != self.joint_action_dim:
            raise WorldModelError(
                f"world model expects states [B, {self.state_dim}] and joint actions [B, {self.joint_action_dim}] "
                f"(N={self.n_agents} x {self.action_dim}{' one-hot' if self.discrete else ''}); got "
                f"{tuple(states.shape)} and {tuple(joint_actions.shape)}"
            )

    # ------------------------------------------------------------------ training
    def _loss(self, x: torch.Tensor, y: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """x [E, B, in], y [E, B, D] (standardised), done [E, B] float -> total loss."""
        mean, logvar, logit = self._forward_std(x)
        # Gaussian NLL per member (mean over batch and dims): -2 log N(y; mean, exp(logvar)) without the constant.
        # Not via nn.functional.gaussian_log_prob on purpose: its (exp(-logvar/2) z)^2 rounds differently, and
        # through 10k Adam steps that changes every fit (holdout MSE by ~0.1-0.5%) under unchanged cache keys
        nll = ((mean - y) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
        bce = F.binary_cross_entropy_with_logits(logit, done, reduction="none").mean(1)
        bound = self.config.logvar_bound_coef * (self.max_logvar.sum() - self.min_logvar.sum())
        decay = sum(layer.weight.pow(2).sum() for layer in self.net.hidden) * (0.5 * self.config.weight_decay)
        return (nll + bce).sum() + bound + decay

    @torch.no_grad()
    def _holdout_mse(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE of the mean on standardised targets per member [E] (elite criterion, MOPO) and per
        member and dimension [E, D]."""
        total = torch.zeros(self.config.members, device=x.device)
        per_dim = torch.zeros(self.config.members, self.target_dim, device=x.device)
        for i in range(0, len(x), chunk):
            xi = x[i:i + chunk].unsqueeze(0).expand(self.config.members, -1, -1)
            mean, _, _ = self._forward_std(xi)
            sq = (mean - y[i:i + chunk]) ** 2
            total += sq.sum(dim=(1, 2))
            per_dim += sq.sum(dim=1)
        return total / (len(x) * self.target_dim), per_dim / len(x)

    def fit(self, data, device: str | torch.device | None = None, seed: int | None = None,
            generator: torch.Generator | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None,
            interrupted: Callable[[dict[str, Any]], None] | None = None,
            resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """Fit every member with worldmodel/trainer.py; returns training statistics.

        data: a MultiAgentDataset, or a dict with states [T, S], actions [T, N, A] (or [T, N] int),
              next_states [T, S], rewards [T], terminals [T] (numpy arrays or tensors)
        device: where to train (default: where the model is); the model is moved there
        seed / generator: randomness of holdout split, bootstrap, batches (default: config.seed); a
              generator must live on ``device``
        progress: called after every holdout evaluation (see ``trainer.fit``: step, epoch, holdout_mse,
              best_holdout_mse, holdout_dim_mse, worst_dim, train_loss, seconds, eta_seconds)
        interrupted / resume: Ctrl-C keeps the fit's state and a later fit continues it (``trainer.fit``)
        returns {holdout_mse: [E] (best snapshot), initial_holdout_mse: [E], elites: [Ee], steps, epochs,
                 seconds, n_train, n_holdout, stopped_early, train_loss}
        """
        cfg = self.config
        device = torch.device(device) if device is not None else self.max_logvar.device
        self.to(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(cfg.seed if seed is None else seed)
        states, actions, next_states, rewards, terminals = _training_arrays(data, device)
        if states.shape[-1] != self.state_dim:
            raise WorldModelError(f"data states are {states.shape[-1]} wide; the model expects {self.state_dim}")
        joint = self.encode_actions(actions)
        self._check_widths(states, joint)
        x_raw = torch.cat([states, joint], dim=-1)
        y_raw = torch.cat([next_states - states, rewards.unsqueeze(-1)], dim=-1)
        done = terminals.to(torch.float32)
        del states, actions, next_states, rewards, joint
        xy: dict[str, torch.Tensor] = {}

        def prepare(train_idx: torch.Tensor) -> None:
            self.input_norm.fit(x_raw[train_idx])
            # a feature constant in the data (an action one agent never takes, a fixed state dim) would get
            # std ~1e-6 and turn any other value at rollout time into a 1e6 input: scale those by 1 instead
            self.input_norm.std.masked_fill_(self.input_norm.std <= 1e-5, 1.0)
            self.target_norm.fit(y_raw[train_idx])
            xy["x"], xy["y"] = self.input_norm(x_raw), self.target_norm(y_raw)

        res = trainer.fit(self, len(x_raw), lambda idx: self._loss(xy["x"][idx], xy["y"][idx], done[idx]),
                          cfg.trainer_config(), generator, device, members=cfg.members, prepare=prepare,
                          evaluate=lambda hold: self._holdout_mse(xy["x"][hold], xy["y"][hold]), progress=progress,
                          interrupted=interrupted, resume=resume)
        with torch.no_grad():
            hold = res["holdout_idx"]
            best = (self._holdout_mse(xy["x"][hold], xy["y"][hold])[0] if len(hold)
                    else torch.full((cfg.members,), float("inf"), device=device))
            self.holdout_mse.copy_(best)
            self.elite_idx.copy_(torch.argsort(best)[: cfg.elites])
        stats = {
            "holdout_mse": self.holdout_mse.tolist(),
            "initial_holdout_mse": res["initial_holdout_mse"] or [float("inf")] * cfg.members,
            "elites": self.elite_idx.tolist(),
            **{k: res[k] for k in ("steps", "epochs", "seconds", "n_train", "n_holdout", "stopped_early",
                                   "train_loss")},
        }
        self.metadata["fit"] = stats
        return stats

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write weights + config + widths + metadata atomically (worldmodel/store.py)."""
        header = {"config": self.config.to_dict(), "state_dim": self.state_dim, "action_dim": self.action_dim,
                  "n_agents": self.n_agents, "discrete": self.discrete}
        return store.save_module(path, FORMAT, self, header, {**self.metadata, **(metadata or {})})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", dataset=None) -> EnsembleWorldModel:
        """Load a saved world model (e.g. ``--world-model PATH``); with ``dataset``, check that its
        state and action widths match. Raises WorldModelError (an OffmarlError) with the fix."""
        return load_world_model(path, device, dataset)


def _training_arrays(data, device) -> tuple[torch.Tensor, ...]:
    keys = ("states", "actions", "next_states", "rewards", "terminals")
    if hasattr(data, "tensors"):
        t = data.tensors(device)
    elif isinstance(data, dict):
        missing = [k for k in keys if k not in data]
        if missing:
            raise WorldModelError(f"world-model training data lacks keys {missing} (needs {list(keys)})")
        t = {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, device=device) for k, v in data.items()
             if k in keys}
    else:
        raise WorldModelError(f"cannot fit a world model on {type(data).__name__}: pass a MultiAgentDataset or a dict")
    out = [t[k] for k in keys]
    for i in (0, 2, 3):
        out[i] = out[i].to(device=device, dtype=torch.float32)
    if out[1].is_floating_point():
        out[1] = out[1].to(device=device, dtype=torch.float32)
    return tuple(o.to(device) for o in out)


def load_world_model(path: str | os.PathLike, device: str | torch.device = "cpu", dataset=None) -> EnsembleWorldModel:
    """See ``EnsembleWorldModel.load``."""
    fix = ("pass a file written by offmarl (runs/.../world_model.pt or the cache) or drop --world-model to fit one")
    blob = store.read_module_file(path, FORMAT, "world model file", fix)
    model = store.restore_module(
        blob, lambda: EnsembleWorldModel(int(blob["state_dim"]), int(blob["action_dim"]), int(blob["n_agents"]),
                                         bool(blob["discrete"]), EnsembleConfig.from_dict(blob["config"])),
        path, "world model")
    if dataset is not None:
        m = dataset.meta
        want = (m.state_dim, max(m.action_dims), m.n_agents, m.discrete)
        have = (model.state_dim, model.action_dim, model.n_agents, model.discrete)
        if want != have:
            raise WorldModelError(
                f"world model {str(path)!r} was fitted for state {have[0]}, {have[2]} agents x action {have[1]}"
                f"{' (discrete)' if have[3] else ''}, but dataset {m.name or dataset.origin!r} has state {want[0]}, "
                f"{want[2]} agents x action {want[1]}{' (discrete)' if want[3] else ''}; pass a world model fitted "
                f"on this dataset or drop --world-model to fit one"
            )
    return model.to(device)


def cache_key(dataset_checksum: str, config: EnsembleConfig) -> str:
    """Key of a fitted model: same data (checksum), same config (incl. seed), same file format."""
    return store.cache_key({"data": dataset_checksum, "config": config.key_dict(), "format": FORMAT})


def load_or_fit(dataset, config: EnsembleConfig, cache_dir: str | os.PathLike, device: str | torch.device = "cpu",
                progress: Callable[[dict[str, Any]], None] | None = None,
                log: Callable[[str], None] | None = None) -> tuple[EnsembleWorldModel, dict[str, Any]]:
    """The cached model for (dataset, config) if there is one, else fit and cache it.

    Files: ``cache_dir/<cache_key>/model.pt`` and ``stats.json``.
    returns (model on ``device``, info) with info = {cached: bool, path: str, key: str, **fit stats}
    """
    # the model sees states and joint actions only: fo and po views of the same data share it
    checksum = dataset.dynamics_checksum()
    key = cache_key(checksum, config)
    path = Path(cache_dir) / key / "model.pt"
    meta = {"dataset_checksum": checksum, "dataset": dataset.meta.name, "env": dataset.meta.env}

    # a fit stopped by Ctrl-C leaves its state here; the next fit of the same (data, config) continues it
    partial = path.with_name("interrupted-fit.pt")

    def fit() -> EnsembleWorldModel:
        with torch.random.fork_rng(devices=[]):  # repeatable initialisation without touching the global RNG
            torch.manual_seed(config.seed)
            model = EnsembleWorldModel.for_dataset(dataset, config)
        model.to(device)
        resume = None
        if partial.is_file():
            try:
                resume = torch_load_plain(partial, "interrupted world-model fit", map_location=device)
            except OffmarlError:
                resume = None  # unreadable: fit from the start (the file is replaced on the next Ctrl-C)
        if resume is not None and log is not None:
            log(f"world model: continuing the fit interrupted at step {resume['step']} ({partial})")

        def interrupted(state: dict[str, Any]) -> None:
            atomic_torch_save(state, partial)
            if log is not None:
                log(f"world model fit interrupted at step {state['step']}: kept in {partial}; "
                    f"the same command continues it")

        model.fit(dataset, device=device, progress=progress, resume=resume, interrupted=interrupted)
        return model

    def save(model: EnsembleWorldModel, p: Path) -> None:
        model.save(p, metadata=meta)
        atomic_write_text(p.with_name("stats.json"), json.dumps({**model.metadata["fit"], **meta}, indent=2))
        partial.unlink(missing_ok=True)

    model, cached = store.load_or_fit(path, lambda p: load_world_model(p, device, dataset), fit, save)
    return model, {"cached": cached, "path": str(path), "key": key, **model.metadata.get("fit", {})}
