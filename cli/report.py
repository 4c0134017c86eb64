"""`offmarl report`: tables (IQM + 95% CIs, mean ± std) and plots from run directories or sweeps."""
from __future__ import annotations

from pathlib import Path

import typer

from offmarl.cli.common import console


def report(
    dirs: list[Path] = typer.Argument(..., help="Run directories, sweep folders, or folders above them."),
    out: Path = typer.Option(..., "--out", help="Report folder (results.md, results.csv, aggregate.csv, PNGs)."),
    references: Path = typer.Option(None, "--references", help="YAML of paper numbers with citations "
                                    "(default: offmarl/data/paper_results.yaml)."),
    plots: bool = typer.Option(True, help="Write the learning-curve and performance-profile PNGs."),
):
    """Summarise finished runs per algorithm x dataset x observation scheme: interquartile mean
    with a 95% stratified-bootstrap CI over seeds (rliable), mean ± std, seeds and evaluation
    episodes per cell, paper numbers beside them; learning curves and a performance profile.

    Example: offmarl report sweeps/coord --out docs/results/coordination
    """
    from offmarl.report import command_line, write_report

    res = write_report([str(d) for d in dirs], out, refs_file=references, plots=plots, command=command_line())
    console.print((out / "results.md").read_text(), markup=False, highlight=False)
    msg = f"{res['runs']} runs in {res['cells']} cells -> {', '.join(str(p) for p in res['files'])}"
    if res["unfinished"]:
        msg += f"; {len(res['unfinished'])} unfinished runs left out"
    console.print(msg)
    if res["duplicates"]:
        console.print(f"warning: {len(res['duplicates'])} run(s) repeat an (algo, dataset, obs, seed) already counted "
                      f"and are left out (the newest counts once): {' '.join(res['duplicates'])}", highlight=False)
