"""Gradient updates per second of every offline MARL baseline at ant-4x2's sizes.

    python benchmarks/baselines_speed.py [--devices cpu cuda] [--threads 2] [--seconds 5]
                                         [--algos iql ma-iql ...] [--batch 256]

Data: a synthetic continuous dataset with ant-4x2's widths (N = 4 agents, observation 27 (fo),
state 27, action 2 per agent, 20k transitions of 1000-step episodes); the algorithms run their
default configs (2x256 networks, batch 256), sampling on the device. Prints one JSON line per
(device, algorithm): updates_per_s, ms_per_update. ``update`` returns its metrics as tensors,
so nothing waits for the device inside the timed loop except the final synchronisation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from offmarl.data.dataset import DatasetMeta, MultiAgentDataset
from offmarl.driver import algorithm_module as algo_module

ALGOS = ["iql", "ma-iql", "ibc", "itd3bc", "matd3bc", "icql", "omar"]
N_AGENTS, OBS_DIM, ACT_DIM, STATE_DIM = 4, 27, 2, 27


def ant_sized_dataset(transitions: int = 20_000, seed: int = 0) -> MultiAgentDataset:
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(transitions, STATE_DIM)).astype(np.float32)
    next_states = rng.normal(size=(transitions, STATE_DIM)).astype(np.float32)
    ends = (np.arange(transitions) + 1) % 1000 == 0
    meta = DatasetMeta(env="ant-4x2", obs_scheme="fo", n_agents=N_AGENTS, obs_dims=(OBS_DIM,) * N_AGENTS,
                       action_dims=(ACT_DIM,) * N_AGENTS, state_dim=STATE_DIM, discrete=False, name="ant-synthetic")
    return MultiAgentDataset(
        states=states, next_states=next_states,
        observations=np.repeat(states[:, None], N_AGENTS, 1),
        next_observations=np.repeat(next_states[:, None], N_AGENTS, 1),
        actions=rng.uniform(-1, 1, (transitions, N_AGENTS, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=transitions).astype(np.float32),
        terminals=np.zeros(transitions, bool), timeouts=ends, meta=meta)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, ds: MultiAgentDataset, device: torch.device, batch: int, seconds: float) -> dict:
    mod = algo_module(name)
    cfg = dataclasses.replace(mod.Config(), batch_size=batch)
    algo = mod.Algorithm(ds, cfg, device, 0)
    step = 0
    for _ in range(10):  # warm-up (allocator, kernels, lazy tensor cache of the dataset)
        algo.update(step)
        step += 1
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        algo.update(step)
        step += 1
        n += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"bench": "baselines_speed", "algo": name, "device": str(device), "threads": torch.get_num_threads(),
            "n_agents": N_AGENTS, "obs_dim": OBS_DIM, "action_dim": ACT_DIM, "batch": batch, "hidden": list(cfg.hidden),
            "updates": n, "updates_per_s": round(n / elapsed, 1), "ms_per_update": round(1000 * elapsed / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--algos", nargs="+", default=ALGOS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per algorithm")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = ant_sized_dataset()
    for dev in args.devices:
        for name in args.algos:
            print(json.dumps(bench(name, ds, torch.device(dev), args.batch, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
