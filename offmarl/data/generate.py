"""Make datasets by rolling behaviour policies in the real environments (the D4RL way).

* ``generate_with_actors``: MuJoCo scenarios. Behaviour policies are single-agent SAC actors
  acting on the global state (offmarl/data/behaviour.py); their joint action is split among the
  agents with MaMuJoCo's partition (``to_local_actions``). Several env copies are stepped
  together and each step runs one batched actor forward. ``segments`` lets one dataset mix
  policies (reacher expert mix: half clockwise, half counter-clockwise; ant full-replay: every
  checkpoint of the training run).
* ``generate_coordination``: the matrix game with independent per-agent action probabilities.

Made to be bit-for-bit repeatable across x86-64 machines, thread counts and numbers of env
copies (docs/datasets.md, "Reproducibility"; tests/test_canonical_datasets.py): episode e
(counted across segments) resets its env with seed ``seed*1_000_003 + e`` and draws its action
noise from its own numpy stream ``default_rng([seed, e])``; the actor runs in float64 and its
action is rounded to float32 (the stored value) before the simulator sees it; episodes are
stored in seed order, not in the order the env copies finish them.
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
                         progress: Callable[[int], None] | None = None,
                         stepper: str | None = None) -> MultiAgentDataset:
    """Roll ``segments`` in ``env_name`` until ``size`` transitions; whole episodes in seed order,
    except that the last episode of each segment is cut (and marked a time-out) to hit the
    segment's share. The result does not depend on ``n_envs`` (see the module doc) nor on
    ``stepper`` (``STEPPERS``; default: ``default_stepper(env_name)``)."""
    fracs = np.array([s.fraction for s in segments], dtype=np.float64)
    shares = np.floor(fracs / fracs.sum() * size).astype(int)
    shares[-1] += size - shares.sum()
    parts: list[dict[str, np.ndarray]] = []
    episode_counter = 0
    stepper = STEPPERS[stepper or default_stepper(env_name)](env_name, obs_scheme, n_envs)
    env = stepper.env
    spec = env.spec
    threads = torch.get_num_threads()
    # the actor forward is a tiny [n_envs, state] batch: extra threads only add contention
    torch.set_num_threads(1)
    try:
        for seg, share in zip(segments, shares):
            if share <= 0:
                continue
            part, episode_counter = _roll_segment(stepper, seg, int(share), seed, episode_counter, progress)
            parts.append(part)
    finally:
        torch.set_num_threads(threads)
        stepper.close()
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    meta = DatasetMeta(env=env_name, obs_scheme=spec.obs_scheme, n_agents=spec.n_agents, obs_dims=spec.obs_dims,
                       action_dims=spec.action_dims, state_dim=spec.state_dim, discrete=False,
                       source="offmarl-generated", **(meta_fields or {}))
    segment_rows = [{"label": s.label, "transitions": int(n)} for s, n in zip(segments, shares)]
    meta.extra = {**meta.extra, "segments": segment_rows, "seed": seed, "episodes": episode_counter}
    return MultiAgentDataset(
        states=arrays["states"], next_states=arrays["next_states"],
        observations=env.observe(arrays["states"]).astype(np.float32),
        next_observations=env.observe(arrays["next_states"]).astype(np.float32),
        actions=arrays["actions"], rewards=arrays["rewards"], terminals=arrays["terminals"],
        timeouts=arrays["timeouts"], meta=meta,
    )


def episode_seeds(seed: int, episode: int) -> tuple[int, np.random.Generator]:
    """Episode ``episode``'s env reset seed and its own action-noise stream."""
    return seed * 1_000_003 + episode, np.random.default_rng([seed, episode])


