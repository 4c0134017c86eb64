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


def test_world_model_lock_serialises_first_fit(tmp_path):
    """Two trials with the same world-model key: the second starts only once the first has logged
    that its world model is ready, and without waiting for the first to finish."""
    script = ("import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); p.write_text(str(time.time())); "
              "time.sleep(float(sys.argv[2])); print('fitted world model /cache/x/model.pt', flush=True); "
              "time.sleep(float(sys.argv[3]))")
    starts = {}

    def trial(name, fit_s, rest_s):
        cmd = [sys.executable, "-c", script, str(tmp_path / f"{name}.start"), str(fit_s), str(rest_s)]
        starts[name] = run_trial_process(cmd, str(tmp_path / name), str(tmp_path / "locks"), "ds-key", 1)

    a = threading.Thread(target=trial, args=("a", 3.0, 6.0))
    a.start()
    time.sleep(0.5)
    b = threading.Thread(target=trial, args=("b", 0.0, 0.0))
    b.start()
    a.join()
    b.join()
    assert starts["a"]["rc"] == 0 and starts["b"]["rc"] == 0
    t_a, t_b = float((tmp_path / "a.start").read_text()), float((tmp_path / "b.start").read_text())
    assert 3.0 <= t_b - t_a < 9.0  # after A's fit, before A's end
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
