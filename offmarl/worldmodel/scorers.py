"""What the MAG planner minimises over the offline ensemble, and the planner built from its config.

    error_model   MAG's R_m (worldmodel/error_model.py): a learned predictor of the model's one-step
                  error on a transition (s, a, predicted s', predicted r), fitted on the dataset's
                  real transitions and cached next to the world model
    uncertainty   the ensemble's disagreement eps_g at (state, joint action): no extra network, no labels
    deviation     the scored prediction's distance from the elites' mean prediction at (state, joint
                  action), in R_m's label units: sum_i ||o_hat_i - o_bar_i|| + |r_hat - r_bar|. No
                  network, no labels: "stay near the ensemble's consensus", the baseline R_m's
                  deviation input has to beat (docs/mag.md)
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from offmarl.planners.mag import MAGPlanner, PlannerConfig, Scorer
from offmarl.worldmodel.ensemble import EnsembleWorldModel
from offmarl.worldmodel.error_model import ErrorModel, ErrorModelConfig, load_or_fit_error_model
from offmarl.worldmodel.uncertainty import eps_g


class ErrorModelScorer:
    """MAG's scorer: the learned model-error predictor R_m on the transition (state, joint action,
    the model's predicted next state and reward in ``out``, and the elites' mean prediction)."""
    uses_ensemble = True

    def __init__(self, error_model: ErrorModel):
        self.error_model = error_model

    def __call__(self, states, joint, out):
        return self.error_model(states, joint, out["next_states"], out["rewards"], out["elite_means"].mean(0))


class UncertaintyScorer:
    """Ensemble disagreement eps_g at (state, joint action)."""
    uses_ensemble = True

    def __call__(self, states, joint, out):
        return eps_g(out["elite_means"])


class DeviationScorer:
    """Distance of the scored prediction (next state, reward) from the elites' mean prediction,
    per agent's observation: sum_i ||obs(s_hat')_i - obs(s_bar')_i|| + |r_hat - r_bar|."""
    uses_ensemble = True

    def __init__(self, obs_fn: Callable[[torch.Tensor], torch.Tensor]):
        self.obs_fn = obs_fn

    def __call__(self, states, joint, out):
        mean = out["elite_means"].mean(0)
        obs_gap = (self.obs_fn(out["next_states"]) - self.obs_fn(mean[..., :-1])).norm(dim=-1).sum(-1)
        return obs_gap + (out["rewards"] - mean[..., -1]).abs()


def make_scorer(score: str, obs_fn: Callable[[torch.Tensor], torch.Tensor]) -> Scorer:
    """The label-free scorers by name (``uncertainty``, ``deviation``); R_m needs ``make_planner``."""
    if score == "uncertainty":
        return UncertaintyScorer()
    if score == "deviation":
        return DeviationScorer(obs_fn)
    raise ValueError(f"make_scorer: {score!r} needs a fitted network (make_planner)")


def make_planner(cfg: PlannerConfig, model: EnsembleWorldModel, dataset,
                 obs_fn: Callable[[torch.Tensor], torch.Tensor], cache_dir: str | os.PathLike | None,
                 device: str | torch.device = "cpu", log: Callable[..., Any] = print) -> MAGPlanner:
    """The MAG planner of ``cfg`` over ``model``. With score='error_model', R_m is loaded from /
    fitted into ``cache_dir`` (the world model's folder; None = fit without caching); the planner's
    ``info`` holds R_m's fit statistics. Fails early if the model cannot offer ``cfg.l`` candidates."""
    model.check_candidates(cfg.l, cfg.candidates)
    info: dict[str, Any] = {}
    if cfg.score == "error_model":
        ecfg = ErrorModelConfig(hidden=tuple(cfg.error_hidden), steps=cfg.error_steps, lr=cfg.error_lr,
                                batch_size=cfg.error_batch_size, max_labels=cfg.error_max_labels,
                                seed=cfg.error_seed, inputs=cfg.error_inputs)
        rm, info = load_or_fit_error_model(model, dataset, obs_fn, ecfg, cache_dir, device)
        log(("loaded" if info.get("cached") else "fitted") + f" MAG error model R_m {info.get('path')} "
            f"(holdout mse {info.get('holdout_mse', float('nan')):.4g} vs label variance "
            f"{info.get('holdout_label_var', float('nan')):.4g})")
        scorer: Scorer = ErrorModelScorer(rm)
    else:
        scorer = make_scorer(cfg.score, obs_fn)
    return MAGPlanner.from_config(cfg, scorer, info)
