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

Saved files hold ``state_dict`` + config + widths + metadata; ``load_or_fit`` caches a fitted model
under ``cache_dir/<cache_key>/`` so a second run on the same data and config skips training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.layers import EnsembleMLP, Standardiser

FORMAT = "offmarl-worldmodel-v1"  # bump when the saved layout changes: old cache entries are then ignored


class WorldModelError(OffmarlError):
    """A user-facing problem with a world-model file or its fit to a dataset."""


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

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if not 1 <= self.elites <= self.members:
            raise OffmarlError(f"EnsembleConfig: elites={self.elites} must be in [1, members={self.members}]")
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 1:
            raise OffmarlError("EnsembleConfig: batch_size, max_steps and eval_every must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise OffmarlError(f"EnsembleConfig: holdout_fraction={self.holdout_fraction} must be in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "hidden" else v) for k, v in d.items() if k in names})


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
        self.net = EnsembleMLP(e, state_dim + self.joint_action_dim, config.hidden, 2 * d + 1)
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

    def _forward_std(self, x_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_std: [E, B, in] standardised -> (mean [E, B, D], logvar [E, B, D], done logit [E, B]),
        all in standardised target units."""
        out = self.net(x_std)
        d = self.target_dim
        mean, raw_logvar, logit = out[..., :d], out[..., d:2 * d], out[..., 2 * d]
        # soft clamp into [min_logvar, max_logvar] with softplus (PETS / MOPO / mbrl-lib)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, logit

    def _inputs(self, states: torch.Tensor, joint_actions: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(torch.cat([states, joint_actions.to(states.dtype)], dim=-1))
        return x.unsqueeze(0).expand(self.config.members, *x.shape)

    @torch.no_grad()
    def predict(self, states: torch.Tensor, joint_actions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every member's prediction in raw units.

        states: [B, S]; joint_actions: [B, NA] (see ``encode_actions``)
        returns mean [E, B, S+1] = [next_state, reward], logvar [E, B, S+1], done_prob [E, B]
        """
        self._check_widths(states, joint_actions)
        mean, logvar, logit = self._forward_std(self._inputs(states, joint_actions))
        mean = self.target_norm.inverse(mean)
        logvar = logvar + 2.0 * torch.log(self.target_norm.std)
        mean = torch.cat([states.unsqueeze(0) + mean[..., :-1], mean[..., -1:]], dim=-1)
        return mean, logvar, torch.sigmoid(logit)

    @torch.no_grad()
    def step(self, states: torch.Tensor, joint_actions: torch.Tensor, generator: torch.Generator | None = None,
             sample: bool = False) -> dict[str, torch.Tensor]:
        """One model transition per row, from ONE elite drawn at random per row.

        MOMA-PPO reference: the chosen elite's MEAN is used; ``sample=True`` draws from its Gaussian
        instead (MOPO). ``generator`` must live on the device of ``states``.
        returns next_states [B, S], rewards [B], done_prob [B], elite_means [Ee, B, S+1],
        elite_logvars [Ee, B, S+1]
        """
        mean, logvar, done_prob = self.predict(states, joint_actions)
        elite_means, elite_logvars = mean[self.elite_idx], logvar[self.elite_idx]
        b = states.shape[0]
        pick = torch.randint(len(self.elite_idx), (b,), generator=generator, device=states.device)
        rows = torch.arange(b, device=states.device)
        out = elite_means[pick, rows]  # [B, S+1]
        if sample:
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            out = out + noise * torch.exp(0.5 * elite_logvars[pick, rows])
        return {
            "next_states": out[:, :-1],
            "rewards": out[:, -1],
            "done_prob": done_prob[self.elite_idx][pick, rows],
            "elite_means": elite_means,
            "elite_logvars": elite_logvars,
        }

    def _check_widths(self, states: torch.Tensor, joint_actions: torch.Tensor) -> None:
        if states.shape[-1] != self.state_dim or joint_actions.shape[-1] != self.joint_action_dim:
            raise WorldModelError(
                f"world model expects states [B, {self.state_dim}] and joint actions [B, {self.joint_action_dim}] "
                f"(N={self.n_agents} x {self.action_dim}{' one-hot' if self.discrete else ''}); got "
                f"{tuple(states.shape)} and {tuple(joint_actions.shape)}"
            )

    # ------------------------------------------------------------------ training
    def _loss(self, x: torch.Tensor, y: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [E, B, in], y [E, B, D] (standardised), done [E, B] float -> (total loss, mse per member [E])."""
        mean, logvar, logit = self._forward_std(x)
        nll = ((mean - y) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2))  # Gaussian NLL, no constant
        bce = F.binary_cross_entropy_with_logits(logit, done, reduction="none").mean(1)
        bound = self.config.logvar_bound_coef * (self.max_logvar.sum() - self.min_logvar.sum())
        decay = sum(layer.weight.pow(2).sum() for layer in self.net.hidden) * (0.5 * self.config.weight_decay)
        mse = ((mean - y) ** 2).mean(dim=(1, 2)).detach()
        return (nll + bce).sum() + bound + decay, mse

    @torch.no_grad()
    def _holdout_mse(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """MSE per member [E] of the mean on standardised targets (elite criterion, MOPO)."""
        total = torch.zeros(self.config.members, device=x.device)
        for i in range(0, len(x), chunk):
            xi = x[i:i + chunk].unsqueeze(0).expand(self.config.members, -1, -1)
            mean, _, _ = self._forward_std(xi)
            total += ((mean - y[i:i + chunk]) ** 2).sum(dim=(1, 2))
        return total / (len(x) * self.target_dim)

    def _clip_grads_per_member(self, max_norm: float) -> None:
        params = [p for p in self.parameters() if p.grad is not None]
        sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)  # every parameter has leading dim E
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in params:
            p.grad.mul_(scale.view(-1, *([1] * (p.grad.dim() - 1))))

    def fit(self, data, device: str | torch.device | None = None, seed: int | None = None,
            generator: torch.Generator | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Fit every member; returns training statistics.

        data: a MultiAgentDataset, or a dict with states [T, S], actions [T, N, A] (or [T, N] int),
              next_states [T, S], rewards [T], terminals [T] (numpy arrays or tensors)
        device: where to train (default: where the model is); the model is moved there
        seed / generator: randomness of holdout split, bootstrap, batches (default: config.seed); a
              generator must live on ``device``
        progress: called after every holdout evaluation with {step, holdout_mse [E] (current),
              best_holdout_mse [E], train_loss, seconds}
        returns {holdout_mse: [E] (best snapshot), initial_holdout_mse: [E], elites: [Ee], steps, seconds,
                 n_train, n_holdout, stopped_early, train_loss}
        """
        cfg = self.config
        device = torch.device(device) if device is not None else self.max_logvar.device
        self.to(device)
        t0 = time.perf_counter()
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

        n = len(x_raw)
        n_hold = min(int(n * cfg.holdout_fraction), cfg.max_holdout)
        if n - n_hold < 1:
            raise WorldModelError(f"cannot fit a world model on {n} transitions (need at least 2)")
        perm = torch.randperm(n, generator=generator, device=device)
        train_idx, hold_idx = perm[n_hold:], perm[:n_hold]
        self.input_norm.fit(x_raw[train_idx])
        # a feature constant in the data (an action one agent never takes, a fixed state dim) would get
        # std ~1e-6 and turn any other value at rollout time into a 1e6 input: scale those by 1 instead
        self.input_norm.std.masked_fill_(self.input_norm.std <= 1e-5, 1.0)
        self.target_norm.fit(y_raw[train_idx])
        x = self.input_norm(x_raw)
        y = self.target_norm(y_raw)
        del x_raw, y_raw
        x_hold, y_hold = x[hold_idx], y[hold_idx]
        e, n_train = cfg.members, len(train_idx)
        # per-member bootstrap: each member's training set is n_train draws WITH replacement (PETS / MOPO)
        boot = train_idx[torch.randint(n_train, (e, n_train), generator=generator, device=device)]

        opt = torch.optim.Adam(self.parameters(), lr=cfg.lr)
        best_mse = self._holdout_mse(x_hold, y_hold) if n_hold else torch.full((e,), float("inf"), device=device)
        initial_mse = best_mse.tolist()
        best_state = {k: v.detach().clone() for k, v in self.named_parameters()}
        since_improved, step, stopped_early, train_loss = 0, 0, False, float("nan")
        members = torch.arange(e, device=device)[:, None]
        while step < cfg.max_steps:
            pos = torch.randint(n_train, (e, cfg.batch_size), generator=generator, device=device)
            idx = boot[members, pos]  # [E, batch]
            loss, _ = self._loss(x[idx], y[idx], done[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                self._clip_grads_per_member(cfg.grad_clip)
            opt.step()
            step += 1
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                train_loss = float(loss.detach())
                mse = best_mse
                if n_hold:
                    mse = self._holdout_mse(x_hold, y_hold)
                    improved = (best_mse - mse) / best_mse.clamp_min(1e-12) > cfg.min_improvement
                    if bool(improved.any()):
                        since_improved = 0
                        with torch.no_grad():
                            for k, p in self.named_parameters():
                                best_state[k][improved] = p.detach()[improved]
                        best_mse = torch.where(improved, mse, best_mse)
                    else:
                        since_improved += 1
                if progress is not None:
                    progress({"step": step, "holdout_mse": mse.tolist(), "best_holdout_mse": best_mse.tolist(),
                              "train_loss": train_loss, "seconds": time.perf_counter() - t0})
                if n_hold and since_improved >= cfg.patience:
                    stopped_early = True
                    break
        with torch.no_grad():
            if n_hold:  # restore each member's best snapshot (MOPO / mbrl-lib)
                for k, p in self.named_parameters():
                    p.copy_(best_state[k])
                best_mse = self._holdout_mse(x_hold, y_hold)
            self.holdout_mse.copy_(best_mse)
            self.elite_idx.copy_(torch.argsort(best_mse)[: cfg.elites])
        stats = {
            "holdout_mse": self.holdout_mse.tolist(),
            "initial_holdout_mse": initial_mse,
            "elites": self.elite_idx.tolist(),
            "steps": step,
            "seconds": time.perf_counter() - t0,
            "n_train": n_train,
            "n_holdout": n_hold,
            "stopped_early": stopped_early,
            "train_loss": train_loss,
        }
        self.metadata["fit"] = stats
        return stats

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write weights + config + widths + metadata atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "state_dim": self.state_dim, "action_dim": self.action_dim,
            "n_agents": self.n_agents, "discrete": self.discrete,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "metadata": json.loads(json.dumps({**self.metadata, **(metadata or {})}, default=str)),
        }
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        return path

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
    path = Path(path)
    if not path.is_file():
        raise WorldModelError(
            f"world model file {str(path)!r} does not exist; pass a file written by offmarl "
            f"(runs/.../world_model.pt or the cache) or drop --world-model to fit one"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — torch raises many types for unreadable files
        raise WorldModelError(f"world model file {str(path)!r} cannot be read as a torch file ({exc}); "
                              f"was it written by offmarl?") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise WorldModelError(f"{str(path)!r} is not an offmarl world model (format {found!r}, expected {FORMAT!r}); "
                              f"refit it or drop --world-model")
    with torch.random.fork_rng(devices=[]):  # loading must not move the global RNG (a fit does not either)
        model = EnsembleWorldModel(int(blob["state_dim"]), int(blob["action_dim"]), int(blob["n_agents"]),
                                   bool(blob["discrete"]), EnsembleConfig.from_dict(blob["config"]))
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
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise WorldModelError(f"world model {str(path)!r} has weights that do not match its config: {exc}") from None
    model.metadata = dict(blob.get("metadata") or {})
    return model.to(device)


def cache_key(dataset_checksum: str, config: EnsembleConfig) -> str:
    """Key of a fitted model: same data (checksum), same config (incl. seed), same file format."""
    payload = json.dumps({"data": dataset_checksum, "config": config.to_dict(), "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_or_fit(dataset, config: EnsembleConfig, cache_dir: str | os.PathLike, device: str | torch.device = "cpu",
                progress: Callable[[dict[str, Any]], None] | None = None
                ) -> tuple[EnsembleWorldModel, dict[str, Any]]:
    """The cached model for (dataset, config) if there is one, else fit and cache it.

    Files: ``cache_dir/<cache_key>/model.pt`` and ``stats.json``.
    returns (model on ``device``, info) with info = {cached: bool, path: str, key: str, **fit stats}
    """
    # the model sees states and joint actions only: fo and po views of the same data share it
    checksum = dataset.dynamics_checksum()
    key = cache_key(checksum, config)
    path = Path(cache_dir) / key / "model.pt"
    if path.is_file():
        try:
            model = load_world_model(path, device, dataset)
        except WorldModelError:
            model = None  # a stale or damaged entry: refit and overwrite it
        if model is not None:
            return model, {"cached": True, "path": str(path), "key": key, **model.metadata.get("fit", {})}
    with torch.random.fork_rng(devices=[]):  # repeatable initialisation without touching the global RNG
        torch.manual_seed(config.seed)
        model = EnsembleWorldModel.for_dataset(dataset, config)
    model.to(device)
    stats = model.fit(dataset, device=device, progress=progress)
    meta = {"dataset_checksum": checksum, "dataset": dataset.meta.name, "env": dataset.meta.env}
    model.save(path, metadata=meta)
    tmp = path.with_name(f"stats.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**stats, **meta}, indent=2))
    os.replace(tmp, path.with_name("stats.json"))
    return model, {"cached": False, "path": str(path), "key": key, **stats}

