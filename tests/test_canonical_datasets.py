"""Canonical named datasets: versioned names, the registry's sha256 and `offmarl datasets verify`,
generation that gives the same bytes whatever the SIMD kernels, threads and env copies, and a run
that finds its data by name, version and checksum (not by absolute path) when it resumes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from cli_helpers import TINY_IBC, run_cli

from offmarl.data import registry
from offmarl.data.dataset import DatasetError
from offmarl.data.storage import load_dataset_file, save_dataset

# content_sha256 of `offmarl datasets generate ant-medium --size 20000` (seed 0): the first
# episodes of the canonical ant-medium-v1, the last one cut at 20,000 rows
ANT_MEDIUM_20K_SHA256 = "75ddbcb63fefc9d7bdefb072d376507c36c179e8543a83c7ca9420c377d26e90"


def test_names_resolve_to_their_version(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path))
    rec = registry.recipe("ant-medium")
    assert registry.recipe("ant-medium-v1") is rec and rec.versioned == "ant-medium-v1"
    assert registry.native_path("ant-medium") == tmp_path / "ant-medium-v1.hdf5"
    with pytest.raises(DatasetError, match="ant-medium has no version v7; this offmarl has ant-medium-v1"):
        registry.recipe("ant-medium-v7")
    with pytest.raises(DatasetError, match="unknown dataset 'ant-mediun'"):
        registry.recipe("ant-mediun")


def test_verify_prints_match_and_fails_on_a_modified_file(tmp_path, monkeypatch, capsys):
    """The registry's sha256 is the one `generate` reproduces; one changed action is a mismatch."""
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path))
    code, out = run_cli(capsys, "datasets", "generate", "coordination-neutral")
    assert code == 0 and "coordination-neutral-v1: match (sha256 4f6c52d14c18cf08" in out, out
    code, out = run_cli(capsys, "datasets", "verify", "coordination-neutral")
    assert code == 0 and "coordination-neutral-v1: match" in out and len(out.strip().splitlines()) == 1, out

    path = tmp_path / "coordination-neutral-v1.hdf5"
    ds = load_dataset_file(path)
    ds.actions[17, 1] = 1 - ds.actions[17, 1]  # a valid file with other data
    ds.rewards[17] = float(ds.actions[17, 0] == ds.actions[17, 1])
    save_dataset(ds, path)
    code, out = run_cli(capsys, "datasets", "verify", "coordination-neutral")
    assert code == 1 and "coordination-neutral-v1: MISMATCH" in out and len(out.strip().splitlines()) == 1, out

    code, out = run_cli(capsys, "datasets", "verify", "coordination-favorable")
    assert code != 0 and "offmarl datasets generate coordination-favorable" in out, out


def test_a_smaller_file_is_not_comparable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path))
    code, out = run_cli(capsys, "datasets", "generate", "coordination-neutral", "--size", "50")
    assert code == 0 and "not comparable with the registry's file of 10,000 transitions" in out, out


def test_generation_does_not_depend_on_the_number_of_env_copies():
    """Episodes are stored in seed order, each with its own noise stream: 1 copy and 4 copies
    (which run episodes side by side and finish them in another order) give the same bytes.
    Reacher: 50-step episodes, so 600 rows are 12 episodes over both policy segments."""
    one, four = (registry.build("reacher-expert-mix", 600, seed=0, n_envs=n) for n in (1, 4))
    assert one.content_sha256() == four.content_sha256()
    assert one.n_episodes == 12 and one.meta.extra["episodes"] == 12


@pytest.mark.slow
def test_ant_medium_20k_is_the_same_under_other_kernels_threads_and_copies(tmp_path):
    """ATEN_CPU_CAPABILITY=default vs avx2 (PyTorch's SIMD kernels), 1 vs 2 threads, 16 vs 5 env
    copies, each in a fresh process: one sha256, the recorded one."""
    shas = []
    for i, (cap, threads, envs) in enumerate([("default", "1", 16), ("avx2", "2", 16), ("avx2", "1", 5)]):
        out = tmp_path / f"a{i}.hdf5"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OFFMARL_NUM_THREADS": threads,
               "OFFMARL_DATA_DIR": str(tmp_path)}
        subprocess.run([sys.executable, "-m", "offmarl.cli.main", "datasets", "generate", "ant-medium", "--size",
                        "20000", "--envs", str(envs), "--out", str(out)], env=env, check=True, capture_output=True)
        shas.append(load_dataset_file(out).content_sha256())
    assert shas[0] == shas[1] == shas[2], shas
    assert shas[0] == ANT_MEDIUM_20K_SHA256


