"""The `offmarl` command. Thin: parse options, call the library, print."""
from __future__ import annotations

import os
import sys

import typer

import offmarl
from offmarl.cli import datasets as datasets_cmd
from offmarl.cli import envs as envs_cmd
from offmarl.cli import online as online_cmd
from offmarl.cli import train as train_cmd
from offmarl.cli.common import err_console
from offmarl.errors import OffmarlError

app = typer.Typer(
    name="offmarl",
    help="Offline multi-agent RL: MOMA-PPO + MAG, offline baselines, online MAG on SMAC.\n\n"
    "Example: offmarl envs list",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(envs_cmd.app, name="envs")
app.add_typer(datasets_cmd.app, name="datasets")
app.command("train")(train_cmd.train)
app.command("evaluate")(train_cmd.evaluate)
app.command("online")(online_cmd.online)


def _version(value: bool):
    if value:
        typer.echo(f"offmarl {offmarl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """offmarl: offline multi-agent reinforcement learning toolkit."""


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, not a traceback."""
    threads = os.environ.get("OFFMARL_NUM_THREADS")
    if threads:
        # small networks on a busy CPU: one thread is often faster than several (docs/benchmarks.md)
        import torch

        torch.set_num_threads(int(threads))
    try:
        app(standalone_mode=True)
    except OffmarlError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
