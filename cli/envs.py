"""`offmarl envs ...`: list, inspect and smoke-test the environments."""
from __future__ import annotations

import time

import typer
from rich.table import Table

from offmarl.cli.common import console, err_console

app = typer.Typer(help="List, inspect and smoke-test environments.\n\nExample: offmarl envs info ant-4x2 --obs po",
                  no_args_is_help=True)


def _dims(spec) -> str:
    dims = spec.obs_dims
    return str(dims[0]) if len(set(dims)) == 1 else "/".join(map(str, dims))


@app.command("list")
def list_envs(
    smac: bool = typer.Option(True, help="Include the SMAC maps (instantiates each SMAX map once)."),
):
    """Table of every environment: agents, per-agent obs dims per scheme, actions, state, limit.

    Example: offmarl envs list --no-smac
    """
    from offmarl.envs import MAMUJOCO_NAMES, make_env

    # building every env once takes a while (MuJoCo models, then SMAX maps): say so first
    err_console.print("reading the dims of every environment (builds each once"
                      + (", SMAX maps ~1-2 s each; --no-smac skips them)..." if smac else ")..."), style="dim")
    table = Table(title="offmarl environments")
    for col in ("name", "agents", "obs dims per scheme", "actions", "state", "limit", "backend"):
        table.add_column(col)
    for name in list(MAMUJOCO_NAMES) + ["coordination"]:
        env = make_env(name)
        spec = env.spec
        schemes = []
        for s in spec.obs_schemes:
            e = make_env(name, obs=s)
            label = s if e.spec.obs_scheme == s else f"{s}(={e.spec.obs_scheme})"
            schemes.append(f"{label}: {_dims(e.spec)}")
            e.close()
        acts = ("discrete " if spec.discrete else "") + _action_str(spec)
        table.add_row(name, str(spec.n_agents), ", ".join(schemes), acts, str(spec.state_dim),
                      str(spec.episode_limit), spec.backend)
        env.close()
    if smac:
        from offmarl.envs.smac import SMAC_MAPS, smac_backend_available

        avail = smac_backend_available()
        backends = ", ".join(f"{k} ({'available' if v else 'not installed'})" for k, v in avail.items())
        for m in SMAC_MAPS:
            try:
                env = make_env(f"smac-{m}")
            except Exception as e:  # a map the installed SMAX cannot build
                table.add_row(f"smac-{m}", "?", f"unavailable: {e}", "", "", "", backends)
                continue
            spec = env.spec
            table.add_row(f"smac-{m}", str(spec.n_agents), f"local: {_dims(spec)}", f"discrete {spec.n_actions}",
                          str(spec.state_dim), str(spec.episode_limit), backends)
            env.close()
    console.print(table)


def _say_if_slow(name: str) -> None:
    if name.startswith("smac-"):
        err_console.print(f"building {name} with SMAX (jax; ~10-20 s the first time)...", style="dim")


def _action_str(spec) -> str:
    dims = spec.action_dims
    return str(dims[0]) if len(set(dims)) == 1 else "/".join(map(str, dims))


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Environment name, e.g. ant-4x2, reacher-2x1, coordination, smac-2s3z."),
    obs: str = typer.Option(None, "--obs", help="Observation scheme (fo, po, local, po-independent, po-leader, ...)."),
):
    """Show one environment under one observation scheme: dims, agents, and which state
    indices each agent observes.

    Example: offmarl envs info ant-4x2 --obs po
    """
    from offmarl.envs import make_env

    _say_if_slow(name)
    env = make_env(name, obs=obs)
    spec = env.spec
    schemes = ", ".join(spec.obs_schemes)
    console.print(f"[bold]{spec.name}[/]  scheme [cyan]{spec.obs_scheme}[/]  (available: {schemes})")
    console.print(f"agents {spec.n_agents}   state dim {spec.state_dim}   episode limit {spec.episode_limit}   "
                  f"{'discrete' if spec.discrete else 'continuous'} actions   backend {spec.backend}")
    table = Table()
    for col in ("agent", "obs dim", "action dim" if not spec.discrete else "n actions", "state indices observed"):
        table.add_column(col)
    index = getattr(env, "obs_index", {}).get(spec.obs_scheme)
    agents = spec.extra.get("agents", [f"agent_{i}" for i in range(spec.n_agents)])
    for i in range(spec.n_agents):
        idx = "-" if index is None else ", ".join("0" if k < 0 else str(k) for k in index[i])
        if index is not None and any(k < 0 for k in index[i]):
            idx += "  (0 = constant zero entry)"
        table.add_row(f"{i} ({agents[i]})", str(spec.obs_dims[i]), str(spec.action_dims[i]), idx)
    console.print(table)
    if hasattr(env, "action_index"):
        console.print("global action ids per agent: " + "; ".join(
            f"{i}: {[int(a) for a in row if a >= 0]}" for i, row in enumerate(env.action_index)))
    env.close()


@app.command("rollout")
def rollout(
    name: str = typer.Argument(..., help="Environment name."),
    episodes: int = typer.Option(2, "--episodes", "-n", min=1, help="Number of episodes."),
    obs: str = typer.Option(None, "--obs", help="Observation scheme."),
    seed: int = typer.Option(0, "--seed", help="Seed of the env and the random policy."),
):
    """Roll a uniformly random policy (respecting available actions) and print per-episode
    return, length (and battle_won for SMAC) and the steps per second.

    Example: offmarl envs rollout smac-2s3z --episodes 2
    """
    import numpy as np

    from offmarl.envs import make_env

    _say_if_slow(name)
    env = make_env(name, obs=obs)
    spec = env.spec
    rng = np.random.default_rng(seed)
    total_steps, t0 = 0, time.perf_counter()
    if name.startswith("smac-"):
        err_console.print("compiling SMAX's reset and step (jax jit, the first episode only)...", style="dim")
    for ep in range(episodes):
        _, _, _ = env.reset(seed=seed + ep)
        ret, steps, done, info = 0.0, 0, False, {}
        while not done:
            if spec.discrete:
                avail = env.avail_actions()
                actions = np.array([rng.choice(np.flatnonzero(avail[i])) for i in range(spec.n_agents)])
            else:
                actions = rng.uniform(spec.action_low, spec.action_high, (spec.n_agents, spec.max_action_dim))
            _, _, r, term, trunc, info = env.step(actions)
            ret += r
            steps += 1
            if ep == 0 and steps == 1:
                # the first step compiles (SMAX's jit): keep it out of the speed figure
                t0, total_steps = time.perf_counter(), -1
            done = term or trunc
        total_steps += steps
        line = f"episode {ep}: return {ret:.3f}  steps {steps}"
        if "battle_won" in info:
            line += f"  battle_won {bool(info['battle_won'])}"
        console.print(line)
    dt = time.perf_counter() - t0
    console.print(f"{total_steps} steps in {dt:.2f}s: {total_steps / max(dt, 1e-9):.0f} steps/s "
                  "(single env, Python loop, first step excluded)")
    env.close()
