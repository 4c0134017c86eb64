"""The one training loop every offline algorithm runs in (MOMA-PPO and the baselines).

An algorithm module in offmarl/algos/ provides
    Config                    a dataclass whose ``loop`` field is a ``LoopConfig``
    Algorithm(dataset, cfg, device, seed)
        .update(step: int) -> dict[str, float]      one training step (a gradient step for the
                                                     baselines, one rollout+PPO iteration for MOMA-PPO)
        .policy                                      has act(...) for evaluation (evaluation.py)
        .state_dict() / .load_state_dict(d)          everything needed to continue bit-for-bit
        .generators: dict[str, torch.Generator]      saved and restored with the checkpoint
and this loop does the rest: progress bar with the latest score, metrics (jsonl + TensorBoard),
periodic evaluation in the real environment, atomic checkpoints (latest/best), Ctrl-C leaving
a valid checkpoint, and ``--resume``.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from offmarl.evaluation import evaluate_policy
from offmarl.runs import RunDir, rng_state, set_rng_state


@dataclass
class LoopConfig:
    steps: int = 100_000            # training steps (gradient steps; MOMA-PPO: iterations)
    eval_every: int = 10_000        # evaluate in the real env every N steps (0 = only at the end)
    eval_episodes: int = 10         # MOMA-PPO reference: 10 deterministic episodes
    final_eval_episodes: int = 10   # episodes of the final evaluation written to eval.json
    eval_envs: int = 10             # env copies stepped together during evaluation
    log_every: int = 1_000          # metrics row every N steps
    checkpoint_every: int = 10_000  # latest.pt every N steps (also at every evaluation and on Ctrl-C)


def _mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each metric over the rows that report it (an update may report some metrics only
    every few steps, e.g. TD3's delayed actor). Values are floats or 0-d tensors, possibly on the
    GPU: an update returns its losses as tensors so that it never waits for the device, and they
    are read back here, once per logged row."""
    out = {}
    for k in dict.fromkeys(k for r in rows for k in r):
        vals = [r[k] for r in rows if k in r]
        tensors = [v.detach().float().reshape(()) for v in vals if isinstance(v, torch.Tensor)]
        total = float(torch.stack(tensors).sum()) if tensors else 0.0
        total += sum(float(v) for v in vals if not isinstance(v, torch.Tensor))
        out[k] = total / len(vals)
    return out


def train(algo, run: RunDir, loop: LoopConfig, dataset_meta, env_name: str, obs_scheme: str, seed: int,
          device, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``algo`` for ``loop.steps`` steps in ``run``; returns the final evaluation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    start, best = 0, -float("inf")
    resumed_window: list = []
    if resume and run.has_checkpoint("latest"):
        ckpt = run.load_checkpoint("latest", map_location=device)
        algo.load_state_dict(ckpt["algo"])
        set_rng_state(ckpt["rng"], algo.generators)
        start, best = ckpt["step"], ckpt.get("best", best)
        resumed_window = ckpt.get("window", [])
        # rows after the checkpoint belong to lost work; a row AT the checkpoint that is off the
        # log grid was the interrupted run's closing row: the continued run logs that span again
        run.truncate_metrics(start, drop_at_step=start % loop.log_every != 0)

    def checkpoint(step: int) -> None:
        run.save_checkpoint({"algo": algo.state_dict(), "rng": rng_state(algo.generators), "step": step, "best": best,
                             "window": window})

    def evaluate(step: int, episodes: int) -> dict[str, Any]:
        return evaluate_policy(algo.policy, env_name, obs_scheme, episodes=episodes, seed=seed * 1000 + 10_000,
                               n_envs=loop.eval_envs, device=device,
                               ref_min=dataset_meta.ref_min_return, ref_max=dataset_meta.ref_max_return)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    last_score = "-"
    # metrics since the last multiple of log_every (saved with checkpoints so that a resumed run
    # averages exactly the same steps into each row as an uninterrupted one)
    window: list[dict[str, Any]] = list(resumed_window) if resume and start else []
    t_last = time.perf_counter()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[score]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      disable=not progress, transient=False) as bar:
            task = bar.add_task(f"{run.path.name}", total=loop.steps, completed=start, score="score -")
            step = start
            while step < loop.steps:
                metrics = algo.update(step)
                step += 1
                window.append(metrics)
                if step % loop.log_every == 0 or step == loop.steps:
                    row = _mean_metrics(window)
                    now = time.perf_counter()
                    row["steps_per_s"] = len(window) / max(now - t_last, 1e-9)
                    t_last = now
                    if step % loop.log_every == 0:
                        window = []
                    run.log(step, "train", row)
                if loop.eval_every and step % loop.eval_every == 0 and step < loop.steps:
                    res = evaluate(step, loop.eval_episodes)
                    score = res.get("normalised_mean", res["return_mean"])
                    run.log(step, "eval", {k: v for k, v in res.items() if not isinstance(v, list)})
                    last_score = f"score {score:.3f}"
                    if score > best:
                        best = score
                        run.save_checkpoint({"algo": algo.state_dict(), "step": step, "score": score}, "best")
                    checkpoint(step)
                elif step % loop.checkpoint_every == 0:
                    checkpoint(step)
                bar.update(task, completed=step, score=last_score)
                if interrupted["flag"]:
                    checkpoint(step)
                    raise KeyboardInterrupt
            checkpoint(step)
    finally:
        signal.signal(signal.SIGINT, old_handler)
    result = evaluate(loop.steps, loop.final_eval_episodes)
    run.log(loop.steps, "final_eval", {k: v for k, v in result.items() if not isinstance(v, list)})
    run.write_eval(result)
    return result


