"""Dataset generation speed: ant-medium rows per CPU-second through the MaMuJoCo env (``wrapper``,
Gymnasium's step behind its wrappers) and through the raw MuJoCo stepper (``raw``), side by side
in one process, alternating, on the same rows (their sha256 must agree).

    OFFMARL_NUM_THREADS=1 python benchmarks/generation_speed.py --rows 20000 --repeats 2

CPU seconds (``time.process_time``) are reported next to wall seconds: on a shared machine the
wall clock measures the neighbours. Prints a markdown table (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import time

from offmarl.data import generate as g
from offmarl.data.behaviour import load_actor, policy_dir
from offmarl.data.registry import ant_policy_selection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--envs", type=int, default=16)
    args = ap.parse_args()
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
