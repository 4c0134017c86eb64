"""ONE supervised trainer for offmarl's learned models: the ensemble world model and R_m (``fit``), and
the online latent model's gradient step (``sequence_model_step``) (mbrl-lib keeps model and trainer
apart the same way).

    rows ──► split: holdout = the first min(fraction * n, max_holdout) rows of one random permutation
         ──► prepare(train rows)                     the model fits its standardisers on the training split
         ──► [bootstrap]                             each of E members: n_train draws WITH replacement (PETS/MOPO)
         ──► Adam steps on batch_loss(idx)           idx [E, batch] (members) or [batch] (one model)
         ──► every evaluation: evaluate(holdout rows) -> per-member MSE [E] (+ per-dimension [E, D]);
             a member's weights are snapshotted when its MSE improves by more than min_improvement
         ──► stop: after ``patience`` evaluations without any member improving, or at the cap
         ──► restore each member's best snapshot; the caller picks elites from the returned MSE

When to evaluate and stop (``early_stopping``):
    steps   (default) every ``eval_every`` steps, capped at ``max_steps`` (the MOMA-PPO reference's
            10k-step fit; numbers made before the option existed used this)
    epochs  once per epoch (ceil(n_train / batch_size) steps, i.e. one pass worth of draws), capped
            only by ``max_epochs`` (None: stop on patience alone, as MOPO / OfflineRL-Kit do)
With ``eval_every = 0`` there is no evaluation at all: ``max_steps`` plain steps (R_m).

Randomness: one generator draws, in this order, the permutation, the bootstrap and every batch, so a
fit is a pure function of (data, initial weights, seed).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from offmarl.worldmodel.store import WorldModelError

EARLY_STOPPING = ("steps", "epochs")


@dataclass
class TrainerConfig:
    """How to fit (not a user-facing config: EnsembleConfig / ErrorModelConfig build one)."""
    lr: float
    batch_size: int
    max_steps: int                      # cap in ``steps`` mode (and the step count without evaluations)
    holdout_fraction: float
    max_holdout: int | None = None      # None: no cap on the holdout size
    eval_every: int = 0                 # steps between evaluations in ``steps`` mode; 0 = never evaluate
    patience: int = 0                   # evaluations without improvement before stopping; 0 = never stop early
    min_improvement: float = 0.0        # relative improvement of a member's holdout MSE that counts
    early_stopping: str = "steps"       # steps | epochs (module docstring)
    max_epochs: int | None = None       # cap in ``epochs`` mode; None = stop on patience only
    grad_clip: float = 0.0              # per-member gradient-norm clip (members > 0); 0 = off
    bootstrap: bool = False             # members > 0: each member trains on its own bootstrap resample

    def __post_init__(self):
        if self.early_stopping not in EARLY_STOPPING:
            raise WorldModelError(f"early_stopping={self.early_stopping!r}; choose one of {', '.join(EARLY_STOPPING)}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise WorldModelError(f"max_epochs={self.max_epochs} must be >= 1 (or None: stop on patience only)")
        if self.early_stopping == "epochs" and self.max_epochs is None and self.patience < 1:
            raise WorldModelError("early_stopping=epochs without max_epochs needs patience >= 1 to ever stop")


def holdout_split(n: int, cfg: TrainerConfig, generator: torch.Generator, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (train_idx, holdout_idx): one random permutation, the holdout first."""
    n_hold = int(n * cfg.holdout_fraction)
    if cfg.max_holdout is not None:
        n_hold = min(n_hold, cfg.max_holdout)
    if n - n_hold < 1:
        raise WorldModelError(f"cannot fit a model on {n} transitions (need at least 2)")
    perm = torch.randperm(n, generator=generator, device=device)
    return perm[n_hold:], perm[:n_hold]


def clip_grads_per_member(params: list[nn.Parameter], max_norm: float) -> None:
    """Clip each ensemble member's gradient norm separately (every parameter has leading dim E)."""
    params = [p for p in params if p.grad is not None]
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.grad.dim() - 1))))