def algo_config_files(algo: str, dataset_name: str, user_config: str | None, obs: str | None = None) -> list:
    """configs/<algo>.yaml, then configs/<algo>-<task>.yaml for the dataset's task if shipped
    (e.g. omar-medium), then configs/<algo>-po.yaml under a partially observed scheme (po,
    po-independent, po-leader: MOMA-PPO's memory), then the user's --config."""
    from offmarl.config import CONFIG_DIR

    files = []
    base = CONFIG_DIR / f"{algo}.yaml"
    if base.exists():
        files.append(base)
    parts = dataset_name.split("-")
    # every contiguous run of the name's parts, shortest (most general) first, so that e.g.
    # ant-medium-replay loads omar-medium.yaml, then omar-medium-replay.yaml over it
    runs = ["-".join(parts[i:i + n]) for n in range(1, len(parts) + 1) for i in range(len(parts) - n + 1)]
    for part in runs:
        cand = CONFIG_DIR / f"{algo}-{part}.yaml"
        if cand.exists() and cand not in files:
            files.append(cand)
    if obs and obs.startswith("po"):
        cand = CONFIG_DIR / f"{algo}-po.yaml"
        if cand.exists():
            files.append(cand)
    if user_config:
        files.append(user_config)
    return files


def train_from_options(dataset: str, algo: str = "moma-ppo", obs: str | None = None, config: str | None = None,
                       overrides: list[str] | None = None, steps: int | None = None, seed: int = 0,
                       device: str = "auto", out: str = "runs", resume: str | None = None, env: str | None = None,
                       extra: dict[str, Any] | None = None, progress: bool = True, log=print) -> dict[str, Any]:
    """What ``offmarl train`` does: resolve the dataset, build the config, create or reopen the
    run directory, train, evaluate. ``extra`` holds algorithm-specific CLI options already in
    dotted form (e.g. {"world_model_path": ...})."""
    from offmarl.algos import algo_module
    from offmarl.config import build_config, from_dict, parse_overrides, to_dict
    from offmarl.data import registry
    from offmarl.errors import OffmarlError
    from offmarl.runs import RunDir, resolve_device, seed_everything

    dev = resolve_device(device)
    if resume:
        run = RunDir.open(resume)
        saved = run.config
        algo, dataset, obs, seed = saved["algo"], saved["dataset"], saved["obs"], saved["seed"]
        env = saved.get("env")
        mod = algo_module(algo)
        cfg = from_dict(mod.Config, saved["config"])
        log(f"resuming {run.path}")
    else:
        mod = algo_module(algo)
        ov = parse_overrides(overrides)
        if steps is not None:
            ov.setdefault("loop", {})["steps"] = int(steps)
        for key, value in (extra or {}).items():
            node = ov
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        cfg = build_config(mod.Config, algo_config_files(algo, Path(dataset).stem, config, obs), ov)
    ds = registry.load(dataset, env=env, obs=obs, log=log)
    check = getattr(mod, "check_dataset", None)
    if check is not None:
        check(ds, cfg)
    if getattr(mod, "DISCRETE_OK", True) is False and ds.meta.discrete:
        raise OffmarlError(f"{algo} needs continuous actions; {ds.meta.name or dataset} has discrete actions")
    if getattr(mod, "CONTINUOUS_OK", True) is False and not ds.meta.discrete:
        raise OffmarlError(f"{algo} needs discrete actions; {ds.meta.name or dataset} has continuous actions")
    if not resume:
        resolved = {"algo": algo, "dataset": dataset, "obs": ds.meta.obs_scheme, "env": env or ds.meta.env,
                    "seed": seed, "device": str(dev), "dataset_checksum": ds.checksum(),
                    "dataset_transitions": len(ds), "config": to_dict(cfg)}
        run = RunDir.create(Path(out), algo, dataset, seed, resolved)
        log(f"run directory: {run.path}")
    seed_everything(seed)
    algorithm = mod.Algorithm(ds, cfg, dev, seed, log=log) if _takes_log(mod.Algorithm) else mod.Algorithm(ds, cfg, dev, seed)
    try:
        result = train(algorithm, run, cfg.loop, ds.meta, ds.meta.env, ds.meta.obs_scheme, seed, dev,
                       resume=bool(resume), progress=progress)
    finally:
        run.close()
    result["run_dir"] = str(run.path)
    return result


