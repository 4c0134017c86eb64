"""`offmarl train` and `offmarl evaluate`.

The driver (and with it torch) is imported inside the commands, not here, so that `offmarl --help`
answers at once (cli/main.py)."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from offmarl.cli.common import console


def train(
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset name (offmarl datasets list) or .hdf5 file "
                                "(not with --resume)."),
    algo: str = typer.Option(None, "--algo",
                             help="moma-ppo (default) | iql | ma-iql | ibc | itd3bc | matd3bc | icql | omar"),
    obs: str = typer.Option(None, "--obs", help="Observation scheme (fo, po, local, po-independent, po-leader); "
                            "default: the dataset's."),
    config: list[str] = typer.Option(None, "--config", help="Override block of configs/<algo>.yaml (e.g. moma-ppo: "
                                     "reference, mag) or a YAML file of config keys; repeatable, applied in order."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set rollout.horizon=5 (repeatable)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Training steps (baselines: gradient steps; "
                              "moma-ppo: iterations)."),
    seed: int = typer.Option(None, "--seed", help="Seed of everything (data sampling, networks, rollouts); "
                             "default 0."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    out: Path = typer.Option(None, "--out", help="Parent folder of the run directory (default: runs)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this run directory with its own config "
                                "and data; --steps sets a new total."),
    world_model: Path = typer.Option(None, "--world-model", help="moma-ppo: reuse this trained world model."),
    planner: str = typer.Option(None, "--planner", help="moma-ppo: none | mag (model rollouts planned by MAG)."),
    env: str = typer.Option(None, "--env", help="Environment of a D4RL file given as --dataset (e.g. ant-4x2)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config, each value with "
                                      "its source (default, a block, a file or an option), and exit."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Train an offline MARL algorithm on a dataset; evaluates in the real environment and
    writes a run directory (config.yaml, metrics.jsonl, tb/, checkpoints/, eval.json).

    Example: offmarl train --dataset ant-medium

    Example: offmarl train --dataset coordination-unfavorable --algo ma-iql --seed 3

    Example: offmarl train --dataset ant-medium --config reference --set ppo.lr=1e-4 --print-config
    """
    from offmarl.cli.progress import make_progress
    from offmarl.driver import train_from_options

    extra = {}
    if world_model is not None:
        extra["world_model_path"] = str(world_model)
    if planner is not None:
        extra["planner.kind"] = planner
    if print_config:
        _print_config(dataset, algo, obs, config, set_, steps, extra, resume)
        return
    result = train_from_options(dataset, algo, obs, config, set_, steps, seed, device,
                                str(out) if out is not None else None, str(resume) if resume else None, env=env,
                                extra=extra, progress=make_progress() if progress else None, log=console.print)
    _print_result(result)


def _print_config(dataset, algo, obs, config, set_, steps, extra, resume) -> None:
    from offmarl.driver import print_config
    from offmarl.errors import OffmarlError

    if resume is not None:
        raise OffmarlError(f"--print-config shows a new run's config; the run's own is {resume / 'config.yaml'}")
    if dataset is None:
        raise OffmarlError("--print-config needs --dataset (its recipe selects override blocks)")
    console.print(print_config(algo or "moma-ppo", dataset, obs, config, set_, steps, extra), markup=False,
                  highlight=False, soft_wrap=True)


def _print_result(res: dict) -> None:
    line = (f"final evaluation: return {res['return_mean']:.3f} ± {res['return_std']:.3f} "
            f"over {res['episodes']} episodes")
    if "normalised_mean" in res:
        line += f", normalised score {res['normalised_mean']:.3f} ± {res['normalised_std']:.3f}"
    if "win_rate" in res:
        line += f", win rate {res['win_rate']:.2f}"
    console.print(line)
    if "run_dir" in res:
        console.print(f"run directory: {res['run_dir']}")


def evaluate(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="One or more run directories."),
    episodes: int = typer.Option(50, "--episodes", "-n", min=1, help="Deterministic episodes per policy (10 "
                                 "ant episodes have a standard error of ~0.09 normalised)."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest (the final agents) | best (the best "
                                   "periodic evaluation: a pick on few episodes, biased upwards)"),
    cross_play: bool = typer.Option(False, "--cross-play", help="Also pair agents from different runs."),
    device: str = typer.Option("auto", "--device", help="Where the policies run: auto (a GPU when there is one) | "
                               "cpu | cuda | cuda:N. The environments always step on the CPU."),
    seed: int = typer.Option(12345, "--seed", help="Seed of the evaluation episodes."),
    json_out: Path = typer.Option(None, "--json", metavar="FILE", help="Write the results to this JSON file."),
):
    """Evaluate trained runs in the real environment (deterministic actions); with
    --cross-play, agents from different runs (e.g. seeds) are paired to test whether their
    conventions agree.

    Example: offmarl evaluate runs/moma-ppo-ant-medium-20261121T0600-s0

    Example: offmarl evaluate runs/A runs/B --cross-play
    """
    from offmarl.driver import evaluate_runs
    from offmarl.errors import OffmarlError

    if checkpoint not in ("best", "latest"):  # before any work: "bset" silently meant latest
        raise OffmarlError(f"--checkpoint {checkpoint!r}: choose best or latest")
    if json_out is not None:
        if json_out.is_dir():
            raise OffmarlError(f"--json {json_out}: is a folder; give a file name such as {json_out / 'eval.json'}")
        parent = json_out.parent
        if not parent.is_dir():
            raise OffmarlError(f"--json {json_out}: the folder {parent} does not exist (or is a file)")
    res = evaluate_runs([str(r) for r in run_dirs], episodes, checkpoint, device, seed, cross_play, log=console.print)
    wins = any("win_rate" in r for r in res["runs"].values())  # SMAC runs (online or offline)
    table = Table(title=f"evaluation ({episodes} deterministic episodes per run)")
    for col in ("run", "checkpoint", "return", "normalised") + (("win rate",) if wins else ()):
        table.add_column(col)
    for path, r in res["runs"].items():
        norm = f"{r['normalised_mean']:.3f} ± {r['normalised_std']:.3f}" if "normalised_mean" in r else "-"
        row = [Path(path).name, r["checkpoint"], f"{r['return_mean']:.3f} ± {r['return_std']:.3f}", norm]
        if wins:
            row.append(f"{r['win_rate']:.2f}" if "win_rate" in r else "-")
        table.add_row(*row)
    console.print(table)
    for path, r in res["runs"].items():  # one plain line per run: what a script or a doc can grep
        line = f"{Path(path).name}: return {r['return_mean']:.3f}"
        if "normalised_mean" in r:
            line += f", normalised score {r['normalised_mean']:.3f}"
        if "win_rate" in r:
            line += f", win rate {r['win_rate']:.2f}"
        console.print(line + f" over {r['episodes']} episodes", highlight=False)
    if res.get("cross_play"):
        t2 = Table(title="cross-play (agent i plays the policy of run assignment\\[i])")
        for col in ("assignment", "return", "normalised"):
            t2.add_column(col)
        for row in res["cross_play"]:
            nm = row["normalised_mean"]
            t2.add_row(str(row["assignment"]), f"{row['return_mean']:.3f}", "-" if nm is None else f"{nm:.3f}")
        console.print(t2)
    if json_out:
        json_out.write_text(json.dumps(res, indent=2))
