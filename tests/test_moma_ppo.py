"""MOMA-PPO end to end on tiny data: training, eval.json, resume == uninterrupted, bad options."""
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from offmarl.algos.moma_ppo import Algorithm, Config, check_config, migrate_saved_config
from offmarl.config import from_dict
from offmarl.data.registry import build
from offmarl.data.storage import save_dataset
from offmarl.driver import evaluate_runs, train_from_options
from offmarl.errors import OffmarlError

TINY = [
    "world_model.hidden=[32,32]", "world_model.max_steps=300", "world_model.eval_every=100",
    "rollout_batch=200", "ppo.minibatch_size=200", "ppo.epochs=2",
    "loop.eval_every=4", "loop.eval_episodes=2", "loop.final_eval_episodes=4", "loop.log_every=2",
    "loop.checkpoint_every=3",
]



@pytest.fixture
def coord_file(tmp_path):
    path = tmp_path / "coord.hdf5"
    save_dataset(build("coordination-unfavorable", size=2000, seed=0), path)
    return str(path)


def _train(coord_file, tmp_path, steps, resume=None, seed=0, extra=()):
    if resume:  # a run continues with its own config and data (options given with --resume are refused)
        return train_from_options(resume=resume, steps=steps, device="cpu", log=lambda *a, **k: None)
    return train_from_options(coord_file, "moma-ppo", steps=steps, seed=seed, device="cpu", out=str(tmp_path / "runs"),
                              overrides=TINY + [f"cache_dir={tmp_path / 'cache'}", *extra], resume=resume,
                              log=lambda *a, **k: None)


def _train_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = {"time", "steps_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["phase"] in ("train", "eval")]


@pytest.mark.slow
def test_coordination_end_to_end_writes_eval(coord_file, tmp_path):
    res = _train(coord_file, tmp_path, steps=6)
    run = tmp_path / "runs"
    run_dir = next(run.iterdir())
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["episodes"] == 4 and 0.0 <= ev["normalised_mean"] <= 1.0
    assert ev["normalized_score"] == ev["normalised_mean"]
    assert {"return_mean", "return_std"} <= set(ev)
    assert ev["length_mean"] == 1.0  # one-step episodes
    assert (run_dir / "checkpoints" / "latest.pt").exists()
    assert res["run_dir"] == str(run_dir)


@pytest.mark.slow
def test_evaluate_run_needs_no_world_model(coord_file, tmp_path):
    """`offmarl evaluate` rebuilds only the agents: with the world-model cache gone it must not
    refit, and it reproduces the final evaluation of the run (same checkpoint, same seed)."""
    res = _train(coord_file, tmp_path, steps=6)
    shutil.rmtree(tmp_path / "cache")
    out = evaluate_runs([res["run_dir"]], episodes=4, checkpoint="latest", device="cpu", seed=0,
                        log=lambda *a, **k: None)
    ev = out["runs"][res["run_dir"]]
    assert not (tmp_path / "cache").exists()
    assert ev["episodes"] == 4 and 0.0 <= ev["normalised_mean"] <= 1.0


BC = ["bc_pretrain_steps=30", "bc_pretrain_batch=64", "ppo.bc_coef=1.0", "bc_anchor_batch=300"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), BC], ids=["plain", "behaviour-anchor"])
def test_resume_gives_identical_metrics(coord_file, tmp_path, extra):
    """With the behaviour anchor the resumed run must not clone again (it would move the actors)."""
    full = _train(coord_file, tmp_path / "a", steps=6, extra=extra)
    # the interrupted run: 3 steps (checkpoint at 3), then resumed up to 6
    part = _train(coord_file, tmp_path / "b", steps=3, extra=extra)
    run_b = Path(part["run_dir"])
    cfg = run_b / "config.yaml"
    c = yaml.safe_load(cfg.read_text())
    c["config"]["loop"]["steps"] = 6
    cfg.write_text(yaml.safe_dump(c))
    (run_b / "eval.json").unlink()
    _train(coord_file, tmp_path / "b", steps=None, resume=str(run_b))
    rows_full = _train_rows(Path(full["run_dir"]))
    rows_resumed = [r for r in _train_rows(run_b) if r["phase"] != "final_eval"]
    assert rows_full == rows_resumed
    if extra:
        train = [r for r in rows_full if r["phase"] == "train"]
        assert any(r.get("bc_loss", 0) > 0 for r in train), train


