"""Holdout MSE of the ensemble world model against epochs and wall time, for choosing fit defaults.

    python benchmarks/worldmodel_fit.py --dataset $OFFMARL_DATA_DIR/ant-medium-v1.hdf5 --rows 100000 \
        --early-stopping epochs --patience 5 --batch 256 --lr 1e-3 --threads 1 --out fit.json

Fits through ``load_or_fit`` (so the model lands in the cache and the other benchmarks / a
training run with the same config reuse it) and records every evaluation: epoch, step, best
holdout MSE over members, wall seconds and process CPU seconds (CPU x threads ~ wall on an idle
machine; wall much larger than CPU means the machine is shared). Prints one JSON line per
evaluation and writes the whole curve to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from offmarl.data.registry import load
from offmarl.worldmodel.ensemble import EnsembleConfig, load_or_fit


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name or file")
    p.add_argument("--rows", type=int, default=None, help="fit on the first whole episodes holding this many rows")
    p.add_argument("--early-stopping", default="epochs", choices=["steps", "epochs"])
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--activation", default="relu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(Path.home() / ".offmarl" / "cache" / "worldmodels"))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")
    ds = load(a.dataset, generate=False)
    if a.rows:
        ds = ds.subset(a.rows)
    cfg = EnsembleConfig(early_stopping=a.early_stopping, patience=a.patience, max_epochs=a.max_epochs,
                         max_steps=a.max_steps, batch_size=a.batch, lr=a.lr, activation=a.activation)
    curve: list[dict] = []
    t0, c0 = time.perf_counter(), time.process_time()

    def progress(pr):
        row = {"epoch": round(pr["epoch"], 2), "step": pr["step"], "best_holdout_mse": min(pr["best_holdout_mse"]),
               "mean_holdout_mse": sum(pr["holdout_mse"]) / len(pr["holdout_mse"]),
               "worst_dim": pr["worst_dim"], "wall_s": round(time.perf_counter() - t0, 1),
               "cpu_s": round(time.process_time() - c0, 1)}
        curve.append(row)
        print(json.dumps(row), flush=True)

    model, info = load_or_fit(ds, cfg, a.cache, progress=progress)
    res = {"dataset": a.dataset, "rows": len(ds), "config": cfg.to_dict(), "threads": a.threads,
           "load_avg": os.getloadavg()[0], "cached": info["cached"], "path": info["path"],
           "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
           "elite_holdout_mse": [float(x) for x in model.holdout_mse[model.elite_idx]]
           if hasattr(model, "holdout_mse") else None, "curve": curve}
    print(json.dumps({k: v for k, v in res.items() if k != "curve"}))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
