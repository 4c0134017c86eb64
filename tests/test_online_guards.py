"""`offmarl online --resume` goes through the guards of `offmarl train --resume`
(offmarl/driver.py ``check_extension``): foreign options refused in one line, the run lock, a
finished run continues only to a larger --steps total, and an offline run is not resumed online."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from offmarl.config import to_dict
from offmarl.driver import online_from_options, resolve_online_config, train_from_options
from offmarl.errors import OffmarlError
from offmarl.runs import RunDir, RunError


def _quiet(*a, **k):
    pass


def _online_run(tmp_path, kind="online") -> RunDir:
    cfg, applied = resolve_online_config("mamba", "2s3z", None, ["smoke"], None, 400)
    resolved = {"kind": kind, "algo": "mamba", "dataset": "smac-2s3z", "env": "smac-2s3z", "obs": "local",
                "backend": "smax", "seed": 0, "device": "cpu", "overrides": applied, "config": to_dict(cfg)}
    run = RunDir.create(tmp_path / "runs", "mamba", "smac-2s3z", 0, resolved)
    run.close()
    return run


@pytest.mark.parametrize("option, value", [("map_name", "3m"), ("algo", "mag"), ("backend", "smax"),
                                           ("config", ["smoke"]), ("overrides", ["planner.l=2"]), ("seed", 3),
                                           ("out", "elsewhere")])
def test_resume_refuses_foreign_options_in_one_line(tmp_path, option, value):
    run = _online_run(tmp_path)
    with pytest.raises(OffmarlError) as info:
        online_from_options(resume=str(run.path), log=_quiet, **{option: value})
    msg = str(info.value)
    assert "\n" not in msg and "cannot change it" in msg and "--steps N sets the new total" in msg
    flag = {"map_name": "--map", "overrides": "--set"}.get(option, f"--{option}")
    assert flag in msg


def test_resume_takes_the_run_lock(tmp_path):
    run = _online_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock_path.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": 0}))
        with pytest.raises(RunError, match="is in use by process"):
            online_from_options(resume=str(run.path), log=_quiet)
    finally:
        holder.kill()
        holder.wait()


def test_finished_run_extends_only_to_a_larger_total(tmp_path):
    run = _online_run(tmp_path)
    cfg = resolve_online_config("mamba", "2s3z", None, ["smoke"], None, 400)[0]
    last = cfg.iterations
    assert last * cfg.iteration_steps == 400
    reopened = RunDir.open(run.path)
    reopened.log(last, "final_eval", {"win_rate": 0.0})
    reopened.write_eval({"win_rate": 0.0})
    reopened.close()
    with pytest.raises(RunError, match=r"is finished .* at env step 400 .*--steps N` \(N > 400\)"):
        online_from_options(resume=str(run.path), log=_quiet)
    with pytest.raises(RunError, match=r"N > 400"):
        online_from_options(resume=str(run.path), steps=400, log=_quiet)
    assert not run.lock_path.exists()  # refused: the lock is released


def test_train_and_online_refuse_each_others_runs(tmp_path):
    run = _online_run(tmp_path)
    with pytest.raises(OffmarlError, match="made by `offmarl online`; resume it with `offmarl online --resume`"):
        train_from_options(resume=str(run.path), log=_quiet)
    offline = _online_run(tmp_path / "b", kind="offline")
    with pytest.raises(OffmarlError, match="made by `offmarl train`"):
        online_from_options(resume=str(offline.path), log=_quiet)


def test_print_config_from_the_command_line(tmp_path):
    """--print-config prints the resolved config with sources and exits: no run directory."""
    env = {**os.environ, "OFFMARL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "offmarl.cli.main"]
    r = subprocess.run([*cmd, "online", "--map", "2s3z", "--config", "mag-reference", "--config", "cpu-quick",
                        "--set", "planner.h=7", "--out", str(tmp_path), "--print-config"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {line.split(":")[0]: line for line in r.stdout.splitlines()}
    assert lines["planner.l"].endswith("# online.yaml:mag-reference maps.2s3z")
    assert lines["planner.h"].endswith("# --set") and lines["model_updates"].endswith("# online.yaml:cpu-quick")
    assert lines["n_envs"].endswith("# default") and not any(tmp_path.iterdir())
    r = subprocess.run([*cmd, "train", "--dataset", "ant-medium", "--config", "reference", "--steps", "3",
                        "--print-config"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {line.split(":")[0]: line for line in r.stdout.splitlines()}
    assert lines["loop.steps"].endswith("# --steps") and lines["ppo.lr"].endswith("# moma-ppo.yaml:reference")


@pytest.mark.slow
def test_online_run_writes_eval_json_once_and_resume_extends_it(tmp_path, monkeypatch):
    """An online run (mappo: no model, seconds once SMAX is compiled) writes eval.json once; a
    finished run resumed with a larger --steps continues to the new total and writes it once more."""
    writes = []
    original = RunDir.write_eval
    monkeypatch.setattr(RunDir, "write_eval", lambda self, res: writes.append(res) or original(self, res))
    res = online_from_options("2s3z", "mappo", config=["smoke"], steps=200, device="cpu", out=str(tmp_path),
                              log=_quiet)
    assert len(writes) == 1 and writes[0]["env_steps"] == res["env_steps"] == 200
    res = online_from_options(resume=res["run_dir"], steps=400, device="cpu", log=_quiet)
    assert len(writes) == 2 and res["env_steps"] == 400
    assert not (RunDir.open(res["run_dir"]).lock_path).exists()


def test_online_loop_is_the_loop_config_in_env_steps():
    from offmarl.algos import online
    from offmarl.driver import online_loop_config
    from offmarl.loop import LoopConfig

    cfg, _ = resolve_online_config("mamba", "2s3z", None, None, ["loop.eval_every=1000", "loop.checkpoint_every=250"],
                                   2000)
    assert isinstance(cfg.loop, LoopConfig) and cfg.iteration_steps == 100
    loop = online_loop_config(cfg)  # iterations of 100 env steps
    assert (loop.steps, loop.eval_every, loop.checkpoint_every, loop.log_every) == (20, 10, 2, 1)
    cfg, _ = resolve_online_config("mamba", "2s3z", None, None, ["loop.eval_every=0"], None)
    assert online_loop_config(cfg).eval_every == 0  # 0: only the final evaluation, as offline
    # config.yaml of a run written when the online budget was loop.env_steps still loads
    old = to_dict(cfg)
    old["loop"] = {"env_steps": 3000, "eval_every": 500, "eval_episodes": 4, "final_eval_episodes": 4, "eval_envs": 4}
    migrated = online.migrate_saved_config(old)
    assert migrated["loop"]["steps"] == 3000 and "env_steps" not in migrated["loop"]


# the keys of online runs' ``planner`` before it became planners.mag.PlannerConfig
OLD_PLANNER_KEYS = ("l", "h", "discount", "continuations", "error_inputs", "check_every")


def test_online_planner_is_the_planner_config_with_online_defaults():
    from offmarl.algos import moma_ppo, online
    from offmarl.driver import saved_config
    from offmarl.planners.mag import PlannerConfig

    cfg = online.OnlineConfig()
    p = cfg.planner
    assert type(p) is PlannerConfig
    assert (p.l, p.h, p.discount, p.continuations, p.error_inputs, p.check_every) == (4, 5, 1.0, 1, "transition", 10)
    offline = moma_ppo.Config().planner  # the offline loop keeps its own defaults
    assert (offline.kind, offline.l, offline.h, offline.discount, offline.continuations) == ("none", 4, 4, 0.5, 4)
    # config.yaml of a run written with the online loop's own planner settings class still loads
    old = to_dict(cfg)
    old["planner"] = {"l": 3, "h": 6, "discount": 0.9, "continuations": 2, "error_inputs": "state_action",
                      "check_every": 0}
    assert tuple(old["planner"]) == OLD_PLANNER_KEYS
    loaded = saved_config(online, {"config": old})
    got = loaded.planner
    assert (got.l, got.h, got.discount, got.continuations, got.error_inputs, got.check_every) == \
        (3, 6, 0.9, 2, "state_action", 0)
    assert to_dict(got) == {**to_dict(online.online_planner()), **old["planner"]}


def test_planner_keys_of_the_other_loop_are_refused():
    from offmarl.algos import moma_ppo

    with pytest.raises(OffmarlError, match=r"online.planner.error_hidden is an offline-only .* model.error_hidden"):
        resolve_online_config("mag", "2s3z", None, None, ["planner.error_hidden=[16]"], None)
    with pytest.raises(OffmarlError, match=r"online.planner.kind is an offline-only .* --algo"):
        resolve_online_config("mag", "2s3z", None, None, ["planner.kind=mag"], None)
    with pytest.raises(OffmarlError, match=r"online.planner.score = 'uncertainty'.*error_model, deviation"):
        resolve_online_config("mag", "2s3z", None, None, ["planner.score=uncertainty"], None)
    cfg, _ = resolve_online_config("mag", "2s3z", None, None, ["planner.score=deviation"], None)
    assert cfg.planner.score == "deviation"
    cfg = moma_ppo.Config()
    cfg.planner.check_every = 3
    with pytest.raises(OffmarlError, match="planner.check_every is an online-only setting"):
        moma_ppo.check_config(cfg)


@pytest.mark.slow
def test_an_online_run_saved_with_the_old_planner_keys_resumes(tmp_path):
    """A finished mag run whose config.yaml holds the old planner keys continues to a larger total."""
    import yaml

    res = online_from_options("2s3z", "mag", config=["smoke"], steps=200, device="cpu", out=str(tmp_path),
                              log=_quiet)
    path = RunDir.open(res["run_dir"]).path / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    saved["config"]["planner"] = {k: saved["config"]["planner"][k] for k in OLD_PLANNER_KEYS}
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    res = online_from_options(resume=res["run_dir"], steps=400, device="cpu", log=_quiet)
    assert res["env_steps"] == 400