def fit(module: nn.Module, n_rows: int, batch_loss: Callable[[torch.Tensor], torch.Tensor], cfg: TrainerConfig,
        generator: torch.Generator, device: torch.device, members: int = 0,
        prepare: Callable[[torch.Tensor], None] | None = None,
        evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        interrupted: Callable[[dict[str, Any]], None] | None = None,
        resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit ``module``'s parameters on ``n_rows`` rows that the callbacks index.

    members: E > 0 for an ensemble (every parameter has leading dim E, batches are [E, batch] and
        the best snapshot is kept per member); 0 for one model (batches [batch])
    prepare(train_idx [n_train]): called once after the split, before any batch (fit standardisers)
    batch_loss(idx): the loss of the rows ``idx`` (a scalar to minimise)
    evaluate(holdout_idx) -> (mse [E] (or [1]), per-dimension mse [E, D]); None: no evaluations
    progress: called after every evaluation with {step, epoch, holdout_mse [E], best_holdout_mse [E],
        holdout_dim_mse [D] (mean over members), worst_dim, train_loss, seconds, eta_seconds (time to
        the cap, an upper bound; None when uncapped)}
    interrupted(state): with it, Ctrl-C (SIGINT) ends the fit at the end of the current step: the
        callback gets everything needed to continue as plain data (weights, best snapshot, Adam,
        generator, step), then KeyboardInterrupt propagates. ``resume=state`` continues exactly
        there: the split, ``prepare`` and the bootstrap are redone from the same seed, so
        ``generator`` must be seeded as it was for the interrupted fit
    returns {train_idx, holdout_idx, holdout_mse [E] or None (best snapshot, before restoring),
        initial_holdout_mse, steps, epochs, stopped_early, train_loss (at the last evaluation),
        losses [steps] (every step's loss), seconds, n_train, n_holdout}
    """
    t0 = time.perf_counter()
    train_idx, hold_idx = holdout_split(n_rows, cfg, generator, device)
    n_train, n_hold = len(train_idx), len(hold_idx)
    if prepare is not None:
        prepare(train_idx)
    shape = (members, cfg.batch_size) if members else (cfg.batch_size,)
    pool = train_idx
    if members and cfg.bootstrap:
        pool = train_idx[torch.randint(n_train, (members, n_train), generator=generator, device=device)]
    rows = torch.arange(members, device=device)[:, None] if members and cfg.bootstrap else None

    epoch_len = math.ceil(n_train / cfg.batch_size)
    evaluating = evaluate is not None and n_hold > 0
    if cfg.early_stopping == "epochs":
        every = epoch_len if evaluating else 0
        cap = cfg.max_epochs * epoch_len if cfg.max_epochs is not None else None
    else:
        every = cfg.eval_every if evaluating else 0
        cap = cfg.max_steps
    if cap is None and not evaluating:
        raise WorldModelError("early_stopping=epochs without max_epochs needs a holdout to stop on")

    params = list(module.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    best_mse = initial_mse = None
    if evaluating:
        best_mse, _ = evaluate(hold_idx)
        initial_mse = best_mse.tolist()
        best_state = {k: v.detach().clone() for k, v in module.named_parameters()}
    since_improved, step, stopped_early, train_loss = 0, 0, False, float("nan")
    losses: list[torch.Tensor] = []
    if resume is not None:
        module.load_state_dict(resume["module"])
        opt.load_state_dict(resume["opt"])
        generator.set_state(resume["generator"])
        step, since_improved, train_loss = resume["step"], resume["since_improved"], resume["train_loss"]
        losses = [torch.as_tensor(x, device=device) for x in resume["losses"]]
        if evaluating:
            best_mse, initial_mse = resume["best_mse"].to(device), resume["initial_mse"]
            best_state = {k: v.to(device) for k, v in resume["best_state"].items()}
    resumed_at = step
    # Ctrl-C is taken at a step boundary, where the state is consistent (the training loop does the same)
    sigint = {"hit": False}
    catch = interrupted is not None and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: sigint.update(hit=True)) if catch else None
    try:
        while cap is None or step < cap:
            pos = torch.randint(n_train, shape, generator=generator, device=device)
            idx = pool[rows, pos] if rows is not None else pool[pos]
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if members and cfg.grad_clip > 0:
                clip_grads_per_member(params, cfg.grad_clip)
            opt.step()
            losses.append(loss.detach())
            step += 1
            if every and (step % every == 0 or step == cap):
                train_loss = float(loss.detach())
                mse, dim_mse = evaluate(hold_idx)
                improved = (best_mse - mse) / best_mse.clamp_min(1e-12) > cfg.min_improvement
                if bool(improved.any()):
                    since_improved = 0
                    with torch.no_grad():
                        for k, p in module.named_parameters():
                            if members:
                                best_state[k][improved] = p.detach()[improved]
                            else:
                                best_state[k].copy_(p.detach())
                    best_mse = torch.where(improved, mse, best_mse)
                else:
                    since_improved += 1
                if progress is not None:
                    sec = time.perf_counter() - t0
                    dims = dim_mse.mean(0)
                    progress({"step": step, "epoch": step / epoch_len, "holdout_mse": mse.tolist(),
                              "best_holdout_mse": best_mse.tolist(), "holdout_dim_mse": dims.tolist(),
                              "worst_dim": int(dims.argmax()), "train_loss": train_loss, "seconds": sec,
                              "eta_seconds": None if cap is None else sec / (step - resumed_at) * (cap - step)})
                if cfg.patience and since_improved >= cfg.patience:
                    stopped_early = True
                    break
            if sigint["hit"]:
                interrupted({"module": module.state_dict(), "opt": opt.state_dict(),
                             "generator": generator.get_state(), "step": step, "since_improved": since_improved,
                             "train_loss": train_loss, "losses": [float(x) for x in losses],
                             "best_mse": best_mse, "initial_mse": initial_mse,
                             "best_state": best_state if evaluating else None})
                raise KeyboardInterrupt
    finally:
        if catch:
            signal.signal(signal.SIGINT, previous)
    if evaluating:
        with torch.no_grad():  # restore each member's best snapshot (MOPO / mbrl-lib)
            for k, p in module.named_parameters():
                p.copy_(best_state[k])
    return {"train_idx": train_idx, "holdout_idx": hold_idx, "holdout_mse": best_mse,
            "initial_holdout_mse": initial_mse, "steps": step, "epochs": step / epoch_len,
            "stopped_early": stopped_early, "train_loss": train_loss, "losses": torch.stack(losses).tolist(),
            "seconds": time.perf_counter() - t0, "n_train": n_train, "n_holdout": n_hold}


def sequence_model_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                        generator: torch.Generator | None, grad_clip: float
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One gradient step of a sequence model on a replayed batch (the online latent model,
    worldmodel/latent.py; the online loop draws the batch and calls this ``model_updates`` times per
    update): ``model.loss(batch, generator) -> (loss, terms, feat)``, backward, the gradient norm
    clipped to ``grad_clip`` (DreamerV2 / MAMBA), one optimizer step. The caller sets train mode.
    -> (terms + model_grad_norm (the norm before clipping), feat: the posterior features [T, B, ...],
    still attached to the graph: detach them for R_m)."""
    loss, terms, feat = model.loss(batch, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    terms["model_grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return terms, feat

