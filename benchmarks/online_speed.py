"""Speed of the online engine (docs/benchmarks.md, "Online SMAC"), one JSON line per measurement.

    collector_scan   SMAX copies stepped by one jitted lax.scan over the vmapped step, uniformly
                     random available actions (no Python per step): env steps/s
    collector_policy the online loop's collection: MA-PPO's torch actor + one vmapped SMAX call per
                     step (the policy is torch, so a scan does not fit): env steps/s
    iteration        wall-clock per 1k env steps of mag / mamba / mappo with the default (CPU) preset,
                     and the MAG planner's share of it

Usage: OFFMARL_NUM_THREADS=1 python benchmarks/online_speed.py [--map 2s3z] [--iterations 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from offmarl.algos.online import OnlineAlgorithm, OnlineConfig
from offmarl.envs.smac import SmaxVecEnv


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def collector_scan(map_name: str, n_envs: int, steps: int) -> None:
    env = SmaxVecEnv(map_name, n_envs, seed=0)
    env.reset()
    env.random_rollout(steps)  # compile (or load from the persistent cache)
    t, c = time.perf_counter(), time.process_time()
    out = env.random_rollout(steps)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    # wall-clock rate, and the rate per CPU-second of this process (steadier on a shared machine)
    emit(bench="collector_scan", map=map_name, n_envs=n_envs, env_steps=out["env_steps"],
         steps_per_s=round(out["env_steps"] / dt, 1), steps_per_cpu_s=round(out["env_steps"] / dc, 1),
         load_1min=round(os.getloadavg()[0], 2))


def iteration_cost(map_name: str, algo: str, iterations: int) -> OnlineAlgorithm:
    cfg = OnlineConfig(algo=algo, map=map_name)
    a = OnlineAlgorithm(None, cfg, "cpu", seed=0)
    step = 0
    while a.env_steps < cfg.prefill_steps + cfg.iteration_steps:  # past the prefill: full iterations
        a.update(step)
        step += 1
    rows = [a.update(step + i) for i in range(iterations)]
    total = sum(r["iteration_seconds"] for r in rows)
    per_1k = total / (iterations * cfg.iteration_steps) * 1000
    row = {"bench": "iteration", "map": map_name, "algo": algo, "iterations": iterations,
           "env_steps_per_iteration": cfg.iteration_steps, "seconds_per_1k_env_steps": round(per_1k, 2),
           "collect_share": round(sum(r["collect_seconds"] for r in rows) / total, 3)}
    if algo != "mappo":
        row["model_share"] = round(sum(r["model_seconds"] for r in rows) / total, 3)
        row["imagine_share"] = round(sum(r["imagine_seconds"] for r in rows) / total, 3)
    if algo == "mag":
        row["planner_share"] = round(sum(r["planner_seconds"] for r in rows) / total, 3)
    emit(**row)
    return a


def collector_policy(a: OnlineAlgorithm, repeats: int = 3) -> None:
    t = time.perf_counter()
    before = a.env_steps
    for _ in range(repeats):
        a._collect_into_replay()
    dt = time.perf_counter() - t
    emit(bench="collector_policy", map=a.cfg.map, n_envs=a.cfg.n_envs, env_steps=a.env_steps - before,
         steps_per_s=round((a.env_steps - before) / dt, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--map", default="2s3z")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--algos", default="mappo,mamba,mag")
    p.add_argument("--scan-envs", default="64,256")
    p.add_argument("--scan-only", action="store_true", help="only the collector_scan rows")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")
    emit(bench="machine", cpus=os.cpu_count(), load_1min=round(os.getloadavg()[0], 2),
         torch_threads=torch.get_num_threads())
    for n in (int(x) for x in args.scan_envs.split(",")):
        collector_scan(args.map, n, 200)
    if args.scan_only:
        return
    for algo in args.algos.split(","):
        a = iteration_cost(args.map, algo, args.iterations)
        if algo == "mamba":
            collector_policy(a)


if __name__ == "__main__":
    main()