def test_behaviour_cloning_fits_the_data_actions(coord_file):
    """The clone of the unfavourable game's data: agent 0 mostly right (1), agent 1 mostly left (0)."""
    import torch

    from offmarl.data.storage import load_dataset_file

    ds = load_dataset_file(coord_file)
    cfg = from_dict(Config, {"bc_pretrain_steps": 200, "bc_pretrain_lr": 1e-2})
    algo = Algorithm.for_evaluation(ds, cfg, "cpu", 0, log=lambda *a: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Converting a tensor with requires_grad=True to a scalar"
        out = algo._clone_behaviour()
    assert out["bc_pretrain_nll_last"] < out["bc_pretrain_nll_first"]
    actions = torch.as_tensor(ds.actions).long()  # [M, 2]
    modes = [int(actions[:, i].mode().values) for i in range(2)]
    assert modes[0] != modes[1]  # the unfavourable data miscoordinates
    greedy, _ = algo.policy.act(torch.as_tensor(ds.observations[:1]).float(), deterministic=True)
    assert greedy.tolist() == [modes], (greedy, modes)


def test_bad_options_are_clear(coord_file, tmp_path):
    with pytest.raises(OffmarlError, match="unknown algorithm 'moma-pp'.*Did you mean: moma-ppo"):
        train_from_options(coord_file, "moma-pp", out=str(tmp_path), log=lambda *a: None)
    with pytest.raises(OffmarlError, match="not available for coordination"):
        train_from_options(coord_file, "moma-ppo", obs="po", out=str(tmp_path), log=lambda *a: None)
    with pytest.raises(OffmarlError, match="unknown config key 'rollout.horizn'.*rollout.horizon"):
        train_from_options(coord_file, "moma-ppo", overrides=["rollout.horizn=3"], out=str(tmp_path),
                           log=lambda *a: None)
    # derived keys cannot be set (they come from ppo.history_len / ppo.gamma), and a fixed threshold
    # together with the calibration is a contradiction, not a silently ignored --set
    for key in ("rollout.history=5", "rollout.gamma=0.9"):
        with pytest.raises(OffmarlError, match=f"unknown config key '{key.split('=')[0]}'"):
            train_from_options(coord_file, "moma-ppo", overrides=[key], out=str(tmp_path),
                               log=lambda *a: None)
    with pytest.raises(OffmarlError, match="calibrate_eps_g=null"):
        train_from_options(coord_file, "moma-ppo", overrides=["rollout.eps_g_threshold=2"], out=str(tmp_path),
                           log=lambda *a: None)
    with pytest.raises(OffmarlError, match="no eps_g termination threshold"):
        train_from_options(coord_file, "moma-ppo", overrides=["calibrate_eps_g=null"], out=str(tmp_path),
                           log=lambda *a: None)
    with pytest.raises(OffmarlError, match="unknown dataset"):
        train_from_options("ant-medum", "moma-ppo", out=str(tmp_path), log=lambda *a: None)
    with pytest.raises(OffmarlError, match="world model file"):
        train_from_options(coord_file, "moma-ppo", extra={"world_model_path": str(tmp_path / "nope.pt")},
                           out=str(tmp_path), log=lambda *a: None)


def test_dataset_env_mismatch_is_clear(tmp_path):
    """A dataset whose widths do not fit its declared env is rejected with both shapes named."""
    ds = build("coordination-neutral", size=50, seed=0)
    bad = dataclasses.replace(ds.meta, env="reacher-2x1")
    ds.meta = bad
    with pytest.raises(OffmarlError, match="does not match reacher-2x1"):
        Algorithm(ds, Config(), "cpu", 0, log=lambda *a: None)


def test_configs_saved_before_the_derived_keys_still_load():
    old = {"rollout": {"horizon": 5, "history": 10, "gamma": 0.99, "eps_g_threshold": 2.0}, "calibrate_eps_g": 0.99}
    cfg = from_dict(Config, migrate_saved_config(old))
    assert cfg.rollout.horizon == 5 and cfg.rollout.eps_g_threshold is None
    fixed = {"rollout": {"history": 10, "eps_g_threshold": 2.0}, "calibrate_eps_g": None}
    assert from_dict(Config, migrate_saved_config(fixed)).rollout.eps_g_threshold == 2.0


def test_termination_margin_and_calibration_conflict_is_an_error():
    with pytest.raises(OffmarlError, match="termination_margin"):
        check_config(Config(termination_margin=0.2, calibrate_termination=True))
    check_config(Config(termination_margin=0.2))  # calibration is off by default: the fixed margin applies
