"""benchmarks/device_suite.py in its tiny (--smoke) mode: the JSON-lines schema the GPU table is built from,
the per-section budgets, and benchmarks/device_table.py on its output."""
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"suite", "schema", "mode", "device", "device_name", "torch", "cuda", "threads", "section", "name",
          "peak_mem_mb", "load_1min", "utc"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _load("device_suite")
    torch.set_num_threads(before)


def _run(suite, sections, tmp_path) -> tuple[int, list[dict]]:
    out = tmp_path / "suite.jsonl"
    rc = suite.run(torch.device("cpu"), "smoke", sections, out)
    return rc, [json.loads(line) for line in out.read_text().splitlines()]


def _check_common(rows: list[dict]) -> None:
    for r in rows:
        assert COMMON <= set(r), COMMON - set(r)
        assert (r["suite"], r["schema"], r["mode"], r["device"]) == ("device_suite", 1, "smoke", "cpu")
        assert r["torch"] == torch.__version__ and r["peak_mem_mb"] is None  # no GPU memory on the CPU
    assert rows[0]["name"] == "machine" and rows[-1]["name"] == "done"


def test_ensemble_section_schema_and_table(suite, tmp_path):
    rc, rows = _run(suite, ["ensemble"], tmp_path)
    assert rc == 0
    _check_common(rows)
    ens = [r for r in rows if r["name"] == "ensemble_fwd_bwd"]
    assert len(ens) == 1 and ens[0]["members"] == 7 and ens[0]["input"] == "random tensors (layer speed only)"
    r = ens[0]
    assert r["vectorised_ms"] > 0 and r["loop_ms"] > 0
    assert r["vectorised_over_loop"] == pytest.approx(r["loop_ms"] / r["vectorised_ms"], rel=1e-3)
    end = [r for r in rows if r["name"] == "section_end"]
    assert [e["section"] for e in end] == ["ensemble"] and end[0]["budget_s"] > 0

    table = _load("device_table")
    text = table.render(rows, "suite.jsonl")
    assert "| 2 x 32 | 64 |" in text and "| ensemble |" in text
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- device_table:gpu -->\nnot measured yet\n<!-- /device_table:gpu -->\nafter\n")
    table.replace_block(doc, "gpu", text)
    new = doc.read_text()
    assert "not measured yet" not in new and "| 2 x 32 | 64 |" in new
    assert new.startswith("before\n<!-- device_table:gpu -->\n") and new.endswith("<!-- /device_table:gpu -->\nafter\n")


def test_a_spent_budget_skips_and_says_so(suite, tmp_path, monkeypatch):
    smoke = suite.PLANS["smoke"]
    monkeypatch.setitem(suite.PLANS, "smoke", dataclasses.replace(smoke, budgets={**smoke.budgets, "ensemble": 0}))
    rc, rows = _run(suite, ["ensemble"], tmp_path)
    assert rc == 0
    ens = [r for r in rows if r["name"] == "ensemble_fwd_bwd"]
    assert ens and all(r["skipped"] == "section budget spent" for r in ens)


@pytest.mark.slow
def test_every_section_in_smoke_mode(suite, tmp_path):
    """All sections on real (tiny) ant data: every measurement record present, no errors (~30 s here)."""
    rc, rows = _run(suite, list(suite.SECTIONS), tmp_path)
    _check_common(rows)
    assert [r for r in rows if r["name"] == "error"] == [] and rc == 0
    names = {r["name"] for r in rows}
    assert {"ensemble_fwd_bwd", "ant_medium_generated", "moma_ppo_setup", "ensemble_step", "model_rollout",
            "moma_ppo_iteration", "mappo_update", "baseline_updates", "online_loop"} <= names
    assert [r["section"] for r in rows if r["name"] == "section_end"] == list(suite.SECTIONS)
    assert {r["algo"] for r in rows if r["name"] == "baseline_updates"} == set(suite.BASELINES)
    assert {r["planner"] for r in rows if r["name"] == "model_rollout"} == {"plain", "mag"}
    for r in rows:
        if r["name"] in ("model_rollout", "ensemble_step"):
            assert r["transitions_per_s"] > 0
    online = next(r for r in rows if r["name"] == "online_loop")
    if suite.online_algo is None:
        assert online["skipped"] == "online loop not available"
    else:
        assert online["iterations"] >= 0 and "skipped" not in online
    assert "Sections:" in _load("device_table").render(rows, "suite.jsonl")
