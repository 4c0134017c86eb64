"""`offmarl sweep`: algorithms x datasets x observation schemes x seeds on Ray, with a live table."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from offmarl.cli.common import console

_STYLE = {"done": "green", "skipped": "green", "failed": "red", "running": "yellow", "pending": "dim"}


def _table(states) -> Table:
    t = Table(title="offmarl sweep")
    for col in ("trial", "status", "step", "score", "run directory"):
        t.add_column(col)
    for st in states:
        score = "-" if st.score is None else f"{st.score:.3f}"
        t.add_row(st.trial.name, f"[{_STYLE.get(st.status, '')}]{st.status}", str(st.step or "-"), score,
                  st.run_dir.name if st.run_dir else "-")
    return t


def sweep(
    ctx: typer.Context,
    algo: list[str] = typer.Option(..., "--algo", help="Algorithms (repeat or space-separate: --algo iql ma-iql)."),
    dataset: list[str] = typer.Option(..., "--dataset", help="Dataset names or .hdf5 files."),
    obs: list[str] = typer.Option(None, "--obs", help="Observation schemes (default: each dataset's)."),
    seeds: str = typer.Option("0-4", "--seeds", help="Seeds: a range 0-4 or a list 0,3,7."),
    set_: list[str] = typer.Option(None, "--set", help="Config override for every trial: --set loop.steps=2000."),
    config: str = typer.Option(None, "--config", help="Extra YAML config for every trial."),
    address: str = typer.Option(None, "--address", help="Join this Ray cluster (e.g. auto or HOST:6379); "
                                "default: a local Ray bounded by this machine's cores."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", min=0.0, help="GPUs Ray reserves per trial."),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", min=0.0, help="CPUs Ray reserves per trial "
                                         "(also the trial's torch threads)."),
    num_cpus: int = typer.Option(None, "--num-cpus", min=1, help="Local Ray only: CPUs it may use (default: all)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (inside each trial)."),
    out: Path = typer.Option(..., "--out", help="Sweep folder: trials/<algo>__<dataset>__<obs>__s<seed>/<run dir>."),
):
    """Train every algorithm x dataset x obs x seed as ordinary run directories, in parallel on
    Ray. Re-running the same command skips finished trials and resumes interrupted ones; a
    failed trial is reported and does not stop the others.

    Example: offmarl sweep --algo moma-ppo iql ma-iql ibc --dataset coordination-neutral
    coordination-unfavorable --seeds 0-4 --out sweeps/coord

    Then: offmarl report sweeps/coord --out docs/results/coordination
    """
    from offmarl.errors import OffmarlError
    from offmarl.report import command_line
    from offmarl.sweep import SweepConfig, parse_seeds, run_sweep, summary

    # `--algo a b c`: Click gives the option its first value and leaves b c as extra arguments, so
    # the lists are read from the command line itself (the registration allows extra arguments).
    lists = {flag: _values_after(sys.argv, flag) for flag in ("--algo", "--dataset", "--obs")}
    stray = [a for a in ctx.args if not any(a in v for v in lists.values())]
    if stray:
        raise OffmarlError(f"offmarl sweep: unexpected argument(s) {' '.join(stray)}")
    algo, dataset, obs = (lists[f] or v for f, v in (("--algo", algo), ("--dataset", dataset), ("--obs", obs)))
    cfg = SweepConfig(algos=_split(algo), datasets=_split(dataset), obs=_split(obs) or None, seeds=parse_seeds(seeds),
                      out=out, overrides=list(set_ or []), config=config, address=address,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, num_cpus=num_cpus, device=device,
                      command=command_line())
    # Ctrl-C, and SIGTERM from a scheduler or `kill`, stop the sweep: running trainings checkpoint
    # and the next run resumes them (a shell's background jobs start with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if console.is_terminal:
        with Live(_table([]), console=console, refresh_per_second=1, transient=False) as live:
            states = run_sweep(cfg, on_update=lambda sts: live.update(_table(sts)))
    else:  # a pipe or a log file: a live table shows nothing until the end, so one line per finished trial
        states = run_sweep(cfg, on_update=_PlainLines())
        console.print(_table(states))
    for st in states:
        if st.status == "failed":
            console.print(f"[red]failed[/] {st.trial.name}:\n{st.error}")
    counts = summary(states)
    console.print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f"; report: offmarl report {out} "
                                                                             "--out REPORT_DIR")
    if counts.get("failed"):
        raise typer.Exit(1)


class _PlainLines:
    """``on_update`` without a terminal: ``done iql__coordination-neutral__fo__s0  score 1.000  runs/...``
    once per trial when it finishes (or is found finished, or fails)."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, states) -> None:
        for st in states:
            if st.status in ("done", "skipped", "failed") and st.trial.name not in self.seen:
                self.seen.add(st.trial.name)
                score = "-" if st.score is None else f"{st.score:.3f}"
                where = st.run_dir if st.run_dir else "-"
                console.print(f"{st.status} {st.trial.name}  score {score}  {where}", highlight=False, markup=False)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _values_after(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` on the command line: ``--algo a b --algo c`` -> [a, b, c]."""
    out, take = [], False
    for tok in argv[1:]:
        if tok.startswith("-"):
            take = tok == flag
            if tok.startswith(flag + "="):
                out.append(tok.split("=", 1)[1])
            continue
        if take:
            out.append(tok)
    return out


def _split(values: list[str] | None) -> list[str]:
    """--algo iql ma-iql arrives as one value per flag in Typer; accept spaces and commas too."""
    return [v for raw in (values or []) for v in raw.replace(",", " ").split()]
