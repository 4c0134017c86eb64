"""R_m: a learned predictor of the world model's one-step prediction error (MAG, AAAI 2023).

MAG scores imagined continuations by the model error they would accumulate. The true error
needs the real dynamics, so MAG fits a network R_m on REAL transitions (s, a, r, s') of the
dataset, labelled with the model's error on them (paper, "Approximating R_m"):

    label(s, a) = sum_i || o_hat_i - o_i ||_2  +  | r_hat - r |
    (s_hat', r_hat) = one model step from (s, a): a random elite's mean, as in rollouts
    o_hat_i = obs_fn(s_hat')_i,   o_i = obs_fn(s')_i       (each agent's observation scheme)

    R_m(s, a, s_hat', r_hat) = MLP(standardise([s, joint a, s_hat', r_hat, s_hat' - s_bar', r_hat - r_bar]))
                                  ~  label   (MSE, standardised labels)
    (s_bar', r_bar) = the mean of the elites' predictions at (s, a)

R_m takes the TRANSITION it judges, as in the paper ("Approximating R_m": the model agents'
action is the prediction (o', R)): the planner asks it about each candidate's own predicted next
state and reward, so candidates of the same (s, a) get different scores. The candidate's deviation
from the elites' mean is given explicitly: the candidates of one (s, a) are close together
compared with how much states differ, too little for an MLP on standardised [s, s_hat'] to
resolve (reacher-expert-mix po, docs/mag.md "Diagnose": without it the per-start-state rank
correlation with the candidates' real error was ~0, with it 0.18-0.43). ``inputs="state_action"``
is the earlier R_m(s, a) (kept to measure the difference: docs/mag.md).

Deviation from the MAG release, on purpose: it labels R_m differently from the paper; we use the
paper's label. Its input is the global state + joint action (our model's input), not MAMBA's
per-agent latent features. Defaults: 4 x 256 hidden (MAG appendix B).

The ONLINE loop's R_m lives here too (``LatentErrorModel``, ``latent_error_model_step``): the same
MAG label on the per-agent latent model of worldmodel/latent.py, trained alongside that model on
replayed real sequences (one R_m step per model step) instead of fitted once on a dataset.

Cached next to the world model it describes: ``<world-model dir>/error_model-<key>.pt`` where the
key covers the world model's weights, the dataset checksum, the observation scheme and this config.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.nn.functional import row_chunks
from offmarl.nn.layers import Standardiser, mlp
from offmarl.worldmodel import store, trainer
from offmarl.worldmodel.ensemble import EnsembleWorldModel
from offmarl.worldmodel.latent import LatentWorldModel, error_labels

FORMAT = "offmarl-error-model-v3"  # v2: transition inputs; v3: + deviation from the elites' mean


@dataclass
class ErrorModelConfig:
    hidden: tuple[int, ...] = (256, 256, 256, 256)  # MAG appendix B: 4 layers x 256
    lr: float = 1e-3              # ours (Adam default scale; MAG does not report R_m's lr)
    batch_size: int = 256         # ours, as the world model's batch
    steps: int = 3_000            # ours: the loss flattens after ~2k steps on ant-4x2 (docs/mag.md)
    holdout_fraction: float = 0.1  # ours: held-out transitions for the reported fit quality
    max_labels: int = 200_000     # ours: label at most this many dataset transitions (labels cost one model step each)
    seed: int = 0                 # label elites, split, init and batches
    inputs: str = "transition"    # MAG paper: (s, a, s_hat', r_hat) | state_action: the earlier R_m(s, a)

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.inputs not in ("transition", "state_action"):
            raise OffmarlError(f"ErrorModelConfig: inputs={self.inputs!r}; choose transition or state_action")
        if self.steps < 1 or self.batch_size < 1:
            raise OffmarlError("ErrorModelConfig: steps and batch_size must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise OffmarlError(f"ErrorModelConfig: holdout_fraction={self.holdout_fraction} must be in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class ErrorModel(nn.Module):
    """R_m: predicted model error of the world model on the transition (state [B, S], joint action
    [B, NA], predicted next state [B, S], predicted reward [B]); ``inputs="state_action"``: (s, a)."""

    def __init__(self, state_dim: int, joint_action_dim: int, config: ErrorModelConfig | None = None):
        super().__init__()
        self.config = config or ErrorModelConfig()
        self.state_dim, self.joint_action_dim = state_dim, joint_action_dim
        self.transition = self.config.inputs == "transition"
        width = state_dim + joint_action_dim + (2 * (state_dim + 1) if self.transition else 0)
        self.input_norm = Standardiser(width)
        self.label_norm = Standardiser(1)
        self.net = mlp(width, list(self.config.hidden), 1)
        self.metadata: dict[str, Any] = {}

    def inputs(self, states: torch.Tensor, joint_actions: torch.Tensor, next_states: torch.Tensor | None = None,
               rewards: torch.Tensor | None = None, elite_mean: torch.Tensor | None = None) -> torch.Tensor:
        """elite_mean [B, S+1]: the mean of the elites' (next state, reward) at (s, a)."""
        parts = [states, joint_actions.to(states.dtype)]
        if self.transition:
            if next_states is None or rewards is None or elite_mean is None:
                raise OffmarlError("R_m takes the transition: give the predicted next states, rewards and the "
                                   "elites' mean prediction")
            ns, r = next_states.to(states.dtype), rewards.to(states.dtype).unsqueeze(-1)
            parts += [ns, r, ns - elite_mean[..., :-1], r - elite_mean[..., -1:]]
        return torch.cat(parts, dim=-1)

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        chunks = row_chunks(x)  # the planner scores ~16k transitions at once: cache-sized slices on CPU
        if chunks is not None:
            return torch.cat([self._raw(c) for c in chunks])
        return self.net(self.input_norm(x)).squeeze(-1)

    @torch.no_grad()
    def forward(self, states: torch.Tensor, joint_actions: torch.Tensor, next_states: torch.Tensor | None = None,
                rewards: torch.Tensor | None = None, elite_mean: torch.Tensor | None = None) -> torch.Tensor:
        """-> predicted error [B] in label units (>= 0)."""
        raw = self._raw(self.inputs(states, joint_actions, next_states, rewards, elite_mean))
        return self.label_norm.inverse(raw.unsqueeze(-1)).squeeze(-1).clamp_min(0.0)

    def fit(self, states: torch.Tensor, joint_actions: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator | None = None, next_states: torch.Tensor | None = None,
            rewards: torch.Tensor | None = None, elite_mean: torch.Tensor | None = None) -> dict[str, Any]:
        """Supervised fit on labelled transitions (worldmodel/trainer.py: ``steps`` plain steps, no early
        stopping); returns {loss_first, loss_last, holdout_mse (label units), holdout_label_var, steps,
        seconds} (holdout_mse < holdout_label_var means R_m explains some error)."""
        cfg, dev = self.config, states.device
        if generator is None:
            generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        x = self.inputs(states, joint_actions, next_states, rewards, elite_mean)
        y: dict[str, torch.Tensor] = {}

        def prepare(tr: torch.Tensor) -> None:
            self.input_norm.fit(x[tr])
            self.input_norm.std.masked_fill_(self.input_norm.std <= 1e-5, 1.0)  # constant features: scale 1
            self.label_norm.fit(labels[tr].unsqueeze(-1))
            y["y"] = self.label_norm(labels.unsqueeze(-1)).squeeze(-1)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            return ((self._raw(x[idx]) - y["y"][idx]) ** 2).mean()

        tcfg = trainer.TrainerConfig(lr=cfg.lr, batch_size=cfg.batch_size, max_steps=cfg.steps,
                                     holdout_fraction=cfg.holdout_fraction)
        res = trainer.fit(self, len(states), batch_loss, tcfg, generator, dev, prepare=prepare)
        losses, ho = res["losses"], res["holdout_idx"]
        k = max(1, min(100, len(losses) // 10))  # mean of the first / last 10% of steps (noisy minibatches)
        stats = {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": cfg.steps,
                 "n_train": res["n_train"], "n_holdout": res["n_holdout"], "label_mean": float(labels.mean())}
        if len(ho):
            with torch.no_grad():
                pred = self.label_norm.inverse(self._raw(x[ho]).unsqueeze(-1)).squeeze(-1).clamp_min(0.0)
                stats["holdout_mse"] = float(((pred - labels[ho]) ** 2).mean())
                stats["holdout_label_var"] = float(labels[ho].var())
        stats["seconds"] = res["seconds"]
        self.metadata["fit"] = stats
        return stats


class LatentErrorModel(nn.Module):
    """MAG's R_m on the ONLINE latent model (worldmodel/latent.py): per agent, (feat [M, N, D],
    action [M, N], predicted next observation [M, N, O], predicted next reward [M, N]) -> predicted
    one-step error [M, N], shared weights across agents. ``transition=False``: the earlier R_m(feat, action)."""

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
        """deviation: (next_obs - the prior's mean prediction, next_reward - its mean)
        (latent.py ``prior_mean_outcome``)."""
        parts = [feat, F.one_hot(actions, self.k).to(feat.dtype)]
        if self.transition:
            parts += [next_obs.to(feat.dtype), next_reward.to(feat.dtype).unsqueeze(-1)]
            if self.deviation:
                parts += [deviation[0].to(feat.dtype), deviation[1].to(feat.dtype).unsqueeze(-1)]
        return F.softplus(self.net(torch.cat(parts, -1)).squeeze(-1))  # errors are >= 0


class LatentDeviationScore(nn.Module):
    """A label-free stand-in for the online R_m (the offline ``deviation`` score, worldmodel/scorers.py):
    per agent, how far the scored prediction is from the prior's mean prediction,
    ||o_hat - o_bar|| + |r_hat - r_bar| [M, N]. No parameters; ``offmarl diagnose --score deviation``."""
    transition, deviation = True, True

    def forward(self, feat: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor | None = None,
                next_reward: torch.Tensor | None = None, deviation: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        return deviation[0].norm(dim=-1) + deviation[1].abs()


def latent_error_model_step(error_model: LatentErrorModel, optimizer: torch.optim.Optimizer, model: LatentWorldModel,
                            feat: torch.Tensor, batch: dict[str, torch.Tensor], generator: torch.Generator | None
                            ) -> dict[str, torch.Tensor]:
    """One gradient step of the latent model's R_m on real sequences (online: after each model step,
    as often as the model): MAG's label (latent.py ``error_labels``: one prior sample per row, drawn
    with ``generator``) on the transitions of agents alive at t and t+1, a masked MSE, one optimizer
    step. feat [T, B, N, D]: the model's posterior features of ``batch`` (detached).
    -> {error_model_loss, error_label_mean} (detached tensors)."""
    lab = error_labels(model, feat, batch, generator)
    pred = error_model(feat[:-1], batch["action"][:-1], lab["next_obs"], lab["next_reward"],
                       lab["deviation"] if error_model.deviation else None)
    w = lab["weight"].float()
    err_loss = ((pred - lab["labels"]).square() * w).sum() / w.sum().clamp_min(1)
    optimizer.zero_grad(set_to_none=True)
    err_loss.backward()
    optimizer.step()
    return {"error_model_loss": err_loss.detach(),
            "error_label_mean": (lab["labels"] * w).sum() / w.sum().clamp_min(1)}


@torch.no_grad()
def model_error_labels(model: EnsembleWorldModel, states: torch.Tensor, actions: torch.Tensor,
                       next_states: torch.Tensor, rewards: torch.Tensor,
                       obs_fn: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator | None = None,
                       chunk: int = 8192, predictions: bool = False):
    """MAG's label on real transitions: sum_i ||o_hat_i - o_i|| + |r_hat - r| -> [T].

    states/next_states [T, S], actions [T, N, A] (or [T, N] int), rewards [T]; the prediction is one
    ``model.step`` (a random elite's mean per row, exactly as rollouts draw it).
    predictions: also return the labelled predictions -> (labels [T], next_states_hat [T, S], rewards_hat [T],
    elite_mean [T, S+1] (the elites' mean prediction)).
    """
    out, ns_hat, r_hat, e_mean = [], [], [], []
    for i in range(0, len(states), chunk):
        s, ns = states[i:i + chunk], next_states[i:i + chunk]
        step = model.step(s, model.encode_actions(actions[i:i + chunk]), generator)
        obs_err = (obs_fn(step["next_states"]) - obs_fn(ns)).norm(dim=-1).sum(-1)  # [b]; padded dims are 0 in both
        out.append(obs_err + (step["rewards"] - rewards[i:i + chunk]).abs())
        ns_hat.append(step["next_states"])
        r_hat.append(step["rewards"])
        e_mean.append(step["elite_means"].mean(0))
    if predictions:
        return torch.cat(out), torch.cat(ns_hat), torch.cat(r_hat), torch.cat(e_mean)
    return torch.cat(out)


def error_model_key(model: EnsembleWorldModel, dataset, cfg: ErrorModelConfig) -> str:
    """Same world-model weights, data, observation scheme and config -> same fitted R_m."""
    return store.cache_key({"model": store.weights_digest(model), "data": dataset.checksum(),
                            "obs": dataset.meta.obs_scheme, "config": cfg.to_dict(), "format": FORMAT})


def fit_error_model(model: EnsembleWorldModel, dataset, obs_fn: Callable[[torch.Tensor], torch.Tensor],
                    cfg: ErrorModelConfig, device: str | torch.device = "cpu") -> ErrorModel:
    """Label (up to ``max_labels``) dataset transitions with the model's error and fit R_m on them."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    t = dataset.tensors(dev)
    n = len(dataset)
    idx = (torch.randperm(n, generator=gen, device=dev)[: cfg.max_labels] if n > cfg.max_labels
           else torch.arange(n, device=dev))
    states, actions = t["states"][idx].float(), t["actions"][idx]
    if actions.is_floating_point():
        actions = actions.float()
    labels, ns_hat, r_hat, e_mean = model_error_labels(model, states, actions, t["next_states"][idx].float(),
                                               t["rewards"][idx].float(), obs_fn, gen, predictions=True)
    joint = model.encode_actions(actions)
    with torch.random.fork_rng(devices=[]):  # repeatable init without touching the global RNG
        torch.manual_seed(cfg.seed)
        rm = ErrorModel(model.state_dim, joint.shape[-1], cfg)
    rm.to(dev)
    rm.fit(states, joint, labels, gen, ns_hat, r_hat, e_mean)
    return rm.eval()


def save_error_model(rm: ErrorModel, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    header = {"config": rm.config.to_dict(), "state_dim": rm.state_dim, "joint_action_dim": rm.joint_action_dim}
    return store.save_module(path, FORMAT, rm, header, {**rm.metadata, **(metadata or {})})


def load_error_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ErrorModel:
    blob = store.read_module_file(path, FORMAT, "error model", "delete it to refit")
    cfg = ErrorModelConfig(**{k: (tuple(v) if k == "hidden" else v) for k, v in blob["config"].items()})
    rm = store.restore_module(blob, lambda: ErrorModel(int(blob["state_dim"]), int(blob["joint_action_dim"]), cfg),
                              path, "error model")
    return rm.to(device).eval()


def load_or_fit_error_model(model: EnsembleWorldModel, dataset, obs_fn: Callable[[torch.Tensor], torch.Tensor],
                            cfg: ErrorModelConfig, cache_dir: str | os.PathLike | None,
                            device: str | torch.device = "cpu") -> tuple[ErrorModel, dict[str, Any]]:
    """The cached R_m of (world model, dataset, scheme, cfg) if there is one, else fit (and cache) it.

    cache_dir: the world model's own directory (``<cache>/<world-model key>/``, the folder of its
    model.pt); the file is ``error_model-<key>.pt`` there. None: fit without caching.
    returns (R_m on ``device``, info {cached, path, key, **fit stats})
    """
    key = error_model_key(model, dataset, cfg)
    path = Path(cache_dir) / f"error_model-{key}.pt" if cache_dir is not None else None
    meta = {"dataset_checksum": dataset.checksum(), "dataset": dataset.meta.name}
    rm, cached = store.load_or_fit(path, lambda p: load_error_model(p, device),
                                   lambda: fit_error_model(model, dataset, obs_fn, cfg, device),
                                   lambda m, p: save_error_model(m, p, meta))
    return rm, {"cached": cached, "path": str(path) if path else None, "key": key, **rm.metadata.get("fit", {})}
