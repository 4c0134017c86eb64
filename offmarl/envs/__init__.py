"""Environment registry: ``make_env("ant-4x2", obs="po")``, ``make_env("smac-2s3z")``, and
``make_vec_env("smac-2s3z", n_envs=4)`` (copies stepped together, the ``VecMultiAgentEnv`` of
offmarl/envs/base.py: online algorithms see only that contract, never a backend module).

The simulator modules are imported inside ``make_env`` and ``smac_names`` (the documented lazy
imports): ``import offmarl.envs`` loads neither MuJoCo nor JAX/jaxmarl, so the CLI's help, the
dataset tools and test collection do not pay for them (jaxmarl alone costs ~7 s of CPU).
"""
from __future__ import annotations

import difflib

from offmarl.envs.base import EnvError, EnvSpec, MultiAgentEnv, VecMultiAgentEnv
from offmarl.envs.smac_maps import BACKENDS as SMAC_BACKENDS  # tables only: no JAX, no StarCraft II
from offmarl.envs.smac_maps import alive_from_avail as smac_alive

MAMUJOCO_NAMES = ("ant-4x2", "ant-2x4", "reacher-2x1", "halfcheetah-2x3", "halfcheetah-6x1", "hopper-3x1",
                  "walker2d-2x3")


def smac_names() -> list[str]:
    from offmarl.envs.smac_maps import SMAC_MAPS

    return [f"smac-{m}" for m in SMAC_MAPS]


def env_names() -> list[str]:
    return list(MAMUJOCO_NAMES) + ["coordination"] + smac_names()


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def make_env(name: str, obs: str | None = None, **kwargs) -> MultiAgentEnv:
    """Build an environment by registry name. ``obs`` picks the observation scheme
    (default: ``fo`` for MaMuJoCo, the env's only scheme otherwise)."""
    if name in MAMUJOCO_NAMES:
        from offmarl.envs.mamujoco import MaMuJoCoEnv

        return MaMuJoCoEnv(name, obs=obs or "fo", **kwargs)
    if name == "coordination":
        from offmarl.envs.coordination import CoordinationGame

        return CoordinationGame(obs=obs or "fo", **kwargs)
    if name.startswith("smac-"):
        from offmarl.envs.smac import make_smac

        return make_smac(name[len("smac-"):], obs=obs, **kwargs)
    raise EnvError(f"unknown environment {name!r}.{suggest(name, env_names())} Run `offmarl envs list` to see all.")


def make_vec_env(name: str, n_envs: int, seed: int | None = None, **kwargs) -> VecMultiAgentEnv:
    """``n_envs`` copies of environment ``name`` stepped together (auto-reset). SMAC maps only
    (``smac-<map>``; ``backend="smax"`` (default) or ``"sc2"`` in ``kwargs``)."""
    if name.startswith("smac-"):
        from offmarl.envs.smac import make_vec_smac

        return make_vec_smac(name[len("smac-"):], n_envs, seed=seed, **kwargs)
    known = name in MAMUJOCO_NAMES or name == "coordination"
    raise EnvError(f"{name!r} has no vectorised version (SMAC maps only: smac-<map>)" if known else
                   f"unknown environment {name!r}.{suggest(name, smac_names())} Run `offmarl envs list` to see all.")


__all__ = ["EnvError", "EnvSpec", "MultiAgentEnv", "SMAC_BACKENDS", "VecMultiAgentEnv", "smac_alive", "make_env",
           "make_vec_env", "env_names", "MAMUJOCO_NAMES", "suggest"]
