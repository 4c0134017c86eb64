"""How well does the world model's termination match reality, and how often does the HALT stop the
behaviour policy? (MOMA-PPO's calibrated termination and HALT; docs/worldmodel.md)

    python benchmarks/termination_calibration.py --dataset $OFFMARL_DATA_DIR/ant-medium-v1.hdf5 --rows 100000 \
        --holdout-rows 900000:1000000 --world-model ~/.offmarl/cache/worldmodels/<key>/model.pt \
        --out docs/termination_calibration_ant

1. The margin is fitted as MOMA-PPO fits it (``calibrate_termination`` on ``--windows`` k-step windows of
   the TRAINING rows, k = ``--fit-k``, the rollout horizon), then on HELD-OUT windows (whole episodes
   of ``--holdout`` or of the same file's ``--holdout-rows``) the real actions are replayed in the
   model from real states and, for k = ``--ks``: the real and model termination rates within k
   steps, recall (model ends | real ends) and false-positive rate (model ends | real does not), at
   margin 0 (the env's rule) and at the fitted margin.
2. HALT of the behaviour: in the same replayed k = ``--fit-k`` windows, the share in which eps_g
   exceeds the ``calibrate_eps_g`` threshold for each ``--trigger-quantiles`` before the (calibrated)
   model termination ends the window; and the same for the shipped behaviour policy acting in the
   model closed loop (``--behaviour ant-medium``: its stochastic SAC actor on the state; model_rollout
   with the calibrated rule), with the HALT value per ``--halt-quantiles``.
3. Model reward vs real reward on the replayed windows (mean per valid step).

Writes ``calibration.json`` and ``calibration.md`` under ``--out`` (printed as well).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from offmarl.data.behaviour import load_actor, policy_dir
from offmarl.data.dataset import MultiAgentDataset
from offmarl.data.registry import ant_policy_selection, load
from offmarl.envs import make_env
from offmarl.worldmodel.ensemble import load_world_model
from offmarl.worldmodel.rollout import RolloutConfig, calibrate_eps_g_threshold, dataset_box, model_rollout
from offmarl.worldmodel.termination import (
    calibrate_termination,
    first_model_end,
    replay_windows,
    termination_rule,
    termination_scores,
    window_starts,
)

ARRAYS = ("states", "next_states", "observations", "next_observations", "actions", "rewards", "terminals", "timeouts")


def episode_rows(ds: MultiAgentDataset, lo: int, hi: int) -> MultiAgentDataset:
    """The whole episodes that start at or after row ``lo`` and end before row ``hi``."""
    ends = np.flatnonzero(ds.episode_ends)
    starts = np.r_[0, ends[:-1] + 1]
    keep = (starts >= lo) & (ends < hi)
    a, b = int(starts[keep][0]), int(ends[keep][-1]) + 1
    return MultiAgentDataset(**{k: getattr(ds, k)[a:b] for k in ARRAYS}, meta=ds.meta, origin=f"{ds.origin}[{a}:{b}]")


class StateActor:
    """A single-agent actor on the global state as a multi-agent ``Policy`` for ``model_rollout``:
    obs_fn hands it the state as one "observation" [B, 1, S]; it returns per-agent actions [B, N, A]."""

    def __init__(self, actor, env):
        self.actor, self.env = actor, env

    def act(self, obs, hist, avail=None, deterministic=False, generator=None):
        g = self.actor.act(obs[:, 0], deterministic=deterministic, generator=generator)
        local = torch.as_tensor(self.env.to_local_actions(g.numpy()), dtype=torch.float32)
        return local, torch.zeros(local.shape[:2])


def fmt_row(k, s0, s1) -> str:
    return (f"| {k} | {s0['real_rate']:.3f} | {s0['model_rate']:.3f} / {s1['model_rate']:.3f} | "
            f"{s0['recall']:.2f} / {s1['recall']:.2f} | {s0['false_positive_rate']:.3f} / "
            f"{s1['false_positive_rate']:.3f} | {s0['windows']} ({s0['positives']}) |")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name or file the model was fitted on")
    p.add_argument("--rows", type=int, default=None, help="the model's training rows: first whole episodes")
    p.add_argument("--holdout", default=None, help="held-out dataset file (default: --dataset)")
    p.add_argument("--holdout-rows", default=None, help="lo:hi, whole episodes of the held-out file")
    p.add_argument("--world-model", required=True, help="a fitted model.pt (e.g. from the cache)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 25])
    p.add_argument("--fit-k", type=int, default=10, help="calibration horizon (MOMA-PPO: rollout.horizon)")
    p.add_argument("--windows", type=int, default=5000)
    p.add_argument("--trigger-quantiles", type=float, nargs="+", default=[0.99, 0.995, 0.999, 0.9995])
    p.add_argument("--halt-quantiles", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.05])
    p.add_argument("--behaviour", default=None, help="ant policy role (medium, expert, ...) to roll in the model")
    p.add_argument("--behaviour-rows", type=int, default=2000, help="start states of the behaviour rollouts")
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")
    torch.manual_seed(a.seed)
    full = load(a.dataset, generate=False)
    train = full.subset(a.rows) if a.rows else full
    hold = load(a.holdout, generate=False) if a.holdout else full
    if a.holdout_rows:
        lo, hi = (int(x) for x in a.holdout_rows.split(":"))
        hold = episode_rows(hold, lo, hi)
    env = make_env(train.meta.env)
    model = load_world_model(a.world_model, "cpu", train)
    model.eval()
    box = dataset_box(train)
    rule0 = termination_rule(env, train)
    if rule0 is None:
        raise SystemExit(f"{train.meta.env} has no termination bounds on states: nothing to calibrate")
    fitted, cal = calibrate_termination(model, train, rule0, a.fit_k, a.windows, box,
                                        torch.Generator().manual_seed(a.seed))
    res: dict = {"dataset": a.dataset, "train_rows": len(train), "holdout": hold.origin, "holdout_rows": len(hold),
                 "world_model": a.world_model, "margin": fitted.margin, "fit_k": a.fit_k,
                 "fit_on_training_windows": cal, "load_avg": os.getloadavg()[0], "termination": {}}
    lines = [(f"Margin fitted on {cal['after']['windows']} {a.fit_k}-step windows of the {len(train):,} training rows: "
             f"**{fitted.margin:.3f} std** of torso z (std {float(rule0.scale[0]):.3f})."), "",
             (f"Held-out: {len(hold):,} rows ({hold.origin}), real actions replayed from real states; "
             "cells are margin 0 (env rule) / fitted margin."), "",
             "| k | real rate | model rate | recall | false-positive rate | windows (ending) |",
             "|---|---|---|---|---|---|"]
    for k in a.ks:
        starts, w = window_starts(hold, k, a.windows, torch.Generator().manual_seed(a.seed + k))
        rep = replay_windows(model, hold, starts, k, box, torch.Generator().manual_seed(a.seed + 100 + k), rule0)
        s0 = termination_scores(rep["slack"], rep["valid"], rep["real_done"], 0.0, w)
        s1 = termination_scores(rep["slack"], rep["valid"], rep["real_done"], fitted.margin, w)
        res["termination"][k] = {"env_rule": s0, "calibrated": s1}
        lines.append(fmt_row(k, s0, s1))
        if k == a.fit_k:
            fit_rep, fit_w = rep, w
    if a.fit_k not in a.ks:
        starts, fit_w = window_starts(hold, a.fit_k, a.windows, torch.Generator().manual_seed(a.seed + a.fit_k))
        fit_rep = replay_windows(model, hold, starts, a.fit_k, box, torch.Generator().manual_seed(a.seed + 1), rule0)

    # HALT of the behaviour: replayed dataset actions, and (optionally) the behaviour actor in the model
    v = fit_rep["valid"]
    end = first_model_end(fit_rep["slack"], v, fitted.margin)  # steps after this are not taken
    alive = v & (torch.arange(v.shape[0])[:, None] <= end[None])
    wv = fit_w.float()[None] * v  # stratified windows: weight each by its class's share
    mr = float((fit_rep["model_reward"] * wv).sum() / wv.sum())
    rr = float((fit_rep["real_reward"] * wv).sum() / wv.sum())
    res["reward_replay"] = {"model_per_step": mr, "real_per_step": rr, "ratio": mr / rr if rr else None}
    rewards = torch.as_tensor(train.rewards)
    halt_values = {q: float((torch.quantile(rewards, q) if q > 0 else rewards.min()).clamp(max=0.0))
                   for q in a.halt_quantiles}
    res["halt_values"] = {str(q): {"reward": r, "value": a.gamma * r / (1 - a.gamma)} for q, r in halt_values.items()}
    res["halt_replay"], res["halt_behaviour"] = {}, {}
    lines += ["", (f"Model reward per step on the replayed {a.fit_k}-step windows: {mr:.3f} vs real {rr:.3f} "
              f"(ratio {mr / rr:.2f})."), "",
              (f"HALT fraction of the behaviour in {a.fit_k}-step rollouts (eps_g above the quantile of eps_g on "
              "the training data, before the calibrated termination):"), "",
              "| trigger quantile | eps_g threshold | replayed data actions | behaviour actor in the model |",
              "|---|---|---|---|"]
    actor = None
    if a.behaviour:
        actor = StateActor(load_actor(policy_dir("ant") / ant_policy_selection()[a.behaviour]), env)
    for q in a.trigger_quantiles:
        thr = calibrate_eps_g_threshold(model, train, q, 10_000, torch.Generator().manual_seed(a.seed + 2))
        frac = float((((fit_rep["eps_g"] > thr) & alive).any(0).float() * fit_w.float()).sum())
        res["halt_replay"][str(q)] = {"threshold": thr, "frac_halted": frac}
        cell = "-"
        if actor is not None:
            idx = torch.randperm(len(hold), generator=torch.Generator().manual_seed(a.seed + 3))[:a.behaviour_rows]
            start = {"states": hold.tensors()["states"][idx]}
            cfg = RolloutConfig(horizon=a.fit_k, eps_g_threshold=thr)
            _, info = model_rollout(model, actor, start, lambda s: s[:, None, :], cfg, box,
                                    torch.Generator().manual_seed(a.seed + 4), done_fn=fitted, gamma=a.gamma)
            res["halt_behaviour"][str(q)] = info
            cell = (f"{info['frac_halted']:.3f} (model ends {info['frac_model_terminated']:.3f}, "
                    f"raw reward {info['mean_raw_reward']:.2f}/step)")
        lines.append(f"| {q} | {thr:.4g} | {frac:.3f} | {cell} |")
    lines += ["", "HALT value per quantile of the training rewards (gamma = "
              f"{a.gamma}): " + ", ".join(f"q={q}: r={r:.3f} -> {a.gamma * r / (1 - a.gamma):.1f}"
                                          for q, r in halt_values.items())]
    md = "\n".join(lines)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.json").write_text(json.dumps(res, indent=2, default=str))
        (out / "calibration.md").write_text(md + "\n")
    return res


if __name__ == "__main__":
    main()
