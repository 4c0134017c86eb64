"""Every `offmarl` command through Typer's CliRunner: the happy path and two bad inputs each.

Bad inputs end in one of two ways, both checked here:
- click/typer's own checks (unknown option, value out of range): exit code 2 and the option named;
- offmarl's checks (unknown name, missing file, bad key): an OffmarlError whose message is ONE line
  naming the bad input (the entry point `offmarl` prints it as `error: ...` with exit code 2).
Sizes are tiny (a 50-transition dataset, a 20-step IBC run) so that the file runs in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from offmarl.cli.main import app
from offmarl.errors import OffmarlError

TINY_IBC = ["--algo", "ibc", "--steps", "20", "--set", "hidden=[16,16]", "--set", "batch_size=32",
            "--set", "loop.eval_every=10", "--set", "loop.eval_episodes=2", "--set", "loop.final_eval_episodes=2",
            "--set", "loop.log_every=5", "--set", "loop.checkpoint_every=10", "--no-progress", "--device", "cpu"]


def run(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args) -> str:
    result = run(*args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def usage_error(*args, names: str) -> None:
    """click/typer rejected the command line: exit code 2 and the offending option or argument named."""
    result = run(*args)
    assert result.exit_code == 2, (args, result.output)
    assert names in result.output, result.output


def user_error(*args, match: str) -> str:
    """offmarl rejected an input: an OffmarlError with a one-line message naming it."""
    result = run(*args)
    assert result.exit_code != 0 and isinstance(result.exception, OffmarlError), (args, result.output,
                                                                                 result.exception)
    msg = str(result.exception)
    assert "\n" not in msg and match in msg, msg
    return msg


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A private $OFFMARL_DATA_DIR: named datasets are generated and looked up there."""
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, coordination_file) -> Path:
    """One tiny IBC run on coordination-unfavorable, made through `offmarl train`."""
    out = tmp_path_factory.mktemp("runs")
    ok("train", "--dataset", coordination_file(size=500), *TINY_IBC, "--out", out)
    (run_dir,) = out.iterdir()
    return run_dir


# ------------------------------------------------------------------------------ envs
def test_envs_list():
    out = ok("envs", "list", "--no-smac")
    for name in ("ant-4x2", "reacher-2x1", "coordination"):
        assert name in out
    usage_error("envs", "list", "--bogus", names="--bogus")
    usage_error("envs", "list", "ant-4x2", names="ant-4x2")  # takes no argument


def test_envs_info():
    out = ok("envs", "info", "ant-4x2", "--obs", "po")
    assert "ant-4x2" in out and "po" in out and "state indices observed" in out
    user_error("envs", "info", "ant-4x3", match="unknown environment 'ant-4x3'")
    user_error("envs", "info", "ant-4x2", "--obs", "partial", match="partial")


def test_envs_rollout():
    out = ok("envs", "rollout", "coordination", "--episodes", "2")
    assert "episode 0: return" in out and "episode 1: return" in out and "steps/s" in out
    usage_error("envs", "rollout", "coordination", "--episodes", "0", names="--episodes")
    user_error("envs", "rollout", "smac-2s3y", match="2s3z")  # the suggestion of the closest map


# ------------------------------------------------------------------------------ datasets
def test_datasets_list(data_dir):
    out = ok("datasets", "list")
    assert "ant-medium" in out and "coordination-unfavorable" in out and str(data_dir) in out
    usage_error("datasets", "list", "--bogus", names="--bogus")
    usage_error("datasets", "list", "ant-medium", names="ant-medium")


def test_datasets_generate_and_info(data_dir):
    out = ok("datasets", "generate", "coordination-neutral", "--size", "50")
    assert "coordination-neutral: 50 transitions" in out
    path = data_dir / "coordination-neutral-v1.hdf5"
    assert path.is_file()
    info = ok("datasets", "info", "coordination-neutral")
    assert "coordination / fo" in info and "50" in info
    assert "coordination / fo" in ok("datasets", "info", path)  # a file works as well as a name
    usage_error("datasets", "generate", "coordination-neutral", "--size", "0", names="--size")
    user_error("datasets", "generate", "coordination-neutrall", match="unknown dataset 'coordination-neutrall'")
    user_error("datasets", "info", "coordination-favorable", match="offmarl datasets generate coordination-favorable")
    user_error("datasets", "info", data_dir / "absent.hdf5", match="absent.hdf5")


def test_datasets_convert(tmp_path, ant_eps, write_d4rl):
    src = tmp_path / "ant_medium-v2.hdf5"
    write_d4rl(src, ant_eps)
    dest = tmp_path / "ant-po.hdf5"
    out = ok("datasets", "convert", src, "--from", "d4rl", "--env", "ant-4x2", "--obs", "po", "--out", dest)
    assert "obs dims 15/4/4/4" in out
    with h5py.File(dest) as f:
        assert f["actions"].shape[1:] == (4, 2)
    fresh = tmp_path / "other.hdf5"  # an existing --out is refused first (without --force)
    user_error("datasets", "convert", src, "--from", "d4rl", "--out", dest, match="pass --force")
    user_error("datasets", "convert", src, "--from", "rlds", "--out", fresh, match="--from must be d4rl, "
                                                                                   "minari or vault")
    user_error("datasets", "convert", tmp_path / "absent.hdf5", "--from", "d4rl", "--out", fresh, match="absent.hdf5")
    usage_error("datasets", "convert", src, "--from", "d4rl", names="--out")  # required


def test_datasets_export(tmp_path, coordination_file):
    root = tmp_path / "minari"
    out = ok("datasets", "export", coordination_file(size=500), "--id", "offmarl/coordination/test-v0",
             "--root", root)
    assert "exported 500 transitions" in out
    assert (root / "offmarl" / "coordination" / "test-v0").is_dir()
    user_error("datasets", "export", coordination_file(size=500), "--to", "rlds", "--id", "a/b/c-v0",
               match="--to must be minari")
    user_error("datasets", "export", coordination_file(size=500), "--id", "no version here", "--root", root,
               match="no version here")


# ------------------------------------------------------------------------------ train and evaluate
@pytest.mark.slow
def test_train_tiny_coordination_run(trained_run):
    config = (trained_run / "config.yaml").read_text()
    assert "algo: ibc" in config
    ev = json.loads((trained_run / "eval.json").read_text())
    assert ev["episodes"] == 2 and 0.0 <= ev["normalised_mean"] <= 1.0
    assert (trained_run / "metrics.jsonl").is_file()


def test_train_bad_inputs(coordination_file, tmp_path):
    user_error("train", "--dataset", coordination_file(size=500), "--algo", "iqll", "--out", tmp_path,
               match="unknown algorithm 'iqll'")
    user_error("train", "--dataset", coordination_file(size=500), *TINY_IBC, "--set", "loop.stepz=3",
               "--out", tmp_path, match="loop.stepz")
    assert not list(tmp_path.iterdir())  # a rejected command leaves no run directory behind


@pytest.mark.slow
def test_evaluate(trained_run, tmp_path):
    dest = tmp_path / "eval.json"
    out = ok("evaluate", trained_run, "--episodes", "2", "--device", "cpu", "--json", dest)
    assert trained_run.name in out
    res = json.loads(dest.read_text())
    assert res["runs"][str(trained_run)]["episodes"] == 2
    usage_error("evaluate", trained_run, "--episodes", "0", names="--episodes")
    result = run("evaluate", tmp_path / "no-such-run")
    assert result.exit_code != 0 and isinstance(result.exception, OffmarlError)
    assert "no-such-run" in str(result.exception)
