"""`offmarl online`: MAG / MAMBA / MA-PPO trained online on a SMAC map."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from offmarl.cli.common import console


class OnlineProgress:
    """The loop's progress (iterations) shown as env steps, latest win rate and updates/s; a plain
    line every 30 s when the output is not a terminal (a log file gets lines, not bar redraws)."""

    def __init__(self, steps_per_iteration: int, enabled: bool = True):
        self.k, self.enabled = steps_per_iteration, enabled
        self.bar, self.plain = None, False

    def start(self, name: str, total: int, completed: int) -> None:
        self.t0, self.first, self.total, self.last_line = time.perf_counter(), completed, total, 0.0
        if not self.enabled:
            return
        if not console.is_terminal:
            self.plain = True
            return
        # lazy: rich.progress loads only when a run starts, so `offmarl --help` stays light (cli/main.py)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.fields[env]} env steps"), TextColumn("win {task.fields[win]}"),
                            TextColumn("{task.fields[rate]} updates/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console)
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=completed, env=completed * self.k, win="-",
                                      rate="-")

    def update(self, step: int, score: float | None) -> None:
        now = time.perf_counter()
        rate = (step - self.first) / max(now - self.t0, 1e-9)
        if self.plain and (now - self.last_line >= 30 or step == self.total):
            self.last_line = now
            win = "-" if score is None else f"{score:.2f}"
            console.print(f"env steps {step * self.k}/{self.total * self.k}  win {win}  {rate:.2f} updates/s")
        if self.bar is None:
            return
        self.bar.update(self.task, completed=step, env=step * self.k, rate=f"{rate:.2f}",
                        win="-" if score is None else f"{score:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def online(
    map_name: str = typer.Option("2s3z", "--map", "-m", help="SMAC map (offmarl envs list; smac- prefix optional)."),
    backend: str = typer.Option("smax", "--backend", help="smax (JAX, default) | sc2 (needs StarCraft II)."),
    algo: str = typer.Option("mag", "--algo", help="mag (MAMBA + MAG planner) | mamba | mappo (model-free)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Environment steps (default 100000)."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything (env copies, networks, imagination)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    config: str = typer.Option(None, "--config", help="A block of configs/online.yaml (e.g. mamba-reference, "
                               "smoke) or a YAML file."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set planner.l=4 (repeatable)."),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent folder of the run directory."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this run directory."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Train agents online on a SMAC map: collect battles from SMAX copies stepped together,
    learn a MAMBA-style world model, train MA-PPO in imagination (mag: with the MAG planner), and
    evaluate greedy agents on separate episodes. Writes a run directory like `offmarl train`
    (config.yaml, metrics.jsonl, tb/, checkpoints/, eval.json with win_rate).

    SMAX (the default backend) is not StarCraft II: its win rates are not SC2 SMAC's (docs/online.md).

    Example: offmarl online --map 2s3z --steps 2000

    Example: offmarl online --map 3s_vs_4z --algo mamba --seed 1 --config mamba-reference --device cuda
    """
    map_name = map_name.removeprefix("smac-")
    from offmarl.driver import online_from_options  # lazy: torch/jax load only when a command runs (cli/main.py)

    res = online_from_options(map_name, algo, backend, config, set_, steps, seed, device, str(out),
                              str(resume) if resume else None,
                              progress=(lambda cfg: OnlineProgress(cfg.iteration_steps)) if progress else None,
                              log=console.print)
    console.print(f"final evaluation: win rate {res['win_rate']:.2f}, return {res['return_mean']:.3f} ± "
                  f"{res['return_std']:.3f} (SMAX scale, at most ~2) over {res['episodes']} episodes after "
                  f"{res['env_steps']} env steps")
    console.print(f"run directory: {res['run_dir']}")
