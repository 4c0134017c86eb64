"""Sequence replay for the online loop: one ring buffer per env copy, sampled as fixed-length
sequences (MAMBA: 40 sequences of 20 steps, Egorov & Shpilman, AAMAS 2022, Table 1).

Rows follow DreamerV2's convention (one row per OBSERVATION, not per transition):

    obs [N, O]       what the agents saw
    avail [N, K]     their available actions at that observation (dead agents: "stop" only)
    action [N]       the joint action taken at it (terminal rows: "stop", never learned from)
    reward []        the team reward received on ARRIVING here (0 on an episode's first row)
    first []         the row starts an episode (the model resets its recurrent state here)
    terminal []      the battle ended at this observation (continuation target 0); a time-out
                     ends an episode without a terminal row: its last row is followed by a first
    alive [N]        the agent is alive here; a dead agent stays dead to the episode's end
                     (absorbing), so the model learns that it only ever takes "stop"

Sequences may cross episode boundaries; ``first`` tells the model where to reset, as DreamerV3
does. A sampled sequence never crosses a copy's write position (no stitching of old and new).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from offmarl.errors import OffmarlError

KEYS = ("obs", "avail", "action", "reward", "first", "terminal", "alive")


class SequenceReplay:
    """``n_streams`` ring buffers (one per env copy) of ``capacity // n_streams`` rows each.

    add(rows): rows is a dict of per-stream arrays with a leading [n_streams] axis and a
    boolean ``valid`` [n_streams] (which streams get this row); streams advance independently,
    because a finished episode adds its terminal row and the next episode's first row at once.
    sample(batch, length, generator) -> dict of tensors [length, batch, ...] (time-major).
    """

    def __init__(self, capacity: int, n_streams: int, n_agents: int, obs_dim: int, n_actions: int):
        if capacity < n_streams * 2:
            raise OffmarlError(f"replay capacity {capacity} is too small for {n_streams} env copies; raise "
                               "online.replay_capacity")
        self.n_streams = n_streams
        self.cap = capacity // n_streams
        c = (n_streams, self.cap)
        self.data: dict[str, np.ndarray] = {
            "obs": np.zeros(c + (n_agents, obs_dim), np.float32),
            "avail": np.zeros(c + (n_agents, n_actions), bool),
            "action": np.zeros(c + (n_agents,), np.int64),
            "reward": np.zeros(c, np.float32),
            "first": np.zeros(c, bool),
            "terminal": np.zeros(c, bool),
            "alive": np.zeros(c + (n_agents,), bool),
        }
        self.pos = np.zeros(n_streams, np.int64)  # next write index per stream
        self.count = np.zeros(n_streams, np.int64)  # rows written, up to cap

    def __len__(self) -> int:
        return int(self.count.sum())

    def add(self, rows: dict[str, np.ndarray], valid: np.ndarray | None = None) -> None:
        streams = np.arange(self.n_streams) if valid is None else np.flatnonzero(valid)
        if streams.size == 0:
            return
        at = self.pos[streams]
        for k in KEYS:
            self.data[k][streams, at] = rows[k][streams]
        self.pos[streams] = (at + 1) % self.cap
        self.count[streams] = np.minimum(self.count[streams] + 1, self.cap)

    def set_last_action(self, actions: np.ndarray) -> None:
        """Record the joint action [n_streams, N] taken at each stream's most recent row."""
        last = (self.pos - 1) % self.cap
        self.data["action"][np.arange(self.n_streams), last] = actions

    def can_sample(self, length: int) -> bool:
        return bool((self.count >= length).any())

    def sample(self, batch: int, length: int, generator: torch.Generator,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """``batch`` sequences of ``length`` consecutive rows of one stream each; streams are
        drawn in proportion to their number of valid start positions."""
        starts_per = np.maximum(self.count - length + 1, 0)
        if starts_per.sum() <= 0:
            raise OffmarlError(f"replay has no sequence of length {length} yet ({len(self)} rows); collect more "
                               "before training (online.prefill_steps)")
        u = torch.rand(batch, generator=generator, dtype=torch.float64).numpy()
        cum = np.cumsum(starts_per)
        flat = np.minimum((u * cum[-1]).astype(np.int64), cum[-1] - 1)
        stream = np.searchsorted(cum, flat, side="right")
        offset = flat - (cum[stream] - starts_per[stream])
        # the oldest row of a full stream sits at pos; of a filling one at 0
        oldest = np.where(self.count[stream] == self.cap, self.pos[stream], 0)
        idx = (oldest[:, None] + offset[:, None] + np.arange(length)[None]) % self.cap  # [batch, length]
        out = {}
        for k in KEYS:
            arr = self.data[k][stream[:, None], idx]  # [batch, length, ...]
            out[k] = torch.from_numpy(np.ascontiguousarray(np.swapaxes(arr, 0, 1))).to(device)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The written rows only (a stream fills from index 0 until it wraps)."""
        used = int(self.count.max())
        return {"data": {k: v[:, :used].copy() for k, v in self.data.items()}, "pos": self.pos.copy(),
                "count": self.count.copy(), "cap": self.cap}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in KEYS:
            saved = state["data"][k]
            if (state["cap"] != self.cap or saved.shape[2:] != self.data[k].shape[2:]
                    or saved.shape[0] != self.n_streams):
                raise OffmarlError(f"replay checkpoint: '{k}' has shape {saved.shape} (capacity {state['cap']}), this "
                                   f"run's replay {self.data[k].shape}; resume with the run's own config")
            self.data[k][:, :saved.shape[1]] = saved
        self.pos[...] = state["pos"]
        self.count[...] = state["count"]


__all__ = ["KEYS", "SequenceReplay"]
