"""offmarl.worldmodel: the offline ensemble world model, its trainer and store, its uncertainty, and
synthetic rollouts (with the MAG planner as a plug-in)."""
from offmarl.worldmodel.ensemble import (
    EnsembleConfig,
    EnsembleWorldModel,
    cache_key,
    encode_joint_action,
    load_or_fit,
    load_world_model,
)
from offmarl.worldmodel.rollout import (
    EnsembleLookahead,
    RolloutConfig,
    calibrate_eps_g_threshold,
    dataset_box,
    model_rollout,
)
from offmarl.worldmodel.scorers import ErrorModelScorer, UncertaintyScorer, make_planner
from offmarl.worldmodel.store import WorldModelError
from offmarl.worldmodel.uncertainty import eps_aleatoric, eps_g, eps_r, penalised_reward

__all__ = [
    "EnsembleConfig",
    "EnsembleLookahead",
    "EnsembleWorldModel",
    "ErrorModelScorer",
    "RolloutConfig",
    "UncertaintyScorer",
    "WorldModelError",
    "cache_key",
    "calibrate_eps_g_threshold",
    "dataset_box",
    "encode_joint_action",
    "eps_aleatoric",
    "eps_g",
    "eps_r",
    "load_or_fit",
    "load_world_model",
    "make_planner",
    "model_rollout",
    "penalised_reward",
]
