"""`offmarl online` from the command line (cli/online.py): one-line errors, and (slow) the
acceptance runs that write eval.json, plus `offmarl evaluate` and `--resume` on an online run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from offmarl.algos import online
from offmarl.config import CONFIG_DIR, build_config, expand_block, read_blocks
from offmarl.driver import resolve_online_config

ENV = {**os.environ, "OFFMARL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def offmarl(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offmarl.cli.main", *args], check=False, capture_output=True,
                          text=True,
                          env=ENV, timeout=timeout)


def test_help_has_an_example():
    r = offmarl("online", "--help")
    assert r.returncode == 0 and "offmarl online --map 2s3z" in r.stdout and "--backend" in r.stdout


def test_sc2_without_starcraft_is_one_line_with_install_hint():
    r = offmarl("online", "--map", "2s3z", "--backend", "sc2", "--steps", "100")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "StarCraft II" in r.stderr and "SC2PATH" in r.stderr


def test_unknown_map_suggests_nearest_names(tmp_path):
    r = offmarl("online", "--map", "3s_vs_4y", "--out", str(tmp_path))
    assert r.returncode == 2 and "Did you mean: 3s_vs_4z" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing is created for a bad map


def test_envs_list_shows_registered_maps():
    r = offmarl("envs", "list")
    assert r.returncode == 0 and all(m in r.stdout for m in ("smac-3s_vs_4z", "smac-3s_vs_3z", "smac-2m_vs_1z"))


# the acceptance command, each algorithm with its CPU defaults (docs/online.md: about 1-3 min each)
@pytest.mark.slow
@pytest.mark.parametrize("algo", ["mappo", "mamba", "mag"])
def test_acceptance_2000_steps_writes_eval_json(algo, tmp_path):
    r = offmarl("online", "--map", "2s3z", "--algo", algo, "--steps", "2000", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = tmp_path.iterdir()
    res = json.loads((run / "eval.json").read_text())
    assert 0 <= res["win_rate"] <= 1 and res["episodes"] == 32 and -0.01 <= res["return_mean"] <= 2.01
    assert res["env_steps"] >= 2000
    assert 0 <= res["stochastic_win_rate"] <= 1 and -0.01 <= res["stochastic_return"] <= 2.01  # both evaluations
    ev = offmarl("evaluate", str(run), "--episodes", "4", "--checkpoint", "latest")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert f"{run.name}: return " in ev.stdout and "win rate" in ev.stdout  # the win rate, not only the return


@pytest.mark.slow
def test_cli_resume_continues_with_identical_metrics(tmp_path):
    """A run stopped at its checkpoint and resumed logs the same rows as one run straight through."""
    common = ["online", "--map", "2s3z", "--algo", "mag", "--config", "smoke", "--set", "loop.eval_every=200",
              "--no-progress"]
    whole = offmarl(*common, "--steps", "600", "--out", str(tmp_path / "a"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = offmarl(*common, "--steps", "400", "--out", str(tmp_path / "b"))
    assert part.returncode == 0, part.stderr[-2000:]
    (run_b,) = (tmp_path / "b").iterdir()
    # continue the shorter (finished) run to the longer budget: --steps is the new total
    res = offmarl("online", "--resume", str(run_b), "--steps", "600", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    (run_a,) = (tmp_path / "a").iterdir()

    def rows(run: Path) -> list[dict]:
        out = []
        for line in (run / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            out.append({k: v for k, v in r.items() if k != "time" and not k.endswith("_seconds")
                        and k != "steps_per_s"})
        return out

    a = [r for r in rows(run_a) if r["phase"] == "train"]
    b = [r for r in rows(run_b) if r["phase"] == "train"]
    assert a == b


def test_every_online_block_builds_and_mag_reference_brings_its_map():
    blocks = read_blocks(CONFIG_DIR / "online.yaml")
    for name, block in blocks.items():
        build_config(online.Config, expand_block(name, block, blocks, "online.yaml", map_name="2s3z"))
    assert {"mamba-reference", "mag-reference", "smoke", "cpu-quick"} <= set(blocks)
    # the defaults are the CPU preset: no block, whatever the map
    cfg, applied = resolve_online_config("mag", "2s3z", "smax", None, None, None)
    assert applied == [] and (cfg.planner.l, cfg.planner.h) == (4, 5)
    cfg, applied = resolve_online_config("mag", "3s_vs_4z", "smax", "mamba-reference", ["planner.h=7"], 5000)
    assert applied == ["online.yaml:mamba-reference"]
    assert (cfg.planner.l, cfg.planner.h, cfg.model.deter, cfg.loop.steps) == (4, 7, 256, 5000)
    # MAG's reference settings bring MAG's per-map planner (3s_vs_4z: L 4, H 10; 2s3z: L 5, H 10)
    cfg, applied = resolve_online_config("mag", "3s_vs_4z", "smax", "mag-reference", None, None)
    assert applied == ["online.yaml:mamba-reference", "online.yaml:mag-reference",
                       "online.yaml:mag-reference maps.3s_vs_4z"]
    assert (cfg.planner.l, cfg.planner.h, cfg.model.lr) == (4, 10, 5e-4)
    cfg, _ = resolve_online_config("mag", "2s3z", "smax", "mag-reference", ["planner.l=3"], None)
    assert (cfg.planner.l, cfg.planner.h) == (3, 10)
