"""The `offmarl` command. Thin: parse options, call the library, print.

Start-up time: `offmarl --help` and `--version` must answer at once, so nothing heavy (torch,
numpy, jax, rich.progress) is imported when the cli modules load; each command imports what
it needs in its body. OFFMARL_NUM_THREADS is handed to torch through OMP_NUM_THREADS, which
torch reads when it is first imported (by a command that needs it), not here.

One error style for every entry point: `error: <what is wrong and the fix>` on one line and
exit code 2, whether the problem is a bad option value (click/typer's checks) or a bad file,
key or name (offmarl.errors.OffmarlError). A diverged run exits with 3
(offmarl.errors.DivergedError); Ctrl-C with 130.
"""
from __future__ import annotations

import os
import sys
import warnings

import typer

try:  # typer 0.2x vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

import offmarl
from offmarl.cli import datasets as datasets_cmd
from offmarl.cli import diagnose as diagnose_cmd
from offmarl.cli import envs as envs_cmd
from offmarl.cli import online as online_cmd
from offmarl.cli import report as report_cmd
from offmarl.cli import sweep as sweep_cmd
from offmarl.cli import train as train_cmd
from offmarl.cli.common import err_console
from offmarl.errors import EXIT_DIVERGED, EXIT_USAGE, DivergedError, OffmarlError


def _plain_usage_names() -> None:
    """Usage lines as click writes them (``offmarl evaluate [OPTIONS] RUN_DIR...``): typer 0.2x
    writes a required argument as ``{RUN_DIR...}...`` or ``{name}``, which reads like a set. Only
    the usage line changes; the typer method it replaces exists from typer 0.16 on."""
    from typer.core import TyperArgument

    if not hasattr(TyperArgument, "_usage_display_name"):
        return

    def usage_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        if not self.required:
            name = f"[{name}]"
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name

    TyperArgument._usage_display_name = usage_name


_plain_usage_names()

app = typer.Typer(
    name="offmarl",
    help="Offline multi-agent RL: MOMA-PPO + MAG, offline baselines, online MAG on SMAC.\n\n"
    "Example: offmarl envs list",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: paragraphs re-flowed, metavars like INTEGER, not <list[Path]>
)
app.add_typer(envs_cmd.app, name="envs")
app.add_typer(datasets_cmd.app, name="datasets")
app.command("train")(train_cmd.train)
app.command("evaluate")(train_cmd.evaluate)
app.command("report")(report_cmd.report)
app.command("sweep", context_settings={"allow_extra_args": True})(sweep_cmd.sweep)  # --algo a b c
app.command("online")(online_cmd.online)
app.command("diagnose")(diagnose_cmd.diagnose)


def _version(value: bool):
    if value:
        typer.echo(f"offmarl {offmarl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    """offmarl: offline multi-agent reinforcement learning toolkit."""


def _apply_thread_setting() -> None:
    threads = os.environ.get("OFFMARL_NUM_THREADS")
    if not threads:
        return
    if not threads.isdigit() or int(threads) < 1:
        raise OffmarlError(f"OFFMARL_NUM_THREADS={threads!r}: give a positive whole number (e.g. 1)")
    # small networks on a busy CPU: one thread is often faster than several (docs/benchmarks.md);
    # torch sizes its intra-op pool from OMP_NUM_THREADS when it is imported
    os.environ["OMP_NUM_THREADS"] = threads
    os.environ["MKL_NUM_THREADS"] = threads


def _apply_cache_setting() -> None:
    """matplotlib (imported by jaxmarl and by `report`) keeps its font cache in MPLCONFIGDIR, else
    ~/.cache and ~/.config: put it under offmarl's cache folder ($OFFMARL_CACHE_DIR/matplotlib,
    else $OFFMARL_DATA_DIR/cache/matplotlib) when the user chose one and did not set MPLCONFIGDIR
    (offmarl/report.py does the same for library use)."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    if os.environ.get("OFFMARL_CACHE_DIR"):
        os.environ["MPLCONFIGDIR"] = os.path.join(os.path.expanduser(os.environ["OFFMARL_CACHE_DIR"]), "matplotlib")
    elif os.environ.get("OFFMARL_DATA_DIR"):
        os.environ["MPLCONFIGDIR"] = os.path.join(os.path.expanduser(os.environ["OFFMARL_DATA_DIR"]), "cache",
                                                  "matplotlib")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # libraries' warnings as one line each, without the echo of their source line
    print(f"warning: {message} ({category.__name__})", file=file or sys.stderr)


def _error(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, not a traceback."""
    warnings.showwarning = _one_line_warning
    try:
        _apply_thread_setting()
        _apply_cache_setting()
        code = app(prog_name="offmarl", standalone_mode=False)
    except DivergedError as e:
        _error(str(e), EXIT_DIVERGED)
    except OffmarlError as e:
        _error(str(e), EXIT_USAGE)
    except click_exc.NoArgsIsHelpError as e:  # `offmarl datasets`: the help, as before
        print(e.ctx.get_help())
        sys.exit(0)
    except click_exc.UsageError as e:  # typer/click's own checks (ranges, unknown options), same style
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        _error(f"{e.format_message()}{hint}", EXIT_USAGE)
    except click_exc.ClickException as e:
        _error(e.format_message(), e.exit_code)
    except (click_exc.Abort, KeyboardInterrupt):  # Ctrl-C (typer turns KeyboardInterrupt into Abort)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
