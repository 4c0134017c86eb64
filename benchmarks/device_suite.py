"""Every speed figure offmarl needs from an accelerator, in ONE prepared run that writes JSON lines.

GPU time comes in short windows (about 15 minutes in all, start-up included, at most 10 minutes a
command), so this suite runs start to finish in a few minutes with a time budget per section, and
writes each measurement the moment it is taken (a run cut short keeps what it measured):

    python benchmarks/device_suite.py --device cuda --out docs/results/device/<gpu>.jsonl
    python benchmarks/device_table.py docs/results/device/<gpu>.jsonl          # -> the markdown table
    python benchmarks/device_suite.py --device cpu --quick --out /tmp/cpu.jsonl  # dry run, < 3 min
    python benchmarks/device_suite.py --device cpu --smoke --sections ensemble   # seconds (tests)

Sections (``--sections`` picks some; budgets in ``PLANS``; a measurement that would start after its
section's budget is spent is recorded as {"skipped": "section budget spent"}):

    ensemble    forward+backward of the 7-member ensemble: vectorised (EnsembleMLP, one [E, in, out]
                matmul per layer) vs a Python loop over 7 separate MLPs, hidden 4x200 and 4x1024,
                batch 256 and 4096 per member, the ratio from the same run. RANDOM INPUT TENSORS of
                ant-4x2's widths (pure layer speed; no data involved).
    data        ant-medium generated here with the real MaMuJoCo ant and the shipped behaviour policy
                (``registry.build``; a small size: the numbers below are speeds, not scores)
    worldmodel  MOMA-PPO built for that data with the ant config (configs/moma-ppo.yaml blocks `mag`, then
                `ant` last) but a SHORT world-model and R_m fit (timing, not
                accuracy): the fit's ms per step
    rollout     model_rollout predicted transitions/s (starts x horizon per second), plain and with
                the MAG planner (L=4, H=4), and the ensemble's ``step`` alone
    iteration   one MOMA-PPO iteration of the ant config (400 starts x 25 steps + MA-PPO update), plain
                and with the planner (``Algorithm.update``)
    ppo         MA-PPO update samples/s on a real model-rollout batch of the ant config
    baselines   updates/s of every offline baseline (ICQL and OMAR included) on the ant data, default
                configs (``Algorithm(dataset, cfg, device, seed)``)
    online      the online SMAX loop (offmarl/algos/online.py): env steps/s of its collector and model
                (+ R_m) updates/s, through ``Algorithm.update`` without imagination rounds. Skipped with
                {"skipped": "online loop not available"} when ``offmarl.algos``
                has no online algorithm: the import is attempted once, at the top of this file.

Every record carries the torch and CUDA versions, the device name, the mode, the section's peak GPU
memory so far (``torch.cuda.max_memory_allocated``, reset at each section start; null on CPU) and the
1-minute load average (the CPU figures here come from a shared machine). Each section ends with a
``section_end`` record (wall seconds, budget, peak memory). A section that raises records
{"error": ...} and the suite goes on; the exit status is then 1.

How the "< 6 minutes on one GPU" holds (docs/benchmarks.md, GPU): the budgets of the timed sections
of the full plan sum to 255 s and no measurement starts after its section's budget; the fixed costs
(imports and CUDA start-up, the data generation on the host CPU, the short fits) are estimated from
the --quick dry run's CPU seconds at about 35 s. ``total_wall_s`` in the last record checks it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from offmarl.algos import bc, cql, iql, ma_iql, matd3bc, moma_ppo, omar, td3bc
from offmarl.config import build_config, read_blocks, shipped_config
from offmarl.data import registry
from offmarl.nn.layers import EnsembleMLP, mlp
from offmarl.worldmodel.rollout import model_rollout

try:  # the online SMAX loop is being added on another branch; without it its section is skipped
    import offmarl.algos.online as online_algo
except ModuleNotFoundError as e:
    if e.name != "offmarl.algos.online":
        raise
    online_algo = None

SCHEMA = 1
SECTIONS = ("ensemble", "data", "worldmodel", "rollout", "iteration", "ppo", "baselines", "online")
# what a section uses: the data section's ant dataset or the worldmodel section's MOMA-PPO
NEEDS = {"worldmodel": "data", "baselines": "data", "rollout": "worldmodel", "iteration": "worldmodel",
         "ppo": "worldmodel"}
# the offline baselines by their `offmarl train --algo` names (ICQL = cql.py, IBC = bc.py, ITD3+BC = td3bc.py)
BASELINES = {"iql": iql, "ma-iql": ma_iql, "ibc": bc, "itd3bc": td3bc, "matd3bc": matd3bc, "icql": cql, "omar": omar}
ANT_IN, ANT_OUT = 27 + 4 * 2, 2 * (27 + 1) + 1  # ensemble widths of ant-4x2: state + joint action -> 2(S+1)+1
ENSEMBLE_MEMBERS = 7  # the default EnsembleConfig (MOMA-PPO reference)


@dataclass
class Plan:
    """Sizes and budgets of one mode."""
    seconds: float                     # timed seconds per measurement (after the warm-up)
    min_calls: int                     # ... but at least this many timed calls
    warmup: int                        # untimed calls first (allocator, kernels, cuBLAS heuristics)
    ensemble_hidden: tuple[tuple[int, ...], ...]
    ensemble_batch: tuple[int, ...]    # rows per member
    data_size: int                     # ant-medium transitions generated
    data_envs: int                     # ant envs stepped together while generating
    wm_steps: int                      # world-model fit steps (timing only)
    rm_steps: int                      # R_m fit steps (timing only)
    rm_labels: int                     # R_m labelled transitions
    rollout_starts: tuple[int, ...]    # model_rollout start states (400 = the ant config)
    step_batch: tuple[int, ...]        # rows of the ensemble-only ``step`` throughput
    rollout_batch: int | None = None   # None = the ant config's (400); smoke: fewer
    baseline_batch: int | None = None  # None = each baseline's default (256); smoke: fewer
    budgets: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per section


PLANS = {
    "full": Plan(seconds=2.0, min_calls=3, warmup=3, ensemble_hidden=((200,) * 4, (1024,) * 4),
                 ensemble_batch=(256, 4096), data_size=2000, data_envs=16, wm_steps=1000, rm_steps=1000,
                 rm_labels=20_000, rollout_starts=(400, 4000, 40_000), step_batch=(4096, 65_536, 262_144),
                 budgets={"ensemble": 45, "data": 20, "worldmodel": 30, "rollout": 40, "iteration": 40, "ppo": 15,
                          "baselines": 50, "online": 65}),
    # the CPU dry run: no warm-up calls (first-call costs are small next to these CPU calls), one ant
    # config iteration at a quarter of its 400 starts, baselines at their default batch
    "quick": Plan(seconds=0.3, min_calls=1, warmup=0, ensemble_hidden=((200,) * 4, (1024,) * 4),
                  ensemble_batch=(256,), data_size=600, data_envs=4, wm_steps=10, rm_steps=10, rm_labels=600,
                  rollout_starts=(100,), step_batch=(4096,), rollout_batch=100,
                  budgets={"ensemble": 20, "data": 30, "worldmodel": 20, "rollout": 25, "iteration": 25, "ppo": 10,
                           "baselines": 25, "online": 20}),
    "smoke": Plan(seconds=0.02, min_calls=1, warmup=0, ensemble_hidden=((32, 32),), ensemble_batch=(64,),
                  data_size=200, data_envs=2, wm_steps=3, rm_steps=3, rm_labels=200, rollout_starts=(16,),
                  step_batch=(64,), rollout_batch=16, baseline_batch=16,
                  budgets={s: 10 for s in SECTIONS}),
}


# ------------------------------------------------------------------------------------------ recording
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Recorder:
    """Writes one JSON object per line to ``out`` (and stdout), each with the common fields."""

    def __init__(self, out: Path | None, device: torch.device, mode: str):
        self.device, self.mode = device, mode
        self.common = {"suite": "device_suite", "schema": SCHEMA, "mode": mode, "device": device.type,
                       "device_name": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                       "threads": torch.get_num_threads()}
        self.file = open(out, "w") if out is not None else None  # noqa: SIM115 (kept open for the whole run)
        self.section = ""
        self.errors = 0

    def peak_mem_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)

    def emit(self, name: str, **fields) -> dict:
        row = {**self.common, "section": self.section, "name": name, **fields,
               "peak_mem_mb": self.peak_mem_mb(), "load_1min": round(os.getloadavg()[0], 2),
               "utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        line = json.dumps(row)
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        return row

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def spent(self) -> bool:
        return time.perf_counter() - self.t0 >= self.seconds

    def left(self) -> float:
        return max(0.0, self.seconds - (time.perf_counter() - self.t0))


@contextmanager
def section(rec: Recorder, name: str, budget_s: float):
    """Resets the peak-memory counter, times the section, turns an exception into an error record."""
    rec.section = name
    if rec.device.type == "cuda":
        torch.cuda.synchronize(rec.device)
        torch.cuda.reset_peak_memory_stats(rec.device)
    budget, cpu0 = Budget(budget_s), time.process_time()
    try:
        yield budget
    except Exception as e:  # noqa: BLE001 (one broken section must not cost the rest of a scarce GPU window)
        rec.errors += 1
        rec.emit("error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))
    rec.emit("section_end", wall_s=round(time.perf_counter() - budget.t0, 2),
             cpu_s=round(time.process_time() - cpu0, 2), budget_s=budget_s)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], object], device: torch.device, plan: Plan, budget: Budget) -> dict:
    """Run ``call`` plan.warmup times, then for about plan.seconds (at least plan.min_calls times,
    never far past the section budget). -> {calls, s_per_call, cpu_s_per_call}; on a shared CPU,
    cpu_s_per_call x threads ~ the idle-machine wall time."""
    for _ in range(plan.warmup):
        call()
    sync(device)
    seconds = min(plan.seconds, budget.left())
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < plan.min_calls or time.perf_counter() - t0 < seconds:
        call()
        n += 1
    sync(device)
    wall = time.perf_counter() - t0
    return {"calls": n, "s_per_call": wall / n, "cpu_s_per_call": (time.process_time() - c0) / n}


def stepper(algo) -> Callable[[], object]:
    """``algo.update(step)`` with the step number counting up from 1 (offmarl's training-loop contract)."""
    steps = itertools.count(1)
    return lambda: algo.update(next(steps))


def rounded(d: dict, digits: int = 5) -> dict:
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for k, v in d.items()}


