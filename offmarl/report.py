"""Results tables and plots from run directories: ``offmarl report DIR... --out REPORT_DIR``.

The protocol is OG-MARL's / rliable's (github.com/instadeepai/og-marl; Agarwal et al., "Deep RL at the Edge of
the Statistical Precipice", NeurIPS 2021): per algorithm x dataset x observation scheme, the
final normalised score of every seed, summarised by the interquartile mean (IQM: the mean of
the middle 50% of runs, ``scipy.stats.trim_mean(x, 0.25)``) with a 95% stratified-bootstrap
confidence interval (rliable's StratifiedBootstrap with the percentile method, vectorised here;
tests/test_report.py checks it against rliable.library.get_interval_estimates), the mean ±
population std beside it, the number of seeds and of evaluation episodes behind each score.

A run's score is eval.json's ``normalised_mean`` (the return when the dataset has no reference
returns): the FINAL policy evaluated after training — no selection of a best checkpoint on
evaluation returns. Learning curves come from the ``eval`` rows of metrics.jsonl plus the final
evaluation; their band is the 95% bootstrap CI of the IQM over seeds at each point.

Written to REPORT_DIR:
    results.md, results.csv      one row per (dataset, obs, algorithm) cell
    aggregate.csv                per algorithm, IQM over every run of every cell (stratified by cell)
    curves-<dataset>-<obs>.png   score vs training steps and vs wall-clock minutes
    profile.png                  rliable performance profile (fraction of runs with score > tau)
Paper numbers (``paper_references``) come from a YAML file with a citation per source
(offmarl/data/paper_results.yaml by default) and print beside ours.

rliable, scipy and matplotlib are imported inside the functions that use them (lazy): together they
take seconds to import, and `offmarl sweep` imports this module only to name the report command.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from offmarl.errors import OffmarlError
from offmarl.paths import cache_dir, cache_dir_chosen

CI_REPS = 2000          # bootstrap replications (rliable's performance-profile default)
CI_SEED = 0             # fixed RandomState: the same runs give the same CIs
OBS_ORDER = ("fo", "po", "po-independent", "po-leader", "local")

PAPER_RESULTS = Path(__file__).resolve().parent / "data" / "paper_results.yaml"  # published numbers, cited


class ReportError(OffmarlError):
    pass


@dataclass
class Run:
    """One finished run directory (config.yaml + eval.json [+ metrics.jsonl])."""
    path: Path
    algo: str
    dataset: str
    obs: str
    seed: int
    steps: int | None
    score: float
    episodes: int
    normalised: bool
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, wall seconds, score)


def _score(res: dict[str, Any]) -> tuple[float, bool]:
    if res.get("normalised_mean") is not None:
        return float(res["normalised_mean"]), True
    return float(res["return_mean"]), False


def read_run(path: Path) -> Run | None:
    """A run directory -> Run; None when it has no eval.json yet (unfinished)."""
    cfg_file, eval_file = path / "config.yaml", path / "eval.json"
    if not eval_file.exists():
        return None
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
        res = json.loads(eval_file.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ReportError(f"{path}: config.yaml or eval.json cannot be read ({e}); is the run directory "
                          "damaged?") from None
    missing = [k for k in ("algo", "dataset", "obs", "seed") if k not in (cfg or {})]
    if missing or "return_mean" not in res:
        what = f"config.yaml lacks {', '.join(missing)}" if missing else "eval.json lacks 'return_mean'"
        raise ReportError(f"{path}: {what}; not a run directory written by `offmarl train`")
    score, normalised = _score(res)
    steps = ((cfg.get("config") or {}).get("loop") or {}).get("steps")
    run = Run(path=path, algo=cfg["algo"], dataset=Path(str(cfg["dataset"])).stem, obs=str(cfg["obs"]),
              seed=int(cfg["seed"]), steps=steps, score=score, episodes=int(res.get("episodes", 0)),
              normalised=normalised)
    run.curve = _curve(path / "metrics.jsonl", steps, score)
    return run


def _curve(metrics: Path, steps: int | None, final: float) -> list[tuple[int, float, float]]:
    if not metrics.exists():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    t0 = rows[0]["time"]  # the first logged row: the run's start, to within one log interval
    curve = []
    for r in rows:
        if r.get("phase") in ("eval", "final_eval") and ("normalised_mean" in r or "return_mean" in r):
            s, _ = _score(r)
            curve.append((int(r["step"]), float(r["time"] - t0), s))
    return curve


def find_runs(paths: list[str | Path]) -> tuple[list[Run], list[Path]]:
    """Run directories under ``paths`` (each a run directory, a sweep, or any folder above them)
    -> (finished runs, unfinished run directories)."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"{p}: no such directory")
        dirs += [p] if (p / "config.yaml").exists() else sorted(c.parent for c in p.rglob("config.yaml"))
    runs, unfinished = [], []
    for d in dict.fromkeys(dirs):
        r = read_run(d)
        (runs.append(r) if r is not None else unfinished.append(d))
    if not runs:
        where = ", ".join(map(str, paths))
        raise ReportError(f"no finished run (a directory with config.yaml and eval.json) under {where}")
    return runs, unfinished


def drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Path]]:
    """One run per (algo, dataset, obs, seed): the same command run twice is one seed, not two (it
    would count twice in the IQM and its CI). The newest (latest eval.json) is kept; returns (kept
    runs, the run directories left out)."""
    newest: dict[tuple[str, str, str, int], Run] = {}
    for r in sorted(runs, key=lambda r: ((r.path / "eval.json").stat().st_mtime, str(r.path))):
        newest[(r.algo, r.dataset, r.obs, r.seed)] = r
    kept = [r for r in runs if newest[(r.algo, r.dataset, r.obs, r.seed)] is r]
    return kept, [r.path for r in runs if newest[(r.algo, r.dataset, r.obs, r.seed)] is not r]


# ---------------------------------------------------------------------------- statistics
def iqm(x) -> float:
    """Interquartile mean: ``scipy.stats.trim_mean(x, 0.25)`` (rliable.metrics.aggregate_iqm)."""
    from rliable import metrics  # lazy (rliable, scipy, matplotlib: seconds to import; see the module doc)

    return float(metrics.aggregate_iqm(np.asarray(x, dtype=np.float64)))


def _iqm_rows(x: np.ndarray) -> np.ndarray:
    """IQM of every row of x [B, n] (the same trim as rliable's aggregate_iqm) -> [B]."""
    from scipy.stats import trim_mean

    return trim_mean(x, 0.25, axis=1)


def stratified_bootstrap(scores: np.ndarray, reps: int = CI_REPS, seed: int = CI_SEED) -> np.ndarray:
    """scores [R runs, T tasks, ...] -> [reps, R, T, ...]: runs resampled with replacement
    independently within each task (rliable's StratifiedBootstrap, vectorised: rliable's own loops
    over ``arch`` replications take ~2 s per cell here, this takes milliseconds)."""
    r, t = scores.shape[:2]
    idx = np.random.default_rng(seed).integers(0, r, size=(reps, r, t))
    return scores[idx, np.arange(t)[None, None, :]]


def iqm_ci(scores: np.ndarray, reps: int = CI_REPS) -> tuple[float, float, float]:
    """scores [runs, tasks] -> (IQM over all runs and tasks, 95% CI low, high): percentile
    interval of the IQM under the stratified bootstrap (rliable.library.get_interval_estimates)."""
    scores = np.asarray(scores, dtype=np.float64)
    boot = stratified_bootstrap(scores, reps).reshape(reps, -1)
    lo, hi = np.percentile(_iqm_rows(boot), [2.5, 97.5])
    return iqm(scores), float(lo), float(hi)


