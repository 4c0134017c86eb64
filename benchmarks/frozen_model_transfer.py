"""Does imagination improve REAL play? The frozen-model transfer experiment (docs/online.md).

1. collect ``--collect`` real SMAX env steps with the initial (untrained) MA-PPO policy;
2. fit the online world model on them for ``--model-steps`` gradient steps, then FREEZE it;
3. run ``--rounds`` imagination + MA-PPO rounds (MAMBA: L = 1, no planner) on posterior starts of
   that fixed replay, nothing real collected any more;
4. every ``--eval-every`` rounds (and at round 0) play ``--episodes`` greedy and as many
   stochastic REAL episodes (the driver's evaluation seeds), and log the imagined return (the
   mean over imagined trajectories of their summed valid rewards, H steps) next to the real ones.

One JSON line per evaluation, the whole record in ``--out``; ``--plot`` draws imagined vs real
return of one or more record files.

``--arms mamba,mag`` compares imagination methods on ONE frozen model: the model and MAG's R_m are
fitted once, then each arm runs its rounds from the same initial policy and generator states (the
same PPO budget; only L differs: 1 for mamba, the planner's L for mag). Arm ``deviation`` is the
planner scored by each candidate's distance from the prior's mean prediction instead of R_m
(``planner.score=deviation``), with ``--deviation-discount`` (default 0: the candidates' own terms,
no look-ahead); R_m is still fitted with the model, so the frozen model is the mag pair's.

    OFFMARL_NUM_THREADS=1 python benchmarks/frozen_model_transfer.py --seed 0 --out frozen-s0.json
    python benchmarks/frozen_model_transfer.py --plot frozen-s0.json frozen-s1.json --png frozen.png
    OFFMARL_NUM_THREADS=1 python benchmarks/frozen_model_transfer.py --seed 0 --arms mamba,mag --out pair-s0.json
    python benchmarks/frozen_model_transfer.py --table pair-s0.json --arm mag
    python benchmarks/frozen_model_transfer.py --paired pair-s0.json pair-s1.json pair-s2.json   # mag - mamba per round
    OFFMARL_NUM_THREADS=1 python benchmarks/frozen_model_transfer.py --seed 0 --arms mamba,deviation --out dev-s0.json
    python benchmarks/frozen_model_transfer.py --paired dev-s0.json dev-s1.json dev-s2.json --pair mamba,deviation
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from offmarl.algos.online import OnlineAlgorithm, OnlineConfig
from offmarl.evaluation import evaluate_policy
from offmarl.worldmodel.error_model import LatentDeviationScore

ARMS = ("mamba", "mag", "deviation")


def real_eval(algo: OnlineAlgorithm, episodes: int, seed: int) -> dict:
    kw = {"episodes": episodes, "seed": seed * 1000 + 10_000, "n_envs": min(32, episodes), "device": "cpu",
          "env_kwargs": {"backend": algo.cfg.backend}}
    greedy = evaluate_policy(algo.policy, algo.env_name, "local", **kw)
    sto = evaluate_policy(algo.policy, algo.env_name, "local", deterministic=False, **kw)
    n = max(episodes, 1)
    return {"greedy_return": greedy["return_mean"], "greedy_return_se": greedy["return_std"] / np.sqrt(n),
            "greedy_win_rate": greedy["win_rate"], "greedy_length": greedy["length_mean"],
            "stochastic_return": sto["return_mean"], "stochastic_return_se": sto["return_std"] / np.sqrt(n),
            "stochastic_win_rate": sto["win_rate"], "stochastic_length": sto["length_mean"]}


def run(seed: int, map_name: str = "2s3z", collect: int = 5000, model_steps: int = 1500, rounds: int = 200,
        eval_every: int = 50, episodes: int = 32, config: OnlineConfig | None = None, log=print,
        arms: tuple[str, ...] = ("mamba",), deviation_discount: float = 0.0) -> dict:
    """One arm (the default, mamba: L = 1): the record of that arm. Several arms (``("mamba", "mag")``):
    the model (and, when an arm is mag, MAG's R_m with it, as often as the model) is fitted ONCE and
    frozen; every arm then starts from the same initial policy, optimiser and generator states, so
    the arms differ only by the planner (L = 1 vs L); the record holds one sub-record per arm."""
    torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"--arms: {arm!r} is not an imagination method ({', '.join(ARMS)})")
    cfg = config or OnlineConfig(algo="mamba", map=map_name)
    # a planner arm: build R_m and train it with the model (so the frozen model is the same for every planner arm)
    cfg.algo = "mag" if {"mag", "deviation"} & set(arms) else "mamba"
    algo = OnlineAlgorithm(None, cfg, "cpu", seed=seed)
    t0 = time.perf_counter()
    algo.cfg.collect_steps = collect
    algo._reset()
    algo._collect_into_replay()
    t_collect = time.perf_counter() - t0
    algo.cfg.model_updates = model_steps
    fit = algo._train_model()
    t_fit = time.perf_counter() - t0 - t_collect
    record = {"seed": seed, "map": cfg.map, "collect": collect, "model_steps": model_steps, "rounds": rounds,
              "episodes": episodes, "train_episodes": algo.episodes, "collect_seconds": round(t_collect, 1),
              "fit_seconds": round(t_fit, 1), "fit": {k: round(v, 4) for k, v in fit.items()}}
    frozen = [p.detach().clone() for p in algo.model.parameters()]
    start_ppo = copy.deepcopy(algo.mappo.state_dict())
    start_gens = {k: g.get_state() for k, g in algo.generators.items()}
    results = {}
    rm, planner = algo.error_model, copy.deepcopy(algo.cfg.planner)
    for arm in arms:
        algo.mappo.load_state_dict(copy.deepcopy(start_ppo))
        for k, g in algo.generators.items():
            g.set_state(start_gens[k])
        # the method: mag / deviation imagine with the planner (L candidates), mamba with L = 1
        algo.cfg.algo = "mamba" if arm == "mamba" else "mag"
        algo.error_model, algo.cfg.planner = rm, copy.deepcopy(planner)
        if arm == "deviation":
            algo.error_model = LatentDeviationScore()
            algo.cfg.planner.score, algo.cfg.planner.discount = "deviation", deviation_discount
        results[arm] = _rounds(algo, seed, rounds, eval_every, episodes, t0, log, arm if len(arms) > 1 else None)
        if arm == "deviation":
            results[arm]["planner"] = {"score": "deviation", "discount": deviation_discount}
    algo.error_model, algo.cfg.planner = rm, planner
    record["model_unchanged"] = all(torch.equal(a, b) for a, b in zip(frozen, algo.model.parameters()))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    if len(arms) == 1:
        return {**record, **results[arms[0]]}
    record["arms"] = results
    return record


def _rounds(algo: OnlineAlgorithm, seed: int, rounds: int, eval_every: int, episodes: int, t0: float, log,
            arm: str | None) -> dict:
    tag = {"arm": arm} if arm else {}
    out: dict = {"evals": []}
    imagined: list[float] = []
    for r in range(rounds + 1):
        if r % eval_every == 0:
            row = {**tag, "round": r, **real_eval(algo, episodes, seed),
                   "imagined_return": float(np.mean(imagined[-eval_every:])) if imagined else None,
                   "seconds": round(time.perf_counter() - t0, 1)}
            out["evals"].append(row)
            log(json.dumps(row))
        if r == rounds:
            break
        batch, info = algo.imagine_batch()
        ret = (batch["rewards"] * batch["valid"]).sum(0)
        imagined.append(float(ret.mean()))
        metrics = algo.mappo.update(batch, algo.generators["ppo"])
        if (r + 1) % eval_every == 0:
            log(json.dumps({**tag, "round": r + 1, "imagined_valid_frac": round(info["imagined_valid_frac"], 3),
                            "imagined_cont_mean": round(info.get("imagined_cont_mean", 1.0), 3),
                            "entropy": round(metrics["entropy"], 3), "clip_frac": round(metrics["clip_frac"], 3)}))
    first, last = out["evals"][0], out["evals"][-1]
    out["gain"] = {m: last[m] - first[m] for m in ("greedy_return", "stochastic_return")}
    return out


def load_record(path: str, arm: str | None = None) -> dict:
    """A record file (--out), or the log of a run (its evaluation lines; an unfinished run); ``arm``
    picks one arm of a paired run (--arms)."""
    with open(path) as f:
        text = f.read()
    try:
        rec = json.loads(text)
        if arm is not None:
            if "arms" not in rec or arm not in rec["arms"]:
                raise SystemExit(f"{path} has no arm {arm!r}")
            return {**{k: v for k, v in rec.items() if k != "arms"}, **rec["arms"][arm]}
        return rec
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        evals = [r for r in rows if "greedy_return" in r and r.get("arm") == arm]
        summary = next((r for r in rows if r.get("summary")), {})
        return {"seed": summary.get("seed", path), "map": summary.get("map", "2s3z"), "evals": evals}


def _mean_se(xs: list) -> str:
    """mean ± standard error of the non-None values ("-" if none; the value alone if one)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1) / np.sqrt(len(xs)):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(paths: list[str], arm: str | None = None) -> str:
    """Markdown: per evaluated round, mean ± standard error over the runs of imagined, greedy and
    stochastic return and the win rates (n = runs that reached the round)."""
    recs = [load_record(p, arm) for p in paths]
    rounds = sorted({e["round"] for r in recs for e in r["evals"]})
    lines = ["| round | runs | imagined return | real greedy return | real stochastic return | greedy win | "
             "stochastic win |", "|---|---|---|---|---|---|---|"]

    for rd in rounds:
        es = [e for r in recs for e in r["evals"] if e["round"] == rd]
        cells = [_mean_se([e[k] for e in es]) for k in ("imagined_return", "greedy_return", "stochastic_return",
                                                          "greedy_win_rate", "stochastic_win_rate")]
        lines.append(f"| {rd} | {len(es)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paths: list[str], arms: tuple[str, str] = ("mamba", "mag"), key: str = "greedy_return") -> str:
    """Markdown: per evaluated round, each arm's ``key`` (mean ± s.e. over the seeds, n = seeds with
    both arms at that round) and the paired difference arms[1] - arms[0] (per seed, and its mean ± s.e.)."""
    a, b = ([load_record(p, arm) for p in paths] for arm in arms)
    rounds = sorted({e["round"] for r in a for e in r["evals"]})
    lines = [f"| round | seeds | {arms[0]} | {arms[1]} | {arms[1]} - {arms[0]}, per seed | mean difference |",
             "|---|---|---|---|---|---|"]

    for rd in rounds:
        pairs = []
        for ra, rb in zip(a, b):
            ea = next((e for e in ra["evals"] if e["round"] == rd), None)
            eb = next((e for e in rb["evals"] if e["round"] == rd), None)
            if ea is not None and eb is not None and ea[key] is not None and eb[key] is not None:
                pairs.append((ea[key], eb[key]))
        if not pairs:
            continue
        xa, xb = [p[0] for p in pairs], [p[1] for p in pairs]
        diff = [y - x for x, y in pairs]
        per_seed = " / ".join(f"{d:+.3f}" for d in diff)
        mean = _mean_se(diff) if len(diff) > 1 else f"{diff[0]:+.3f}"
        lines.append(f"| {rd} | {len(pairs)} | {_mean_se(xa)} | {_mean_se(xb)} | {per_seed} | {mean} |")
    return "\n".join(lines)


def plot(paths: list[str], png: str, arm: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [load_record(p, arm) for p in paths]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, style, label in (("imagined_return", ":", "imagined (H-step, model)"),
                              ("greedy_return", "-", "real, greedy"), ("stochastic_return", "--", "real, stochastic")):
        for i, rec in enumerate(recs):
            xs = [e["round"] for e in rec["evals"] if e[key] is not None]
            ys = [e[key] for e in rec["evals"] if e[key] is not None]
            ax.plot(xs, ys, style, color=f"C{i}", label=f"seed {rec['seed']}: {label}")
    ax.set_xlabel("imagination + PPO rounds (model frozen)")
    ax.set_ylabel("return")
    ax.set_title(f"Frozen-model transfer, SMAX {recs[0]['map']}" + (f", {arm}" if arm else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--map", default="2s3z")
    p.add_argument("--collect", type=int, default=5000)
    p.add_argument("--model-steps", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--agent-input", default="obs", choices=["obs", "latent"], help="online.agent_input")
    p.add_argument("--critic", default=None, choices=["state", "mixer", "attention"], help="online.mappo.critic")
    p.add_argument("--arms", default="mamba",
                   help="comma-separated imagination methods on ONE fitted, frozen model, each from the same "
                        "initial policy: mamba (L = 1), mag (the planner, R_m) and/or deviation (the planner "
                        "scored by the distance from the prior's mean), e.g. --arms mamba,mag")
    p.add_argument("--deviation-discount", type=float, default=0.0,
                   help="arm deviation: planner.discount (0 = the candidates' own terms, no look-ahead)")
    p.add_argument("--pair", default="mamba,mag", help="with --paired: the two arms compared, e.g. mamba,deviation")
    p.add_argument("--arm", default=None, help="with --table/--plot: which arm of paired records")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", nargs="*", default=None, help="record (or log) files to plot (no run)")
    p.add_argument("--table", nargs="*", default=None, help="record (or log) files: markdown table (no run)")
    p.add_argument("--paired", nargs="*", default=None,
                   help="records of paired runs (--arms mamba,mag): per round, both arms and their difference")
    p.add_argument("--key", default="greedy_return", help="with --paired: greedy_return | stochastic_return | ...")
    p.add_argument("--png", default="frozen_model_transfer.png")
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot, args.png, args.arm)
        return
    if args.table:
        print(table(args.table, args.arm))
        return
    if args.paired:
        pair = tuple(a.strip() for a in args.pair.split(","))
        if len(pair) != 2:
            raise SystemExit(f"--pair {args.pair!r}: two arms, e.g. mamba,deviation")
        print(paired_table(args.paired, pair, key=args.key))
        return
    cfg = OnlineConfig(algo="mamba", map=args.map, agent_input=args.agent_input)
    if args.critic:
        cfg.mappo.critic = args.critic
    rec = run(args.seed, args.map, args.collect, args.model_steps, args.rounds, args.eval_every, args.episodes,
              config=cfg, arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()),
              deviation_discount=args.deviation_discount)
    rec["agent_input"], rec["critic"] = cfg.agent_input, cfg.mappo.critic
    print(json.dumps({"summary": True, **{k: v for k, v in rec.items() if k not in ("evals", "arms")}}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