class WrapperStepper:
    """``n`` copies of the MaMuJoCo env, each stepped through its Gymnasium env."""

    def __init__(self, env_name: str, obs_scheme: str, n: int):
        self.envs = [make_env(env_name, obs=obs_scheme) for _ in range(n)]
        self.env = self.envs[0]
        self.n = n

    def reset(self, i: int, seed: int) -> np.ndarray:
        return self.envs[i].reset(seed=seed)[1]

    def step(self, slots: list[int], global_actions: np.ndarray):
        """Step copies ``slots`` with ``global_actions [k, A]`` -> next states [k, S], rewards [k],
        terminated [k], truncated [k]."""
        local = self.env.to_local_actions(global_actions)
        out = [self.envs[i].step(local[j])[1:5] for j, i in enumerate(slots)]
        s2, r, term, trunc = zip(*out)
        return np.stack(s2), np.asarray(r), np.asarray(term), np.asarray(trunc)

    def close(self):
        for e in self.envs:
            e.close()


class RawAntStepper(WrapperStepper):
    """Ant copies stepped with MuJoCo directly: Gymnasium Ant-v5's ``step`` (``mj_step`` for
    ``frame_skip`` frames, ``mj_rnePostConstraint``, observation, reward, termination) and the
    time limit, written out without the wrappers' per-step Python layers, on each copy's own
    model and data. Resets go through the env itself (once per episode). Bit-identical to
    ``WrapperStepper`` (tests/test_canonical_datasets.py); the gain is the wrapper overhead only,
    since MuJoCo's RK4 steps of Ant dominate what is left (docs/benchmarks.md)."""

    def __init__(self, env_name: str, obs_scheme: str, n: int):
        super().__init__(env_name, obs_scheme, n)
        self.unwrapped = [e._single.unwrapped for e in self.envs]
        u = self.unwrapped[0]
        self.limit = int(self.env.spec.episode_limit)
        self.t = np.zeros(n, dtype=np.int64)
        self._body = u.data.body(u._main_body).id
        if u._include_cfrc_ext_in_observation or self.env.state_dim != u.model.nq - 2 + u.model.nv:
            raise ValueError(f"{env_name}: the raw stepper writes Ant's qpos[2:], qvel state only")

    def reset(self, i: int, seed: int) -> np.ndarray:
        self.t[i] = 0
        return super().reset(i, seed)

    def step(self, slots: list[int], global_actions: np.ndarray):
        import mujoco  # lazy: only when generating

        k = len(slots)
        s2 = np.empty((k, self.env.state_dim))
        r = np.empty(k)
        term = np.zeros(k, dtype=bool)
        for j, i in enumerate(slots):
            u = self.unwrapped[i]
            m, d = u.model, u.data
            a = global_actions[j]
            # the operations and their order are Ant-v5's (gymnasium/envs/mujoco/ant_v5.py)
            xy_before = d.xpos[self._body, :2].copy()
            d.ctrl[:] = a
            mujoco.mj_step(m, d, nstep=u.frame_skip)
            mujoco.mj_rnePostConstraint(m, d)
            xy_velocity = (d.xpos[self._body, :2].copy() - xy_before) / (m.opt.timestep * u.frame_skip)
            s2[j] = np.concatenate((d.qpos.flatten()[2:], d.qvel.flatten()))
            state = np.concatenate([d.qpos.flat, d.qvel.flat])
            lo, hi = u._healthy_z_range
            healthy = bool(np.isfinite(state).all() and lo <= state[2] <= hi)
            rewards = xy_velocity[0] * u._forward_reward_weight + healthy * u._healthy_reward
            ctrl_cost = u._ctrl_cost_weight * np.sum(np.square(a))
            contact_cost = u._contact_cost_weight * np.sum(np.square(np.clip(d.cfrc_ext, *u._contact_force_range)))
            r[j] = rewards - (ctrl_cost + contact_cost)
            term[j] = (not healthy) and u._terminate_when_unhealthy
            self.t[i] += 1
        trunc = self.t[slots] >= self.limit
        return s2, r, term, trunc


STEPPERS = {"wrapper": WrapperStepper, "raw": RawAntStepper}


