"""`offmarl online`: MAG / MAMBA / MA-PPO trained online on a SMAC map."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from offmarl.cli.common import console


class OnlineProgress:
    """The loop's progress (iterations) shown as env steps, latest win rate and env steps/s; a plain
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
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console)
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=completed, env=completed * self.k, win="-",
                                      rate="- env steps/s")

    def update(self, step: int, score: float | None) -> None:
        from offmarl.cli.progress import _rate  # rich.progress: not at import (`--help` stays light)

        now = time.perf_counter()
        rate = (step - self.first) / max(now - self.t0, 1e-9)
        if self.plain and (now - self.last_line >= 30 or step == self.total):
            self.last_line = now
            win = "-" if score is None else f"{score:.2f}"
            speed = _rate(rate * self.k, "env step")
            console.print(f"env steps {step * self.k}/{self.total * self.k}  win {win}  {speed}")
        if self.bar is None:
            return
        self.bar.update(self.task, completed=step, env=step * self.k, rate=_rate(rate * self.k, "env step"),
                        win="-" if score is None else f"{score:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def online(
    map_name: str = typer.Option(None, "--map", "-m", help="SMAC map (offmarl envs list; smac- prefix optional); "
                                 "default 2s3z."),
    backend: str = typer.Option(None, "--backend", help="smax (JAX, default) | sc2 (needs StarCraft II)."),
    algo: str = typer.Option(None, "--algo", help="mag (default: MAMBA + MAG planner) | mamba | mappo (model-free)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Environment steps (default 100000; with --resume: the "
                              "new total)."),
    seed: int = typer.Option(None, "--seed", help="Seed of everything (env copies, networks, imagination); "
                             "default 0."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    config: list[str] = typer.Option(None, "--config", help="A block of configs/online.yaml (e.g. mamba-reference, "
                                     "smoke) or a YAML file; repeatable, applied in order."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set planner.l=4 (repeatable)."),
    out: Path = typer.Option(None, "--out", help="Parent folder of the run directory (default: runs)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this run directory with its own "
                                "config; --steps sets a new total."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config, each value with "
                                      "its source (default, a block, a file or an option), and exit."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Train agents online on a SMAC map: collect battles from SMAX copies stepped together,
    learn a MAMBA-style world model, train MA-PPO in imagination (mag: with the MAG planner), and
    evaluate greedy agents on separate episodes. Writes a run directory like `offmarl train`
    (config.yaml, metrics.jsonl, tb/, checkpoints/, eval.json with win_rate).

    SMAX (the default backend) is not StarCraft II: its win rates are not SC2 SMAC's (docs/online.md).

    Example: offmarl online --map 2s3z --steps 2000

    Example: offmarl online --map 3s_vs_4z --algo mamba --seed 1 --config mamba-reference --device cuda

    Example: offmarl online --map 2s3z --config mag-reference --config cpu-quick --print-config
    """
    if map_name is not None:
        map_name = map_name.removeprefix("smac-")
    # lazy: torch/jax load only when a command runs (cli/main.py)
    from offmarl.driver import online_from_options, print_online_config

    if print_config:
        if resume is not None:
            from offmarl.errors import OffmarlError

            raise OffmarlError(f"--print-config shows a new run's config; the run's own is {resume / 'config.yaml'}")
        console.print(print_online_config(algo, map_name, backend, config, set_, steps), markup=False,
                      highlight=False, soft_wrap=True)
        return
    res = online_from_options(map_name, algo, backend, config, set_, steps, seed, device,
                              str(out) if out is not None else None, str(resume) if resume else None,
                              progress=(lambda cfg: OnlineProgress(cfg.iteration_steps)) if progress else None,
                              log=console.print)
    console.print(f"final evaluation: win rate {res['win_rate']:.2f}, return {res['return_mean']:.3f} ± "
                  f"{res['return_std']:.3f} (SMAX scale, at most ~2) over {res['episodes']} episodes after "
                  f"{res['env_steps']} env steps")
    if res.get("stochastic_return") is not None:  # the policy as it collects (sampled actions), as many episodes
        win = res.get("stochastic_win_rate")
        console.print(f"stochastic policy: return {res['stochastic_return']:.3f}"
                      + (f", win rate {win:.2f}" if win is not None else ""))
    console.print(f"run directory: {res['run_dir']}")
