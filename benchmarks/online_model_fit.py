"""How well the online world model fits REAL SMAX battles: held-out errors before and after N
model steps (docs/online.md, "World-model fit"). One JSON line per checkpoint, the last line the
summary.

Data: ``--collect`` real env steps of the initial (untrained, near-uniform) MA-PPO policy for
training, a separate ``--heldout`` steps from another seed's policy and env copies for evaluation
(``offmarl online``'s collection, the same replay rows). The model trains exactly as in a run
(``OnlineAlgorithm._train_model``: ``model.batch`` sequences of ``model.seq_len`` per step).

Held-out metrics (per agent, Euclidean norm of the observation error, agents alive at the
target row only; the same fixed held-out sequences at every checkpoint):

    posterior     decoded posterior state vs the observation it saw (reconstruction)
    prior_1       one prior step from the posterior at t under the actions taken, vs o_{t+1}
    open_loop_k   k prior steps from the posterior at row ``--burn-in`` under the actions taken
                  (sequences without an episode boundary in the window), vs o_{t+k}
    mean_obs      predicting the training data's per-agent mean observation (the baseline)
    terminal_recall   share of terminal rows where the predicted battle continuation < 0.5
    false_end_rate    share of non-terminal rows where it is < 0.5
    kl            the model's KL term (training batches, mean over the last checkpoint's steps)

    OFFMARL_NUM_THREADS=1 python benchmarks/online_model_fit.py --map 2s3z --collect 5000 \\
        --heldout 2000 --steps 400 --every 100 --seed 0 --out fit.json
    # a variant: any LatentModelConfig field
    python benchmarks/online_model_fit.py --set free_nats=1.0 ...

The script uses only the model's public pieces (observe, candidates, decode, obs_head), so the
same command measures an older version of offmarl/worldmodel/latent.py for a before/after.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import time

import numpy as np
import torch

from offmarl.algos.online import OnlineAlgorithm, OnlineConfig
from offmarl.worldmodel.latent import LatentModelConfig


def _parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = type(getattr(LatentModelConfig(), k))(v)
    return out


def collect(cfg: OnlineConfig, seed: int, steps: int) -> OnlineAlgorithm:
    algo = OnlineAlgorithm(None, cfg, "cpu", seed=seed)
    algo.cfg.collect_steps = steps
    algo._reset()
    algo._collect_into_replay()
    return algo


def _has(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@torch.no_grad()
def evaluate(model, batch: dict, mean_obs: torch.Tensor, k: int, burn_in: int, seed: int) -> dict:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    obs, act, first, term, alive = (batch[x] for x in ("obs", "action", "first", "terminal", "alive"))
    kw = {"alive": alive} if _has(model.observe, "alive") else {}
    feat = model.observe(obs, act, first, g, **kw)["feat"]  # [T, B, N, D]
    t_len, b, n = alive.shape
    w = alive.float()

    def err(pred, target, mask):
        e = (pred - target).norm(dim=-1)
        return float((e * mask).sum() / mask.sum().clamp_min(1))

    out = {"posterior": err(model.obs_head(feat), obs, w), "mean_obs": err(mean_obs.expand_as(obs), obs, w)}
    # one prior step from row t to t+1 (same episode, t not terminal)
    src, a = feat[:-1].flatten(0, 1), act[:-1].flatten(0, 1)
    ckw = {"act_mask": alive[:-1].flatten(0, 1)} if _has(model.candidates, "act_mask") else {}
    nxt = model.candidates(src, a, 1, g, **ckw)[:, 0]
    ok = (~first[1:] & ~term[:-1]).float()[..., None] * w[1:]
    out["prior_1"] = err(model.obs_head(nxt).view(t_len - 1, b, n, -1), obs[1:], ok)
    # k-step open loop from the posterior at row burn_in
    window = ~first[burn_in + 1:burn_in + k + 1].any(0) & ~term[burn_in:burn_in + k].any(0)  # [B]
    f = feat[burn_in]
    agents = alive[burn_in]
    open_loop = []
    for j in range(1, k + 1):
        ckw = {"act_mask": agents} if _has(model.candidates, "act_mask") else {}
        f = model.candidates(f, act[burn_in + j - 1], 1, g, **ckw)[:, 0]
        mask = window.float()[:, None] * w[burn_in + j]
        open_loop.append(round(err(model.obs_head(f), obs[burn_in + j], mask), 4))
    out["open_loop"] = open_loop
    out["open_loop_windows"] = int(window.sum())
    # termination: the battle's continuation predicted from the posterior
    cont = model.decode(feat.flatten(0, 1))["cont"].view(t_len, b)
    ends = cont < 0.5
    out["terminal_rows"] = int(term.sum())
    out["terminal_recall"] = float(ends[term].float().mean()) if term.any() else float("nan")
    out["false_end_rate"] = float(ends[~term].float().mean())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="2s3z")
    p.add_argument("--collect", type=int, default=5000, help="real env steps for training")
    p.add_argument("--heldout", type=int, default=2000, help="real env steps for evaluation (another seed)")
    p.add_argument("--steps", type=int, default=400, help="model gradient steps")
    p.add_argument("--every", type=int, default=100, help="evaluate every N model steps")
    p.add_argument("--eval-batch", type=int, default=128, help="held-out sequences")
    p.add_argument("--k", type=int, default=8, help="open-loop steps")
    p.add_argument("--burn-in", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="LatentModelConfig overrides, e.g. free_nats=1.0")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))

    cfg = OnlineConfig(algo="mamba", map=args.map, model=LatentModelConfig(**_parse_set(args.set)))
    t0 = time.perf_counter()
    train = collect(cfg, args.seed, args.collect)
    held = collect(OnlineConfig(algo="mamba", map=args.map, model=cfg.model), args.seed + 1000, args.heldout)
    seq = args.burn_in + args.k + 1
    batch = held.replay.sample(args.eval_batch, max(seq, cfg.model.seq_len), torch.Generator().manual_seed(1))
    d, c = train.replay.data, train.replay.count
    obs = np.concatenate([d["obs"][s, :c[s]] for s in range(len(c))])
    alive = np.concatenate([d["alive"][s, :c[s]] for s in range(len(c))])
    mean_obs = torch.as_tensor((obs * alive[..., None]).sum(0) / np.maximum(alive.sum(0), 1)[:, None])
    collect_s = time.perf_counter() - t0

    rows = []
    done, kl = 0, None
    t_fit = 0.0
    while True:
        row = {"model_steps": done, **evaluate(train.model, batch, mean_obs, args.k, args.burn_in, args.seed)}
        if kl is not None:
            row["kl"], row["obs_loss"] = round(kl["kl"], 4), round(kl["obs_loss"], 4)
        row["fit_seconds"] = round(t_fit, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if done >= args.steps:
            break
        n = min(args.every, args.steps - done)
        train.cfg.model_updates = n
        t1 = time.perf_counter()
        kl = train._train_model()
        t_fit += time.perf_counter() - t1
        done += n
    summary = {"summary": True, "map": args.map, "collect": args.collect, "heldout": args.heldout,
               "steps": args.steps, "seed": args.seed, "set": args.set, "model": cfg.model.to_dict(),
               "collect_seconds": round(collect_s, 1), "before": rows[0], "after": rows[-1],
               "load_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