# ------------------------------------------------------------------------------------------ sections
def ensemble_steps(hidden: tuple[int, ...], batch: int, dev: torch.device):
    """(vectorised step, loop step): forward + backward of an MSE loss on x [E, batch, in] -> [E, batch, out],
    one EnsembleMLP vs E separate MLPs of the same sizes (random input tensors: layer speed only)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ENSEMBLE_MEMBERS, batch, ANT_IN, generator=g).to(dev)
    y = torch.randn(ENSEMBLE_MEMBERS, batch, ANT_OUT, generator=g).to(dev)
    vec = EnsembleMLP(ENSEMBLE_MEMBERS, ANT_IN, hidden, ANT_OUT).to(dev)
    loop = nn.ModuleList(mlp(ANT_IN, hidden, ANT_OUT) for _ in range(ENSEMBLE_MEMBERS)).to(dev)

    def vec_step():
        vec.zero_grad(set_to_none=True)
        ((vec(x) - y) ** 2).mean().backward()

    def loop_step():
        loop.zero_grad(set_to_none=True)
        ((torch.stack([m(x[i]) for i, m in enumerate(loop)]) - y) ** 2).mean().backward()

    return vec_step, loop_step


def ensemble_section(rec: Recorder, plan: Plan, budget: Budget) -> None:
    """Vectorised ensemble vs a loop over members (random input tensors: layer speed only)."""
    dev = rec.device
    for hidden in plan.ensemble_hidden:
        for batch in plan.ensemble_batch:
            shape = {"members": ENSEMBLE_MEMBERS, "hidden": list(hidden), "batch": batch, "in_dim": ANT_IN,
                     "out_dim": ANT_OUT, "input": "random tensors (layer speed only)"}
            if budget.spent():
                rec.emit("ensemble_fwd_bwd", **shape, skipped="section budget spent")
                continue
            vec_step, loop_step = ensemble_steps(hidden, batch, dev)
            t_vec = timed(vec_step, dev, plan, budget)
            t_loop = timed(loop_step, dev, plan, budget)
            rec.emit("ensemble_fwd_bwd", **shape, **rounded({
                "vectorised_ms": 1e3 * t_vec["s_per_call"], "loop_ms": 1e3 * t_loop["s_per_call"],
                "vectorised_cpu_ms": 1e3 * t_vec["cpu_s_per_call"], "loop_cpu_ms": 1e3 * t_loop["cpu_s_per_call"],
                "vectorised_over_loop": t_loop["s_per_call"] / t_vec["s_per_call"],
                "vectorised_samples_per_s": ENSEMBLE_MEMBERS * batch / t_vec["s_per_call"],
                "calls": [t_vec["calls"], t_loop["calls"]]}))


def data_section(rec: Recorder, plan: Plan, budget: Budget):
    """Real ant-medium transitions (MaMuJoCo ant + the shipped behaviour policy), generated in memory."""
    t0, c0 = time.perf_counter(), time.process_time()
    ds = registry.build("ant-medium", size=plan.data_size, seed=0, n_envs=plan.data_envs)
    wall = time.perf_counter() - t0
    rec.emit("ant_medium_generated", transitions=len(ds), n_envs=plan.data_envs, **rounded({
        "wall_s": wall, "cpu_s": time.process_time() - c0, "env_steps_per_s": len(ds) / wall}),
        generator=ds.meta.generator)
    return ds


def build_moma_ppo(ds, device: torch.device, plan: Plan, cache_dir: str):
    """MOMA-PPO with the ant config and the MAG planner's settings, short fits (timing, not accuracy).
    The `ant` block goes last so both iterations use the ant config's 400 x 25 rollouts."""
    overrides = {"world_model": {"max_steps": plan.wm_steps, "eval_every": min(250, plan.wm_steps)},
                 "planner": {"error_steps": plan.rm_steps, "error_max_labels": plan.rm_labels},
                 "cache_dir": cache_dir,
                 "bc_pretrain_steps": 0}  # the one-time behaviour cloning is not part of an iteration
    if plan.rollout_batch is not None:
        overrides["rollout_batch"] = plan.rollout_batch
    blocks = read_blocks(shipped_config("moma-ppo"))
    cfg = build_config(moma_ppo.Config, [("moma-ppo.yaml:mag", blocks["mag"]), ("moma-ppo.yaml:ant", blocks["ant"])],
                       overrides)
    return moma_ppo.Algorithm(ds, cfg, device, seed=0, log=lambda *a, **k: None)


