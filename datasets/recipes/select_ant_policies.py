"""Pick which exported SAC checkpoints play random / medium / expert / full-replay for ant.

    python datasets/recipes/select_ant_policies.py [--policy-dir offmarl/data/policies/ant]

Reads progress.csv (deterministic evaluation return of every exported checkpoint, 5 episodes
during training), re-evaluates every checkpoint with ``--episodes`` (default 20) deterministic
episodes on seeds the training never used (5 noisy episodes would pick the luckiest checkpoint
as "expert"), and writes selection.json next to it:
  random       step 0 (the initialised actor)
  expert       the checkpoint with the highest evaluation return
  medium       among checkpoints before the expert, the one whose return is closest to half the
               expert's, required to lie between one third and two thirds of it (D4RL: "about a
               third"; the issue asks for clearly intermediate)
  full_replay  every checkpoint from step 0 to the expert's (the learning history)
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "offmarl" / "data" / "policies" / "ant"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy-dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--episodes", type=int, default=20,
                   help="re-evaluation episodes per checkpoint (0 = use progress.csv)")
    args = p.parse_args()
    rows = list(csv.DictReader(open(args.policy_dir / "progress.csv")))
    rows = [{"step": int(r["step"]), "ret": float(r["eval_return"])} for r in rows]
    name = lambda r: f"sac_step{r['step']:07d}.pt"  # noqa: E731
    if args.episodes:
        for r in rows:
            r["ret_training_eval"] = r["ret"]
            r["ret"], r["ret_std"] = evaluate(args.policy_dir / name(r), args.episodes)
            print(f"step {r['step']:>7}: {r['ret']:8.1f} +- {r['ret_std']:6.1f} ({args.episodes} episodes; "
                  f"training eval {r['ret_training_eval']:.1f})", flush=True)
    expert = max(rows, key=lambda r: r["ret"])
    lo, hi = expert["ret"] / 3, 2 * expert["ret"] / 3
    cands = [r for r in rows if r["step"] < expert["step"] and lo <= r["ret"] <= hi]
    if not cands:
        raise SystemExit(f"no checkpoint before step {expert['step']} has a return in [{lo:.0f}, {hi:.0f}] "
                         f"(1/3..2/3 of the expert's {expert['ret']:.0f}); export more often or train longer")
    medium = min(cands, key=lambda r: abs(r["ret"] - expert["ret"] / 2))
    sel = {
        "random": name(rows[0]), "medium": name(medium), "expert": name(expert),
        "full_replay": [name(r) for r in rows if r["step"] <= expert["step"]],
        "returns": {"random": rows[0]["ret"], "medium": medium["ret"], "expert": expert["ret"],
                    "medium_fraction_of_expert": medium["ret"] / expert["ret"]},
        "evaluation": {"episodes": args.episodes or 5, "deterministic": True,
                       "per_checkpoint": {name(r): {k: v for k, v in r.items() if k != "step"} for r in rows}},
    }
    (args.policy_dir / "selection.json").write_text(json.dumps(sel, indent=2))
    print(json.dumps(sel["returns"], indent=2))


def evaluate(path: Path, episodes: int, n_envs: int = 10) -> tuple[float, float]:
    """Deterministic return of an exported actor on Ant-v5 (27-d observation), seeds 10_000+."""
    import gymnasium as gym
    import torch

    from offmarl.data.behaviour import load_actor

    torch.set_num_threads(1)
    actor = load_actor(path)
    returns: list[float] = []
    for first in range(0, episodes, n_envs):
        envs = [gym.make("Ant-v5", include_cfrc_ext_in_observation=False) for _ in range(min(n_envs, episodes - first))]
        obs = np.stack([e.reset(seed=10_000 + first + i)[0] for i, e in enumerate(envs)])
        ret, alive = np.zeros(len(envs)), np.ones(len(envs), dtype=bool)
        while alive.any():
            act = actor.act(obs, deterministic=True).numpy()
            for i in np.flatnonzero(alive):
                obs[i], r, term, trunc, _ = envs[i].step(act[i])
                ret[i] += r
                alive[i] = not (term or trunc)
        returns += ret.tolist()
        for e in envs:
            e.close()
    return float(np.mean(returns)), float(np.std(returns))


if __name__ == "__main__":
    main()
