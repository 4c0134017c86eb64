"""Ctrl-C during the world-model fit keeps the fit and the same command continues it (issue 14,
defect 8: Ctrl-C lost the fit, a 12-minute step of the default ant-medium run)."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from test_worldmodel import TINY, linear_dataset

from offmarl.worldmodel.ensemble import EnsembleConfig, load_or_fit


def test_ctrl_c_during_the_fit_keeps_it_and_the_next_fit_continues_exactly(tmp_path):
    ds = linear_dataset()
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    cfg = EnsembleConfig(**{**TINY, "patience": 0})  # all 300 steps: the interrupted fit must not stop early
    straight, _ = load_or_fit(ds, cfg, tmp_path / "a", "cpu")

    def ctrl_c_at_150(p):
        if p["step"] == 150:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as from the terminal

    said = []
    with pytest.raises(KeyboardInterrupt):
        load_or_fit(ds, cfg, tmp_path / "b", "cpu", progress=ctrl_c_at_150, log=said.append)
    (partial,) = (tmp_path / "b").glob("*/interrupted-fit.pt")
    assert torch.load(partial, weights_only=True)["step"] == 150
    assert any("interrupted at step 150" in s for s in said)
    assert signal.getsignal(signal.SIGINT) is handler_before  # the fit put the handler back

    resumed, info = load_or_fit(ds, cfg, tmp_path / "b", "cpu", log=said.append)
    assert not info["cached"] and not partial.exists()
    assert any("continuing the fit interrupted at step 150" in s for s in said)
    want, got = straight.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
