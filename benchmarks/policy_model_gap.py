"""Does a trained MOMA-PPO policy exploit its world model, and how? (ant-medium diagnosis)

For a run directory (its policy and its world model):

1. roll ``--episodes`` deterministic episodes of the policy in the REAL simulator;
2. one-step check on those real transitions: the elite-mean model's prediction error, eps_g
   and the MOPO aleatoric term, next to the same quantities on dataset transitions, and the
   share of the policy's transitions above the run's eps_g threshold (would the penalties and
   the HALT have seen these states?);
3. foresight of the episode's end: for every episode the simulator ended (ant: torso height
   left [0.2, 1]), start from the real state ``b`` steps before the end and roll the policy
   CLOSED-LOOP in the model for b + 20 steps (64 rows; the chosen elite's mean; the same where a
   row ends as soon as ANY elite's mean breaks the rule; with ``--sample`` the elite's Gaussian
   sample); report the share of model rollouts that end by the env's termination rule on
   predicted states. Near 1: the model foresees the fall and the agents
   were trained to avoid it; near 0: the model does not see it coming.

    python benchmarks/policy_model_gap.py RUN_DIR --episodes 5 --back 5 20 40 --sample \
        --out docs/results/policy_model_gap_ant

Writes ``gap.json`` and ``gap.md`` under ``--out`` (printed as well).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def real_episodes(env, policy, episodes: int, seed: int) -> list[dict]:
    out = []
    for ep in range(episodes):
        obs, state, _ = env.reset(seed=seed + ep)
        states, actions, rewards, term = [], [], [], False
        for _ in range(1000):
            a, _ = policy.act(torch.as_tensor(obs, dtype=torch.float32)[None], None, None, True, None)
            a = a.clamp(min=env.spec.action_low, max=env.spec.action_high)[0].numpy()
            obs, nxt, r, term, trunc, _ = env.step(a)
            states.append(state)
            actions.append(a)
            rewards.append(r)
            state = nxt
            if term or trunc:
                break
        states.append(state)
        out.append({"states": np.asarray(states, np.float32), "actions": np.asarray(actions, np.float32),
                    "rewards": np.asarray(rewards), "terminated": bool(term)})
    return out


@torch.no_grad()
def one_step(model, states, actions, next_states) -> dict[str, np.ndarray]:
    from offmarl.worldmodel.uncertainty import eps_aleatoric, eps_g

    mean, logvar, _ = model.predict(states, model.encode_actions(actions))
    em, elv = mean[model.elite_idx], logvar[model.elite_idx]
    err = (em[..., :-1].mean(0) - next_states).norm(dim=-1)
    return {"error": err.numpy(), "eps_g": eps_g(em).numpy(), "aleatoric": eps_aleatoric(elv).numpy()}


@torch.no_grad()
def foresight(env, model, policy, start: np.ndarray, steps: int, rows: int, sample: bool, seed: int,
              any_elite: bool = False) -> float:
    """Share of ``rows`` closed-loop model rollouts from ``start`` that end within ``steps``
    (``any_elite``: a row ends when ANY elite's mean breaks the rule, not only the chosen one)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(start, dtype=torch.float32)[None].repeat(rows, 1)
    ended = torch.zeros(rows, dtype=torch.bool)
    for _ in range(steps):
        a, _ = policy.act(env.observe(s), None, None, True, None)
        a = a.clamp(min=env.spec.action_low, max=env.spec.action_high)
        out = model.step(s, model.encode_actions(a), g, sample=sample)
        s = out["next_states"]
        ended |= env.terminated(s)
        if any_elite:
            ended |= env.terminated(out["elite_means"][..., :-1]).any(0)
    return float(ended.float().mean())


def quantiles(x: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in np.quantile(x, [0.5, 0.9, 0.99])]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--back", type=int, nargs="+", default=[5, 20, 40])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="also roll with the elite's Gaussian samples")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")

    from offmarl.driver import load_trained
    from offmarl.errors import OffmarlError

    try:
        algo, ds, _run, ckpt = load_trained(args.run_dir, policy_only=False, device="cpu", log=lambda *a: None)
    except OffmarlError as exc:
        raise SystemExit(f"policy_model_gap: cannot load {args.run_dir}: {exc}") from None
    if not hasattr(algo, "model"):
        raise SystemExit(f"policy_model_gap: {args.run_dir} is not a MOMA-PPO run (no world model)")
    env, model, policy = algo.env, algo.model, algo.policy
    if not env.has_termination_rule:
        raise SystemExit(f"{env.name} has no termination rule: nothing to foresee")
    eps = real_episodes(env, policy, args.episodes, args.seed)

    t = ds.tensors("cpu")
    idx = torch.randint(len(ds), (10_000,), generator=torch.Generator().manual_seed(0))
    data = one_step(model, t["states"][idx], t["actions"][idx], t["next_states"][idx])
    pol = [one_step(model, torch.as_tensor(e["states"][:-1]), torch.as_tensor(e["actions"]),
                    torch.as_tensor(e["states"][1:])) for e in eps]
    pol = {k: np.concatenate([d[k] for d in pol]) for k in data}
    thr = algo.rollout_cfg.eps_g_threshold

    modes = [("mean", False, False), ("mean, any elite ends", False, True)]
    if args.sample:
        modes.append(("sample", True, False))
    fores = {}
    for back in args.back:
        for label, sample, any_elite in modes:
            vals = [foresight(env, model, policy, e["states"][len(e["actions"]) - back], back + 20, args.rows, sample,
                              args.seed + i, any_elite)
                    for i, e in enumerate(eps) if e["terminated"] and len(e["actions"]) >= back]
            fores[f"{back} ({label})"] = [round(v, 3) for v in vals]

    res = {
        "run": str(args.run_dir), "checkpoint": ckpt, "episodes": args.episodes,
        "returns": [round(float(e["rewards"].sum()), 1) for e in eps],
        "lengths": [len(e["actions"]) for e in eps],
        "terminated": [e["terminated"] for e in eps],
        "real_reward_per_step": round(float(np.mean(np.concatenate([e["rewards"] for e in eps]))), 3),
        "eps_g_threshold": round(thr, 3),
        "one_step": {
            "data": {k: quantiles(v) for k, v in data.items()},
            "policy": {k: quantiles(v) for k, v in pol.items()},
            "policy_share_above_threshold": round(float((pol["eps_g"] > thr).mean()), 4),
        },
        "foresight_share_ended": fores,
    }
    lines = [
        f"# Policy vs model: {args.run_dir} ({ckpt})", "",
        (f"Real episodes: returns {res['returns']}, lengths {res['lengths']}, "
         f"ended by the simulator {res['terminated']}; real reward per step {res['real_reward_per_step']}."), "",
        "| one step (q50 / q90 / q99) | dataset transitions | the policy's real transitions |", "|---|---|---|",
    ]
    for k in data:
        lines.append(f"| {k} | {' / '.join(map(str, res['one_step']['data'][k]))} | "
                     f"{' / '.join(map(str, res['one_step']['policy'][k]))} |")
    lines += ["", (f"Share of the policy's transitions with eps_g above the run's threshold "
                   f"({res['eps_g_threshold']}): {res['one_step']['policy_share_above_threshold']}."), "",
              (f"| closed-loop model rollout from b steps before the real end ({args.rows} rows, b + 20 steps) "
              "| share of rows the model ends, per ended episode |"), "|---|---|"]
    for k, v in fores.items():
        lines.append(f"| b = {k} | {v} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gap.json").write_text(json.dumps(res, indent=1))
        (out / "gap.md").write_text(md)
    return res


if __name__ == "__main__":
    main()
