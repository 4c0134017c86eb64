"""The docs cannot go stale: docs/getting-started.md and the README's tour run as written
(tests/docs_harness.py) and the numbers they state are checked; every configs/ and docs/ path the
docs name exists; the main job is described with the iterations its config runs.

    pytest -m docs                  # every docs test (the full getting-started and README tour too)
    pytest tests/test_docs.py       # the quick subset (what CI's default `pytest` runs; the full
                                    # runs are skipped unless `-m docs` selects them: ~15 CPU-min)
    OFFMARL_DOCS_LONG=1 pytest -m docs   # also the hour-long blocks (the main job, ...)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from docs_harness import Expect, parse, run_blocks, untagged_blocks

ROOT = Path(__file__).resolve().parents[1]
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
README = ROOT / "README.md"
TOUR = "A short tour"
LONG = {"long"} if os.environ.get("OFFMARL_DOCS_LONG") else set()

pytestmark = pytest.mark.docs


@pytest.fixture
def docs_selected(request):
    """The full runs (minutes of training and a Ray sweep) only when asked for with ``-m docs``:
    the default ``pytest`` (CI) keeps to the quick subset."""
    if "docs" not in (request.config.option.markexpr or ""):
        pytest.skip("the full docs run: select it with `pytest -m docs`")


# ------------------------------------------------------------------------------ the harness itself
def test_expect_checks_the_printed_number():
    out = "step 60/60\nfinal evaluation: return 0.513 ± 0.222 over 10 episodes, normalised score 0.513 ± 0.2\n"
    assert Expect("normalised score", 0.51, 0.05).check(out) is None
    assert "printed 0.513" in Expect("normalised score", 0.575, 0.05).check(out)  # a stale doc number fails
    assert "not in the output" in Expect("win rate", 0.5, 0.1).check(out)
    table = "│ return mean ± std     │ 0.313 ± 0.464 │\nruns/ma-iql-x-20261203T0731-s0: return 0.000 over 50"
    assert Expect("return mean ± std", 0.313, 0.0).check(table) is None
    assert Expect("ma-iql-*: return", 0.0, 0.0).check(table) is None


def test_parse_reads_tags_commands_and_expectations(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text('## A\n\n<!-- docs-test: quick -->\n```bash\nexport X=1\necho "a # b" score 3   # expect "score" '
                   '3 ± 0.5\n   # expect "b score" 3.2 ± 1\n```\n\n## B\n\n```bash\necho untagged\n```\n')
    blocks = parse(doc)
    assert [b.tier for b in blocks] == ["quick", None] and untagged_blocks(doc) == [blocks[1].line]
    cmds = blocks[0].commands
    assert [c.text for c in cmds] == ["export X=1", 'echo "a # b" score 3']
    assert [(e.label, e.value, e.tol) for e in cmds[1].expects] == [("score", 3.0, 0.5), ("b score", 3.2, 1.0)]
    assert [b.tier for b in parse(doc, section="B")] == [None]
    run_blocks(blocks, {"quick"}, tmp_path / "w")  # the echo prints "score 3": within 0.5
    cmds[1].expects[0].value = 4.0
    with pytest.raises(AssertionError, match='"score" printed 3.0, the doc says 4.0'):
        run_blocks(blocks, {"quick"}, tmp_path / "w2")


def test_every_bash_block_is_tagged():
    assert untagged_blocks(GETTING_STARTED) == [], "docs/getting-started.md: tag each ```bash block (docs_harness)"
    assert untagged_blocks(README) == [], "README.md: tag each ```bash block (tests/docs_harness.py)"
    assert any(b.tier == "quick" for b in parse(GETTING_STARTED))
    assert any(c.expects for b in parse(GETTING_STARTED) for c in b.commands)


# ------------------------------------------------------------------------------ the docs, executed
def test_getting_started_quick(tmp_path):
    """Sections 2-5: the coordination game, from a dataset to cross-play (~30 CPU s)."""
    run_blocks(parse(GETTING_STARTED), {"quick"}, tmp_path)


@pytest.mark.slow
def test_getting_started_all(tmp_path, docs_selected):
    run_blocks(parse(GETTING_STARTED), {"quick", "slow"} | LONG, tmp_path)


@pytest.mark.slow
def test_readme_tour(tmp_path, make_ant_v5_episodes, write_d4rl, docs_selected):
    def prepare(cmd, workdir):  # the user downloads D4RL's file; here it is written from real Ant-v5 episodes
        name = "ant_medium-v2.hdf5"
        if name in cmd.text and not (workdir / name).exists():
            write_d4rl(workdir / name, make_ant_v5_episodes(3, 50, False, 0))

    run_blocks(parse(README, section=TOUR), {"quick", "slow"} | LONG, tmp_path, prepare=prepare)


# ------------------------------------------------------------------------------ static checks
_PATH = re.compile(r"(?<![\w/.-])((?:configs|docs)/[\w<>*./-]*(?:\{[\w,]+\}|[\w>*]))")


def _expand(path: str) -> list[str]:
    """``a.{json,md}`` -> a.json, a.md; ``configs/<algo>.yaml`` -> the glob configs/*.yaml."""
    path = re.sub(r"<[^>]*>", "*", path)
    m = re.search(r"\{([\w,]+)\}", path)
    return [path[:m.start()] + alt + path[m.end():] for alt in m.group(1).split(",")] if m else [path]


def _doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_named_config_and_doc_exists():
    missing = []
    for f in _doc_files():
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            for path in _PATH.findall(line):
                for pattern in _expand(path):
                    if not list(ROOT.glob(pattern)):
                        missing.append(f"{f.relative_to(ROOT)}:{lineno}: {pattern}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_docs_cite_sources_not_internal_notes():
    hits = [f"{p.relative_to(ROOT)}:{n}" for d in ("docs", "offmarl", "configs") for p in sorted((ROOT / d).rglob("*"))
            if p.is_file() and p.suffix in (".md", ".py", ".yaml")
            for n, line in enumerate(p.read_text().splitlines(), 1) if "REFERENCE.md" in line]
    hits += [f"README.md:{n}" for n, line in enumerate(README.read_text().splitlines(), 1) if "REFERENCE.md" in line]
    assert not hits, "cite the paper, table or repository instead of REFERENCE.md: " + ", ".join(hits)


def _section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section '## {heading}'"
    return m.group(1)


def test_main_job_described_with_its_config_iterations():
    """README, getting-started and configs/moma-ppo.yaml's `ant` block agree on the main job."""
    steps = yaml.safe_load((ROOT / "configs" / "moma-ppo.yaml").read_text())["ant"]["loop"]["steps"]
    readme = _section(README.read_text(), "The main job")
    gs = _section(GETTING_STARTED.read_text(), "6. Bigger jobs")
    gs = gs[gs.index("offmarl train --dataset ant-medium`"):]
    gs = gs[:gs.index("\n\n")]
    for where, text in (("README.md, The main job", readme), ("getting-started.md, ant-medium", gs)):
        stated = {int(n) for n in re.findall(r"(\d+) iterations", text)}
        assert stated == {steps}, f"{where} states {sorted(stated)} iterations; configs/moma-ppo.yaml ant: {steps}"
    tour = _section(README.read_text(), TOUR)
    for n in re.findall(r"ant-medium[^\n]*?(\d+) iterations", tour):
        assert int(n) == steps, f"README tour: {n} iterations for ant-medium; the config runs {steps}"
