"""The experiment driver behind ``offmarl train`` and ``offmarl evaluate``: which algorithm, which
config, which dataset, which run directory; then the loop (offmarl/loop.py) does the training.

Read from ``train_from_options``: the algorithm's module comes from ``ALGORITHMS`` (a plain dict
of the modules imported below), its config from ``resolve_config``, the dataset from
offmarl/data/registry.py, and evaluation in the real environment from offmarl/evaluation.py.
Online algorithms (``offmarl online``) get their own registry and entry point here, next to the
offline ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from offmarl.algos import bc, cql, iql, ma_iql, matd3bc, moma_ppo, omar, online, td3bc
from offmarl.config import (
    ConfigError,
    build_config,
    build_with_sources,
    describe,
    expand_block,
    from_dict,
    parse_overrides,
    read_blocks,
    read_yaml,
    shipped_config,
    to_dict,
)
from offmarl.data import registry
from offmarl.data.dataset import DatasetMeta, MultiAgentDataset
from offmarl.envs.smac import check_online_map
from offmarl.errors import OffmarlError
from offmarl.evaluation import CrossPlayPolicy, evaluate_policy
from offmarl.loop import LoopConfig, Progress, TrainingInterrupted, train
from offmarl.planners.mag import OFFLINE_ONLY, ONLINE_ONLY, PlannerConfig
from offmarl.runs import (
    RunDir,
    RunError,
    check_dataset_provenance,
    check_runs_folder,
    dataset_provenance,
    resolve_device,
    seed_everything,
)

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

# ``offmarl online --algo NAME`` -> the module and the method it runs (offmarl/algos/online.py:
# one engine, ``Config.algo`` picks the method).
ONLINE_ALGORITHMS = dict.fromkeys(online.METHODS, online)


def algorithm_module(name: str):
    """The module of offline algorithm ``name``; unknown names raise with the closest matches."""
    if name not in ALGORITHMS:
        close = difflib.get_close_matches(name, list(ALGORITHMS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise OffmarlError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}.{hint}")
    return ALGORITHMS[name]


# override blocks selected by the observation scheme (configs/<algo>.yaml), on top of the dataset's
OBS_CONFIG_TAGS = {"po": ("po",), "po-independent": ("po",), "po-leader": ("po",)}


def _configs(config: str | Sequence[str] | None) -> list[str]:
    """``--config`` as a list (the option is repeatable; one name or None still work)."""
    if config is None:
        return []
    return [config] if isinstance(config, str) else list(config)


def override_blocks(algo: str, dataset: str, obs: str | None,
                    config: str | Sequence[str] | None) -> list[tuple[str, dict]]:
    """The override blocks applied over ``algo``'s defaults, in order, as (name, mapping):

    1. each tag of the dataset's recipe (``Recipe.config`` in offmarl/data/registry.py; a dataset
       given as a file has none), then each tag of the observation scheme (``OBS_CONFIG_TAGS``):
       block ``tag`` of configs/<algo>.yaml and block ``algo`` of configs/<tag>.yaml (a task file,
       e.g. configs/coordination.yaml), where they exist;
    2. each ``--config`` in order: a block of configs/<algo>.yaml (e.g. ``reference``; with the
       blocks it ``extends`` before it, offmarl/config.py) or a YAML file.
    Names read ``moma-ppo.yaml:ant``; a user's file is named by its path."""
    tags = [] if registry.is_file_reference(dataset) else list(registry.recipe(dataset).config)
    tags += OBS_CONFIG_TAGS.get(obs or "", ())
    own_file = shipped_config(algo)
    own = read_blocks(own_file) if own_file else {}
    blocks = []
    for tag in tags:
        if tag in own:
            blocks += expand_block(tag, own[tag], own, f"{algo}.yaml")
        task_file = shipped_config(tag)
        task = read_blocks(task_file) if task_file else {}
        if algo in task:
            blocks.append((f"{tag}.yaml:{algo}", task[algo]))
    for name in _configs(config):
        blocks += user_blocks(algo, own, name, prefix=f"{algo}-")
    return blocks