def worldmodel_section(rec: Recorder, plan: Plan, budget: Budget, ds, cache_dir: str):
    t0 = time.perf_counter()
    algo = build_moma_ppo(ds, rec.device, plan, cache_dir)
    wall = time.perf_counter() - t0
    info, rm = algo.model_info, algo.planner.info
    cfg = algo.cfg
    rec.emit("moma_ppo_setup", hidden=list(cfg.world_model.hidden), members=cfg.world_model.members,
             wm_steps=info.get("steps"), rm_steps=cfg.planner.error_steps, rm_labels=cfg.planner.error_max_labels,
             note="short fits: timing, not accuracy", **rounded({
                 "setup_wall_s": wall, "wm_fit_s": info.get("seconds"),
                 "wm_ms_per_step": 1e3 * info["seconds"] / info["steps"] if info.get("steps") else None,
                 "rm_fit_s": rm.get("seconds"), "eps_g_threshold": algo.rollout_cfg.eps_g_threshold}))
    return algo


def start_states(algo, b: int, gen: torch.Generator) -> dict:
    return {"states": algo.dataset.sample(b, generator=gen, device=algo.device)["states"]}


def rollout_once(algo, start: dict, gen: torch.Generator, planner):
    done_fn = algo.env.terminated if algo.env.has_termination_rule else None
    return model_rollout(algo.model, algo.mappo.policy, start, algo.env.observe, algo.rollout_cfg, algo.box, gen,
                         done_fn=done_fn, gamma=algo.gamma, history=algo.k, planner=planner)


