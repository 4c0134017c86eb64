"""Fit time of the default world-model ensemble at ant-4x2's widths.

    python benchmarks/ensemble_speed.py --fit-rows 1000000 --fit-steps 1000 [--threads 1] [--devices cpu cuda]

times ``EnsembleWorldModel.fit`` (default EnsembleConfig, max_steps = --fit-steps, no early stop;
--fit-steps 0 = the default config with early stopping) on a synthetic problem of ant-4x2's widths
and prints seconds, ms per step, and the time the default max_steps would take.

The vectorised-vs-loop forward+backward comparison that used to live here is the ``ensemble``
section of benchmarks/device_suite.py (``--sections ensemble``).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from offmarl.worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel


def synthetic_ant(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A smooth random dynamics with ant-4x2's widths: state 27, 4 agents x 2 actions."""
    g = torch.Generator().manual_seed(seed)
    s_dim, n, a = 27, 4, 2
    w_s, w_a = torch.randn(s_dim, s_dim, generator=g) * 0.2, torch.randn(n * a, s_dim, generator=g) * 0.5
    states = torch.randn(rows, s_dim, generator=g)
    actions = torch.rand(rows, n, a, generator=g) * 2 - 1
    drive = states @ w_s + actions.flatten(1) @ w_a
    next_states = states + 0.05 * torch.tanh(drive) + 0.01 * torch.randn(rows, s_dim, generator=g)
    rewards = drive[:, 0] - 0.5 * actions.pow(2).sum((1, 2))
    return {"states": states, "actions": actions, "next_states": next_states, "rewards": rewards,
            "terminals": torch.zeros(rows, dtype=torch.bool)}


def bench_fit(rows: int, steps: int, device: torch.device) -> dict:
    t0 = time.perf_counter()
    data = synthetic_ant(rows)
    make_s = time.perf_counter() - t0
    default_steps = EnsembleConfig().max_steps
    # steps > 0: exactly that many steps (timing); steps == 0: the default config, early stopping included
    cfg = EnsembleConfig(max_steps=steps, patience=10**9) if steps > 0 else EnsembleConfig()
    model = EnsembleWorldModel(27, 2, 4, config=cfg)
    cpu0 = time.process_time()
    stats = model.fit(data, device=device)
    cpu_s = time.process_time() - cpu0  # wall >> cpu / threads means the machine was shared
    per_step = stats["seconds"] / stats["steps"]
    return {"device": str(device), "impl": "fit", "rows": rows, "steps": stats["steps"], "hidden": list(cfg.hidden),
            "members": cfg.members, "batch": cfg.batch_size, "data_seconds": round(make_s, 2),
            "fit_seconds": round(stats["seconds"], 2), "fit_cpu_seconds": round(cpu_s, 2),
            "cpu_ms_per_step": round(1e3 * cpu_s / stats["steps"], 2), "ms_per_step": round(1e3 * per_step, 2),
            "default_max_steps": default_steps, "stopped_early": stats["stopped_early"],
            "projected_minutes_at_max_steps": round(per_step * default_steps / 60, 1),
            "holdout_mse_mean": round(sum(stats["holdout_mse"]) / cfg.members, 4),
            "initial_holdout_mse_mean": round(sum(stats["initial_holdout_mse"]) / cfg.members, 4),
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", nargs="*", default=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    p.add_argument("--fit-rows", type=int, default=1_000_000, help="synthetic rows to fit on")
    p.add_argument("--fit-steps", type=int, default=1000, help="0 = default config with early stopping")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")
    for dev in args.devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print(json.dumps({"device": "cuda", "skipped": "no CUDA device"}))
            continue
        print(json.dumps(bench_fit(args.fit_rows, args.fit_steps, torch.device(dev))), flush=True)


if __name__ == "__main__":
    main()