def default_stepper(env_name: str) -> str:
    """``raw`` where it exists (Ant), else ``wrapper``."""
    from offmarl.envs.mamujoco import SCENARIOS

    sc = SCENARIOS.get(env_name)
    return "raw" if sc is not None and sc.scenario == "Ant" else "wrapper"


_KEYS = ("states", "next_states", "actions", "rewards", "terminals", "timeouts")


def _roll_segment(stepper, seg: Segment, share: int, seed: int, first: int, progress):
    """Episodes ``first, first+1, ...`` (each with its own reset seed and noise stream, see
    ``episode_seeds``) until their lengths, in that order, reach ``share``. An idle env copy starts
    the next episode only while the episodes started so far could still fall short, so exactly
    the episodes of the result are rolled to the end whatever the number of copies."""
    n = stepper.n
    act_dim = seg.actor.act_dim
    done: dict[int, dict[str, np.ndarray]] = {}
    slot_ep: list[int | None] = [None] * n
    slot_rng: list[np.random.Generator | None] = [None] * n
    slot_buf: list[dict[str, list] | None] = [None] * n
    states = np.zeros((n, stepper.env.state_dim))
    next_ep = first
    done_len = 0          # transitions in finished episodes
    prefix_end, prefix_len = first, 0  # finished episodes first..prefix_end-1, in order, and their length
    limit = stepper.env.spec.episode_limit
    while prefix_len < share:
        # a running episode will end with at least its current length, at most the limit: start
        # another only if those could still fall short (which rows are kept never depends on this)
        running = sum(limit for b in slot_buf if b is not None)
        for i in range(n):
            if slot_ep[i] is None and done_len + running < share:
                running += limit
                reset_seed, slot_rng[i] = episode_seeds(seed, next_ep)
                states[i] = stepper.reset(i, reset_seed)
                slot_ep[i], slot_buf[i] = next_ep, {k: [] for k in _KEYS}
                next_ep += 1
        slots = [i for i in range(n) if slot_ep[i] is not None]
        eps = None if seg.deterministic else np.stack([slot_rng[i].standard_normal(act_dim) for i in slots])
        actions = seg.actor.act_float64(states[slots], eps)  # float32: what the dataset stores
        s2, r, term, trunc = stepper.step(slots, actions.astype(np.float64))
        for j, i in enumerate(slots):
            b = slot_buf[i]
            b["states"].append(states[i].copy())
            b["next_states"].append(s2[j])
            b["actions"].append(actions[j])
            b["rewards"].append(r[j])
            b["terminals"].append(bool(term[j]))
            b["timeouts"].append(bool(trunc[j]) and not bool(term[j]))
            states[i] = s2[j]
            if term[j] or trunc[j]:
                done[slot_ep[i]] = {k: np.asarray(v) for k, v in b.items()}
                done_len += len(b["rewards"])
                if progress:
                    progress(len(b["rewards"]))
                slot_ep[i] = slot_buf[i] = slot_rng[i] = None
        while prefix_end in done and prefix_len < share:
            prefix_len += len(done[prefix_end]["rewards"])
            prefix_end += 1
    # episodes in seed order; cut the last one to hit the share exactly
    order = range(first, prefix_end)
    out = {k: np.concatenate([done[e][k] for e in order])[:share] for k in _KEYS}
    if not (out["terminals"][-1] or out["timeouts"][-1]):
        out["timeouts"][-1] = True
    out["states"] = out["states"].astype(np.float32)
    out["next_states"] = out["next_states"].astype(np.float32)
    out["actions"] = stepper.env.to_local_actions(out["actions"]).astype(np.float32)
    out["rewards"] = out["rewards"].astype(np.float32)
    out["terminals"] = out["terminals"].astype(bool)
    out["timeouts"] = out["timeouts"].astype(bool)
    # the next segment continues from the first episode not used here (episodes started past the
    # cut are dropped), so its seeds do not depend on the number of copies either
    return out, prefix_end


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
