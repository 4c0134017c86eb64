"""Cost of the online engine per 1k env steps, two source trees side by side in one run
(docs/benchmarks.md, "Online SMAC: cost per 1k env steps").

For every (method, schedule) the trees are measured one after the other in fresh processes,
alternating, so both see the same machine load; each row gives CPU-seconds (steadier on a shared
machine) and wall-seconds per 1k env steps, counted over ``--window`` env steps after the prefill
and one warm-up iteration, and how many real episodes ended in the window (under MAMBA's schedule,
the number of updates).

Schedules:
    cpu     the defaults (the CPU preset: model_updates per 100-step iteration, 1 PPO round)
    mamba   MAMBA's schedule at the CPU preset's network sizes: an update per finished real
            episode with 60 model steps on batches of 40 sequences and 4 imagination + PPO rounds
            (Egorov & Shpilman, AAMAS 2022, Table 1; github.com/jbr-ai-labs/mamba)

    OFFMARL_NUM_THREADS=1 python benchmarks/online_cost.py --trees BEFORE_TREE,AFTER_TREE \\
        --names before,after --out online-cost.json
    python benchmarks/online_cost.py --table online-cost.json

A tree is the root of an offmarl checkout (put first on PYTHONPATH for its processes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SCHEDULES = {
    "cpu": {},
    "mamba": {"update_per": "episode", "model_updates": 60, "ppo_rounds": 4, "model.batch": 40},
}


def _set(cfg, key: str, value) -> None:
    obj = cfg
    *path, last = key.split(".")
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def worker(algo: str, schedule: str, window: int, map_name: str) -> dict:
    """One measurement in this process (the tree is whatever ``offmarl`` imports)."""
    import torch

    from offmarl.algos.online import OnlineAlgorithm, OnlineConfig
    torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))
    torch.set_flush_denormal(True)
    cfg = OnlineConfig(algo=algo, map=map_name)
    for k, v in SCHEDULES[schedule].items():  # mappo runs only the cpu schedule (``measure``)
        _set(cfg, k, v)
    a = OnlineAlgorithm(None, cfg, "cpu", seed=0, log=lambda *x, **y: None)
    step = 0
    while a.env_steps < cfg.prefill_steps:
        a.update(step)
        step += 1
    a.update(step)  # warm-up: the first full iteration (JIT compilation, allocator)
    step += 1
    start_steps, ep0, c0, t0 = a.env_steps, a.episodes, time.process_time(), time.perf_counter()
    while a.env_steps - start_steps < window:
        a.update(step)
        step += 1
    cpu, wall, n = time.process_time() - c0, time.perf_counter() - t0, a.env_steps - start_steps
    # episodes finished in the window: the number of updates under MAMBA's schedule
    return {"algo": algo, "schedule": schedule, "env_steps": n, "episodes": a.episodes - ep0,
            "cpu_s_per_1k": round(cpu / n * 1000, 1), "wall_s_per_1k": round(wall / n * 1000, 1),
            "load_1min": round(os.getloadavg()[0], 2)}


def measure(trees: list[str], names: list[str], algos: list[str], schedules: list[str], window: int,
            map_name: str, log=print) -> list[dict]:
    rows = []
    for schedule in schedules:
        for algo in algos:
            if algo == "mappo" and schedule != "cpu":
                continue  # no world model: its schedule is its own
            for tree, name in zip(trees, names):
                env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", algo, schedule,
                                      str(window), map_name], env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{name} {algo} {schedule} failed:\n{out.stderr[-2000:]}")
                row = {"tree": name, **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                log(json.dumps(row))
    return rows


def table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["tree"] for r in rows))
    head = "| method | schedule | " + " | ".join(f"{n}: CPU-s / wall-s per 1k env steps" for n in names) + " |"
    lines = [head, "|---|---|" + "---|" * len(names)]
    keys = list(dict.fromkeys((r["algo"], r["schedule"]) for r in rows))
    for algo, sched in keys:
        cells = []
        for n in names:
            r = next((r for r in rows if r["tree"] == n and r["algo"] == algo and r["schedule"] == sched), None)
            cells.append("-" if r is None else f"{r['cpu_s_per_1k']} / {r['wall_s_per_1k']}")
        lines.append(f"| {algo} | {sched} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", nargs=4, metavar=("ALGO", "SCHEDULE", "WINDOW", "MAP"), help=argparse.SUPPRESS)
    p.add_argument("--trees", default=".", help="comma-separated checkout roots (default: this one)")
    p.add_argument("--names", default=None, help="their names in the table (default: the paths)")
    p.add_argument("--algos", default="mappo,mamba,mag")
    p.add_argument("--schedules", default="cpu,mamba")
    p.add_argument("--window", type=int, default=1000, help="env steps measured per row (after the prefill)")
    p.add_argument("--map", default="2s3z")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--table", default=None, help="a JSON file of rows: print the markdown table (no run)")
    args = p.parse_args(argv)
    if args.worker:
        algo, sched, window, map_name = args.worker
        print(json.dumps(worker(algo, sched, int(window), map_name)), flush=True)
        return
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)))
        return
    trees = args.trees.split(",")
    names = args.names.split(",") if args.names else trees
    if len(names) != len(trees):
        raise SystemExit("--names needs one name per tree")
    rows = measure(trees, names, args.algos.split(","), args.schedules.split(","), args.window, args.map)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