@pytest.fixture
def interrupted_run(tmp_path, monkeypatch, capsys):
    """A 20-step IBC run on coordination-neutral (by name) in data folder A, resumable to 30."""
    data_a = tmp_path / "A"
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(data_a))
    code, out = run_cli(capsys, "train", "--dataset", "coordination-neutral", "--algo", "ibc", "--steps", "20",
                        "--out", tmp_path / "runs", "--no-progress", *TINY_IBC)
    assert code == 0, out
    return data_a, next((tmp_path / "runs").iterdir())


def test_resume_finds_the_named_data_in_a_moved_data_folder(interrupted_run, tmp_path, monkeypatch, capsys):
    data_a, run = interrupted_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["dataset_meta"]["name"] == "coordination-neutral-v1"  # the provenance names the version
    data_b = tmp_path / "B"
    shutil.move(data_a, data_b)
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(data_b))
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "30", "--no-progress")
    assert code == 0, out
    assert "resuming" in out


def test_resume_refuses_other_data_under_the_same_name(interrupted_run, tmp_path, monkeypatch, capsys):
    data_a, run = interrupted_run
    data_b = tmp_path / "B"
    data_b.mkdir()
    ds = load_dataset_file(data_a / "coordination-neutral-v1.hdf5")
    ds.actions[3] = 1 - ds.actions[3]
    save_dataset(ds, data_b / "coordination-neutral-v1.hdf5")
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(data_b))
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "30", "--no-progress")
    assert code != 0 and "the dataset changed since the run started" in out and len(out.strip().splitlines()) == 1
    assert str(data_b / "coordination-neutral-v1.hdf5") in out, out  # names the file it read

    shutil.rmtree(data_b)
    data_b.mkdir()
    shutil.move(data_a, tmp_path / "elsewhere")
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "30", "--no-progress")
    assert code != 0 and "coordination-neutral-v1 is not in" in out and len(out.strip().splitlines()) == 1, out


def test_resume_falls_back_to_the_recorded_path(interrupted_run, tmp_path, monkeypatch, capsys):
    """Not under its name in the current data folder, but still where the run read it: resumes."""
    _, run = interrupted_run
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "empty"))
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "30", "--no-progress")
    assert code == 0 and "resuming" in out, out


def test_actions_are_float32_rounded_before_the_simulator():
    """What the simulator is given is exactly the stored float32 action."""
    from offmarl.data.behaviour import load_actor, policy_dir

    actor = load_actor(policy_dir("ant") / registry.ant_policy_selection()["medium"])
    x = np.random.default_rng(0).standard_normal((3, actor.obs_dim))
    a = actor.act_float64(x, np.random.default_rng(1).standard_normal((3, actor.act_dim)))
    assert a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    assert np.array_equal(actor.act_float64(x[1:2], None), actor.act_float64(x, None)[1:2])  # batch-independent


def test_raw_ant_stepper_is_bit_identical_to_the_env():
    """The raw MuJoCo stepper gives the env's own next states, rewards, terminations and time
    limits, bit for bit: on random actions, and from an unhealthy (too high) torso."""
    import mujoco

    from offmarl.data.generate import RawAntStepper, WrapperStepper

    rng = np.random.default_rng(0)
    wrap, raw = WrapperStepper("ant-4x2", "fo", 2), RawAntStepper("ant-4x2", "fo", 2)
    raw.limit = 40  # the time limit, sooner (the env's own is 1000 steps)
    for i in range(2):
        assert np.array_equal(wrap.reset(i, 7 + i), raw.reset(i, 7 + i))
    for t in range(40):
        a = rng.uniform(-1, 1, (2, 8))
        got, want = raw.step([0, 1], a), wrap.step([0, 1], a)
        for g, w in zip(got[:3], want[:3]):
            assert np.array_equal(g, w), t
        assert not want[3].any() and list(got[3]) == [t == 39] * 2
    for stepper in (wrap, raw):  # lift the torso above Ant-v5's healthy range (z <= 1.0)
        d = stepper.envs[1].mujoco_data
        d.qpos[2] = 1.5
        mujoco.mj_forward(stepper.envs[1]._single.unwrapped.model, d)
    a = rng.uniform(-1, 1, (1, 8))
    got, want = raw.step([1], a), wrap.step([1], a)
    assert want[2][0] and got[2][0]
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_generation_with_the_raw_stepper_is_the_same_file():
    from offmarl.data import generate as g
    from offmarl.data.behaviour import load_actor, policy_dir

    actor = load_actor(policy_dir("ant") / registry.ant_policy_selection()["medium"])
    a, b = (g.generate_with_actors("ant-4x2", [g.Segment(actor, 1.0, "m")], 700, 0, n_envs=2, stepper=s)
            for s in ("wrapper", "raw"))
    assert a.content_sha256() == b.content_sha256()
