"""The experiment driver behind ``offmarl train`` and ``offmarl evaluate``: which algorithm, which
config, which dataset, which run directory; then the loop (offmarl/loop.py) does the training.

Read from ``train_from_options``: the algorithm's module comes from ``ALGORITHMS`` (a plain dict
of the modules imported below), its config from ``resolve_config``, the dataset from
offmarl/data/registry.py, and evaluation in the real environment from offmarl/evaluation.py.
Online algorithms (``offmarl online``) get their own registry and entry point here, next to the
offline ones.
"""
from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offmarl.algos import bc, cql, iql, ma_iql, matd3bc, moma_ppo, omar, td3bc
from offmarl.config import (ConfigError, build_config, from_dict, parse_overrides, read_blocks, read_yaml,
                            shipped_config, to_dict)
from offmarl.data import registry
from offmarl.errors import OffmarlError
from offmarl.evaluation import CrossPlayPolicy, evaluate_policy
from offmarl.loop import Progress, train
from offmarl.runs import RunDir, resolve_device, seed_everything

# ``offmarl train --algo NAME`` -> the module implementing it: ``Config``, ``Algorithm`` (the
# protocol of offmarl/loop.py) and optionally ``check_dataset(dataset, cfg)`` and
# ``migrate_saved_config(dict) -> dict`` (config.yaml of runs written by older versions).
ALGORITHMS = {
    "moma-ppo": moma_ppo,
    "iql": iql,
    "ma-iql": ma_iql,
    "ibc": bc,
    "itd3bc": td3bc,
    "matd3bc": matd3bc,
    "icql": cql,
    "omar": omar,
}

# Online algorithms (``offmarl online``) will be registered here, in a dict of their own.


