"""Forward+backward throughput: vectorised ensemble (EnsembleMLP, one baddbmm per layer) vs a
Python loop over E separate nn.Sequential members of identical sizes.

    python benchmarks/ensemble_speed.py [--devices cpu cuda] [--threads 2] [--seconds 3]

Prints one JSON line per (device, hidden, implementation) and one with the speed-up ratio.
Widths are ant-4x2's: input = state 27 + joint action 8, output = 2 * (27 + 1) + 1.

    python benchmarks/ensemble_speed.py --fit-rows 1000000 --fit-steps 1000 [--threads 1]

instead times ``EnsembleWorldModel.fit`` (default EnsembleConfig, max_steps = --fit-steps, no early
stop; --fit-steps 0 = the default config with early stopping) on a synthetic problem of ant-4x2's widths and prints seconds, ms per step, and the time
the default max_steps would take.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from offmarl.nn.layers import EnsembleMLP, mlp

IN_DIM, OUT_DIM = 27 + 8, 2 * (27 + 1) + 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step, device: torch.device, seconds: float) -> tuple[float, int, float]:
    """(steps per wall second, steps, process CPU ms per step) of ``step()`` over about ``seconds``
    after a short warm-up. CPU ms x threads ~ wall ms on an idle machine; more wall means sharing."""
    for _ in range(3):
        step()
    _sync(device)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    _sync(device)
    return n / (time.perf_counter() - t0), n, 1e3 * (time.process_time() - c0) / n


def bench(device: torch.device, members: int, batch: int, hidden: tuple[int, ...], seconds: float) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(members, batch, IN_DIM, generator=g).to(device)
    y = torch.randn(members, batch, OUT_DIM, generator=g).to(device)

    vec = EnsembleMLP(members, IN_DIM, hidden, OUT_DIM).to(device)
    loop = nn.ModuleList(mlp(IN_DIM, hidden, OUT_DIM) for _ in range(members)).to(device)

    def vec_step():
        vec.zero_grad(set_to_none=True)
        ((vec(x) - y) ** 2).mean().backward()

    def loop_step():
        loop.zero_grad(set_to_none=True)
        out = torch.stack([m(x[i]) for i, m in enumerate(loop)])
        ((out - y) ** 2).mean().backward()

    rows = []
    rates = {}
    for name, fn in (("vectorised", vec_step), ("python_loop", loop_step)):
        rate, n, cpu_ms = throughput(fn, device, seconds)
        rates[name] = rate
        rows.append({"device": str(device), "impl": name, "members": members, "batch": batch,
                     "hidden": list(hidden), "steps_per_s": round(rate, 1),
                     "samples_per_s": round(rate * members * batch), "ms_per_step": round(1e3 / rate, 3),
                     "cpu_ms_per_step": round(cpu_ms, 3), "n": n})
    rows.append({"device": str(device), "impl": "ratio", "members": members, "batch": batch, "hidden": list(hidden),
                 "vectorised_over_loop": round(rates["vectorised"] / rates["python_loop"], 2)})
    return rows


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
    from offmarl.worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

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
    p.add_argument("--members", type=int, default=7)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--fit-rows", type=int, default=0, help="time a fit on this many synthetic rows instead")
    p.add_argument("--fit-steps", type=int, default=1000, help="0 = default config with early stopping")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_rows:
        for dev in args.devices:
            if dev == "cuda" and not torch.cuda.is_available():
                continue
            print(json.dumps(bench_fit(args.fit_rows, args.fit_steps, torch.device(dev))), flush=True)
        return
    for dev in args.devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print(json.dumps({"device": "cuda", "skipped": "no CUDA device"}))
            continue
        device = torch.device(dev)
        for hidden in ((200,) * 4, (1024,) * 4):
            for row in bench(device, args.members, args.batch, hidden, args.seconds):
                row["threads"] = torch.get_num_threads()
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
