"""TRUE accumulated model error along model rollouts, with and without the MAG planner (MAG Figure 3).

From the same B dataset start states, roll the policy k steps in the world model (plain
``model_rollout`` without and with ``planner=``), then REPLAY each rollout's actions in the real MuJoCo
simulator from the same start state (qpos/qvel set from the state). Per step t = 1..k report the
mean L2 distance between the model's state and the simulator's state, and the wall-clock overhead
of the planner. Terminations are switched off in these rollouts so every row has k steps.

    python benchmarks/model_error_analysis.py --dataset ant-medium --k 10 --l 4 --h 4 --starts 200 \
        --out benchmarks/results/mag
    # no ant-medium here yet: a random-action ant-4x2 dataset made by the script
    python benchmarks/model_error_analysis.py --make-random 20000 --env ant-4x2 --out ...

Policy: ``--run RUN_DIR`` loads a trained run's policy (offmarl.driver.load_trained); without it,
a freshly initialised MA-PPO policy (observation normaliser fitted on the data), i.e. Gaussian
actions around ~0: close to the random-action data's behaviour, far from a trained policy's.

State -> simulator: ant-4x2 qpos = [x = 0, y = 0, state[0:13]], qvel = state[13:27] (x, y do not
enter the 27-d state or the dynamics of the rest); reacher-2x1 joint angles = atan2(sin, cos),
target = state[4:6], qvel = [state[6:8], 0, 0]. A round-trip check (state -> sim -> state) is reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def set_sim_state(env, state: np.ndarray) -> None:
    import mujoco

    data = env.mujoco_data
    model = env._single.unwrapped.model
    if env.name == "ant-4x2":
        data.qpos[:] = np.concatenate([[0.0, 0.0], state[0:13]])
        data.qvel[:] = state[13:27]
    elif env.name == "reacher-2x1":
        q = np.arctan2(state[2:4], state[0:2])
        data.qpos[:] = np.concatenate([q, state[4:6]])
        data.qvel[:] = np.concatenate([state[6:8], [0.0, 0.0]])
    else:
        raise SystemExit(f"model_error_analysis: no state -> simulator map for {env.name} (ant-4x2, reacher-2x1)")
    mujoco.mj_forward(model, data)


def sim_state(env) -> np.ndarray:
    return np.asarray(env._single.unwrapped._get_obs(), dtype=np.float64)


def replay(env, start: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """start [B, S], actions [k, B, N, A] (in the box) -> true states [k, B, S] after each step."""
    k, b = actions.shape[:2]
    out = np.zeros((k, b, start.shape[1]))
    for i in range(b):
        env.reset(seed=i)
        set_sim_state(env, start[i])
        for t in range(k):
            _, s, _, _, _, _ = env.step(actions[t, i])
            out[t, i] = s
    return out


def random_dataset(env_name: str, size: int, seed: int, episode: int = 100):
    """Uniform random joint actions; episodes of ``episode`` steps (or until the env terminates)."""
    from offmarl.data.dataset import DatasetMeta, MultiAgentDataset
    from offmarl.envs import make_env

    env = make_env(env_name)
    spec = env.spec
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("states", "next_states", "actions", "rewards", "terminals", "timeouts")}
    ep = 0
    while len(cols["states"]) < size:
        _, s, _ = env.reset(seed=seed * 100_000 + ep)
        ep += 1
        for t in range(episode):
            a = np.zeros((spec.n_agents, max(spec.action_dims)), dtype=np.float32)
            for i, d in enumerate(spec.action_dims):
                a[i, :d] = rng.uniform(-1, 1, d)
            _, ns, r, term, trunc, _ = env.step(a)
            last = t == episode - 1 or len(cols["states"]) == size - 1
            for k, v in zip(cols, (s, ns, a, r, term, (trunc or last) and not term)):
                cols[k].append(v)
            s = ns
            if term or trunc or last:
                break
    arr = {k: np.asarray(v) for k, v in cols.items()}
    st, nst = arr["states"].astype(np.float32), arr["next_states"].astype(np.float32)
    meta = DatasetMeta(env=env_name, obs_scheme=spec.obs_scheme, n_agents=spec.n_agents, obs_dims=spec.obs_dims,
                       action_dims=spec.action_dims, state_dim=spec.state_dim, discrete=False,
                       name=f"{env_name}-random{size}", source="benchmarks/model_error_analysis.py",
                       generator="uniform random joint actions")
    return MultiAgentDataset(st, nst, env.observe(st).astype(np.float32), env.observe(nst).astype(np.float32),
                             arr["actions"].astype(np.float32), arr["rewards"].astype(np.float32),
                             arr["terminals"].astype(bool), arr["timeouts"].astype(bool), meta)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ant-medium", help="registry name or file (used when available locally)")
    p.add_argument("--make-random", type=int, default=0, metavar="N",
                   help="if --dataset is not available: generate N random-action transitions of --env")
    p.add_argument("--env", default="ant-4x2", help="env of --make-random (ant-4x2 or reacher-2x1)")
    p.add_argument("--run", default=None, help="a trained run directory whose policy to roll (default: fresh MA-PPO)")
    p.add_argument("--k", type=int, default=10, help="rollout length")
    p.add_argument("--l", type=int, default=4, help="MAG candidates per step")
    p.add_argument("--h", type=int, default=4, help="MAG lookahead horizon (incl. the candidate step)")
    p.add_argument("--candidates", default="elites", choices=["elites", "samples", "both"])
    p.add_argument("--scores", default="error_model,uncertainty", help="comma list of planner scores to compare")
    p.add_argument("--starts", type=int, default=200, help="start states B")
    p.add_argument("--wm-steps", type=int, default=3000, help="world-model fit steps (cached)")
    p.add_argument("--error-steps", type=int, default=3000, help="R_m fit steps (cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/model_error")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")

    from offmarl.algos.mappo import MAPPO, MAPPOConfig
    from offmarl.algos.moma_ppo import default_cache_dir
    from offmarl.data import registry
    from offmarl.envs import make_env
    from offmarl.errors import OffmarlError
    from offmarl.planners.mag import PlannerConfig
    from offmarl.worldmodel import EnsembleConfig, RolloutConfig, dataset_box, load_or_fit, make_planner, model_rollout

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    t0 = time.perf_counter()
    algo = None
    if args.run:
        from offmarl.driver import load_trained

        algo, ds, _, _ = load_trained(args.run, device=args.device, log=lambda *a: None, policy_only=False)
        data_desc = f"{ds.meta.name} (from run {args.run})"
    else:
        ds = None
        try:
            ds = registry.load(args.dataset, generate=False, log=lambda *a: None)
            data_desc = f"{args.dataset} ({len(ds)} transitions)"
        except OffmarlError as exc:
            if not args.make_random:
                raise SystemExit(f"dataset {args.dataset!r} is not available here ({exc}); "
                                 f"pass --make-random N to generate a random-action {args.env} dataset") from None
        if ds is None:
            ds = random_dataset(args.env, args.make_random, args.seed)
            data_desc = f"{ds.meta.name}: {len(ds)} uniform-random-action transitions made by this script"
    print(f"data: {data_desc} ({time.perf_counter() - t0:.0f}s)", flush=True)
    env = make_env(ds.meta.env, obs=ds.meta.obs_scheme)

    if algo is not None:
        model, policy = algo.model, algo.policy
        model_dir = Path(algo.model_info["path"]).parent if algo.model_info.get("path") else None
    else:
        wm_cfg = EnsembleConfig(max_steps=args.wm_steps, seed=args.seed)
        model, info = load_or_fit(ds, wm_cfg, default_cache_dir(), device=dev)
        model_dir = Path(info["path"]).parent
        print(f"world model {'loaded' if info['cached'] else 'fitted'} {info['path']} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
        mappo = MAPPO.from_spec(env.spec, dataclasses.replace(MAPPOConfig(), history_len=0), dev)
        t = ds.tensors(dev)
        mappo.update_normalisers(t["observations"], t["states"])
        policy = mappo.policy
    model.eval()
    box = dataset_box(ds, dev)
    # no termination: every row runs k steps, so each step's error averages over all B rows
    cfg = RolloutConfig(horizon=args.k, eps_g_threshold=math.inf, done_threshold=2.0)
    gamma = 0.99  # HALT value only; with no uncertainty threshold it never applies
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=gen, device=dev)[: args.starts]
    start = {"states": ds.tensors(dev)["states"][idx]}
    start_np = start["states"].double().cpu().numpy()

    # round trip state -> simulator -> state (checks set_sim_state)
    rt = []
    for i in range(min(20, len(start_np))):
        env.reset(seed=i)
        set_sim_state(env, start_np[i])
        rt.append(np.abs(sim_state(env) - start_np[i]).max())
    print(f"state round-trip max error {max(rt):.2e}", flush=True)

    def measure(name, roll):
        g = torch.Generator(device=dev).manual_seed(args.seed + 1)
        ts = time.perf_counter()
        batch, info = roll(g)
        sec = time.perf_counter() - ts
        actions = policy.env_actions(batch["actions"]).cpu().numpy()
        true = replay(env, start_np, actions)
        err = np.linalg.norm(batch["next_states"].double().cpu().numpy() - true, axis=-1)  # [k, B]
        print(f"{name}: rollout {sec:.2f}s, error per step {np.round(err.mean(1), 3).tolist()}", flush=True)
        return {"seconds": sec, "mean": err.mean(1).tolist(), "sem": (err.std(1) / np.sqrt(err.shape[1])).tolist(),
                "info": {k: float(v) for k, v in info.items()}}

    results = {"plain": measure("plain", lambda g: model_rollout(model, policy, start, env.observe, cfg, box, g,
                                                                 gamma=gamma))}
    planners = {}
    for score in [s for s in args.scores.split(",") if s]:
        pc = PlannerConfig(kind="mag", l=args.l, h=args.h, score=score, candidates=args.candidates,
                           error_steps=args.error_steps)
        ts = time.perf_counter()
        planners[score] = make_planner(pc, model, ds, env.observe, model_dir, dev)
        fit_s = time.perf_counter() - ts
        results[f"mag-{score}"] = measure(
            f"mag-{score}", lambda g, pl=planners[score]: model_rollout(model, policy, start, env.observe, cfg, box, g,
                                                                        gamma=gamma, planner=pl))
        results[f"mag-{score}"]["setup_seconds"] = fit_s
        results[f"mag-{score}"]["error_model"] = {k: v for k, v in planners[score].info.items()
                                                  if isinstance(v, (int, float, str, bool))}
        results[f"mag-{score}"]["overhead_ratio"] = results[f"mag-{score}"]["seconds"] / results["plain"]["seconds"]

    meta = {"data": data_desc, "env": ds.meta.env, "policy": args.run or "fresh MA-PPO (untrained)",
            "k": args.k, "l": args.l, "h": args.h, "candidates": args.candidates, "starts": args.starts,
            "wm_steps": args.wm_steps, "error_steps": args.error_steps, "device": str(dev),
            "threads": torch.get_num_threads(), "round_trip_max_error": float(max(rt)),
            "command": "python benchmarks/model_error_analysis.py "
                       + " ".join(argv if argv is not None else sys.argv[1:])}
    report = {"meta": meta, "results": results}
    (out / "model_error.json").write_text(json.dumps(report, indent=2))

    names = list(results)
    lines = ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t in range(args.k):
        lines.append(f"| {t + 1} | " + " | ".join(f"{results[n]['mean'][t]:.3f} ± {results[n]['sem'][t]:.3f}"
                                                 for n in names) + " |")
    lines.append("| rollout s | " + " | ".join(f"{results[n]['seconds']:.2f}" for n in names) + " |")
    lines.append("| overhead | " + " | ".join(f"{results[n].get('overhead_ratio', 1.0):.1f}x" for n in names) + " |")
    (out / "model_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, args.k + 1)
    for n in names:
        m, s = np.array(results[n]["mean"]), np.array(results[n]["sem"])
        ax.plot(steps, m, marker="o", label=n)
        ax.fill_between(steps, m - s, m + s, alpha=0.2)
    ax.set_xlabel("rollout step")
    ax.set_ylabel("mean L2 error, model state vs simulator")
    ax.set_title(f"{ds.meta.env}: true model error (L={args.l}, H={args.h}, B={args.starts})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "model_error.png", dpi=120)
    print(f"wrote {out}/model_error.{{json,md,png}} ({time.perf_counter() - t0:.0f}s)")
    return report


if __name__ == "__main__":
    main()