def rollout_section(rec: Recorder, plan: Plan, budget: Budget, algo) -> None:
    dev, h = algo.device, algo.rollout_cfg.horizon
    gen = torch.Generator(device=dev).manual_seed(1)
    # the ensemble alone: one ``step`` (all 7 members, a random elite per row) on dataset rows, tiled
    t = algo.dataset.tensors(dev)
    for b in plan.step_batch:
        if budget.spent():
            rec.emit("ensemble_step", batch=b, skipped="section budget spent")
            continue
        idx = torch.arange(b, device=dev) % len(algo.dataset)
        s, joint = t["states"][idx], algo.model.encode_actions(t["actions"][idx])
        r = timed(partial(algo.model.step, s, joint, gen), dev, plan, budget)
        rec.emit("ensemble_step", batch=b, input="dataset states and actions (tiled)", **rounded({
            "ms_per_step": 1e3 * r["s_per_call"], "transitions_per_s": b / r["s_per_call"], "calls": r["calls"]}))
    for planner, label in ((None, "plain"), (algo.planner, "mag")):
        for b in plan.rollout_starts:
            shape = {"planner": label, "starts": b, "horizon": h}
            if planner is not None:
                shape.update(l=planner.l, h=planner.h, score=algo.cfg.planner.score)
            if budget.spent():
                rec.emit("model_rollout", **shape, skipped="section budget spent")
                continue
            start = start_states(algo, b, gen)
            r = timed(partial(rollout_once, algo, start, gen, planner), dev, plan, budget)
            rec.emit("model_rollout", **shape, **rounded({
                "s_per_rollout": r["s_per_call"], "cpu_s_per_rollout": r["cpu_s_per_call"],
                "transitions_per_s": b * h / r["s_per_call"], "calls": r["calls"]}))


