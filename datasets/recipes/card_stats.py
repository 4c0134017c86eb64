"""Measure a named dataset at full size and write its statistics into its card.

    python datasets/recipes/card_stats.py coordination-unfavorable [--size N] [--seed 0]

Generates the dataset with the shipped behaviour policies (or loads the native file if it is
already in $OFFMARL_DATA_DIR at the requested size), times the generation, and replaces the
block between ``<!-- stats -->`` and ``<!-- /stats -->`` in datasets/<name>.md.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from offmarl.data import registry
from offmarl.data.storage import load_dataset_file, save_dataset

CARDS = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    # small batched actor forwards: one thread is much faster on a loaded CPU (docs/benchmarks.md)
    torch.set_num_threads(int(os.environ.get("OFFMARL_NUM_THREADS", "1")))
    rec = registry.recipe(args.name)
    size = args.size or rec.default_size
    path = registry.native_path(args.name)
    gen_s = None
    ds = load_dataset_file(path) if path.exists() else None
    if ds is None or len(ds) != size:
        t0 = time.perf_counter()
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task(f"generating {args.name}", total=size)
            ds = registry.build(args.name, size, seed=args.seed, progress=lambda n: bar.advance(task, n))
        gen_s = time.perf_counter() - t0
        save_dataset(ds, path)
    st = ds.stats()
    segs = ds.meta.extra.get("segments")
    lines = [
        "<!-- stats -->",
        f"Measured on {time.strftime('%Y-%m-%d')} with `python datasets/recipes/card_stats.py {args.name}"
        + (f" --size {size}" if args.size else "") + "` (seed 0):",
        "",
        "| statistic | value |",
        "|---|---|",
        f"| transitions | {st['transitions']:,} |",
        f"| episodes | {st['episodes']:,} (mean length {st['episode_length_mean']:.1f}) |",
        f"| episode return mean ± std | {st['return_mean']:.2f} ± {st['return_std']:.2f} |",
        f"| episode return min / max | {st['return_min']:.2f} / {st['return_max']:.2f} |",
        f"| normalised score (mean) | {st.get('normalised_score_mean', float('nan')):.3f} |",
        f"| state-action coverage (SACo, 1 decimal) | {st['state_action_coverage']:.4f} |",
        f"| behaviour policy | {ds.meta.generator} |",
        f"| version, sha256 (`offmarl datasets verify {rec.name}`) | {rec.versioned}, "
        f"{ds.content_sha256()[:16]}… |",
    ]
    if segs:
        seg_text = ", ".join(f"{s['label']}: {s['transitions']:,}" for s in segs)
        lines.append(f"| segments | {seg_text} |")
    if gen_s is not None:
        rate = st["transitions"] / gen_s
        lines.append(f"| generation time (2-core CPU) | {gen_s:.0f} s ({rate:,.0f} transitions/s) |")
    lines.append("<!-- /stats -->")
    card = CARDS / f"{args.name}.md"
    text = card.read_text()
    a, b = text.index("<!-- stats -->"), text.index("<!-- /stats -->") + len("<!-- /stats -->")
    card.write_text(text[:a] + "\n".join(lines) + text[b:])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
