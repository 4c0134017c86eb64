"""Files that arrive from other people cannot run code (issue 14, defect 1).

A code-running pickle (a ``__reduce__`` payload that would create a marker folder) is planted
in every file offmarl loads from a run directory or a user's path: the checkpoint read by
``offmarl evaluate``, by ``offmarl train --resume``, by cross-play, the ``--world-model`` file
and a behaviour policy. Each must be refused with one line and the marker must not exist.
Everything goes through the real CLI entry point (``offmarl.cli.main.main``) on a real run.
"""
from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from cli_helpers import TINY_IBC, run_cli

from offmarl.data.registry import build
from offmarl.data.storage import save_dataset


class Payload:
    """Unpickling this creates ``marker``: the proof that a load ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A coordination dataset file and one finished 20-step IBC run trained by `offmarl train`."""
    from offmarl.cli.main import main

    root = tmp_path_factory.mktemp("safety")
    data = root / "coord.hdf5"
    save_dataset(build("coordination-unfavorable", size=500, seed=0), data)
    old = sys.argv
    sys.argv = ["offmarl", "train", "--dataset", str(data), "--algo", "ibc", "--steps", "20",
                "--out", str(root / "runs"), "--no-progress", *TINY_IBC]
    try:
        main()
    except SystemExit as e:
        assert not e.code, f"training the fixture run failed with exit code {e.code}"
    finally:
        sys.argv = old
    run = next((root / "runs").iterdir())
    assert (run / "checkpoints" / "latest.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    return data, run


def plant(ckpt_path, marker) -> None:
    """Put a payload into a real checkpoint, next to its real tensors."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    ckpt["algo"]["note"] = Payload(marker)
    torch.save(ckpt, ckpt_path)


def copy_run(run, dest):
    return shutil.copytree(run, dest)


def assert_refused(code, out, marker):
    assert not os.path.exists(marker), "loading the file ran the planted code"
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    assert "refused" in lines[0] and "Traceback" not in out, out


@pytest.mark.parametrize("which", ["best", "latest"])
def test_evaluate_refuses_code_in_checkpoint(trained, tmp_path, capsys, which):
    _, run = trained
    run = copy_run(run, tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / "checkpoints" / f"{which}.pt", marker)
    code, out = run_cli(capsys, "evaluate", run, "--checkpoint", which, "--episodes", "1")
    assert_refused(code, out, marker)


def test_resume_refuses_code_in_checkpoint(trained, tmp_path, capsys):
    _, run = trained
    run = copy_run(run, tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / "checkpoints" / "latest.pt", marker)
    code, out = run_cli(capsys, "train", "--resume", run, "--steps", "30", "--no-progress")
    assert_refused(code, out, marker)


def test_cross_play_refuses_code_in_the_other_run(trained, tmp_path, capsys):
    _, run = trained
    good = copy_run(run, tmp_path / "good")
    bad = copy_run(run, tmp_path / "bad")
    marker = tmp_path / "marker"
    plant(bad / "checkpoints" / "latest.pt", marker)  # evaluate acts with the final agents by default
    code, out = run_cli(capsys, "evaluate", good, bad, "--cross-play", "--episodes", "1")
    assert_refused(code, out, marker)


def test_world_model_option_refuses_code(trained, tmp_path, capsys):
    data, _ = trained
    marker = tmp_path / "marker"
    evil = tmp_path / "world_model.pt"
    torch.save({"format": "offmarl-world-model", "config": Payload(marker)}, evil)
    code, out = run_cli(capsys, "train", "--dataset", data, "--algo", "moma-ppo", "--world-model", evil,
                        "--steps", "1", "--out", tmp_path / "runs", "--no-progress")
    assert not marker.exists(), "loading the world model ran the planted code"
    assert code == 2 and "Traceback" not in out, out


def test_behaviour_policy_refuses_code(tmp_path):
    from offmarl.data.behaviour import load_actor, policy_dir
    from offmarl.errors import OffmarlError

    marker = tmp_path / "marker"
    payload = torch.load(policy_dir("reacher") / "expert_cw.pt", map_location="cpu", weights_only=True)
    payload["note"] = Payload(marker)
    evil = tmp_path / "actor.pt"
    torch.save(payload, evil)
    with pytest.raises(OffmarlError) as info:
        load_actor(evil)
    assert not marker.exists()
    assert "\n" not in str(info.value)