def user_blocks(file: str, own: dict[str, dict], config: str, prefix: str = "",
                map_name: str | None = None) -> list[tuple[str, dict]]:
    """One ``--config``: block ``config`` of configs/<file>.yaml (``own``; expanded by
    ``expand_block``: what it extends, then its keys, then its ``maps`` entry for ``map_name``)
    or a YAML file (its ``extends`` names blocks of configs/<file>.yaml), as layers
    (name, mapping); anything else raises with the closest block names."""
    if config in own:
        return expand_block(config, own[config], own, f"{file}.yaml", map_name)
    if Path(config).is_file():
        return expand_block(config, read_yaml(Path(config)), own, "", map_name, blocks_label=f"{file}.yaml")
    choices = ", ".join(own) or "none"
    close = difflib.get_close_matches(config.removeprefix(prefix), list(own), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"--config {config!r} is neither a YAML file nor a block of configs/{file}.yaml "
                      f"(blocks: {choices}).{hint}")


def _cli_layers(overrides: list[str] | None, named: dict[str, Any]) -> list[tuple[str, dict]]:
    """The command line's layers after the blocks: ``--set`` (all of them, one layer), then each
    option in ``named`` (CLI name -> {dotted key: value}) that was given."""
    layers = []
    ov = parse_overrides(overrides)
    if ov:
        layers.append(("--set", ov))
    for option, values in named.items():
        nested: dict[str, Any] = {}
        for key, value in values.items():
            node = nested
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        if nested:
            layers.append((option, nested))
    return layers


def config_layers(algo: str, dataset: str, obs: str | None, config: str | Sequence[str] | None,
                  overrides: list[str] | None, steps: int | None, extra: dict[str, Any] | None):
    """Every layer over the algorithm's defaults, in order: ``override_blocks``, ``--set``,
    ``--steps``, then the algorithm-specific CLI options (``extra``, dotted keys)."""
    algorithm_module(algo)
    named = {"--steps": {"loop.steps": int(steps)} if steps is not None else {}}
    for key, value in (extra or {}).items():
        named.setdefault(EXTRA_OPTIONS.get(key, key), {})[key] = value
    return override_blocks(algo, dataset, obs, config) + _cli_layers(overrides, named)


def resolve_config(algo: str, dataset: str, obs: str | None, config: str | Sequence[str] | None,
                   overrides: list[str] | None, steps: int | None, extra: dict[str, Any] | None):
    """The algorithm's ``Config``: dataclass defaults <- ``config_layers``. Returns (config,
    names of the applied override blocks)."""
    layers = config_layers(algo, dataset, obs, config, overrides, steps, extra)
    cfg = build_config(algorithm_module(algo).Config, layers)
    return cfg, [name for name, _ in layers if not name.startswith("--")]


def print_config(algo: str, dataset: str, obs: str | None, config: str | Sequence[str] | None,
                 overrides: list[str] | None, steps: int | None, extra: dict[str, Any] | None) -> str:
    """``offmarl train --print-config``: the resolved config and each value's source."""
    layers = config_layers(algo, dataset, obs, config, overrides, steps, extra)
    cfg, sources = build_with_sources(algorithm_module(algo).Config, layers)
    planner = getattr(cfg, "planner", None)  # MOMA-PPO: the planner's online-only keys
    notes = {f"planner.{k}": "online only" for k in ONLINE_ONLY} if isinstance(planner, PlannerConfig) else None
    return describe(cfg, sources, notes)


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


# CLI names of the ``extra`` keys, for messages
EXTRA_OPTIONS = {"world_model_path": "--world-model", "planner.kind": "--planner"}


def cpu_numerics() -> None:
    """Flush denormal floats to zero on the CPU (FTZ/DAZ). Values below ~1e-38 arise in long fits (Adam
    moments and activations of units that stopped receiving gradient) and make every matmul that touches
    them ~80x slower on x86 (docs/benchmarks.md, "Denormal floats"); rounding them to 0 changes results in
    their lowest bits only (runs stay repeatable). Process-wide; called by every training and evaluation
    entry point."""
    torch.set_flush_denormal(True)


