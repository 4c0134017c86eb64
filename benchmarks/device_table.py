"""benchmarks/device_suite.py's JSON lines -> the markdown tables of docs/benchmarks.md.

    python benchmarks/device_table.py docs/results/device/h200.jsonl            # print the tables
    python benchmarks/device_table.py docs/results/device/h200.jsonl --doc docs/benchmarks.md --block gpu

With ``--doc``, the text between ``<!-- device_table:BLOCK -->`` and ``<!-- /device_table:BLOCK -->``
in that file is replaced by the tables (the markers stay), so re-running the suite on a GPU and this
command updates the docs in place. Skipped measurements and section errors appear as such.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def fmt(v) -> str:
    """Numbers: 3 significant digits, whole numbers from 100 up with thousands separators; None -> '–'."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def widths(hidden: list[int]) -> str:
    """[200, 200, 200, 200] -> '4 x 200'; unequal widths are listed."""
    return f"{len(hidden)} x {hidden[0]}" if len(set(hidden)) == 1 else " x ".join(map(str, hidden))


def load(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or rows[0].get("suite") != "device_suite":
        raise SystemExit(f"{path}: not a device_suite JSON lines file (first record has no suite=device_suite)")
    return rows


def by(rows: list[dict], name: str) -> list[dict]:
    return [r for r in rows if r["name"] == name]


def cell(r: dict, key: str) -> str:
    if "skipped" in r:
        return f"skipped ({r['skipped']})"
    return fmt(r.get(key))


def table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]


def render(rows: list[dict], source: str) -> str:
    m = rows[0]
    loads = [r["load_1min"] for r in rows if r.get("load_1min") is not None]
    done = by(rows, "done")
    total = f"{done[-1]['total_wall_s']} s" if done else "unfinished"
    out = [(f"**{m['device_name']}** ({m['device']}), torch {m['torch']}, CUDA {m['cuda'] or '–'}, "
           f"{m['threads']} torch thread(s), mode `{m['mode']}`, host CPUs {m.get('host_cpus', '?')}, "
           f"1-min load {min(loads):g}-{max(loads):g}, {m['utc']}, whole suite {total}. Source: `{source}`."), ""]

    ens = by(rows, "ensemble_fwd_bwd")
    if ens:
        out += ["Ensemble forward + backward, 7 members, ant widths (35 in, 57 out), random input tensors:", ""]
        out += table(["hidden", "batch / member", "vectorised ms", "loop over members ms", "vectorised / loop"],
                     [[widths(r["hidden"]), str(r["batch"]), cell(r, "vectorised_ms"), cell(r, "loop_ms"),
                       cell(r, "vectorised_over_loop")] for r in ens]) + [""]

    setup = by(rows, "moma_ppo_setup")
    wm = widths(setup[0]["hidden"]) if setup else "?"
    roll = by(rows, "ensemble_step") + by(rows, "model_rollout")
    if roll:
        out += [(f"World model ({setup[0]['members'] if setup else 7} x {wm}) on real ant-medium data: predicted "
                "transitions per second:"), ""]
        body = []
        for r in roll:
            if r["name"] == "ensemble_step":
                what, size = "ensemble `step` alone", f"{r['batch']:,} rows"
            else:
                what = ("`model_rollout`, plain" if r["planner"] == "plain" else
                        f"`model_rollout`, MAG L={r.get('l')} H={r.get('h')} ({r.get('score')})")
                size = f"{r['starts']:,} starts x {r['horizon']}"
            per = (f"{cell(r, 'ms_per_step')} ms per step" if r["name"] == "ensemble_step"
                   else f"{cell(r, 's_per_rollout')} s per rollout")
            body.append([what, size, cell(r, "transitions_per_s"), "–" if "skipped" in r else per])
        out += table(["what", "batch", "transitions / s", "time"], body) + [""]

    it, ppo = by(rows, "moma_ppo_iteration"), by(rows, "mappo_update")
    if it or ppo:
        out += ["MOMA-PPO, ant config (configs/moma-ppo.yaml blocks `ant`, planner from `mag`):", ""]
        body = [[f"iteration ({r['starts']} starts x {r['horizon']} + MA-PPO update), "
                 + ("plain" if r["planner"] == "plain" else "MAG planner"), cell(r, "s_per_iteration"), "–"]
                for r in it]
        body += [[(f"MA-PPO update ({r.get('valid_samples', '?')} valid samples, {r.get('epochs')} epochs, "
                  f"minibatch {r.get('minibatch')})"), cell(r, "s_per_update"), cell(r, "samples_per_s")]
                 for r in ppo]
        out += table(["what", "seconds", "samples / s"], body) + [""]

    base = by(rows, "baseline_updates")
    if base:
        out += ["Offline baselines on the ant data, default configs:", ""]
        out += table(["algorithm", "batch", "updates / s", "ms / update"],
                     [[r["algo"], fmt(r.get("batch")), cell(r, "updates_per_s"), cell(r, "ms_per_update")]
                      for r in base]) + [""]

    onl = by(rows, "online_loop")
    if onl:
        r = onl[-1]
        out += ["Online loop: " + (f"skipped ({r['skipped']})" if "skipped" in r else
                                   f"SMAX {r['map']} ({r['algo']}, {r['n_envs']} envs): collector "
                                   f"{fmt(r.get('collector_env_steps_per_s'))} env steps/s, "
                                   f"{fmt(r.get('model_updates_per_s'))} model updates/s "
                                   f"({r['iterations']} iterations)"), ""]

    ends = by(rows, "section_end")
    errors = by(rows, "error")
    out += ["Sections:", ""]
    out += table(["section", "wall s", "budget s", "peak GPU memory MiB"],
                 [[r["section"], fmt(r["wall_s"]), fmt(r["budget_s"]), fmt(r["peak_mem_mb"])] for r in ends])
    for r in errors:
        out += ["", f"**Error in section {r['section']}**: `{r['error']}`"]
    return "\n".join(out) + "\n"


def replace_block(doc: Path, block: str, text: str) -> None:
    begin, end = f"<!-- device_table:{block} -->", f"<!-- /device_table:{block} -->"
    src = doc.read_text()
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(src):
        raise SystemExit(f"{doc}: no block {begin} ... {end}; add the two markers where the table belongs")
    doc.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", src, count=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl", type=Path)
    p.add_argument("--doc", type=Path, default=None, help="markdown file whose block to replace")
    p.add_argument("--block", default="gpu", help="name in the <!-- device_table:NAME --> markers")
    args = p.parse_args()
    text = render(load(args.jsonl), str(args.jsonl))
    if args.doc is None:
        sys.stdout.write(text)
    else:
        replace_block(args.doc, args.block, text)


if __name__ == "__main__":
    main()
