"""Make datasets by rolling behaviour policies in the real environments (the D4RL way).

* ``generate_with_actors``: MuJoCo scenarios. Behaviour policies are single-agent SAC actors
  acting on the global state (offmarl/data/behaviour.py); their joint action is split among the
  agents with MaMuJoCo's partition (``to_local_actions``). Several env copies are stepped
  together and each step runs one batched actor forward. ``segments`` lets one dataset mix
  policies (reacher expert mix: half clockwise, half counter-clockwise; ant full-replay: every
  checkpoint of the training run).
* ``generate_coordination``: the matrix game with independent per-agent action probabilities.

Seeded and repeatable: episode e of segment k resets its env with seed ``seed*1_000_003 + e``
(e counts across segments), and actions are drawn from one torch.Generator.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from offmarl.data.dataset import DatasetMeta, MultiAgentDataset
from offmarl.envs import make_env


@dataclass
class Segment:
    """``fraction`` of the transitions made by ``actor`` (stochastic unless deterministic)."""

    actor: object
    fraction: float
    label: str
    deterministic: bool = False


def generate_with_actors(env_name: str, segments: list[Segment], size: int, seed: int, obs_scheme: str = "fo",
                         n_envs: int = 16, meta_fields: dict | None = None,
                         progress: Callable[[int], None] | None = None) -> MultiAgentDataset:
    """Roll ``segments`` in ``env_name`` until ``size`` transitions; whole episodes, except that the
    last episode of each segment is cut (and marked a time-out) to hit the segment's share."""
    fracs = np.array([s.fraction for s in segments], dtype=np.float64)
    shares = np.floor(fracs / fracs.sum() * size).astype(int)
    shares[-1] += size - shares.sum()
    gen = torch.Generator().manual_seed(seed)
    parts: list[dict[str, np.ndarray]] = []
    episode_counter = 0
    envs = [make_env(env_name, obs=obs_scheme) for _ in range(n_envs)]
    spec = envs[0].spec
    threads = torch.get_num_threads()
    # the actor forward is a tiny [n_envs, state] batch: extra threads only add contention
    # (a 1M reacher generation took >20 min with 2 threads on the busy 2-core machine, ~5 with 1)
    torch.set_num_threads(1)
    try:
        for seg, share in zip(segments, shares):
            if share <= 0:
                continue
            part, episode_counter = _roll_segment(envs, seg, int(share), seed, episode_counter, gen, progress)
            parts.append(part)
    finally:
        torch.set_num_threads(threads)
        for e in envs:
            e.close()
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    env = envs[0]
    meta = DatasetMeta(env=env_name, obs_scheme=spec.obs_scheme, n_agents=spec.n_agents, obs_dims=spec.obs_dims,
                       action_dims=spec.action_dims, state_dim=spec.state_dim, discrete=False,
                       source="offmarl-generated", **(meta_fields or {}))
    segment_rows = [{"label": s.label, "transitions": int(n)} for s, n in zip(segments, shares)]
    meta.extra = {**meta.extra, "segments": segment_rows, "seed": seed}
    return MultiAgentDataset(
        states=arrays["states"], next_states=arrays["next_states"],
        observations=env.observe(arrays["states"]).astype(np.float32),
        next_observations=env.observe(arrays["next_states"]).astype(np.float32),
        actions=arrays["actions"], rewards=arrays["rewards"], terminals=arrays["terminals"],
        timeouts=arrays["timeouts"], meta=meta,
    )


def _roll_segment(envs, seg: Segment, share: int, seed: int, episode_counter: int, gen, progress):
    spec = envs[0].spec
    n = len(envs)
    buf: dict[str, list] = {k: [] for k in ("states", "next_states", "actions", "rewards", "terminals", "timeouts")}
    episodes: list[dict[str, np.ndarray]] = []
    cur = [None] * n
    states = np.zeros((n, spec.state_dim))

    def start(i):
        nonlocal episode_counter
        _, s, _ = envs[i].reset(seed=seed * 1_000_003 + episode_counter)
        episode_counter += 1
        states[i] = s
        cur[i] = {k: [] for k in buf}

    for i in range(n):
        start(i)
    collected = 0
    while collected < share:
        g_actions = seg.actor.act(torch.as_tensor(states, dtype=torch.float32), deterministic=seg.deterministic,
                                  generator=gen).numpy().astype(np.float64)
        local = envs[0].to_local_actions(g_actions)  # [n, N, A]
        for i in range(n):
            _, s2, r, term, trunc, _ = envs[i].step(local[i])
            c = cur[i]
            c["states"].append(states[i].copy())
            c["next_states"].append(s2)
            c["actions"].append(local[i])
            c["rewards"].append(r)
            c["terminals"].append(term)
            c["timeouts"].append(trunc and not term)
            states[i] = s2
            if term or trunc:
                episodes.append({k: np.asarray(v) for k, v in c.items()})
                collected += len(c["rewards"])
                if progress:
                    progress(len(c["rewards"]))
                start(i)
    # episodes in completion order (deterministic); cut the last one to hit the share exactly
    out = {k: np.concatenate([e[k] for e in episodes]) for k in buf}
    out = {k: v[:share] for k, v in out.items()}
    if not (out["terminals"][-1] or out["timeouts"][-1]):
        out["timeouts"][-1] = True
    out["states"] = out["states"].astype(np.float32)
    out["next_states"] = out["next_states"].astype(np.float32)
    out["actions"] = out["actions"].astype(np.float32)
    out["rewards"] = out["rewards"].astype(np.float32)
    out["terminals"] = out["terminals"].astype(bool)
    out["timeouts"] = out["timeouts"].astype(bool)
    return out, episode_counter


def generate_coordination(p_right: tuple[float, float], size: int, seed: int,
                          meta_fields: dict | None = None) -> MultiAgentDataset:
    """One-step episodes where agent i picks right (1) with probability ``p_right[i]``,
    independently. The payoff is the game's own (1 if the actions match)."""
    from offmarl.envs.coordination import PAYOFF

    env = make_env("coordination")
    spec = env.spec
    rng = np.random.default_rng(seed)
    actions = (rng.random((size, 2)) < np.asarray(p_right)).astype(np.int64)
    states = np.ones((size, 1), dtype=np.float32)
    obs = env.observe(states).astype(np.float32)
    meta = DatasetMeta(env="coordination", obs_scheme="fo", n_agents=2, obs_dims=spec.obs_dims,
                       action_dims=spec.action_dims, state_dim=1, discrete=True, source="offmarl-generated",
                       **(meta_fields or {}))
    meta.extra = {**meta.extra, "p_right": list(p_right), "seed": seed}
    avail = np.ones((size, 2, 2), dtype=bool)
    return MultiAgentDataset(
        states=states, next_states=states.copy(), observations=obs, next_observations=obs.copy(), actions=actions,
        rewards=PAYOFF[actions[:, 0], actions[:, 1]].astype(np.float32), terminals=np.ones(size, dtype=bool),
        timeouts=np.zeros(size, dtype=bool), meta=meta, avail_actions=avail, next_avail_actions=avail.copy(),
    )
