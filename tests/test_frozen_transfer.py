"""A tiny frozen-model transfer run (benchmarks/frozen_model_transfer.py): real collection, a model
fit, then imagination-only PPO rounds with the model frozen and real greedy + stochastic evaluations."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from offmarl.algos.online import OnlineConfig
from offmarl.worldmodel.latent import LatentModelConfig


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "frozen_model_transfer.py"
    spec = importlib.util.spec_from_file_location("frozen_model_transfer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_frozen_model_transfer_tiny():
    cfg = OnlineConfig(algo="mamba", imagine_horizon=4,
                       model=LatentModelConfig(embed=32, deter=32, stoch_groups=4, stoch_classes=4, hidden=32,
                                               attn_heads=2, batch=4, seq_len=10))
    cfg.mappo.actor_hidden = cfg.mappo.critic_hidden = (32,)
    rec = _bench().run(seed=0, collect=200, model_steps=5, rounds=4, eval_every=2, episodes=4, config=cfg,
                       log=lambda s: None)
    assert [e["round"] for e in rec["evals"]] == [0, 2, 4]
    assert rec["model_unchanged"]  # imagination and PPO never touch the frozen model
    assert rec["evals"][0]["imagined_return"] is None
    for e in rec["evals"][1:]:
        assert math.isfinite(e["imagined_return"])
    for e in rec["evals"]:
        assert 0.0 <= e["greedy_win_rate"] <= 1.0 and 0.0 <= e["stochastic_win_rate"] <= 1.0
        assert e["greedy_length"] > 0 and e["stochastic_length"] > 0


@pytest.mark.slow
def test_frozen_model_transfer_paired_arms():
    """mamba vs mag vs deviation on ONE frozen model: every arm starts from the same policy (round-0
    evaluations equal), the model is untouched, and the planner arms' training differs from mamba's
    (the planner changes imagination); the deviation arm leaves the run's R_m in place afterwards."""
    cfg = OnlineConfig(algo="mamba", imagine_horizon=4,
                       model=LatentModelConfig(embed=32, deter=32, stoch_groups=4, stoch_classes=4, hidden=32,
                                               attn_heads=2, batch=4, seq_len=10, error_hidden=(32,)))
    cfg.mappo.actor_hidden = cfg.mappo.critic_hidden = (32,)
    cfg.planner.l, cfg.planner.h = 3, 2
    rec = _bench().run(seed=0, collect=200, model_steps=5, rounds=4, eval_every=2, episodes=4, config=cfg,
                       log=lambda s: None, arms=("mamba", "mag", "deviation"))
    assert rec["model_unchanged"]
    a = rec["arms"]["mamba"]
    keys = ("greedy_return", "stochastic_return", "greedy_length")
    for arm in ("mag", "deviation"):
        b = rec["arms"][arm]
        assert [e["round"] for e in a["evals"]] == [e["round"] for e in b["evals"]] == [0, 2, 4]
        assert all(a["evals"][0][k] == b["evals"][0][k] for k in keys)
        assert any(a["evals"][-1][k] != b["evals"][-1][k] for k in ("imagined_return",) + keys), arm
    assert rec["arms"]["deviation"]["planner"] == {"score": "deviation", "discount": 0.0}


def test_paired_table_differences(tmp_path):
    """--paired: per round the two arms over seeds and mag - mamba per seed (records as --out writes them)."""
    import json

    def rec(seed, mamba, mag):
        ev = lambda xs: [{"round": r, "greedy_return": x} for r, x in zip((0, 25), xs)]  # noqa: E731
        return {"seed": seed, "map": "2s3z", "arms": {"mamba": {"evals": ev(mamba)}, "mag": {"evals": ev(mag)}}}

    paths = []
    for seed, (m, g) in enumerate([((0.0, 0.1), (0.0, 0.4)), ((0.0, 0.3), (0.0, 0.2))]):
        paths.append(str(tmp_path / f"pair-s{seed}.json"))
        Path(paths[-1]).write_text(json.dumps(rec(seed, m, g)))
    lines = _bench().paired_table(paths).splitlines()
    assert lines[2].startswith("| 0 | 2 |") and "+0.000 / +0.000" in lines[2]
    assert lines[3].startswith("| 25 | 2 | 0.200 ± 0.100 | 0.300 ± 0.100 | +0.300 / -0.100 | 0.100 ± 0.200 |")
