"""Time one MOMA-PPO rollout with and without the MAG planner, from a trained run.

    OFFMARL_NUM_THREADS=1 python benchmarks/planner_speed.py RUN_DIR [--repeats 3] [--threads 1]

RUN_DIR: an ``offmarl train --planner mag`` run (its world model, R_m, policy and rollout config
are loaded as ``offmarl evaluate`` loads them; nothing in the run is written). Each repeat draws the
same start states (``--seed``) and times, alternating: the plain rollout, the planned rollout with
large no-gradient CPU batches evaluated whole (``--no-chunks`` arm ``whole``), and the planned
rollout as offmarl runs it (``sliced``: ``offmarl.nn.functional.row_chunks``). Prints one JSON line
per arm with the minimum and median seconds and a checksum of the rollout's rewards (the two planned
arms must agree to the bit).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from offmarl.driver import load_trained
from offmarl.nn import functional
from offmarl.worldmodel.rollout import model_rollout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OFFMARL_NUM_THREADS", "0") or 0),
                   help="torch threads (default: OFFMARL_NUM_THREADS, else torch's default)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    algo, _, _, _ = load_trained(args.run_dir, device="cpu", policy_only=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if algo.planner is None:
        raise SystemExit(f"{args.run_dir} was not trained with --planner mag")
    done_fn = algo.env.terminated if algo.env.has_termination_rule else None
    default_rows = functional.CPU_CHUNK_ROWS

    def once(planner, rows: int) -> tuple[float, float]:
        functional.CPU_CHUNK_ROWS = rows
        gen = torch.Generator().manual_seed(args.seed)
        start = {"states": algo.dataset.sample(algo.cfg.rollout_batch, generator=gen)["states"]}
        t = time.perf_counter()
        batch, _ = model_rollout(algo.model, algo.mappo.policy, start, algo.env.observe, algo.rollout_cfg, algo.box,
                                 gen, done_fn=done_fn, gamma=algo.gamma, history=algo.k, planner=planner)
        return time.perf_counter() - t, float(batch["rewards"].double().sum())

    arms = {"plain": (None, default_rows), "whole": (algo.planner, 1 << 62), "sliced": (algo.planner, default_rows)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    sums: dict[str, float] = {}
    for _ in range(args.repeats):
        for arm, (planner, rows) in arms.items():
            sec, checksum = once(planner, rows)
            times[arm].append(sec)
            sums[arm] = checksum
    functional.CPU_CHUNK_ROWS = default_rows
    for arm in arms:
        print(json.dumps({"arm": arm, "threads": torch.get_num_threads(), "starts": algo.cfg.rollout_batch,
                          "horizon": algo.rollout_cfg.horizon, "min_s": round(min(times[arm]), 3),
                          "median_s": round(statistics.median(times[arm]), 3), "reward_sum": sums[arm]}))
    if sums["whole"] != sums["sliced"]:
        print(json.dumps({"warning": "sliced and whole planned rollouts differ", "whole": sums["whole"],
                          "sliced": sums["sliced"]}))


if __name__ == "__main__":
    main()
