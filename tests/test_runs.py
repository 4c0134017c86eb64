"""Run-directory bookkeeping (offmarl/runs.py; issue 14 defects 3, 4 and 6): plain-data
checkpoints, one-line errors for damaged files, strict-JSON metrics, a torn last metrics line,
TensorBoard cut back on resume, the lock file."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from offmarl.runs import RunDir, RunError, rng_state, set_rng_state


@pytest.fixture
def run(tmp_path):
    r = RunDir.create(tmp_path / "runs", "ibc", "coordination-unfavorable", 0,
                      {"algo": "ibc", "dataset": "coordination-unfavorable", "seed": 0, "config": {}})
    yield r
    r.close()


def _strict_rows(path):
    def bad(x):
        raise AssertionError(f"bare {x} in {path}: not valid JSON")
    return [json.loads(line, parse_constant=bad) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ checkpoints
def test_rng_state_is_plain_data_and_restores_every_generator(run):
    gen = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    run.save_checkpoint({"algo": {}, "rng": rng_state({"sample": gen}), "step": 1})
    want = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2), torch.rand(2, generator=gen))
    ckpt = torch.load(run.ckpt_dir / "latest.pt", weights_only=True)  # the restricted unpickler accepts it
    set_rng_state(ckpt["rng"], {"sample": gen})
    got = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2), torch.rand(2, generator=gen))
    assert want[:3] == got[:3] and torch.equal(want[3], got[3]) and torch.equal(want[4], got[4])
    assert ckpt["format"] == "offmarl-checkpoint" and ckpt["format_version"] == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "old-format", "not-a-checkpoint"])
def test_damaged_checkpoint_is_one_line(run, damage):
    """Defect 6: a truncated or garbage checkpoint gave a traceback. Defect 1: a format-1 file
    (numpy RNG state pickled) needs the unrestricted unpickler, so it is refused, not loaded."""
    path = run.ckpt_dir / "latest.pt"
    run.save_checkpoint({"algo": {"w": torch.zeros(1000)}, "rng": rng_state(), "step": 3})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "old-format":  # what offmarl wrote before: numpy's RNG state as numpy objects
        torch.save({"algo": {}, "rng": {"numpy": np.random.get_state()}, "step": 3}, path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(RunError) as info:
        run.load_checkpoint("latest")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    expect = {"truncated": "truncated or corrupt", "garbage": "cannot be read", "empty": "truncated or corrupt",
              "old-format": "refused", "not-a-checkpoint": "not an offmarl checkpoint"}[damage]
    assert expect in msg


def test_broken_config_yaml_is_one_line(run):
    (run.path / "config.yaml").write_text("algo: ibc\nconfig: {lr: [1, 2\n")
    with pytest.raises(RunError, match="not valid YAML at line"):
        _ = RunDir.open(run.path).config
    (run.path / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(RunError, match="key 'algo' is missing"):
        _ = RunDir.open(run.path).config


def test_out_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="is a file, not a folder"):
        RunDir.create(tmp_path / "afile" / "runs", "ibc", "d", 0, {})


# ------------------------------------------------------------------ metrics
def test_metrics_are_strict_json(run):
    """Defect 4: `--set ppo.lr=1e6` wrote a bare Infinity into metrics.jsonl."""
    run.log(1, "train", {"loss": float("inf"), "kl": float("nan"), "ok": 0.5, "t": torch.tensor(float("-inf"))})
    run.write_eval({"return_mean": float("nan"), "returns": [1.0, float("inf")]})
    run.close()
    (row,) = _strict_rows(run.path / "metrics.jsonl")
    assert row["loss"] is None and row["kl"] is None and row["t"] is None and row["ok"] == 0.5
    assert row["nonfinite"] == {"loss": "inf", "kl": "nan", "t": "-inf"}
    ev = json.loads((run.path / "eval.json").read_text(), parse_constant=lambda x: pytest.fail(x))
    assert ev["return_mean"] is None and ev["returns"] == [1.0, None]


def test_torn_last_metrics_line_is_tolerated(run):
    """Defect 6: a crash mid-write leaves half a line; reading, appending and truncating go on."""
    for step in (1, 2, 3):
        run.log(step, "train", {"loss": float(step)})
    run.close()
    f = run.path / "metrics.jsonl"
    f.write_text(f.read_text() + '{"step": 4, "phase": "tr')
    again = RunDir.open(run.path)
    assert [r["step"] for r in again.metrics()] == [1, 2, 3]
    again.log(4, "train", {"loss": 4.0})
    again.close()
    assert [r["step"] for r in _strict_rows(f)] == [1, 2, 3, 4]
    f.write_text(f.read_text() + '{"step": 5, "pha')
    again.truncate_metrics(2)
    assert [r["step"] for r in _strict_rows(f)] == [1, 2]


def test_damaged_middle_metrics_line_names_the_line(run):
    run.log(1, "train", {"loss": 1.0})
    run.close()
    f = run.path / "metrics.jsonl"
    f.write_text("garbage\n" + f.read_text())
    with pytest.raises(RunError, match="line 1 is not a metrics row"):
        run.metrics()


def test_truncation_drops_final_eval_and_rewrites_tensorboard(run):
    """Defect 3: after a SIGKILL, TensorBoard kept the points of the lost work; a resumed
    finished run appended a second final evaluation."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for step in range(1, 11):
        run.log(step, "train", {"loss": float(step)})
    run.log(10, "final_eval", {"return_mean": 1.0})
    run.close()
    run.truncate_metrics(5)
    run.close()
    rows = _strict_rows(run.path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(r["phase"] == "train" for r in rows)
    acc = EventAccumulator(str(run.path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert "final_eval/return_mean" not in acc.Tags()["scalars"]


# ------------------------------------------------------------------ lock
def test_lock_keeps_a_second_process_out_and_stale_locks_are_taken_over(run):
    """Defect 3: two resumes of the same run at once interleaved their rows."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock_path.write_text(json.dumps({"pid": holder.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(RunError, match=f"in use by process {holder.pid}"):
            RunDir.open(run.path).lock()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    second = RunDir.open(run.path)
    second.lock()
    assert json.loads(run.lock_path.read_text())["pid"] != holder.pid
    second.close()
    assert not run.lock_path.exists()


def test_finished_run_says_so(run):
    assert not run.finished
    run.log(4, "final_eval", {"return_mean": 1.0})
    run.write_eval({"return_mean": 1.0})
    assert run.finished and run.final_step() == 4
