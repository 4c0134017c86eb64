"""`offmarl diagnose`: the world model, R_m and MAG planner of a trained run on held-out real data."""
from __future__ import annotations

from pathlib import Path

import typer

from offmarl.cli.common import console


def diagnose(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="An `offmarl online` run or an offline "
                                   "MOMA-PPO (± MAG) run directory."),
    json_out: Path = typer.Option(None, "--json", metavar="FILE", help="Also write diagnose.json to this file."),
    steps: int = typer.Option(400, "--steps", min=1, help="Online: fresh real env steps to collect with the "
                              "run's policy (all env copies together)."),
    starts: int = typer.Option(512, "--starts", min=1, help="At most this many held-out start states."),
    continuations: int = typer.Option(None, "--continuations", min=1, help="The planner's K continuations "
                                      "per candidate (default: the run's)."),
    discount: float = typer.Option(None, "--discount", min=0.0, max=1.0, help="The planner's discount of "
                                   "look-ahead step j's score (default: the run's)."),
    score: str = typer.Option(None, "--score", help="Score the candidates with this instead of the run's R_m: "
                              "deviation (the prediction's distance from the model's mean prediction: the "
                              "elites' mean offline, the prior's mean online; no network); offline also "
                              "error_model (R_m, fitted if not cached) | uncertainty (eps_g)."),
    real_samples: int = typer.Option(4, "--real-samples", min=1, help="Model samples per candidate continued "
                                     "under the real actions (their errors are averaged)."),
    refit_rm: int = typer.Option(0, "--refit-rm", min=0, help="Online: first train a fresh R_m this many steps "
                                 "on the run's replay with its frozen world model (0: the run's own R_m)."),
    rm_inputs: str = typer.Option("transition", "--rm-inputs", help="With --refit-rm: transition (MAG paper: "
                                  "R_m(feat, a, predicted o', r)) | state_action (the earlier R_m(feat, a))."),
    seed: int = typer.Option(None, "--seed", help="Seed of the held-out episodes / draws (default: from the "
                             "run's seed, apart from training's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
):
    """Measure a trained run's world model, R_m and MAG planner on held-out real data: k-step
    open-loop error vs the mean-observation baseline, reward and termination prediction, the
    planner's ranking of candidates against their real error (Spearman, pick vs candidate 0 and
    vs a random candidate, oracle ceiling, repeatability), dead agents / terminated rollouts with
    and without the planner, imagined vs real return. Writes RUN_DIR/diagnose.json and
    RUN_DIR/diagnose.png and prints a short table (docs/mag.md).

    Example: offmarl diagnose runs/mag-smac-2s3z-20261203T0728-s0 --json diag.json

    Example: offmarl diagnose runs/moma-ppo-reacher-expert-mix-20261203T0800-s0 --continuations 4

    Example: offmarl diagnose runs/mag-smac-2s3z-20261203T0728-s0 --refit-rm 500 --rm-inputs state_action

    Example: offmarl diagnose runs/moma-ppo-ant-medium-20261203T1157-s0 --score deviation
    """
    from offmarl import diagnose as diag
    from offmarl.driver import cpu_numerics, load_trained
    from offmarl.errors import OffmarlError
    from offmarl.runs import RunDir, resolve_device

    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        raise OffmarlError(f"--json {json_out}: give a file in an existing folder, e.g. diagnose.json")
    cpu_numerics()
    dev = resolve_device(device)
    run = RunDir.open(run_dir.resolve())
    if run.config.get("kind") == "online":
        if score not in (None, "deviation"):
            raise OffmarlError(f"--score {score!r}: online the run's R_m scores, or --score deviation "
                               "(see also --refit-rm)")
        if score == "deviation" and refit_rm:
            raise OffmarlError("--score deviation replaces R_m: --refit-rm would train one that is not used")
        algo, _ = diag.load_online(run.path, dev, log=console.print)
        if discount is not None:
            algo.cfg.planner.discount = discount
        if refit_rm:
            if rm_inputs not in ("transition", "state_action"):
                raise OffmarlError(f"--rm-inputs {rm_inputs!r}: choose transition or state_action")
            diag.refit_error_model(algo, refit_rm, rm_inputs, log=console.print)
        if score == "deviation":
            from offmarl.worldmodel.error_model import LatentDeviationScore

            algo.error_model = LatentDeviationScore()
            console.print("scoring the candidates by their distance from the prior's mean prediction (not R_m)")
        res = diag.diagnose_online(algo, steps=steps, seed=seed, max_starts=starts, continuations=continuations,
                                   real_samples=real_samples, log=console.print)
    else:
        if run.config.get("algo") != "moma-ppo":
            raise OffmarlError(f"{run_dir}: diagnose reads online runs and MOMA-PPO runs (a world model); this is "
                               f"{run.config.get('algo')!r}")
        algo, ds, _, _ = load_trained(str(run.path), "latest", str(dev), log=console.print, policy_only=False)
        if score is not None:
            diag.rescore_offline(algo, ds, score, log=console.print)
        if discount is not None and algo.planner is not None:
            algo.planner.discount = discount
        res = diag.diagnose_offline(algo, ds, seed=seed, max_starts=starts, continuations=continuations,
                                    real_samples=real_samples, log=console.print)
    path = diag.write_outputs(res, run.path, json_out)
    console.print(diag.table(res))
    console.print(f"wrote {path} and {path.with_suffix('.png')}")
