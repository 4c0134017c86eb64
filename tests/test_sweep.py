"""offmarl sweep on a real local Ray (num_cpus=2): every trial is a real `offmarl train` run on the
coordination game with a tiny budget; re-runs skip finished trials and resume interrupted ones;
a failing trial is reported and does not stop the others; the report reads the sweep."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from offmarl.filelock import FileLock
from offmarl.report import write_report
from offmarl.sweep import (
    SweepConfig,
    SweepError,
    Trial,
    parse_seeds,
    plan,
    run_sweep,
    run_trial_process,
    world_model_key,
)

TINY = ["loop.steps=20", "loop.eval_every=10", "loop.eval_episodes=2", "loop.final_eval_episodes=4",
        "loop.eval_envs=2", "loop.log_every=5", "loop.checkpoint_every=10"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_parse_seeds_and_plan():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds(["1-2", "5"]) == [1, 2, 5]
    with pytest.raises(SweepError, match="--seeds 'a'"):
        parse_seeds("a")
    trials = plan(["iql", "ma-iql"], ["coordination-neutral"], ["fo"], [0, 1])
    assert [t.name for t in trials] == ["iql__coordination-neutral__fo__s0", "ma-iql__coordination-neutral__fo__s0",
                                        "iql__coordination-neutral__fo__s1", "ma-iql__coordination-neutral__fo__s1"]
    assert world_model_key(Trial("iql", "d", "fo", 0), [], None) is None
    k0 = world_model_key(Trial("moma-ppo", "d", "fo", 0), ["ppo.lr=1"], None)
    assert k0 == world_model_key(Trial("moma-ppo", "d", "po", 0), ["ppo.lr=2"], None)  # obs/ppo: same model
    assert k0 != world_model_key(Trial("moma-ppo", "d", "fo", 1), ["ppo.lr=1"], None)  # the model's seed follows
    assert k0 != world_model_key(Trial("moma-ppo", "d", "fo", 0), ["world_model.members=3"], None)


def test_sweep_skip_resume_and_failure(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "sweep"
    # two trials on the two Ray CPUs: one trains, one fails (the coordination game has no "po" scheme)
    cfg = SweepConfig(algos=["iql"], datasets=["coordination-neutral"], obs=["fo", "po"], seeds=[0], out=out,
                      overrides=TINY, device="cpu")
    updates = []
    states = {st.trial.name: st for st in run_sweep(cfg, on_update=lambda s: updates.append([x.status for x in s]))}
    ok = ["iql__coordination-neutral__fo__s0"]
    for name in ok:
        st = states[name]
        assert st.status == "done", st.error
        (run,) = [p.parent for p in (out / "trials" / name).glob("*/config.yaml")]
        assert (run / "eval.json").exists() and st.run_dir == run and st.score is not None
    bad = states["iql__coordination-neutral__po__s0"]
    assert bad.status == "failed" and "po" in bad.error and "Traceback" not in bad.error
    assert any("running" in u or "pending" in u for u in updates)

    # a second sweep on the same folder while one runs is refused
    guard = FileLock(out / "sweep.lock")
    guard.acquire()
    with pytest.raises(SweepError, match="another `offmarl sweep` is running"):
        run_sweep(cfg)
    guard.release()

    # again: the finished trials are skipped (nothing re-trained), the failed ones are tried again
    mtimes = {n: (states[n].run_dir / "eval.json").stat().st_mtime for n in ok}
    again = {st.trial.name: st for st in run_sweep(cfg)}
    assert all(again[n].status == "skipped" for n in ok)
    assert all((states[n].run_dir / "eval.json").stat().st_mtime == mtimes[n] for n in ok)
    assert again["iql__coordination-neutral__po__s0"].status == "failed"

    # an interrupted trial (checkpoint, no eval.json) is resumed in its run directory
    run1 = states[ok[0]].run_dir
    (run1 / "eval.json").unlink()
    rows_before = (run1 / "metrics.jsonl").read_text().count('"phase": "train"')
    cfg_fo = SweepConfig(algos=["iql"], datasets=["coordination-neutral"], obs=["fo"], seeds=[0], out=out,
                         overrides=TINY, device="cpu")
    third = {st.trial.name: st for st in run_sweep(cfg_fo)}
    assert third[ok[0]].status == "done", third[ok[0]].error
    assert third[ok[0]].run_dir == run1 and (run1 / "eval.json").exists()
    assert "--resume" in (out / "trials" / ok[0] / "stderr.log").read_text()
    assert (run1 / "metrics.jsonl").read_text().count('"phase": "train"') == rows_before  # nothing re-logged

    # the report reads the sweep folder
    res = write_report([out], tmp_path / "report", plots=False)
    assert res["runs"] == 1 and res["cells"] == 1
    assert "| coordination-neutral | fo | iql |" in (tmp_path / "report" / "results.md").read_text()

    # the CLI: everything already done -> finishes at once without starting Ray trials
    proc = subprocess.run([sys.executable, "-m", "offmarl.cli.main", "sweep", "--algo", "iql", "--dataset",
                           "coordination-neutral", "--obs", "fo", "--seeds", "0", "--out", str(out),
                           *[a for s in TINY for a in ("--set", s)]], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 skipped" in proc.stdout
    # a second command on the same folder (here: the same trial, other spelling): the report cites both
    proc2 = subprocess.run([sys.executable, "-m", "offmarl.cli.main", "sweep", "--algo", "iql", "--dataset",
                            "coordination-neutral", "--obs", "fo", "--seeds", "0-0", "--out", str(out),
                            *[a for s in TINY for a in ("--set", s)]], check=False, capture_output=True, text=True)
    assert proc2.returncode == 0, proc2.stderr
    write_report([out], tmp_path / "report2", plots=False)
    md = (tmp_path / "report2" / "results.md").read_text()
    assert md.count("Runs trained by `offmarl sweep --algo iql") == 2 and "--seeds 0-0" in md


_TRIAL = """
import pathlib, sys, time
events, role, go = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])