def load_trained(run_dir: str, checkpoint: str = "best", device: str = "auto", log=print, policy_only: bool = True):
    """Rebuild the algorithm of a run directory and load a checkpoint; returns (algo, dataset, run, name).
    ``policy_only``: build only what acting needs where the algorithm allows it (MOMA-PPO skips
    its world model); False rebuilds everything (e.g. to roll the run's world model)."""
    from offmarl.algos import algo_module
    from offmarl.config import from_dict
    from offmarl.data import registry
    from offmarl.runs import RunDir, resolve_device

    dev = resolve_device(device)
    run = RunDir.open(run_dir)
    saved = run.config
    if saved.get("kind") == "online":  # offmarl online: no dataset, the policy acts in the run's map
        from types import SimpleNamespace

        from offmarl.algos import online

        algo = online.Algorithm.for_evaluation(None, from_dict(online.Config, saved["config"]), dev, saved["seed"],
                                               log=log)
        name = checkpoint if run.has_checkpoint(checkpoint) else "latest"
        algo.load_state_dict(run.load_checkpoint(name, map_location=dev)["algo"])
        meta = SimpleNamespace(env=saved["env"], obs_scheme="local", ref_min_return=None, ref_max_return=None,
                               n_agents=algo.spec.n_agents)
        return algo, SimpleNamespace(meta=meta), run, name
    mod = algo_module(saved["algo"])
    cfg = from_dict(mod.Config, saved["config"])
    ds = registry.load(saved["dataset"], env=saved.get("env"), obs=saved["obs"], log=log)
    if policy_only and hasattr(mod.Algorithm, "for_evaluation"):  # e.g. MOMA-PPO: skip the world model
        algo = mod.Algorithm.for_evaluation(ds, cfg, dev, saved["seed"], log=log)
    else:
        algo = (mod.Algorithm(ds, cfg, dev, saved["seed"], log=log) if _takes_log(mod.Algorithm)
                else mod.Algorithm(ds, cfg, dev, saved["seed"]))
    name = checkpoint if run.has_checkpoint(checkpoint) else "latest"
    algo.load_state_dict(run.load_checkpoint(name, map_location=dev)["algo"])
    return algo, ds, run, name


def evaluate_runs(run_dirs: list[str], episodes: int = 10, checkpoint: str = "best", device: str = "auto",
                  seed: int = 12345, cross_play: bool = False, log=print) -> dict[str, Any]:
    """Evaluate each run's policy; with ``cross_play`` also every assignment of agents to runs
    that mixes runs (agent i plays the policy of run assignment[i])."""
    import itertools

    from offmarl.evaluation import CrossPlayPolicy
    from offmarl.runs import resolve_device

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


def _takes_log(cls) -> bool:
    import inspect

    return "log" in inspect.signature(cls.__init__).parameters