def algorithm_module(name: str):
    """The module of offline algorithm ``name``; unknown names raise with the closest matches."""
    if name not in ALGORITHMS:
        close = difflib.get_close_matches(name, list(ALGORITHMS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise OffmarlError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}.{hint}")
    return ALGORITHMS[name]


# override blocks selected by the observation scheme (configs/<algo>.yaml), on top of the dataset's
OBS_CONFIG_TAGS = {"po": ("po",), "po-independent": ("po",), "po-leader": ("po",)}


def override_blocks(algo: str, dataset: str, obs: str | None, config: str | None) -> list[tuple[str, dict]]:
    """The override blocks applied over ``algo``'s defaults, in order, as (name, mapping):

    1. each tag of the dataset's recipe (``Recipe.config`` in offmarl/data/registry.py; a dataset
       given as a file has none), then each tag of the observation scheme (``OBS_CONFIG_TAGS``):
       block ``tag`` of configs/<algo>.yaml and block ``algo`` of configs/<tag>.yaml (a task file,
       e.g. configs/coordination.yaml), where they exist;
    2. the user's ``--config``: a block of configs/<algo>.yaml (e.g. ``reference``) or a YAML file.
    Names read ``moma-ppo.yaml:ant``; a user's file is named by its path."""
    tags = [] if registry.is_file_reference(dataset) else list(registry.recipe(dataset).config)
    tags += OBS_CONFIG_TAGS.get(obs or "", ())
    own_file = shipped_config(algo)
    own = read_blocks(own_file) if own_file else {}
    blocks = []
    for tag in tags:
        if tag in own:
            blocks.append((f"{algo}.yaml:{tag}", own[tag]))
        task_file = shipped_config(tag)
        task = read_blocks(task_file) if task_file else {}
        if algo in task:
            blocks.append((f"{tag}.yaml:{algo}", task[algo]))
    if config:
        if config in own:
            blocks.append((f"{algo}.yaml:{config}", own[config]))
        elif Path(config).is_file():
            blocks.append((config, read_yaml(Path(config))))
        else:
            choices = ", ".join(own) or "none"
            close = difflib.get_close_matches(config.removeprefix(f"{algo}-"), list(own), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"--config {config!r} is neither a YAML file nor a block of configs/{algo}.yaml "
                              f"(blocks: {choices}).{hint}")
    return blocks


def resolve_config(algo: str, dataset: str, obs: str | None, config: str | None, overrides: list[str] | None,
                   steps: int | None, extra: dict[str, Any] | None):
    """The algorithm's ``Config``: dataclass defaults <- ``override_blocks`` <- ``--set`` /
    ``--steps`` / algorithm-specific CLI options (``extra``, dotted keys). Returns (config, names
    of the applied override blocks)."""
    mod = algorithm_module(algo)
    ov = parse_overrides(overrides)
    if steps is not None:
        ov.setdefault("loop", {})["steps"] = int(steps)
    for key, value in (extra or {}).items():
        node = ov
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    blocks = override_blocks(algo, dataset, obs, config)
    return build_config(mod.Config, blocks, ov), [name for name, _ in blocks]


def real_env_evaluator(algo, meta, seed: int, n_envs: int, device) -> Callable[[int], dict[str, Any]]:
    """``evaluate(episodes)`` for the loop: deterministic episodes of ``algo.policy`` in the
    dataset's environment under its observation scheme, always from the same seeds; ``score`` is
    the normalised return where the dataset has reference returns, else the mean return."""
    def evaluate(episodes: int) -> dict[str, Any]:
        res = evaluate_policy(algo.policy, meta.env, meta.obs_scheme, episodes=episodes, seed=seed * 1000 + 10_000,
                              n_envs=n_envs, device=device, ref_min=meta.ref_min_return, ref_max=meta.ref_max_return)
        res["score"] = res.get("normalised_mean", res["return_mean"])
        gap = getattr(algo, "evaluation_extras", None)  # optional hook (MOMA-PPO: model vs real reward per step)
        if gap is not None:
            res.update(gap(res))
        return res

    return evaluate


def saved_config(mod, saved: dict):
    """The algorithm config of a run's config.yaml, through the module's migration hook if it has one."""
    migrate = getattr(mod, "migrate_saved_config", None)  # optional hook
    return from_dict(mod.Config, migrate(saved["config"]) if migrate else saved["config"])


def train_from_options(dataset: str, algo: str = "moma-ppo", obs: str | None = None, config: str | None = None,
                       overrides: list[str] | None = None, steps: int | None = None, seed: int = 0,
                       device: str = "auto", out: str = "runs", resume: str | None = None, env: str | None = None,
                       extra: dict[str, Any] | None = None, progress: Progress | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``offmarl train`` does: resolve the dataset, build the config, create or reopen the
    run directory, train, evaluate. ``extra`` holds algorithm-specific CLI options already in
    dotted form (e.g. {"world_model_path": ...}); ``progress`` receives the loop's progress."""
    dev = resolve_device(device)
    if resume:
        run = RunDir.open(resume)
        saved = run.config
        algo, dataset, obs, seed = saved["algo"], saved["dataset"], saved["obs"], saved["seed"]
        env = saved.get("env")
        mod = algorithm_module(algo)
        cfg = saved_config(mod, saved)
        log(f"resuming {run.path}")
    else:
        mod = algorithm_module(algo)
        cfg, applied = resolve_config(algo, dataset, obs, config, overrides, steps, extra)
    ds = registry.load(dataset, env=env, obs=obs, log=log)
    check = getattr(mod, "check_dataset", None)  # optional hook
    if check is not None:
        check(ds, cfg)
    if not resume:
        resolved = {"algo": algo, "dataset": dataset, "obs": ds.meta.obs_scheme, "env": env or ds.meta.env,
                    "seed": seed, "device": str(dev), "dataset_checksum": ds.checksum(),
                    "dataset_transitions": len(ds), "overrides": applied, "config": to_dict(cfg)}
        run = RunDir.create(Path(out), algo, dataset, seed, resolved)
        log(f"run directory: {run.path}")
    seed_everything(seed)
    algorithm = mod.Algorithm(ds, cfg, dev, seed, log=log)
    evaluate = real_env_evaluator(algorithm, ds.meta, seed, cfg.loop.eval_envs, dev)
    try:
        result = train(algorithm, run, cfg.loop, evaluate, dev, resume=bool(resume), progress=progress)
    finally:
        run.close()
    result["run_dir"] = str(run.path)
    return result


def load_trained(run_dir: str, checkpoint: str = "latest", device: str = "auto", log: Callable[[str], None] = print,
                 policy_only: bool = True):
    """Rebuild the algorithm of a run directory and load a checkpoint; returns (algo, dataset, run, name).
    ``policy_only``: build only what acting needs (``Algorithm.for_evaluation``; MOMA-PPO skips its
    world model); False rebuilds everything (e.g. to roll the run's world model)."""
    dev = resolve_device(device)
    run = RunDir.open(run_dir)
    saved = run.config
    mod = algorithm_module(saved["algo"])
    cfg = saved_config(mod, saved)
    ds = registry.load(saved["dataset"], env=saved.get("env"), obs=saved["obs"], log=log)
    build = mod.Algorithm.for_evaluation if policy_only else mod.Algorithm
    algo = build(ds, cfg, dev, saved["seed"], log=log)
    name = checkpoint if run.has_checkpoint(checkpoint) else "latest"
    algo.load_state_dict(run.load_checkpoint(name, map_location=dev)["algo"])
    return algo, ds, run, name


def evaluate_runs(run_dirs: list[str], episodes: int = 50, checkpoint: str = "latest", device: str = "auto",
                  seed: int = 12345, cross_play: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate each run's policy; with ``cross_play`` also every assignment of agents to runs
    that mixes runs (agent i plays the policy of run assignment[i])."""
    dev = resolve_device(device)
    loaded = [load_trained(r, checkpoint, device, log) for r in run_dirs]
    results: dict[str, Any] = {"runs": {}}
    for (algo, ds, run, name) in loaded:
        res = evaluate_policy(algo.policy, ds.meta.env, ds.meta.obs_scheme, episodes=episodes, seed=seed,
                              device=dev, ref_min=ds.meta.ref_min_return, ref_max=ds.meta.ref_max_return)
        res["checkpoint"] = name
        results["runs"][str(run.path)] = res
    if cross_play and len(loaded) > 1:
        ds0 = loaded[0][1]
        n = ds0.meta.n_agents
        rows = []
        for assign in itertools.product(range(len(loaded)), repeat=n):
            if len(set(assign)) == 1:
                continue
            pol = CrossPlayPolicy([a.policy for a, *_ in loaded], list(assign))
            res = evaluate_policy(pol, ds0.meta.env, ds0.meta.obs_scheme, episodes=episodes, seed=seed, device=dev,
                                  ref_min=ds0.meta.ref_min_return, ref_max=ds0.meta.ref_max_return)
            rows.append({"assignment": list(assign), "return_mean": res["return_mean"],
                         "normalised_mean": res.get("normalised_mean")})
        results["cross_play"] = rows
    return results
