"""Learning curves of online runs (offmarl online): win rate and return of the greedy and the
stochastic evaluations against env steps, per map and algorithm, mean and range over seeds -> a PNG
(win rate on top, return below; solid greedy, dashed stochastic) and a markdown table (final agents,
then the mean return at every evaluation).

Usage: python benchmarks/online_curves.py RUNS_DIR [--png online-curves.png]
                                          [--md online-curves.md]
Every run directory under RUNS_DIR made by `offmarl online` is read (config.yaml,
metrics.jsonl, eval.json); unfinished runs are plotted up to their last evaluation and marked.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml


def read_run(path: Path) -> dict | None:
    cfg_file = path / "config.yaml"
    if not cfg_file.exists():
        return None
    cfg = yaml.safe_load(cfg_file.read_text())
    if cfg.get("kind") != "online":
        return None
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (path / "metrics.jsonl").exists() else []
    env_steps = {r["step"]: r["env_steps"] for r in rows if r["phase"] == "train" and "env_steps" in r}
    # (env steps, greedy win, greedy return, stochastic win, stochastic return); runs made before the
    # stochastic evaluation have None there
    curve = [(r.get("env_steps", env_steps.get(r["step"], 0)), r["win_rate"], r["return_mean"],
              r.get("stochastic_win_rate"), r.get("stochastic_return")) for r in rows
             if r["phase"] in ("eval", "final_eval") and "win_rate" in r]
    final = json.loads((path / "eval.json").read_text()) if (path / "eval.json").exists() else None
    loop = cfg["config"]["loop"]
    return {"path": path, "algo": cfg["algo"], "map": cfg["env"].removeprefix("smac-"), "seed": cfg["seed"],
            "budget": loop.get("steps", loop.get("env_steps")), "curve": curve, "final": final}


def _ms(xs) -> str:
    xs = np.array([x for x in xs if x is not None], dtype=float)
    return "-" if len(xs) == 0 else f"{xs.mean():.2f} ± {xs.std():.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description="online learning curves -> PNG + markdown table",
                                epilog="example: python benchmarks/online_curves.py runs/online-curves "
                                       "--png curves.png --md table.md")
    p.add_argument("runs", type=Path)
    p.add_argument("--png", type=Path, default=Path("online-curves.png"))
    p.add_argument("--md", type=Path, default=Path("online-curves.md"))
    args = p.parse_args()
    runs = [r for r in (read_run(d) for d in sorted(args.runs.rglob("*")) if d.is_dir()) if r]
    if not runs:
        raise SystemExit(f"no online run directories under {args.runs}")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["map"], r["algo"])].append(r)
    maps = sorted({m for m, _ in groups})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(maps), figsize=(5 * len(maps), 6.6), squeeze=False)
    for col, m in enumerate(maps):
        for row, (k, label, top) in enumerate(((1, "win rate", 1.02), (2, "return (SMAX, <= ~2)", 2.05))):
            ax = axes[row][col]
            for c, algo in enumerate(("mag", "mamba", "mappo")):
                rs = [r for r in groups.get((m, algo), []) if r["curve"]]  # runs with at least one evaluation
                if not rs:
                    continue
                n = min(len(r["curve"]) for r in rs)  # the evaluations every run has reached
                x = np.array([r["curve"][i][0] for i in range(n) for r in rs[:1]])
                for kk, style, mode in ((k, "-", "greedy"), (k + 2, "--", "stochastic")):
                    if any(r["curve"][i][kk] is None for r in rs for i in range(n)):
                        continue
                    y = np.array([[r["curve"][i][kk] for i in range(n)] for r in rs])
                    ax.plot(x, y.mean(0), style, color=f"C{c}", marker="o", markersize=3,
                            label=f"{algo}, {mode} ({len(rs)} seeds)")
                    ax.fill_between(x, y.min(0), y.max(0), color=f"C{c}", alpha=0.15)
            ax.set_title(f"SMAX {m} (not SC2)")
            ax.set_xlabel("env steps")
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, top)
            ax.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)

    lines = ["| map | algo | seeds | env steps | greedy win rate | greedy return | stochastic win rate | "
             "stochastic return |", "|---|---|---|---|---|---|---|---|"]
    for (m, algo), rs in sorted(groups.items()):
        done = [r for r in rs if r["final"]]
        if not done:
            lines.append(f"| {m} | {algo} | {len(rs)} (unfinished) | - | - | - | - | - |")
            continue
        steps = sorted({r["final"].get("env_steps", r["budget"]) for r in done})
        f = [r["final"] for r in done]
        lines.append(f"| {m} | {algo} | {len(done)} | {'/'.join(map(str, steps))} | "
                     f"{_ms([x['win_rate'] for x in f])} | {_ms([x['return_mean'] for x in f])} | "
                     f"{_ms([x.get('stochastic_win_rate') for x in f])} | "
                     f"{_ms([x.get('stochastic_return') for x in f])} |")
    lines += ["", "Return at every evaluation, greedy / stochastic (mean ± std over seeds):", ""]
    for (m, algo), rs in sorted(groups.items()):
        rs = [r for r in rs if r["curve"]]
        if not rs:
            continue
        n = min(len(r["curve"]) for r in rs)
        cells = [f"{rs[0]['curve'][i][0]:.0f}: {_ms([r['curve'][i][2] for r in rs])} / "
                 f"{_ms([r['curve'][i][4] for r in rs])}" for i in range(n)]
        lines.append(f"- {m} {algo} ({len(rs)} seeds): " + "; ".join(cells))
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.png} and {args.md}")


if __name__ == "__main__":
    main()
