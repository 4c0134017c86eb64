"""How the episodes of an ant dataset end, and what its rows look like (for the dataset cards).

    python benchmarks/episode_endings.py $OFFMARL_DATA_DIR/ant-medium-v1.hdf5 [more files] [--rows N]

Per file: episodes, mean / median length, the share of episodes that end by the env's termination
(and which bound: torso z above 1 = a jump, below 0.2 = a collapse) and by the 1000-step time-out,
the share of rows with the ant on its back (torso up-axis pointing down: 1 - 2(qx^2 + qy^2) < 0,
quaternion = state[1:5]) and the mean reward per step of those rows and of the upright ones.
Prints a markdown table (one row per file).
"""
from __future__ import annotations

import argparse

import numpy as np

from offmarl.data.registry import load


def endings(ds) -> dict:
    ends = np.flatnonzero(ds.episode_ends)
    lengths = ds.episode_lengths()
    term = ds.terminals.astype(bool)[ends]
    z = ds.next_states[ends, 0]
    q = ds.states[:, 1:5]
    flipped = 1.0 - 2.0 * (q[:, 1] ** 2 + q[:, 2] ** 2) < 0.0
    r = ds.rewards
    return {"rows": len(ds), "episodes": len(ends), "mean_length": float(lengths.mean()),
            "median_length": float(np.median(lengths)), "terminated": float(term.mean()),
            "jump_z_above_1": float((term & (z > 1.0)).mean()),
            "collapse_z_below_0.2": float((term & (z < 0.2)).mean()),
            "timeout": float((~term).mean()), "rows_flipped": float(flipped.mean()),
            "reward_flipped": float(r[flipped].mean()) if flipped.any() else float("nan"),
            "reward_upright": float(r[~flipped].mean())}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+")
    p.add_argument("--rows", type=int, default=None, help="only the first whole episodes holding this many rows")
    a = p.parse_args(argv)
    out = []
    print("| dataset | rows | episodes | mean / median length | ended by a jump (z > 1) | by z < 0.2 | "
          "by the time-out | rows on its back | reward/step on its back / upright |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.datasets:
        ds = load(name, generate=False)
        if a.rows:
            ds = ds.subset(a.rows)
        e = endings(ds)
        out.append({"dataset": name, **e})
        print(f"| {ds.meta.name or name} | {e['rows']:,} | {e['episodes']:,} | {e['mean_length']:.0f} / "
              f"{e['median_length']:.0f} | {e['jump_z_above_1']:.1%} | {e['collapse_z_below_0.2']:.1%} | "
              f"{e['timeout']:.1%} | {e['rows_flipped']:.1%} | {e['reward_flipped']:.2f} / {e['reward_upright']:.2f} |")
    return out


if __name__ == "__main__":
    main()
