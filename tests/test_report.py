"""offmarl report: statistics against hand-computed values, tables, plots, bad inputs.

The run directories are written with offmarl.runs.RunDir (the writer `offmarl train` uses), with
chosen final scores so that every statistic can be checked by hand; tests/test_sweep.py makes a
report from real training runs.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from offmarl.report import ReportError, find_runs, iqm, iqm_ci, paper_references, write_report
from offmarl.runs import RunDir


def make_run(root, algo, dataset, seed, score, obs="fo", steps=300, episodes=32, curve=(0.1, 0.5)):
    run = RunDir.create(root, algo, dataset, seed, {"algo": algo, "dataset": dataset, "obs": obs, "seed": seed,
                                                    "config": {"loop": {"steps": steps}}})
    for i, s in enumerate(curve):
        run.log((i + 1) * steps // (len(curve) + 1), "eval", {"return_mean": s, "normalised_mean": s})
    run.log(steps, "final_eval", {"return_mean": score, "normalised_mean": score})
    run.write_eval({"return_mean": score, "return_std": 0.0, "normalised_mean": score, "episodes": episodes})
    run.close()
    return run.path


def test_iqm_by_hand():
    # 8 runs: the middle 50% are 0.2, 0.3, 0.4, 0.5 -> 0.35 (the outliers 0.0, 0.1, 0.9, 1.0 cut)
    assert iqm([1.0, 0.0, 0.4, 0.9, 0.1, 0.3, 0.5, 0.2]) == pytest.approx(0.35)
    # 5 runs: scipy's trim_mean cuts int(0.25 * 5) = 1 run from each end -> mean(0.2, 0.4, 0.6)
    assert iqm([0.0, 0.2, 0.4, 0.6, 1.0]) == pytest.approx(0.4)
    point, lo, hi = iqm_ci(np.array([[1.0], [0.0], [0.4], [0.9], [0.1], [0.3], [0.5], [0.2]]))
    assert point == pytest.approx(0.35) and 0.0 <= lo < 0.35 < hi <= 1.0
    assert iqm_ci(np.full((5, 1), 0.7)) == pytest.approx((0.7, 0.7, 0.7))
    # stratified: the bootstrap resamples runs within each task, so a task whose runs agree adds no spread
    p2, lo2, _ = iqm_ci(np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]))
    assert p2 == pytest.approx(iqm([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])) and lo2 >= 0.5


def test_bootstrap_matches_rliable():
    """Our vectorised stratified bootstrap gives rliable's interval (Monte-Carlo tolerance)."""
    from rliable import library, metrics

    scores = np.array([[0.1, 0.9], [0.4, 0.7], [0.35, 1.0], [0.8, 0.2], [0.55, 0.6]])
    _, ci = library.get_interval_estimates({"a": scores}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                           reps=4000, random_state=np.random.RandomState(1))
    point, lo, hi = iqm_ci(scores, reps=4000)
    assert point == pytest.approx(metrics.aggregate_iqm(scores))
    assert lo == pytest.approx(ci["a"][0, 0], abs=0.03) and hi == pytest.approx(ci["a"][1, 0], abs=0.03)


def test_report_tables_and_plots(tmp_path):
    runs = tmp_path / "runs"
    scores = {"ma-iql": [1.0, 0.0, 1.0, 1.0, 1.0], "moma-ppo": [1.0, 1.0, 1.0, 1.0, 1.0]}
    for algo, ss in scores.items():
        for seed, s in enumerate(ss):
            make_run(runs, algo, "coordination-neutral", seed, s)
    (runs / "unfinished-run").mkdir()
    (runs / "unfinished-run" / "config.yaml").write_text("algo: iql\n")
    out = tmp_path / "report"
    res = write_report([runs], out)
    assert res["runs"] == 10 and res["cells"] == 2 and len(res["unfinished"]) == 1
    rows = {r["algo"]: r for r in csv.DictReader((out / "results.csv").read_text().splitlines())}
    mi = rows["ma-iql"]
    assert float(mi["iqm"]) == pytest.approx(1.0)  # trim 1 each side of (0, 1, 1, 1, 1) -> 1
    assert float(mi["mean"]) == pytest.approx(0.8) and float(mi["std"]) == pytest.approx(0.4)
    assert mi["seeds"] == "5" and mi["seed_list"] == "0 1 2 3 4" and mi["eval_episodes"] == "32"
    assert float(mi["ci_low"]) <= 1.0 and float(mi["paper_mean"]) == 0.9 and mi["paper_source"] == "moma-ppo"
    md = (out / "results.md").read_text()
    assert "| coordination-neutral | fo | ma-iql | normalised | 1.00 [" in md
    assert "0.80 ± 0.40 | 5 (0 1 2 3 4) | 32 | 300 |" in md
    assert "0.90 ± 0.10 [moma-ppo]" in md and "Barde et al." in md and "Unfinished runs" in md
    assert "offmarl report" in md
    # the paper's layout: obs rows x algorithm columns, ours then the paper's
    assert "| obs | ma-iql | moma-ppo |" in md
    assert "| fo, ours | 1.00 [" in md and "(5) |" in md and "| fo, paper | 0.90 ± 0.10 | 1.00 ± 0.00 |" in md
    for png in ("curves-coordination-neutral-fo.png", "profile.png"):
        assert (out / png).stat().st_size > 5000, png
    agg = {r["algo"]: r for r in csv.DictReader((out / "aggregate.csv").read_text().splitlines())}
    assert float(agg["moma-ppo"]["iqm"]) == 1.0 and agg["moma-ppo"]["cells"] == "1"


def test_report_cli_and_errors(tmp_path):
    make_run(tmp_path / "r", "iql", "coordination-neutral", 0, 0.5)
    proc = subprocess.run([sys.executable, "-m", "offmarl.cli.main", "report", str(tmp_path / "r"), "--out",
                           str(tmp_path / "rep"), "--no-plots"], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep" / "results.md").read_text().count("| coordination-neutral |") == 1
    with pytest.raises(ReportError, match="no finished run"):
        find_runs([tmp_path / "rep"])
    with pytest.raises(ReportError, match="no such directory"):
        find_runs([tmp_path / "nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {a: cite}\nresults:\n  - {dataset: x, obs: fo, algo: iql, mean: 1, source: b}\n")
    with pytest.raises(ReportError, match=r"results\[0\] names source 'b'"):
        paper_references(bad)


def test_report_counts_a_repeated_seed_once(tmp_path):
    """The same command run twice (two runs of seed 0) is one seed: a one-line warning names the
    left-out run, and the IQM, its CI and the seed count use the newest run only."""
    import os

    old = make_run(tmp_path / "r", "iql", "coordination-neutral", 0, 0.0)
    os.utime(old / "eval.json", (1, 1))  # older than the repeat below
    make_run(tmp_path / "r", "iql", "coordination-neutral", 0, 1.0)
    make_run(tmp_path / "r", "iql", "coordination-neutral", 1, 1.0)
    proc = subprocess.run([sys.executable, "-m", "offmarl.cli.main", "report", str(tmp_path / "r"), "--out",
                           str(tmp_path / "rep"), "--no-plots"], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 run(s) repeat" in warnings[0] and str(old) in warnings[0]
    (row,) = csv.DictReader((tmp_path / "rep" / "results.csv").read_text().splitlines())
    assert row["seeds"] == "2" and row["seed_list"] == "0 1" and float(row["mean"]) == 1.0
    assert float(row["ci_low"]) == 1.0 and row["unit"] == "normalised"
    assert "Repeated runs" in (tmp_path / "rep" / "results.md").read_text()