def train_from_options(dataset: str | None = None, algo: str | None = None, obs: str | None = None,
                       config: str | None = None, overrides: list[str] | None = None, steps: int | None = None,
                       seed: int | None = None, device: str = "auto", out: str | None = None,
                       resume: str | None = None, env: str | None = None, extra: dict[str, Any] | None = None,
                       progress: Progress | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``offmarl train`` does: resolve the dataset, build the config, create or reopen the
    run directory, train, evaluate. ``extra`` holds algorithm-specific CLI options already in
    dotted form (e.g. {"world_model_path": ...}); ``progress`` receives the loop's progress.

    ``resume``: continue that run directory with its own config and data (docs/run-directories.md);
    only ``steps`` (the new total), ``device`` and ``progress`` may be given with it."""
    cpu_numerics()
    dev = resolve_device(device)
    if resume:
        given = {"--dataset": dataset, "--algo": algo, "--obs": obs, "--config": _configs(config) or None,
                 "--set": overrides or None, "--seed": seed, "--out": out, "--env": env}
        given.update({EXTRA_OPTIONS.get(k, k): v for k, v in (extra or {}).items()})
        rejected = [name for name, value in given.items() if value is not None]
        if rejected:
            raise OffmarlError(f"--resume {resume} continues the run with its own config and data; "
                               f"{', '.join(rejected)} cannot change it (drop {'them' if len(rejected) > 1 else 'it'}; "
                               f"--steps N sets the new total number of steps)")
        return _resume(resume, steps, dev, progress, log)
    if dataset is None:
        raise OffmarlError("--dataset is required (a name from `offmarl datasets list` or an .hdf5 file), "
                           "or --resume RUN_DIR to continue a run")
    algo = algo or "moma-ppo"
    seed = 0 if seed is None else seed
    mod = algorithm_module(algo)
    cfg, applied = resolve_config(algo, dataset, obs, config, overrides, steps, extra)  # bad --set fails here
    check_runs_folder(Path(out or "runs"))  # and a bad --out, before the data is loaded or generated
    ds = registry.load(dataset, env=env, obs=obs, log=log)
    check = getattr(mod, "check_dataset", None)  # optional hook
    if check is not None:
        check(ds, cfg)
    location = Path(dataset) if registry.is_file_reference(dataset) else registry.native_path(dataset)
    resolved = {"algo": algo, "dataset": dataset, "obs": ds.meta.obs_scheme, "env": env or ds.meta.env,
                "seed": seed, "device": str(dev), **dataset_provenance(ds, location),
                "overrides": applied, "config": to_dict(cfg)}
    run = RunDir.create(Path(out or "runs"), algo, dataset, seed, resolved)
    run.lock()
    log(f"run directory: {run.path}")
    return _train_in(run, mod, cfg, ds, seed, dev, False, progress, log)


def _resume(resume: str, steps: int | None, dev, progress: Progress | None, log: Callable[[str], None]):
    run = RunDir.open(resume)
    saved = run.config
    run.lock()
    try:
        if saved.get("kind") == "online":
            raise OffmarlError(f"{resume} was made by `offmarl online`; resume it with `offmarl online --resume`")
        mod = algorithm_module(saved["algo"])
        cfg = saved_config(mod, saved)
        if steps is not None:  # the new total; LoopConfig checks it like any other value
            cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, steps=int(steps)))
        check_extension(run, "train", cfg.loop.steps, steps is not None)
        ds = _training_data(run, saved, log)
        log(f"resuming {run.path}" + (f" up to step {cfg.loop.steps}" if steps is not None else ""))
    except BaseException:
        run.close()
        raise
    return _train_in(run, mod, cfg, ds, saved["seed"], dev, True, progress, log)


def check_extension(run: RunDir, command: str, total: int, new_total: bool, unit: int = 1,
                    name: str = "step") -> None:
    """The guards of ``--resume`` shared by ``offmarl train`` and ``offmarl online``: a finished run
    (eval.json written) continues only to a larger ``--steps`` total; a checkpoint past the total
    cannot go back. ``total`` and the recorded steps are the loop's steps; ``unit`` loop steps ->
    the ``--steps`` the user gives (online: env steps per iteration); ``name`` says which."""
    final = run.final_step() if run.finished else None
    if run.finished and (not new_total or (final is not None and total <= final)):
        done = f" at {name} {final * unit}" if final is not None else ""
        raise RunError(f"{run.path} is finished (final evaluation{done} in eval.json): evaluate it with "
                       f"`offmarl evaluate {run.path}`, or extend it with `offmarl {command} --resume {run.path} "
                       f"--steps N`{f' (N > {final * unit})' if final is not None else ''}")
    if run.has_checkpoint("latest"):  # a damaged or unsafe checkpoint fails now, not after a world-model fit
        at = run.load_checkpoint("latest")["step"]
        if at > total:
            raise RunError(f"{run.path}: its checkpoint is at {name} {at * unit}; --steps {total * unit} cannot go "
                           f"back (evaluate the run as it is, or train a new one)")


def _training_data(run: RunDir, saved: dict[str, Any], log: Callable[[str], None]) -> MultiAgentDataset:
    """The data a run was trained on, checked against the recorded size and checksum (never
    generated or silently replaced). A named dataset is looked up by its name and version in the
    current ``$OFFMARL_DATA_DIR`` (the data folder may have moved, or the run may resume on
    another machine), else at the recorded path; a file given by path is read from the recorded
    path."""
    from offmarl.data.dataset import DatasetError

    name = saved["dataset"]
    if not registry.is_file_reference(name):
        versioned = (saved.get("dataset_meta") or {}).get("name") or name
        try:
            rec = registry.recipe(versioned)
        except DatasetError as e:  # e.g. a run made on a dataset version this offmarl does not have
            raise RunError(f"{run.path}: {e}; resume needs the data the run started on") from None
        path, recorded = registry.native_path(rec.versioned), saved.get("dataset_path")
        if path.is_file():
            source = rec.versioned
            saved = {**saved, "dataset_path": str(path)}  # errors name the file actually read
        elif recorded is not None and Path(recorded).is_file():  # e.g. a run made before versioned names
            source = recorded
        else:
            raise RunError(f"{run.path}: its dataset {rec.versioned} is not in {registry.data_dir()} "
                           f"(OFFMARL_DATA_DIR); point OFFMARL_DATA_DIR at the folder that holds "
                           f"{path.name}, or start a new run")
    else:
        source = saved.get("dataset_path") or name
        if not Path(source).is_file():
            raise RunError(f"{run.path}: its dataset {source} is missing; resume needs the data the run started on "
                           f"(restore the file, or start a new run)")
    ds = registry.load(source, env=saved.get("env"), obs=saved["obs"], generate=False, log=log)
    check_dataset_provenance(run, saved, ds)
    return ds


def _train_in(run: RunDir, mod, cfg, ds, seed: int, dev, resume: bool, progress: Progress | None,
              log: Callable[[str], None]) -> dict[str, Any]:
    try:
        seed_everything(seed)
        algorithm = mod.Algorithm(ds, cfg, dev, seed, log=log)
        evaluate = real_env_evaluator(algorithm, ds.meta, seed, cfg.loop.eval_envs, dev)
        result = train(algorithm, run, cfg.loop, evaluate, dev, resume=resume, progress=progress)
    except TrainingInterrupted as e:
        log(f"interrupted: checkpoint at step {e.step} in {run.path / 'checkpoints' / 'latest.pt'}; "
            f"continue with: offmarl train --resume {run.path}")
        raise
    finally:
        run.close()
    result["run_dir"] = str(run.path)
    return result


def online_loop_config(cfg) -> LoopConfig:
    """The loop's settings for an online run: ``cfg.loop`` (a LoopConfig in env steps) in
    iterations of ``cfg.iteration_steps`` env steps, each period at least one iteration
    (``eval_every`` 0 stays 0: evaluate only at the end)."""
    def iterations(env_steps: int) -> int:
        return max(1, round(env_steps / cfg.iteration_steps))

    loop = cfg.loop
    return dataclasses.replace(loop, steps=cfg.iterations,
                               eval_every=iterations(loop.eval_every) if loop.eval_every else 0,
                               log_every=iterations(loop.log_every), checkpoint_every=iterations(loop.checkpoint_every))


def online_config_layers(algo: str | None, map_name: str | None, backend: str | None,
                         config: str | Sequence[str] | None, overrides: list[str] | None, steps: int | None):
    """Every layer over online.Config's defaults (the CPU preset), in order: each ``--config`` (a
    block of configs/online.yaml, with what it ``extends`` before it and its ``maps`` entry for
    the run's map after it, or a YAML file), ``--set``, then --steps / --algo / --map / --backend
    where given. The map of ``maps`` entries is ``--map``, else a ``--set map=``, else the default."""
    own_file = shipped_config("online")
    own = read_blocks(own_file) if own_file else {}
    map_for_blocks = map_name or parse_overrides(overrides).get("map") or online.Config().map
    layers = []
    for name in _configs(config):
        layers += user_blocks("online", own, name, map_name=str(map_for_blocks))
    named = {"--steps": {"loop.steps": int(steps)} if steps is not None else {},
             "--algo": {"algo": algo} if algo is not None else {},
             "--map": {"map": map_name} if map_name is not None else {},
             "--backend": {"backend": backend} if backend is not None else {}}
    return layers + _cli_layers(overrides, named)


def resolve_online_config(algo: str | None, map_name: str | None, backend: str | None,
                          config: str | Sequence[str] | None, overrides: list[str] | None, steps: int | None):
    """online.Config: dataclass defaults (the CPU preset) <- ``online_config_layers``. Returns
    (config, names of the applied blocks)."""
    layers = online_config_layers(algo, map_name, backend, config, overrides, steps)
    cfg = build_config(online.Config, layers)
    cfg.__post_init__()  # validate the merged values
    return cfg, [name for name, _ in layers if not name.startswith("--")]


def print_online_config(algo: str | None, map_name: str | None, backend: str | None,
                        config: str | Sequence[str] | None, overrides: list[str] | None, steps: int | None) -> str:
    """``offmarl online --print-config``: the resolved config and each value's source."""
    layers = online_config_layers(algo, map_name, backend, config, overrides, steps)
    cfg, sources = build_with_sources(online.Config, layers)
    cfg.__post_init__()
    return describe(cfg, sources, {f"planner.{k}": "offline only" for k in OFFLINE_ONLY})


def online_evaluator(algo, env_name: str, backend: str, seed: int, n_envs: int, device) -> Callable[[int], dict]:
    """``evaluate(episodes)`` for an online run: greedy episodes in the run's map on seeds apart
    from training's, then as many stochastic ones (the policy samples, as in training; an early
    policy's greedy action can hide what it learned) logged as ``stochastic_win_rate`` and
    ``stochastic_return``; ``score`` (best checkpoint, progress) is the greedy win rate."""
    def evaluate(episodes: int) -> dict[str, Any]:
        kw = {"episodes": episodes, "seed": seed * 1000 + 10_000, "n_envs": min(n_envs, episodes),
              "device": device, "env_kwargs": {"backend": backend}}
        res = evaluate_policy(algo.policy, env_name, "local", **kw)
        sto = evaluate_policy(algo.policy, env_name, "local", deterministic=False, **kw)
        res["stochastic_win_rate"], res["stochastic_return"] = sto.get("win_rate"), sto["return_mean"]
        res["env_steps"] = algo.env_steps
        res["score"] = res["win_rate"]
        return res

    return evaluate


def online_from_options(map_name: str | None = None, algo: str | None = None, backend: str | None = None,
                        config: str | Sequence[str] | None = None, overrides: list[str] | None = None,
                        steps: int | None = None, seed: int | None = None, device: str = "auto",
                        out: str | None = None, resume: str | None = None,
                        progress: Callable[[Any], Progress] | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``offmarl online`` does: check the map and backend, build the config, create or reopen
    the run directory (``kind: online``), train online in the loop, evaluate. ``progress(cfg)``
    builds the loop's Progress once the config is known (the CLI shows env steps). Options left
    None take the config's defaults (map 2s3z, algo mag, backend smax), seed 0, out ``runs``.

    ``resume``: continue that run directory with its own config, under the guards of ``offmarl
    train --resume`` (run lock, foreign options refused, ``steps`` = the new total of env steps)."""
    cpu_numerics()
    dev = resolve_device(device)
    if resume:
        given = {"--map": map_name, "--algo": algo, "--backend": backend, "--config": _configs(config) or None,
                 "--set": overrides or None, "--seed": seed, "--out": out}
        rejected = [name for name, value in given.items() if value is not None]
        if rejected:
            raise OffmarlError(f"--resume {resume} continues the run with its own config; {', '.join(rejected)} "
                               f"cannot change it (drop {'them' if len(rejected) > 1 else 'it'}; --steps N sets the "
                               f"new total number of env steps)")
        run = RunDir.open(resume)
        saved = run.config
        if saved.get("kind") != "online":
            raise OffmarlError(f"{resume} was made by `offmarl train`, not `offmarl online`; resume it with "
                               "`offmarl train --resume`")
        run.lock()
        try:
            cfg = saved_config(online, saved)
            if steps is not None:
                cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, steps=int(steps)))
            check_extension(run, "online", cfg.iterations, steps is not None, unit=cfg.iteration_steps,
                            name="env step")
            seed = saved["seed"]
            log(f"resuming {run.path}" + (f" up to {cfg.iterations * cfg.iteration_steps} env steps"
                                          if steps is not None else ""))
        except BaseException:
            run.close()
            raise
    else:
        if algo is not None and algo not in ONLINE_ALGORITHMS:
            close = difflib.get_close_matches(algo, list(ONLINE_ALGORITHMS), n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise OffmarlError(f"unknown online algorithm {algo!r}; choose one of: "
                               f"{', '.join(ONLINE_ALGORITHMS)}.{hint}")
        if map_name is not None:  # before the config: a bad map gets the nearest names, not a config error
            check_online_map(map_name, backend or "smax")
        cfg, applied = resolve_online_config(algo, map_name, backend, config, overrides, steps)
        check_online_map(cfg.map, cfg.backend)
        seed = 0 if seed is None else seed
        check_runs_folder(Path(out or "runs"))
        resolved = {"kind": "online", "algo": cfg.algo, "dataset": f"smac-{cfg.map}", "env": f"smac-{cfg.map}",
                    "obs": "local", "backend": cfg.backend, "seed": seed, "device": str(dev), "overrides": applied,
                    "config": to_dict(cfg)}
        run = RunDir.create(Path(out or "runs"), cfg.algo, f"smac-{cfg.map}", seed, resolved)
        run.lock()
        log(f"run directory: {run.path}")
    try:
        seed_everything(seed)
        algorithm = ONLINE_ALGORITHMS[cfg.algo].Algorithm(None, cfg, dev, seed, log=log)
        evaluate = online_evaluator(algorithm, algorithm.env_name, cfg.backend, seed, cfg.loop.eval_envs, dev)
        # the loop writes eval.json once, with env_steps (online_evaluator)
        result = train(algorithm, run, online_loop_config(cfg), evaluate, dev, resume=bool(resume),
                       progress=progress(cfg) if progress else None)
    except TrainingInterrupted as e:
        log(f"interrupted: checkpoint at env step {e.step * cfg.iteration_steps} in "
            f"{run.path / 'checkpoints' / 'latest.pt'}; continue with: offmarl online --resume {run.path}")
        raise
    finally:
        run.close()
    result["run_dir"] = str(run.path)
    return result


def _load_online(run: RunDir, saved: dict, checkpoint: str, dev, log):
    """load_trained for an ``offmarl online`` run: no dataset; a stand-in with the run's env."""
    cfg = saved_config(online, saved)
    algo = ONLINE_ALGORITHMS[cfg.algo].Algorithm.for_evaluation(None, cfg, dev, saved["seed"], log=log)
    name = checkpoint if run.has_checkpoint(checkpoint) else "latest"
    algo.load_state_dict(run.load_checkpoint(name, map_location=dev)["algo"])
    meta = SimpleNamespace(env=saved["env"], obs_scheme="local", ref_min_return=None, ref_max_return=None,
                           n_agents=algo.spec.n_agents, env_kwargs={"backend": cfg.backend})
    return algo, SimpleNamespace(meta=meta), run, name


def load_trained(run_dir: str, checkpoint: str = "latest", device: str = "auto", log: Callable[[str], None] = print,
                 policy_only: bool = True):
    """Rebuild the algorithm of a run directory and load a checkpoint; returns (algo, dataset, run, name).
    ``policy_only``: build only what acting needs (``Algorithm.for_evaluation``; MOMA-PPO skips its
    world model) from the metadata config.yaml recorded, without the training data
    (``MultiAgentDataset.for_acting``: a run directory evaluates wherever its env exists); False
    rebuilds everything on the run's checked training data (e.g. to roll the run's world model).
    Online runs (``kind: online``) have no dataset: a stand-in carries the run's env name."""
    if checkpoint not in ("best", "latest"):
        raise OffmarlError(f"--checkpoint {checkpoint!r}: choose best or latest")
    cpu_numerics()
    dev = resolve_device(device)
    run = RunDir.open(Path(run_dir).resolve())
    saved = run.config
    if saved.get("kind") == "online":
        return _load_online(run, saved, checkpoint, dev, log)
    mod = algorithm_module(saved["algo"])
    cfg = saved_config(mod, saved)
    if policy_only and saved.get("dataset_meta"):
        ds = MultiAgentDataset.for_acting(DatasetMeta.from_dict(saved["dataset_meta"]))
    elif policy_only:  # a run written before config.yaml recorded the metadata: its data, never generated
        ds = registry.load(saved["dataset"], env=saved.get("env"), obs=saved["obs"], generate=False, log=log)
    else:
        ds = _training_data(run, saved, log)
    build = mod.Algorithm.for_evaluation if policy_only else mod.Algorithm
    name = checkpoint
    if not run.has_checkpoint(checkpoint) and checkpoint == "best":
        log(f"{run.path.name}: no best.pt (no periodic evaluation ran); using latest.pt")
        name = "latest"
    state = run.load_checkpoint(name, map_location=dev)["algo"]  # before building: a refused file costs nothing
    algo = build(ds, cfg, dev, saved["seed"], log=log)
    algo.load_state_dict(state)
    return algo, ds, run, name


def _check_cross_play(run_dirs: list[str]) -> None:
    """Cross-play pairs agents of different runs: they must act in the same env, scheme, team."""
    seen = []
    for r in run_dirs:
        saved = RunDir.open(r).config
        meta = saved.get("dataset_meta") or {}
        seen.append((r, (saved.get("env"), saved.get("obs"), meta.get("n_agents"))))
    first = seen[0]
    for r, key in seen[1:]:
        if key != first[1]:
            raise OffmarlError(f"cross-play needs runs on the same environment and observation scheme: {first[0]} "
                               f"is {first[1][0]} ({first[1][1]}), {r} is {key[0]} ({key[1]})")


def evaluate_runs(run_dirs: list[str], episodes: int = 50, checkpoint: str = "latest", device: str = "auto",
                  seed: int = 12345, cross_play: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate each run's policy; with ``cross_play`` also every assignment of agents to runs
    that mixes runs (agent i plays the policy of run assignment[i])."""
    cpu_numerics()
    dev = resolve_device(device)
    run_dirs = [str(Path(r).resolve()) for r in run_dirs]
    if cross_play and len(run_dirs) > 1:
        _check_cross_play(run_dirs)
    loaded = [load_trained(r, checkpoint, device, log) for r in run_dirs]
    results: dict[str, Any] = {"runs": {}}
    for (algo, ds, run, name) in loaded:
        # online runs carry their env's backend (an sc2 run is evaluated in StarCraft II, not SMAX)
        res = evaluate_policy(algo.policy, ds.meta.env, ds.meta.obs_scheme, episodes=episodes, seed=seed,
                              device=dev, ref_min=ds.meta.ref_min_return, ref_max=ds.meta.ref_max_return,
                              env_kwargs=getattr(ds.meta, "env_kwargs", None))
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