def iteration_section(rec: Recorder, plan: Plan, budget: Budget, algo) -> None:
    """``Algorithm.update`` = one rollout batch + one MA-PPO update; the planner toggled on the object."""
    mag = algo.planner
    one = stepper(algo)
    for planner, label in ((None, "plain"), (mag, "mag")):
        shape = {"planner": label, "starts": algo.cfg.rollout_batch, "horizon": algo.rollout_cfg.horizon}
        if budget.spent():
            rec.emit("moma_ppo_iteration", **shape, skipped="section budget spent")
            continue
        algo.planner = planner
        r = timed(one, algo.device, plan, budget)
        rec.emit("moma_ppo_iteration", **shape, **rounded({
            "s_per_iteration": r["s_per_call"], "cpu_s_per_iteration": r["cpu_s_per_call"], "calls": r["calls"]}))
    algo.planner = mag


def ppo_section(rec: Recorder, plan: Plan, budget: Budget, algo) -> None:
    gen = torch.Generator(device=algo.device).manual_seed(2)
    batch, _ = rollout_once(algo, start_states(algo, algo.cfg.rollout_batch, gen), gen, None)
    n_valid = int(batch["valid"].sum())
    anchor = algo.anchor_batch()  # the ant config's BC term: 10k dataset pairs per update
    r = timed(lambda: algo.mappo.update(batch, gen, anchor=anchor), algo.device, plan, budget)
    c = algo.cfg.ppo
    rec.emit("mappo_update", samples=batch["valid"].numel(), valid_samples=n_valid, epochs=c.epochs,
             minibatch=c.minibatch_size, actor_hidden=list(c.actor_hidden), critic=c.critic,
             input="a model rollout of the ant config", **rounded({
                 "s_per_update": r["s_per_call"], "cpu_s_per_update": r["cpu_s_per_call"],
                 "samples_per_s": n_valid / r["s_per_call"], "calls": r["calls"]}))


def build_baseline(name: str, ds, device: torch.device, batch: int | None):
    """A baseline through its public ``Algorithm(dataset, cfg, device, seed)`` with its default config."""
    mod = BASELINES[name]
    cfg = mod.Config() if batch is None else dataclasses.replace(mod.Config(), batch_size=batch)
    return mod.Algorithm(ds, cfg, device, 0), cfg


def baselines_section(rec: Recorder, plan: Plan, budget: Budget, ds) -> None:
    for name in BASELINES:
        if budget.spent():
            rec.emit("baseline_updates", algo=name, skipped="section budget spent")
            continue
        algo, cfg = build_baseline(name, ds, rec.device, plan.baseline_batch)
        r = timed(stepper(algo), rec.device, plan, budget)
        rec.emit("baseline_updates", algo=name, batch=cfg.batch_size, hidden=list(cfg.hidden), **rounded({
            "updates_per_s": 1 / r["s_per_call"], "ms_per_update": 1e3 * r["s_per_call"],
            "cpu_ms_per_update": 1e3 * r["cpu_s_per_call"], "calls": r["calls"]}))


