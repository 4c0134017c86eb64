"""The one training loop every algorithm runs in (MOMA-PPO and the offline baselines).

An algorithm module in offmarl/algos/ provides ``Config`` (a dataclass whose ``loop`` field is a
``LoopConfig``), optionally ``check_dataset(dataset, cfg)`` (raises ``OffmarlError`` for data the
algorithm cannot train on), and ``Algorithm``, which satisfies the ``Algorithm`` protocol below:

    Algorithm(dataset, cfg, device, seed, log=print)    build everything training needs
    Algorithm.for_evaluation(dataset, cfg, device, seed, log=print)
                                                         build only what acting needs (then
                                                         ``load_state_dict`` restores it)
    .update(step: int) -> dict[str, float | Tensor]      one training step (a gradient step for the
                                                         baselines, one rollout+PPO iteration for MOMA-PPO)
    .policy                                              has act(...) for evaluation (evaluation.py)
    .state_dict() / .load_state_dict(d)                  everything needed to continue bit-for-bit
    .generators: dict[str, torch.Generator]              saved and restored with the checkpoint

``train`` does the rest: metrics (jsonl + TensorBoard), periodic evaluation through the
``evaluate`` callable the caller builds (offmarl/driver.py evaluates in the real environment),
atomic checkpoints (latest/best), Ctrl-C leaving a valid checkpoint, and resuming. It knows
nothing about datasets, environments or the terminal: progress goes to a ``Progress`` object the
caller passes (cli/progress.py draws a bar).
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

import torch

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


class Algorithm(Protocol):
    """What ``train`` and the driver need from an algorithm (see the module docstring)."""

    policy: Any
    generators: dict[str, torch.Generator]

    def __init__(self, dataset, cfg, device, seed: int, log: Callable[[str], None] = print) -> None: ...

    @classmethod
    def for_evaluation(cls, dataset, cfg, device, seed: int, log: Callable[[str], None] = print) -> Algorithm: ...

    def update(self, step: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class BuildsWhole:
    """Default ``for_evaluation`` for algorithms whose acting parts cost no more than the whole
    (the offline baselines): build the algorithm as for training."""

    @classmethod
    def for_evaluation(cls, dataset, cfg, device, seed: int, log: Callable[[str], None] = print):
        return cls(dataset, cfg, device, seed, log=log)


class Progress(Protocol):
    """Receives the loop's progress; ``update`` is called after every step with the latest
    evaluation score (None before the first)."""

    def start(self, name: str, total: int, completed: int) -> None: ...

    def update(self, step: int, score: float | None) -> None: ...

    def close(self) -> None: ...


Evaluate = Callable[[int], dict[str, Any]]
"""``evaluate(episodes) -> results``; results hold a float ``"score"`` (the driver: the normalised
return where the dataset has reference returns, else the mean return), used for the progress
display and the best checkpoint, plus whatever the caller wants logged (lists are not logged)."""


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


def _loggable(res: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's metrics row: no lists (per-episode returns) and no ``score``, which only
    repeats one of the caller's own keys."""
    return {k: v for k, v in res.items() if not isinstance(v, list) and k != "score"}


def train(algo: Algorithm, run: RunDir, loop: LoopConfig, evaluate: Evaluate, device: torch.device | str = "cpu",
          resume: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Train ``algo`` for ``loop.steps`` steps in ``run``; returns the final evaluation
    (``evaluate(loop.final_eval_episodes)`` without its ``score`` key), also written to the run's
    eval.json. ``resume`` continues from the run's latest checkpoint (loaded onto ``device``)."""
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

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    last_score = None
    # metrics since the last multiple of log_every (saved with checkpoints so that a resumed run
    # averages exactly the same steps into each row as an uninterrupted one)
    window: list[dict[str, Any]] = list(resumed_window) if resume and start else []
    t_last = time.perf_counter()
    if progress is not None:
        progress.start(run.path.name, loop.steps, start)
    try:
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
                res = evaluate(loop.eval_episodes)
                score = res["score"]
                run.log(step, "eval", _loggable(res))
                last_score = score
                if score > best:
                    best = score
                    run.save_checkpoint({"algo": algo.state_dict(), "step": step, "score": score}, "best")
                checkpoint(step)
            elif step % loop.checkpoint_every == 0:
                checkpoint(step)
            if progress is not None:
                progress.update(step, last_score)
            if interrupted["flag"]:
                checkpoint(step)
                raise KeyboardInterrupt
        checkpoint(step)
    finally:
        signal.signal(signal.SIGINT, old_handler)
        if progress is not None:
            progress.close()
    result = {k: v for k, v in evaluate(loop.final_eval_episodes).items() if k != "score"}
    run.log(loop.steps, "final_eval", _loggable(result))
    run.write_eval(result)
    return result
