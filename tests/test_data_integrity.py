"""Dataset integrity at the edges (issue 14, defects 6 and 7), through the real CLI where the
defect was seen there: outputs are not replaced without --force and are checked before any
generation, --env must match a native file everywhere, metadata must describe the env it names,
actions must lie in the env's box, D4RL values must be numbers, Minari ids must be well formed."""
from __future__ import annotations

import dataclasses
import json
import time

import h5py
import numpy as np
import pytest
from cli_helpers import run_cli

from offmarl.data.convert import convert
from offmarl.data.dataset import DatasetError
from offmarl.data.registry import build
from offmarl.data.storage import load_dataset_file, save_dataset


@pytest.fixture(scope="module")
def reacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "reacher.hdf5"
    save_dataset(build("reacher-expert-mix", size=300, seed=0, n_envs=2), path)
    return path


@pytest.fixture(scope="module")
def coord_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "coord.hdf5"
    save_dataset(build("coordination-neutral", size=200, seed=0), path)
    return path


def one_error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


def test_convert_refuses_to_replace_out_without_force(reacher_file, tmp_path, capsys):
    """`convert --out EXISTING` replaced the file silently."""
    existing = tmp_path / "keep.hdf5"
    existing.write_bytes(b"precious")
    code, out = run_cli(capsys, "datasets", "convert", reacher_file, "--from", "d4rl", "--env", "reacher-2x1",
                        "--out", existing)
    assert code == 2 and "--force" in one_error_line(out)
    assert existing.read_bytes() == b"precious"
    with pytest.raises(DatasetError, match="exists; pass --force"):
        convert(reacher_file, "offmarl", env=None, obs=None, out=existing)
    convert(reacher_file, "offmarl", env=None, obs=None, out=existing, force=True)
    assert len(load_dataset_file(existing)) == 300


def test_generate_checks_out_before_generating(tmp_path, capsys):
    """`generate --out DIR` was rejected only after the whole generation (1M reacher: ~5-20 min)."""
    (tmp_path / "afile").write_text("x")
    existing = tmp_path / "existing.hdf5"
    existing.write_bytes(b"precious")
    for out_path, expect in ((tmp_path, "is a directory"), (tmp_path / "afile" / "x.hdf5", "is a file, not a folder"),
                             (existing, "--force")):
        t0 = time.perf_counter()
        code, out = run_cli(capsys, "datasets", "generate", "reacher-expert-mix", "--size", "1000000",
                            "--out", out_path)
        assert code == 2 and expect in one_error_line(out)
        assert time.perf_counter() - t0 < 60  # refused up front, not after rolling 1M transitions
    assert existing.read_bytes() == b"precious"


def test_env_option_must_match_a_native_file_everywhere(coord_file, tmp_path, capsys):
    """`--env` was silently ignored for native files in `info` and `train` (convert rejected it)."""
    code, out = run_cli(capsys, "datasets", "info", coord_file, "--env", "ant-4x2")
    assert code == 2 and "holds env 'coordination', not 'ant-4x2'" in one_error_line(out)
    code, out = run_cli(capsys, "train", "--dataset", coord_file, "--env", "ant-4x2", "--algo", "ibc",
                        "--steps", "1", "--out", tmp_path / "runs", "--no-progress")
    assert code == 2 and "holds env 'coordination', not 'ant-4x2'" in one_error_line(out)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_metadata_that_names_another_env_is_rejected_at_load(reacher_file, tmp_path):
    """A native file whose metadata disagrees with its data loaded and crashed at the end of training."""
    ds = load_dataset_file(reacher_file)
    bad = dataclasses.replace(ds, meta=dataclasses.replace(ds.meta, env="ant-4x2"))
    path = save_dataset(bad, tmp_path / "mislabelled.hdf5")
    with pytest.raises(DatasetError, match="says n_agents = 2, but env 'ant-4x2'"):
        load_dataset_file(path)


def test_actions_outside_the_env_box_are_rejected(reacher_file, tmp_path):
    """No range check on actions: 1e6 was accepted."""
    ds = load_dataset_file(reacher_file)
    actions = ds.actions.copy()
    actions[7, 1, 0] = 1e6
    path = save_dataset(dataclasses.replace(ds, actions=actions), tmp_path / "wild.hdf5")
    with pytest.raises(DatasetError, match=r"'actions' spans .*1e\+06.*outside env 'reacher-2x1'"):
        load_dataset_file(path)


def test_d4rl_rewards_stored_as_strings_is_one_line(tmp_path, capsys):
    path = tmp_path / "strings.hdf5"
    t = 20
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((t, 111), np.float32)
        f["actions"] = np.zeros((t, 8), np.float32)
        f["rewards"] = np.array([b"1.0"] * t)
        f["terminals"] = np.zeros(t, bool)
        f["timeouts"] = np.r_[np.zeros(t - 1, bool), True]
    code, out = run_cli(capsys, "datasets", "convert", path, "--from", "d4rl", "--env", "ant-4x2",
                        "--out", tmp_path / "o.hdf5")
    assert code == 2 and "key 'rewards' holds |S3 values, not numbers" in one_error_line(out)


def test_export_with_a_malformed_minari_id_is_one_line(coord_file, tmp_path, capsys):
    code, out = run_cli(capsys, "datasets", "export", coord_file, "--id", "badid", "--root", tmp_path)
    assert code == 2 and "Minari id 'badid' is malformed" in one_error_line(out)


def test_meta_json_is_stored_with_checksums(coord_file):
    with h5py.File(coord_file) as f:
        assert json.loads(f.attrs["meta"])["env"] == "coordination"
        assert all("crc32" in f[k].attrs for k in f)


def test_a_smaller_local_copy_is_named_in_the_console(tmp_path, monkeypatch):
    """A 20k `datasets generate ant-medium --size 20000` silently replaced the 1M default."""
    from offmarl.data import registry

    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path))
    save_dataset(build("coordination-neutral", size=200, seed=0), registry.native_path("coordination-neutral"))
    said = []
    ds = registry.load("coordination-neutral", log=said.append)
    assert len(ds) == 200
    assert any("200 transitions, fewer than the recipe's 10,000" in s for s in said), said


def test_world_model_cache_follows_the_data_dir(tmp_path, monkeypatch):
    from offmarl.algos.moma_ppo import default_cache_dir

    monkeypatch.delenv("OFFMARL_CACHE_DIR", raising=False)
    monkeypatch.setenv("OFFMARL_DATA_DIR", str(tmp_path / "data"))
    assert default_cache_dir() == tmp_path / "data" / "cache" / "worldmodels"
    monkeypatch.setenv("OFFMARL_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "worldmodels"
