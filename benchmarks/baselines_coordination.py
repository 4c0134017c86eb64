"""Every baseline on the three coordination datasets (REFERENCE.md §1.1, MOMA-PPO table).

    python benchmarks/baselines_coordination.py [--seeds 0 1 2] [--steps N] [--algos iql ...]
                                                [--datasets favorable neutral unfavorable]

Each run (moma-ppo included): the registry's recipe (P(right) per agent, 10,000 one-step episodes, dataset seed =
run seed), configs/<algo>.yaml + configs/<algo>-coordination.yaml, ``steps`` updates (default:
the config's), then 10 deterministic evaluation episodes in the real game. Prints one JSON line
per run and one summary line (mean and std over seeds) per (dataset, algorithm).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch

from offmarl.data.generate import generate_coordination
from offmarl.driver import algorithm_module as algo_module
from offmarl.driver import resolve_config
from offmarl.evaluation import evaluate_policy

ALGOS = ["iql", "ma-iql", "ibc", "itd3bc", "matd3bc", "icql", "omar", "moma-ppo"]
P_RIGHT = {"favorable": (0.8, 0.8), "neutral": (0.5, 0.5), "unfavorable": (0.8, 0.2)}  # offmarl/data/registry.py
PAPER = {"favorable": {"iql": 1.0, "ma-iql": 1.0, "ibc": 1.0, "moma-ppo": 1.0},
         "neutral": {"iql": 1.0, "ma-iql": 0.9, "ibc": 0.55, "moma-ppo": 1.0},
         "unfavorable": {"iql": 1.0, "ma-iql": 0.0, "ibc": 0.0, "moma-ppo": 1.0}}  # MOMA-PPO slides (REFERENCE §1.1)


CACHE = tempfile.mkdtemp(prefix="offmarl-coord-wm-")


def run_one(algo: str, kind: str, seed: int, steps: int | None) -> dict:
    mod = algo_module(algo)
    cfg, _ = resolve_config(algo, f"coordination-{kind}", None, None, [], None, {})  # the coordination block
    n_steps = steps or cfg.loop.steps
    ds = generate_coordination(P_RIGHT[kind], 10_000, seed, meta_fields={
        "name": f"coordination-{kind}", "ref_min_return": 0.0, "ref_max_return": 1.0})
    t0 = time.perf_counter()
    if algo == "moma-ppo":  # world models cached per (dataset, seed) in a throw-away folder
        cfg = dataclasses.replace(cfg, cache_dir=CACHE)
        learner = mod.Algorithm(ds, cfg, "cpu", seed, log=lambda *a, **k: None)
    else:
        learner = mod.Algorithm(ds, cfg, "cpu", seed)
    for step in range(n_steps):
        learner.update(step)
    res = evaluate_policy(learner.policy, "coordination", "fo", episodes=10, seed=seed * 1000 + 10_000,
                          n_envs=10, ref_min=0.0, ref_max=1.0)
    actions, _ = learner.policy.act(torch.ones(1, 2, 1), None, torch.ones(1, 2, 2, dtype=torch.bool))
    return {"bench": "baselines_coordination", "dataset": f"coordination-{kind}", "algo": algo, "seed": seed,
            "steps": n_steps, "score": res["normalised_mean"], "joint_action": actions[0].tolist(),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=ALGOS)
    parser.add_argument("--datasets", nargs="+", default=list(P_RIGHT), choices=list(P_RIGHT))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="updates per run (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for kind in args.datasets:
        for algo in args.algos:
            scores = []
            for seed in args.seeds:
                row = run_one(algo, kind, seed, args.steps)
                scores.append(row["score"])
                print(json.dumps(row), flush=True)
            print(json.dumps({"bench": "baselines_coordination", "summary": True, "dataset": f"coordination-{kind}",
                              "algo": algo, "seeds": len(scores), "score_mean": float(np.mean(scores)),
                              "score_std": float(np.std(scores)), "paper": PAPER[kind].get(algo)}), flush=True)


if __name__ == "__main__":
    main()
