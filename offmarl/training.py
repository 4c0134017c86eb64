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
from typing import Any

import numpy as np

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


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def train(algo, run: RunDir, loop: LoopConfig, dataset_meta, env_name: str, obs_scheme: str, seed: int,
          device, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``algo`` for ``loop.steps`` steps in ``run``; returns the final evaluation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    start, best = 0, -float("inf")
    if resume and run.has_checkpoint("latest"):
        ckpt = run.load_checkpoint("latest", map_location=device)
        algo.load_state_dict(ckpt["algo"])
        set_rng_state(ckpt["rng"], algo.generators)
        start, best = ckpt["step"], ckpt.get("best", best)
        run.truncate_metrics(start)

    def checkpoint(step: int) -> None:
        run.save_checkpoint({"algo": algo.state_dict(), "rng": rng_state(algo.generators), "step": step, "best": best})

    def evaluate(step: int, episodes: int) -> dict[str, Any]:
        return evaluate_policy(algo.policy, env_name, obs_scheme, episodes=episodes, seed=seed * 1000 + 10_000,
                               n_envs=loop.eval_envs, device=device,
                               ref_min=dataset_meta.ref_min_return, ref_max=dataset_meta.ref_max_return)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    last_score = "-"
    window: list[dict[str, float]] = []
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
                    t_last, window = now, []
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