def build_online(device: torch.device):
    """The online loop on SMAX 2s3z with its default (CPU-sized) preset, MAG variant, without the
    imagination + MA-PPO rounds (``ppo_rounds=0``): an iteration is then exactly what this section
    measures, the collector's env steps and the model (+ R_m) updates, and stays short."""
    cfg = online_algo.Config(algo="mag", map="2s3z", ppo_rounds=0)
    return online_algo.Algorithm(None, cfg, device, 0, log=lambda *a, **k: None), cfg


def online_section(rec: Recorder, plan: Plan, budget: Budget) -> None:
    if online_algo is None:
        rec.emit("online_loop", skipped="online loop not available")
        return
    algo, cfg = build_online(rec.device)
    collect_s = model_s = 0.0
    env_steps = model_updates = iterations = 0
    step = 0
    while not budget.spent():
        before = algo.env_steps
        m = algo.update(step)
        step += 1
        if step == 1:  # the first iteration compiles the jitted SMAX step: not timed
            continue
        iterations += 1
        collect_s += m.get("collect_seconds", 0.0)
        env_steps += algo.env_steps - before
        if "model_seconds" in m:
            model_s += m["model_seconds"]
            model_updates += cfg.model_updates
    rec.emit("online_loop", map=cfg.map, algo=cfg.algo, n_envs=cfg.n_envs, iterations=iterations,
             env_steps=env_steps, model_updates=model_updates, **rounded({
                 "collector_env_steps_per_s": env_steps / collect_s if collect_s else None,
                 "model_updates_per_s": model_updates / model_s if model_s else None}))


RUNS_ON_MODEL = {"rollout": rollout_section, "iteration": iteration_section, "ppo": ppo_section}


# ------------------------------------------------------------------------------------------ main
def run(device: torch.device, mode: str, sections: list[str], out: Path | None) -> int:
    plan = PLANS[mode]
    rec = Recorder(out, device, mode)
    t_start = time.perf_counter()
    rec.section = "machine"
    done: set[str] = set()
    rec.emit("machine", python=sys.version.split()[0], host_cpus=os.cpu_count(), sections=sections,
             tf32_matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.version(),
             online_available=online_algo is not None)
    state: dict = {"data": None, "worldmodel": None}  # the ant data and the MOMA-PPO built on it
    with tempfile.TemporaryDirectory(prefix="offmarl-device-suite-") as cache_dir:

        def run_section(name: str) -> None:
            with section(rec, name, plan.budgets[name]) as budget:
                needs = NEEDS.get(name)
                if needs is not None and state[needs] is None:
                    rec.emit(name, skipped=f"no {needs} (its section failed)")
                elif name == "ensemble":
                    ensemble_section(rec, plan, budget)
                elif name == "data":
                    state["data"] = data_section(rec, plan, budget)
                elif name == "worldmodel":
                    state["worldmodel"] = worldmodel_section(rec, plan, budget, state["data"], cache_dir)
                elif name == "baselines":
                    baselines_section(rec, plan, budget, state["data"])
                elif name == "online":
                    online_section(rec, plan, budget)
                else:
                    RUNS_ON_MODEL[name](rec, plan, budget, state["worldmodel"])

        for name in sections:
            # a section's prerequisites run first when they were not asked for (once each)
            chain = [NEEDS.get(NEEDS.get(name)), NEEDS.get(name)]
            for pre in chain:
                if pre is not None and pre not in sections and pre not in done:
                    done.add(pre)
                    run_section(pre)
            run_section(name)
    rec.section = "machine"
    rec.emit("done", total_wall_s=round(time.perf_counter() - t_start, 1), errors=rec.errors)
    rec.close()
    return 1 if rec.errors else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes: the CPU dry run (< 3 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the suite runs (tests)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--out", type=Path, default=None, help="JSON lines file (also printed)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OFFMARL_NUM_THREADS", "0")),
                   help="torch CPU threads (default: $OFFMARL_NUM_THREADS, else torch's default)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                "use --device cpu for the dry run")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    sections = [s for s in SECTIONS if s in args.sections]  # always in the suite's order
    sys.exit(run(torch.device(args.device), "smoke" if args.smoke else "quick" if args.quick else "full",
                 sections, args.out))


if __name__ == "__main__":
    main()
