"""Resume, evaluate and divergence through the real CLI (issue 14, defects 2-6 and 8), each with
the input that showed the defect: resume checks the data it resumes on and needs only the run
directory, evaluate needs only the env, NaN stops the run, --set is validated before any work,
bookkeeping stays exact across SIGKILL / Ctrl-C / a finished run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import TINY_IBC, run_cli

from offmarl.data.registry import build
from offmarl.data.storage import save_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    coord = root / "coord.hdf5"
    save_dataset(build("coordination-unfavorable", size=500, seed=0), coord)
    reacher = root / "reacher.hdf5"
    save_dataset(build("reacher-expert-mix", size=2000, seed=0, n_envs=4), reacher)
    return {"coord": coord, "reacher": reacher, "root": root}


def one_error(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_ibc(capsys, files, out, *extra, steps=20):
    code, text = run_cli(capsys, "train", "--dataset", files["coord"], "--algo", "ibc", "--steps", steps,
                         "--out", out, "--no-progress", *TINY_IBC, *extra)
    assert code == 0, text
    return next(p for p in out.iterdir() if p.is_dir()), text


# ------------------------------------------------------------------ divergence (defect 4)
def test_divergence_stops_the_run_with_exit_3_and_keeps_a_finite_checkpoint(files, tmp_path, capsys):
    """`--algo itd3bc --set lr=1e30`: every loss NaN from step ~200, training ran on, overwrote
    latest.pt with NaN weights and died at evaluation with a misleading message (exit 2)."""
    code, out = run_cli(capsys, "train", "--dataset", files["reacher"], "--algo", "itd3bc", "--steps", "2000",
                        "--set", "lr=1e30", "--set", "hidden=[32,32]", "--set", "loop.log_every=100",
                        "--out", tmp_path, "--no-progress")
    assert code == 3, out
    msg = one_error(out)
    assert "diverged" in msg and "not finite at step" in msg
    step = int(msg.split("not finite at step ")[1].split()[0].rstrip(":;,"))
    run = next(tmp_path.iterdir())
    assert rows(run)[-1]["step"] <= step + 100  # stopped within one log interval of the first NaN
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] < step
    params = [v for v in ckpt["algo"]["actor"].values() if torch.is_tensor(v) and v.is_floating_point()]
    assert params and all(torch.isfinite(p).all() for p in params)
    assert not (run / "eval.json").exists()


def test_diverging_moma_ppo_leaves_strict_json(files, tmp_path, capsys):
    """`--set ppo.lr=1e6` on moma-ppo: exit 0, score 0 and a bare Infinity in metrics.jsonl."""
    code, out = run_cli(capsys, "train", "--dataset", files["coord"], "--algo", "moma-ppo", "--steps", "6",
                        "--set", "ppo.lr=1e6", "--set", "world_model.hidden=[32,32]",
                        "--set", "world_model.max_steps=300", "--set", "rollout_batch=200",
                        "--set", "ppo.minibatch_size=200", "--set", "loop.log_every=1",
                        "--set", f"cache_dir={tmp_path / 'cache'}", "--out", tmp_path / "runs", "--no-progress")
    run = next((tmp_path / "runs").iterdir())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
    assert code in (0, 3), out
    if code == 3:
        assert "diverged" in one_error(out)


# ------------------------------------------------------------------ --set validated up front (defect 6)
@pytest.mark.parametrize("override, expect", [
    ("loop.log_every=0", "loop.log_every"), ("loop.final_eval_episodes=0", "loop.final_eval_episodes"),
    ("loop.steps=-5", "loop.steps"), ("world_model.hidden=abc", "world_model.hidden"),
    ("rollout_batch=true", "rollout_batch"),
])
def test_bad_set_values_are_rejected_before_any_work(files, tmp_path, capsys, override, expect):
    t0 = time.perf_counter()
    code, out = run_cli(capsys, "train", "--dataset", files["coord"], "--algo", "moma-ppo", "--set", override,
                        "--out", tmp_path / "runs", "--no-progress")
    assert code == 2 and expect in one_error(out)
    assert not (tmp_path / "runs").exists()  # no run directory, no world model fit, no training
    assert time.perf_counter() - t0 < 30


# ------------------------------------------------------------------ resume (defects 2, 3, 5)
def test_resume_needs_only_the_run_and_rejects_other_options(files, tmp_path, capsys):
    run, _ = train_ibc(capsys, files, tmp_path, steps=10)
    code, out = run_cli(capsys, "train", "--resume", run, "--algo", "iql", "--set", "lr=1")
    assert code == 2
    msg = one_error(out)
    assert "--algo" in msg and "--set" in msg and "--resume" in msg
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "20", "--no-progress")
    assert code == 0, out
    assert [r["step"] for r in rows(run) if r["phase"] == "final_eval"] == [20]


def test_resume_on_changed_data_is_refused(files, tmp_path, capsys):
    """The dataset regenerated (other size) under a run: resume carried on silently."""
    data = tmp_path / "coord.hdf5"
    shutil.copy(files["coord"], data)
    code, out = run_cli(capsys, "train", "--dataset", data, "--algo", "ibc", "--steps", "10",
                        "--out", tmp_path / "runs", "--no-progress", *TINY_IBC)
    assert code == 0, out
    run = next((tmp_path / "runs").iterdir())
    save_dataset(build("coordination-unfavorable", size=300, seed=1), data)
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "20", "--no-progress")
    assert code == 2 and "dataset changed since the run started" in one_error(out) and "300" in out
    save_dataset(build("coordination-unfavorable", size=500, seed=1), data)  # same size, other content
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "20", "--no-progress")
    assert code == 2 and "checksum" in one_error(out)


def test_finished_run_says_so_and_extends_with_steps(files, tmp_path, capsys):
    run, _ = train_ibc(capsys, files, tmp_path, steps=10)
    code, out = run_cli(capsys, "train", "--resume", run)
    assert code == 2 and "finished" in one_error(out) and "--steps" in out
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "10")
    assert code == 2 and "finished" in one_error(out)
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "15", "--no-progress")
    assert code == 0, out
    steps = [(r["step"], r["phase"]) for r in rows(run)]
    assert [s for s in steps if s[1] == "final_eval"] == [(15, "final_eval")]
    train_steps = [s for s, p in steps if p == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 15


def _spawn_train(files, out, *extra):
    env = dict(os.environ, OFFMARL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "offmarl.cli.main", "train", "--dataset", str(files["coord"]),
                             "--algo", "ibc", "--out", str(out), "--no-progress", *TINY_IBC, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_rows(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        runs = [p for p in out.iterdir()] if out.exists() else []
        if runs and (runs[0] / "metrics.jsonl").exists() and len(rows(runs[0])) >= n:
            return runs[0]
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("training wrote no metrics")


def test_sigkill_without_a_checkpoint_after_it_resumes_without_duplicate_rows(files, tmp_path, capsys):
    """Baselines log every 1k steps but checkpoint every 10k: after a SIGKILL, --resume restarted
    at step 0 and appended duplicate rows."""
    out = tmp_path / "runs"
    proc = _spawn_train(files, out, "--steps", "100000", "--set", "loop.checkpoint_every=100000",
                        "--set", "loop.eval_every=0", "--set", "loop.log_every=20")
    run = _wait_rows(out, 3, proc)
    proc.kill()
    proc.wait()
    code, text = run_cli(capsys, "train", "--resume", run, "--steps", "100", "--no-progress")
    assert code == 0, text
    train_steps = [r["step"] for r in rows(run) if r["phase"] == "train"]
    assert train_steps == [20, 40, 60, 80, 100]


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(files, tmp_path):
    out = tmp_path / "runs"
    proc = _spawn_train(files, out, "--steps", "100000", "--set", "loop.eval_every=0", "--set", "loop.log_every=20")
    run = _wait_rows(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert f"checkpoint at step {ckpt['step']}" in text and f"offmarl train --resume {run}" in text
    # the whole line unwrapped, however long the path (piped output: rich must not break it for copy-paste)
    assert any(line.endswith(f"; continue with: offmarl train --resume {run}") and line.startswith("interrupted:")
               for line in text.splitlines()), text
    assert not (run / ".lock").exists()


def test_a_second_process_on_the_same_run_is_refused(files, tmp_path, capsys):
    run, _ = train_ibc(capsys, files, tmp_path, steps=10)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": __import__("socket").gethostname()}))
        code, out = run_cli(capsys, "train", "--resume", run, "--steps", "20", "--no-progress")
        assert code == 2 and f"in use by process {holder.pid}" in one_error(out)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ evaluate (defects 2 and 6)
def test_copied_run_evaluates_with_only_the_env(files, tmp_path, capsys, monkeypatch):
    """Evaluate from another directory, the dataset gone, an empty data dir: no generation, same
    numbers as with the data (the normalisers come from the checkpoint)."""
    data = tmp_path / "data" / "coord.hdf5"
    data.parent.mkdir()
    shutil.copy(files["coord"], data)
    run, _ = train_ibc(capsys, {"coord": data}, tmp_path / "runs", steps=20)
    code, out = run_cli(capsys, "evaluate", run, "--episodes", "3", "--json", tmp_path / "with.json")
    assert code == 0, out
    moved = shutil.copytree(run, tmp_path / "elsewhere" / "run")
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(run)
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out = run_cli(capsys, "evaluate", "run", "--episodes", "3", "--json", tmp_path / "without.json")
    assert code == 0, out
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())
    with_data = json.loads((tmp_path / "with.json").read_text())["runs"]
    without = json.loads((tmp_path / "without.json").read_text())["runs"]
    (with_res,), ((where, without_res),) = with_data.values(), without.items()
    assert with_res["returns"] == without_res["returns"]
    assert where == str(moved)


def test_evaluate_bad_options_are_one_line_before_any_work(files, tmp_path, capsys):
    run, _ = train_ibc(capsys, files, tmp_path / "runs", steps=10)
    code, out = run_cli(capsys, "evaluate", run, "--checkpoint", "bset")
    assert code == 2 and "--checkpoint" in one_error(out)
    code, out = run_cli(capsys, "evaluate", run, "--json", tmp_path)
    assert code == 2 and "--json" in one_error(out)


def test_cross_play_of_runs_on_different_envs_is_one_line(files, tmp_path, capsys):
    coord_run, _ = train_ibc(capsys, files, tmp_path / "a", steps=10)
    code, out = run_cli(capsys, "train", "--dataset", files["reacher"], "--algo", "ibc", "--steps", "10",
                        "--out", tmp_path / "b", "--no-progress", *TINY_IBC)
    assert code == 0, out
    reacher_run = next((tmp_path / "b").iterdir())
    code, out = run_cli(capsys, "evaluate", coord_run, reacher_run, "--cross-play", "--episodes", "1")
    assert code == 2 and "cross-play" in one_error(out)


# ------------------------------------------------------------------ console (defect 8)
def test_plain_progress_lines_when_not_a_terminal(files, tmp_path, capsys):
    """With output redirected, nothing appeared until the run ended."""
    code, out = run_cli(capsys, "train", "--dataset", files["coord"], "--algo", "ibc", "--steps", "20",
                        "--out", tmp_path, *TINY_IBC)
    assert code == 0, out
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(progress) >= 2 and "/20" in progress[-1]


def test_resume_with_a_truncated_checkpoint_fails_before_the_world_model_fit(files, tmp_path, capsys):
    """A truncated checkpoint gave a traceback, on resume only after the world model was loaded or refitted."""
    code, out = run_cli(capsys, "train", "--dataset", files["coord"], "--algo", "moma-ppo", "--steps", "2",
                        "--set", "world_model.hidden=[16,16]", "--set", "world_model.max_steps=100",
                        "--set", "rollout_batch=100", "--set", "ppo.minibatch_size=100", "--set", "loop.eval_every=0",
                        "--set", "loop.final_eval_episodes=1", "--set", f"cache_dir={tmp_path / 'cache'}",
                        "--out", tmp_path / "runs", "--no-progress")
    assert code == 0, out
    run = next((tmp_path / "runs").iterdir())
    (run / "eval.json").unlink()  # an unfinished run
    ckpt = run / "checkpoints" / "latest.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    shutil.rmtree(tmp_path / "cache")
    code, out = run_cli(capsys, "train", "--resume", run, "--no-progress")
    assert code == 2 and "truncated or corrupt" in one_error(out)
    assert "world model" not in out  # refused before looking for (or fitting) the world model


def test_out_under_a_regular_file_is_refused_before_loading_data(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "afile").write_text("x")
    code, out = run_cli(capsys, "train", "--dataset", "ant-medium", "--algo", "ibc",
                        "--out", tmp_path / "afile" / "runs")
    assert code == 2 and "is a file, not a folder" in one_error(out)  # ant-medium was not generated first
