"""Train every algorithm on a MuJoCo dataset under several observation schemes and seeds, and
print the results table (the MOMA-PPO paper's reacher / ant tables, REFERENCE.md §1.1).

    python benchmarks/offline_table.py --dataset reacher-expert-mix --obs fo po-independent po-leader \
        --algos iql ma-iql ibc itd3bc matd3bc icql omar --steps 20000 --seeds 0 1 2
    python benchmarks/offline_table.py --dataset reacher-expert-mix --table   # print the table only

Each run is exactly ``offmarl train --dataset D --algo A --obs O --seed S --steps N`` (configs
as the CLI resolves them; ``--steps`` omitted = the config's budget; ``--set`` passes
overrides to every run), written under ``--out``. One JSON line per finished run is appended
to ``<out>/results.jsonl``; runs already there are skipped, so the script resumes after an
interruption. Centralised IQL acts on the global state, so it is run with ``fo`` only.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ALGOS = ["iql", "ma-iql", "ibc", "itd3bc", "matd3bc", "icql", "omar", "moma-ppo"]
NAMES = {"iql": "IQL", "ma-iql": "MA-IQL", "ibc": "IBC", "itd3bc": "ITD3+BC", "matd3bc": "MATD3+BC",
         "icql": "ICQL", "omar": "OMAR", "moma-ppo": "MOMA-PPO"}


def _key(r: dict) -> tuple:
    return r["dataset"], r["algo"], r["obs"], r["seed"], r["steps"]


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict], dataset: str) -> str:
    cells: dict[tuple, list[float]] = defaultdict(list)
    steps: dict[tuple, set] = defaultdict(set)
    for r in rows:
        if r["dataset"] == dataset:
            cells[(r["obs"], r["algo"])].append(r["normalized_score"])
            steps[(r["obs"], r["algo"])].add(r["steps"])
    obs_list = sorted({o for o, _ in cells}, key=lambda o: ["fo", "po", "po-independent", "po-leader"].index(o)
                      if o in ["fo", "po", "po-independent", "po-leader"] else 9)
    algos = [a for a in ALGOS if any((o, a) in cells for o in obs_list)]
    out = ["| obs | " + " | ".join(NAMES[a] for a in algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for o in obs_list:
        parts = []
        for a in algos:
            v = cells.get((o, a))
            if not v:
                parts.append("–")
                continue
            s = f"{np.mean(v):.2f} ± {np.std(v):.2f}"
            parts.append(s + (f" [{len(v)}]" if len(v) != 3 else ""))
        out.append(f"| {o} | " + " | ".join(parts) + " |")
    budgets = sorted({(a, tuple(sorted(s))) for (o, a), s in steps.items()})
    out.append("")
    out.append("Updates per run: " + ", ".join(f"{NAMES[a]} {'/'.join(f'{x:,}' for x in s)}" for a, s in budgets) + ".")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--obs", nargs="+", default=["fo"])
    p.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="updates (PPO iterations for moma-ppo) per run")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="benchmarks/results/offline")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", action="store_true", help="only print the table of what is in results.jsonl")
    args = p.parse_args()

    import os

    import torch

    from offmarl.driver import train_from_options
    from offmarl.errors import OffmarlError

    out = Path(args.out)
    results_path = out / "results.jsonl"
    if not args.table:
        torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))
        out.mkdir(parents=True, exist_ok=True)
        for obs in args.obs:
            for algo in args.algos:
                if algo == "iql" and obs != "fo":
                    continue
                for seed in args.seeds:
                    done = {_key(r) for r in read_results(results_path)}
                    key = (args.dataset, algo, obs, seed, args.steps)
                    if key in done:
                        continue
                    t0 = time.perf_counter()
                    try:
                        res = train_from_options(args.dataset, algo=algo, obs=obs, overrides=args.overrides,
                                                 steps=args.steps, seed=seed, device=args.device,
                                                 out=str(out / "runs"), log=lambda *a, **k: None)
                    except OffmarlError as exc:  # finished runs stay in results.jsonl
                        raise SystemExit(f"offline_table: {algo} / {obs} / seed {seed}: {exc}") from None
                    row = {"dataset": args.dataset, "algo": algo, "obs": obs, "seed": seed, "steps": args.steps,
                           "overrides": args.overrides, "normalized_score": res["normalized_score"],
                           "return_mean": res["return_mean"], "return_std": res["return_std"],
                           "seconds": round(time.perf_counter() - t0, 1), "run_dir": res["run_dir"]}
                    print(json.dumps(row), flush=True)
                    with results_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    print(table(read_results(results_path), args.dataset))


if __name__ == "__main__":
    main()
