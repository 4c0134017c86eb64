"""Pick which exported SAC checkpoints play random / medium / expert / full-replay for ant.

    python datasets/recipes/select_ant_policies.py [--policy-dir offmarl/data/policies/ant]

Reads progress.csv (deterministic evaluation return of every exported checkpoint) and writes
selection.json next to it:
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

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "offmarl" / "data" / "policies" / "ant"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy-dir", type=Path, default=DEFAULT_DIR)
    args = p.parse_args()
    rows = list(csv.DictReader(open(args.policy_dir / "progress.csv")))
    rows = [{"step": int(r["step"]), "ret": float(r["eval_return"])} for r in rows]
    name = lambda r: f"sac_step{r['step']:07d}.pt"  # noqa: E731
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
    }
    (args.policy_dir / "selection.json").write_text(json.dumps(sel, indent=2))
    print(json.dumps(sel["returns"], indent=2))


if __name__ == "__main__":
    main()
