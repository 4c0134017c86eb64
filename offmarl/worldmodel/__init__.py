"""offmarl.worldmodel: the offline ensemble world model, its uncertainty, and synthetic rollouts."""
from offmarl.worldmodel.ensemble import (
    EnsembleConfig,
    EnsembleWorldModel,
    WorldModelError,
    cache_key,
    encode_joint_action,
    load_or_fit,
    load_world_model,
)
from offmarl.worldmodel.rollout import RolloutConfig, calibrate_eps_g_threshold, dataset_box, model_rollout
from offmarl.worldmodel.uncertainty import eps_aleatoric, eps_g, eps_r, penalised_reward

__all__ = [
    "EnsembleConfig",
    "EnsembleWorldModel",
    "RolloutConfig",
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
    "model_rollout",
    "penalised_reward",
]