def _curve_band(curves: list[np.ndarray], reps: int = CI_REPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """curves: per seed, scores on a common grid [P] -> IQM [P] and its 95% CI bounds [P]."""
    arr = np.stack(curves)[:, None, :]                     # [runs, 1 task, P]
    boot = stratified_bootstrap(arr, reps)[:, :, 0, :]     # [reps, runs, P]
    per_point = np.stack([_iqm_rows(boot[..., j]) for j in range(arr.shape[-1])], axis=1)  # [reps, P]
    lo, hi = np.percentile(per_point, [2.5, 97.5], axis=0)
    return _iqm_rows(arr[:, 0, :].T), lo, hi


def performance_profile(scores: np.ndarray, taus: np.ndarray, reps: int = CI_REPS):
    """rliable's score distribution: fraction of runs (all tasks) with score > tau, and its 95%
    stratified-bootstrap CI. scores [R, T] -> (profile [K], ci [2, K])."""
    frac = lambda x: (x.reshape(x.shape[0], -1)[:, :, None] > taus[None, None, :]).mean(axis=1)
    boot = frac(stratified_bootstrap(scores, reps))
    return frac(scores[None])[0], np.percentile(boot, [2.5, 97.5], axis=0)


def paper_references(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Published numbers: [{dataset, obs, algo, mean, std?, source, citation, note?}]."""
    if path is None:
        path = PAPER_RESULTS
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"{path}: cannot read the paper references ({e})") from None
    sources = doc.get("sources", {}) if isinstance(doc, dict) else {}
    out = []
    for i, row in enumerate(doc.get("results", []) if isinstance(doc, dict) else []):
        missing = [k for k in ("dataset", "obs", "algo", "mean", "source") if k not in row]
        if missing or row["source"] not in sources:
            bad = f"lacks {', '.join(missing)}" if missing else f"names source {row['source']!r} not under 'sources'"
            raise ReportError(f"{path}: results[{i}] {bad}")
        out.append({**row, "citation": sources[row["source"]]})
    return out


@dataclass
class Cell:
    dataset: str
    obs: str
    algo: str
    runs: list[Run]

    @property
    def scores(self) -> np.ndarray:
        return np.array([r.score for r in sorted(self.runs, key=lambda r: r.seed)])


def group_cells(runs: list[Run]) -> list[Cell]:
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset, r.obs, r.algo)].append(r)
    order = lambda k: (k[0], OBS_ORDER.index(k[1]) if k[1] in OBS_ORDER else 99, k[1], k[2])
    return [Cell(*k, groups[k]) for k in sorted(groups, key=order)]


def cell_rows(cells: list[Cell], refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per cell: the statistics written to results.csv / results.md."""
    ref_by = {(r["dataset"], r["obs"], r["algo"]): r for r in refs}
    rows = []
    for c in cells:
        s = c.scores
        point, lo, hi = iqm_ci(s[:, None])
        ref = ref_by.get((c.dataset, c.obs, c.algo))
        episodes = sorted({r.episodes for r in c.runs})
        steps = sorted({r.steps for r in c.runs if r.steps is not None})
        rows.append({
            "dataset": c.dataset, "obs": c.obs, "algo": c.algo, "iqm": point, "ci_low": lo, "ci_high": hi,
            "mean": float(s.mean()), "std": float(s.std()), "seeds": len(s),
            "seed_list": " ".join(str(r.seed) for r in sorted(c.runs, key=lambda r: r.seed)),
            "eval_episodes": "/".join(map(str, episodes)), "steps": "/".join(map(str, steps)),
            "normalised": all(r.normalised for r in c.runs), "unit": _unit(c.runs),
            "paper_mean": None if ref is None else ref["mean"], "paper_std": None if ref is None else ref.get("std"),
            "paper_source": None if ref is None else ref["source"],
        })
    return rows


def aggregate_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per algorithm over its cells: IQM of all runs, CI by bootstrap stratified by cell (the
    rliable aggregate; runs per cell are cut to the smallest count so the matrix is square)."""
    by_algo: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in cells:  # normalised scores and raw returns (e.g. SMAX) are never pooled
        by_algo[(c.algo, _unit(c.runs))].append(c)
    rows = []
    for (algo, unit), cs in sorted(by_algo.items()):
        n = min(len(c.runs) for c in cs)
        mat = np.stack([c.scores[:n] for c in cs], axis=1)  # [runs, tasks]
        point, lo, hi = iqm_ci(mat)
        rows.append({"algo": algo, "unit": unit, "iqm": point, "ci_low": lo, "ci_high": hi, "cells": len(cs),
                     "runs_per_cell": n})
    return rows


def _unit(runs: list[Run]) -> str:
    """What a cell's scores are: ``normalised`` (D4RL-style normalised return) or ``return`` (raw)."""
    return "normalised" if all(r.normalised for r in runs) else "return"


# ---------------------------------------------------------------------------- writing
def _fmt(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def write_report(paths: list[str | Path], out: str | Path, refs_file: str | Path | None = None,
                 plots: bool = True, command: str | None = None) -> dict[str, Any]:
    """Read the runs under ``paths`` and write the report into ``out``; returns what was written."""
    _matplotlib_cache()
    runs, unfinished = find_runs(paths)
    runs, duplicates = drop_duplicates(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    refs = paper_references(refs_file)
    cells = group_cells(runs)
    rows = cell_rows(cells, refs)
    agg = aggregate_rows(cells)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out / "aggregate.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(agg[0]))
        w.writeheader()
        w.writerows(agg)
    written = [out / "results.md", out / "results.csv", out / "aggregate.csv"]
    if plots:
        written += plot_curves(cells, out) + plot_profile(cells, out)
    cmd = command or ("offmarl report " + " ".join(shlex.quote(str(p)) for p in paths)
                      + f" --out {shlex.quote(str(out))}")
    sweeps = []  # every command that trained trials in these folders (sweep.json: commands, or command)
    for f in (Path(p) / "sweep.json" for p in paths):
        if f.is_file():
            rec = json.loads(f.read_text())
            sweeps += [c for c in rec.get("commands") or [rec.get("command")] if c and c not in sweeps]
    (out / "results.md").write_text(_markdown(rows, agg, refs, unfinished, cmd, [p.name for p in written[3:]],
                                              sweeps, duplicates))
    return {"runs": len(runs), "unfinished": [str(p) for p in unfinished], "cells": len(cells), "files": written,
            "duplicates": [str(p) for p in duplicates]}


def _matplotlib_cache() -> None:
    """matplotlib's font cache under offmarl's cache folder ($OFFMARL_CACHE_DIR/matplotlib, else
    $OFFMARL_DATA_DIR/cache/matplotlib) when the user chose one, instead of ~/.cache and ~/.config;
    without those variables, or with MPLCONFIGDIR set, matplotlib's own choice stands. Must run
    before matplotlib is first imported (rliable imports it)."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    if cache_dir_chosen():
        os.environ["MPLCONFIGDIR"] = str(cache_dir("matplotlib"))


def _markdown(rows, agg, refs, unfinished, cmd, pngs, sweep_cmds, duplicates=()) -> str:
    used = {r["paper_source"] for r in rows if r["paper_source"]}
    lines = ["# Results", ""] + [f"Runs trained by `{c}`." for c in sweep_cmds] + [
        f"Produced by `{cmd}`.", "",
        ("Score: the final policy's normalised return (eval.json), no checkpoint selection on evaluation returns. "
         "IQM = interquartile mean over seeds with its 95% stratified-bootstrap CI (rliable, "
         f"{CI_REPS} replications); mean ± population std beside it; episodes = evaluation episodes per seed; "
         "steps = training steps per run (MOMA-PPO: iterations); score = normalised return, or the raw "
         "return where the environment has no reference returns (SMAX: at most ~2)."), "",
        "| dataset | obs | algorithm | score | IQM [95% CI] | mean ± std | seeds | episodes | steps | paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = "–" if r["paper_mean"] is None else (
            _fmt(r["paper_mean"]) + (f" ± {_fmt(r['paper_std'])}" if r["paper_std"] is not None else "")
            + f" [{r['paper_source']}]")
        lines.append(f"| {r['dataset']} | {r['obs']} | {r['algo']} | {r['unit']} | {_fmt(r['iqm'])} "
                     f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['mean'])} ± {_fmt(r['std'])} | "
                     f"{r['seeds']} ({r['seed_list']}) | {r['eval_episodes']} | {r['steps']} | {paper} |")
    lines += _pivot(rows)
    lines += ["", "Per algorithm, over all its cells (IQM of every run; CI stratified by cell):", "",
              "| algorithm | score | IQM [95% CI] | cells | runs per cell |", "|---|---|---|---|---|"]
    lines += [f"| {a['algo']} | {a['unit']} | {_fmt(a['iqm'])} [{_fmt(a['ci_low'])}, {_fmt(a['ci_high'])}] | "
              f"{a['cells']} | {a['runs_per_cell']} |" for a in agg]
    if used:
        cites = {r["source"]: r["citation"] for r in refs}
        lines += ["", "Paper numbers:"] + [f"- [{s}] {cites[s]}" for s in sorted(used)]
    if duplicates:
        lines += ["", f"Repeated runs of an (algorithm, dataset, obs, seed) already counted (the newest is used), "
                  f"not counted: {len(duplicates)}"]
        lines += [f"- {p}" for p in duplicates]
    if unfinished:
        lines += ["", f"Unfinished runs (no eval.json), not counted: {len(unfinished)}"]
        lines += [f"- {p}" for p in unfinished]
    if pngs:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in pngs)]
    return "\n".join(lines) + "\n"


def _pivot(rows: list[dict]) -> list[str]:
    """Per dataset, the paper's layout: one row per observation scheme (ours, then the paper's),
    one column per algorithm; a cell is IQM [95% CI] (the score alone for one seed) and its seeds."""
    out: list[str] = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset]
        algos = list(dict.fromkeys(r["algo"] for r in sub))
        cell = {(r["obs"], r["algo"]): r for r in sub}
        out += ["", f"{dataset}: IQM [95% CI] over seeds (a single seed's score alone) and (number of seeds); "
                "the paper's mean ± std below:", "",
                "| obs | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
        for obs in dict.fromkeys(r["obs"] for r in sub):
            ours, paper = [], []
            for a in algos:
                r = cell.get((obs, a))
                if r is None:
                    ours.append("–")
                    paper.append("–")
                    continue
                score = (f"{_fmt(r['iqm'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r["seeds"] > 1
                         else _fmt(r["mean"]))
                ours.append(f"{score} ({r['seeds']})")
                paper.append("–" if r["paper_mean"] is None else _fmt(r["paper_mean"]) + (
                    f" ± {_fmt(r['paper_std'])}" if r["paper_std"] is not None else ""))
            out.append(f"| {obs}, ours | " + " | ".join(ours) + " |")
            if any(p != "–" for p in paper):
                out.append(f"| {obs}, paper | " + " | ".join(paper) + " |")
    return out


def _grid_curves(runs: list[Run], wall: bool) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Each seed's curve on a common x grid: the shared evaluation steps, or 50 points in wall-clock
    minutes up to the shortest run (interpolated)."""
    curves = [np.array(r.curve) for r in runs if len(r.curve) >= 1]
    if not curves:
        return None
    if not wall:
        steps = sorted(set.intersection(*[set(c[:, 0].astype(int)) for c in curves]))
        if not steps:
            return None
        return np.array(steps), [np.array([c[c[:, 0] == s, 2][-1] for s in steps]) for c in curves]
    end = min(c[-1, 1] for c in curves) / 60
    grid = np.linspace(0, end, 50) if end > 0 else np.array([0.0])
    return grid, [np.interp(grid, c[:, 1] / 60, c[:, 2]) for c in curves]


def plot_curves(cells: list[Cell], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        by_task[(c.dataset, c.obs)].append(c)
    files = []
    for (dataset, obs), cs in by_task.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        drawn = False
        for c in cs:
            for ax, wall in zip(axes, (False, True)):
                grid = _grid_curves(c.runs, wall)
                if grid is None:
                    continue
                x, curves = grid
                mid, lo, hi = _curve_band(curves)
                (line,) = ax.plot(x, mid, label=f"{c.algo} (n={len(curves)})")
                ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        unit = "normalised score" if all(r.normalised for c in cs for r in c.runs) else "return"
        axes[0].set_xlabel("training steps (MOMA-PPO: iterations)")
        axes[1].set_xlabel("wall-clock minutes")
        for ax in axes:
            ax.set_ylabel(f"{unit} (IQM, 95% CI)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{dataset} ({obs})")
        fig.tight_layout()
        path = out / f"curves-{dataset}-{obs}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def plot_profile(cells: list[Cell], out: Path) -> list[Path]:
    """rliable performance profile over every normalised cell of each algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    by_algo: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if all(r.normalised for r in c.runs):
            by_algo[c.algo].append(c)
    if not by_algo:
        return []
    score_dict = {}
    for algo, cs in by_algo.items():
        n = min(len(c.runs) for c in cs)
        score_dict[algo] = np.stack([c.scores[:n] for c in cs], axis=1)
    allv = np.concatenate([v.ravel() for v in score_dict.values()])
    taus = np.linspace(min(0.0, allv.min()), max(1.0, allv.max()), 101)
    profiles, cis = {}, {}
    for algo, sc in score_dict.items():
        profiles[algo], cis[algo] = performance_profile(sc, taus)
    from matplotlib.lines import Line2D

    colors = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(profiles)}
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis, ax=ax, colors=colors,
                                         xlabel=r"normalised score ($\tau$)", ylabel=r"fraction of runs with "
                                                                                     r"score > $\tau$")
    ax.legend([Line2D([0], [0], color=c) for c in colors.values()], list(colors), fontsize=8, loc="lower left")
    fig.tight_layout()
    path = out / "profile.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def command_line() -> str:
    """This process's command line as the user would retype it (for the report page)."""
    return "offmarl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
