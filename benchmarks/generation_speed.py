"""Dataset generation speed: ant-medium rows per CPU-second through the MaMuJoCo env (``wrapper``,
Gymnasium's step behind its wrappers) and through the raw MuJoCo stepper (``raw``), side by side
in one process, alternating, on the same rows (their sha256 must agree).

    OFFMARL_NUM_THREADS=1 python benchmarks/generation_speed.py --rows 20000 --repeats 2
    python benchmarks/generation_speed.py --repeats 0          # MuJoCo's own rate only

CPU seconds (``time.process_time``) are reported next to wall seconds: on a shared machine the
wall clock measures the neighbours. Prints a markdown table (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import time

from offmarl.data import generate as g
from offmarl.data.behaviour import load_actor, policy_dir
from offmarl.data.registry import ant_policy_selection


def mujoco_floor(n: int) -> float:
    """Transitions per CPU-second of Ant-v5's simulation alone: what any stepper that must give
    the env's bytes has to pay (reset when the torso leaves the healthy range)."""
    import mujoco
    import numpy as np

    from offmarl.envs import make_env

    env = make_env("ant-4x2")
    env.reset(seed=0)
    u = env._single.unwrapped
    m, d = u.model, u.data
    actions = np.random.default_rng(0).uniform(-1, 1, (n, m.nu))
    c0 = time.process_time()
    for a in actions:
        d.ctrl[:] = a
        mujoco.mj_step(m, d, nstep=u.frame_skip)
        mujoco.mj_rnePostConstraint(m, d)
        if not 0.2 <= d.qpos[2] <= 1.0:
            env.reset(seed=1)
    return n / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--floor-steps", type=int, default=3000, help="bare MuJoCo loop length (0 = skip)")
    args = ap.parse_args()
    if args.floor_steps:
        print(f"MuJoCo alone (mj_step x frame_skip + mj_rnePostConstraint, random actions): "
              f"{mujoco_floor(args.floor_steps):,.0f} transitions per CPU-second")
    if args.repeats <= 0:
        return
    actor = load_actor(policy_dir("ant") / ant_policy_selection()["medium"])
    seg = [g.Segment(actor, 1.0, "medium")]
    g.generate_with_actors("ant-4x2", seg, 500, 0, n_envs=2)  # warm-up: imports, model compile
    res: dict[str, list[tuple[float, float, str]]] = {"wrapper": [], "raw": []}
    for _ in range(args.repeats):
        for stepper in res:
            c0, w0 = time.process_time(), time.perf_counter()
            ds = g.generate_with_actors("ant-4x2", seg, args.rows, 0, n_envs=args.envs, stepper=stepper)
            res[stepper].append((time.process_time() - c0, time.perf_counter() - w0, ds.content_sha256()))
    shas = {r[2] for rs in res.values() for r in rs}
    print(f"ant-medium, {args.rows:,} rows, {args.envs} env copies, {args.repeats} runs each; "
          f"sha256 {'identical' if len(shas) == 1 else 'DIFFERENT'} ({', '.join(s[:16] for s in shas)})")
    print("| stepper | CPU s (best) | rows / CPU-s (best) | wall s (best) | rows / wall-s |")
    print("|---|---|---|---|---|")
    for stepper, rs in res.items():
        cpu, wall = min(r[0] for r in rs), min(r[1] for r in rs)
        print(f"| {stepper} | {cpu:.1f} | {args.rows / cpu:,.0f} | {wall:.1f} | {args.rows / wall:,.0f} |")
    speedup = min(r[0] for r in res["wrapper"]) / min(r[0] for r in res["raw"])
    print(f"raw vs wrapper: {speedup:.2f}x rows per CPU-second")


if __name__ == "__main__":
    main()