def online_loop_config(cfg) -> LoopConfig:
    """The loop's settings for an online run (offmarl/algos/online.py): its steps are iterations of
    ``cfg.iteration_steps`` env steps; evaluation and checkpoints every ``loop.eval_every`` env steps."""
    per = cfg.iteration_steps
    every = max(1, round(cfg.loop.eval_every / per))
    return LoopConfig(steps=cfg.iterations, eval_every=every, eval_episodes=cfg.loop.eval_episodes,
                      final_eval_episodes=cfg.loop.final_eval_episodes, eval_envs=cfg.loop.eval_envs, log_every=1,
                      checkpoint_every=every)


def resolve_online_config(algo: str, map_name: str, backend: str, config: str | None, overrides: list[str] | None,
                          steps: int | None):
    """online.Config: dataclass defaults <- block ``map-<map>`` of configs/online.yaml <- ``--config``
    (a block of configs/online.yaml or a YAML file) <- ``--set`` / ``--steps`` / --algo --map --backend.
    Returns (config, names of the applied blocks)."""
    import difflib

    from offmarl.algos import online
    from offmarl.config import CONFIG_DIR, ConfigError, merge_into, parse_overrides, read_yaml

    blocks_file = CONFIG_DIR / "online.yaml"
    own = read_yaml(blocks_file) if blocks_file.exists() else {}
    layers = []
    if f"map-{map_name}" in own:
        layers.append((f"online.yaml:map-{map_name}", own[f"map-{map_name}"]))
    if config:
        if config in own:
            layers.append((f"online.yaml:{config}", own[config]))
        elif Path(config).is_file():
            layers.append((config, read_yaml(Path(config))))
        else:
            close = difflib.get_close_matches(config, list(own), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"--config {config!r} is neither a YAML file nor a block of configs/online.yaml "
                              f"(blocks: {', '.join(own)}).{hint}")
    ov = parse_overrides(overrides)
    ov.update({"algo": algo, "map": map_name, "backend": backend})
    if steps is not None:
        ov.setdefault("loop", {})["env_steps"] = int(steps)
    cfg = online.Config(algo=algo, map=map_name, backend=backend)
    for name, data in layers:
        try:
            cfg = merge_into(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None
    cfg = merge_into(cfg, ov)
    cfg.__post_init__()
    return cfg, [name for name, _ in layers]


def online_from_options(map_name: str, algo: str = "mag", backend: str = "smax", config: str | None = None,
                        overrides: list[str] | None = None, steps: int | None = None, seed: int = 0,
                        device: str = "auto", out: str = "runs", resume: str | None = None, progress: bool = True,
                        log=print) -> dict[str, Any]:
    """What ``offmarl online`` does: check the map and backend, build the config, create or reopen
    the run directory, train online, evaluate (win rate over separate greedy episodes)."""
    from types import SimpleNamespace

    from offmarl.algos import online
    from offmarl.config import from_dict, to_dict
    from offmarl.envs.smac import check_online_map
    from offmarl.errors import OffmarlError
    from offmarl.runs import RunDir, resolve_device, seed_everything

    dev = resolve_device(device)
    if resume:
        run = RunDir.open(resume)
        saved = run.config
        if saved.get("kind") != "online":
            raise OffmarlError(f"{resume} is not an online run (made by `offmarl train`); resume it with "
                               "`offmarl train --resume`")
        cfg = from_dict(online.Config, saved["config"])
        seed = saved["seed"]
        log(f"resuming {run.path}")
    else:
        if algo not in online.ALGOS:
            raise OffmarlError(f"unknown online algorithm {algo!r}; choose one of: {', '.join(online.ALGOS)}")
        check_online_map(map_name, backend)
        cfg, blocks = resolve_online_config(algo, map_name, backend, config, overrides, steps)
        resolved = {"kind": "online", "algo": algo, "dataset": f"smac-{map_name}", "env": f"smac-{map_name}",
                    "obs": "local", "backend": backend, "seed": seed, "device": str(dev), "config_blocks": blocks,
                    "config": to_dict(cfg)}
        run = RunDir.create(Path(out), algo, f"smac-{map_name}", seed, resolved)
        log(f"run directory: {run.path}")
    seed_everything(seed)
    algorithm = online.Algorithm(None, cfg, dev, seed, log=log)
    meta = SimpleNamespace(ref_min_return=None, ref_max_return=None)
    try:
        result = train(algorithm, run, online_loop_config(cfg), meta, algorithm.env_name, "local", seed, dev,
                       resume=bool(resume), progress=progress)
    finally:
        run.close()
    result["run_dir"] = str(run.path)
    result["env_steps"] = algorithm.env_steps
    run.write_eval(result)
    return result