def add(e):
    with open(events, "a") as f:
        f.write(e + "\\n")

def wait(cond):
    for _ in range(1200):  # at most 120 s; a failed wait shows up in the order of events
        if cond():
            return
        time.sleep(0.1)

add(role + "-start")
if role == "a":
    wait(go.exists)
    print("fitted world model /cache/x/model.pt", flush=True)
    add("a-fitted")
    wait(lambda: "b-start" in events.read_text().split())
    add("a-end")
"""


def _wait_for(cond, what):
    for _ in range(1200):
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_world_model_lock_serialises_first_fit(tmp_path, monkeypatch):
    """Two trials with the same world-model key: the second asks for the lock while the first
    fits, starts only after the first has logged that its world model is ready, and without
    waiting for the first to finish. Checked on the order of events, not on durations."""
    import offmarl.sweep as sweep

    events, go = tmp_path / "events", tmp_path / "go"
    events.write_text("")

    def add(e):
        with open(events, "a") as f:
            f.write(e + "\n")

    class RecordingLock(FileLock):
        def acquire(self, *args, **kwargs):
            add(f"{threading.current_thread().name}-asks")
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(sweep, "FileLock", RecordingLock)
    starts = {}

    def trial(name):
        cmd = [sys.executable, "-c", _TRIAL, str(events), name, str(go)]
        starts[name] = run_trial_process(cmd, str(tmp_path / name), str(tmp_path / "locks"), "ds-key", 1)

    a = threading.Thread(target=trial, args=("a",), name="a")
    a.start()
    _wait_for(lambda: "a-start" in events.read_text().split(), "trial a to start")
    b = threading.Thread(target=trial, args=("b",), name="b")
    b.start()
    _wait_for(lambda: {"b-asks", "b-start"} & set(events.read_text().split()), "trial b to ask for the lock")
    go.touch()  # now a may log its fitted world model
    a.join()
    b.join()
    assert starts["a"]["rc"] == 0 and starts["b"]["rc"] == 0
    order = events.read_text().split()
    assert order == ["a-asks", "a-start", "b-asks", "a-fitted", "b-start", "a-end"], order
    assert (tmp_path / "locks" / "ds-key.ready").exists()
    lock = FileLock(tmp_path / "locks" / "ds-key.lock")
    assert lock.acquire(blocking=False)  # released by both
    lock.release()
    # a failing trial reports the end of its stderr
    res = run_trial_process([sys.executable, "-c", "import sys; sys.exit('boom: bad option')"], str(tmp_path / "c"),
                            None, None, 1)
    assert res["rc"] == 1 and res["stderr_tail"].endswith("boom: bad option")
    assert json.dumps(res)


@pytest.mark.slow
def test_cli_sweep_in_a_pipe_prints_lines_and_writes_nothing_under_home(tmp_path):
    """`offmarl sweep ... | cat`: a plain line per finished trial and a final newline; Ray's session
    folder and auth token go under $OFFMARL_DATA_DIR/cache/ray, nothing under HOME."""
    import os

    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFMARL_", "RAY_"))}
    env.update(HOME=str(home), OFFMARL_DATA_DIR=str(data), OFFMARL_NUM_THREADS="1")
    sets = [a for kv in TINY for a in ("--set", kv)]
    r = subprocess.run([sys.executable, "-m", "offmarl.cli.main", "sweep", "--algo", "iql", "--dataset",
                        "coordination-neutral", "--seeds", "0", *sets, "--num-cpus", "1", "--device", "cpu",
                        "--out", str(tmp_path / "sweep")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert any(line.startswith("done iql__coordination-neutral__") and "  score " in line for line in lines)
    assert r.stdout.endswith("\n") and "1 done; report: offmarl report" in r.stdout
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == []
    ray = data / "cache" / "ray"
    assert (ray / "auth_token").is_file() and any(ray.glob("session_*"))
