"""MaMuJoCo scenarios (gymnasium-robotics ``mamujoco_v1``) behind the offmarl env contract.

MaMuJoCo stays the single source of truth for who owns what: the action partition comes from
``map_global_action_to_local_actions`` and the ``local`` observation from
``observation_factorization`` (the index lists MaMuJoCo itself uses in
``map_global_state_to_local_observations``). Every observation scheme is a gather of the global
state, so ``observe(states)`` is batched, pure, and works on numpy arrays and torch tensors.

Global states are the single-agent Gymnasium v5 observations; ant drops the contact forces
(``include_cfrc_ext_in_observation=False``), which gives the 27-d D4RL layout:
0 torso z | 1-4 torso quaternion | 5-12 joint angles (hip1, ankle1, ..., hip4, ankle4) |
13-15 torso linear velocity | 16-18 torso angular velocity | 19-26 joint velocities.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

from offmarl.envs.base import EnvError, EnvSpec, MultiAgentEnv, check_actions

# Index -1 in an observation index list means "a constant zero" (MaMuJoCo's reacher local obs
# carries the always-zero z component of the fingertip-target vector).
ZERO = -1


@dataclass(frozen=True)
class Scenario:
    scenario: str          # MaMuJoCo scenario (Gymnasium MuJoCo task name)
    agent_conf: str        # MaMuJoCo agent partition, e.g. "4x2"
    gym_kwargs: dict = field(default_factory=dict)
    local_categories: list | None = None  # None = MaMuJoCo's default for the scenario


_ANT_KW = {"include_cfrc_ext_in_observation": False}
# Ant's default local categories include cfrc_ext, which the 27-d state does not carry.
_ANT_LOCAL = [["qpos", "qvel"], ["qpos"]]

SCENARIOS: dict[str, Scenario] = {
    "ant-4x2": Scenario("Ant", "4x2", _ANT_KW, _ANT_LOCAL),
    "ant-2x4": Scenario("Ant", "2x4", _ANT_KW, _ANT_LOCAL),
    "reacher-2x1": Scenario("Reacher", "2x1"),
    "halfcheetah-2x3": Scenario("HalfCheetah", "2x3"),
    "halfcheetah-6x1": Scenario("HalfCheetah", "6x1"),
    "hopper-3x1": Scenario("Hopper", "3x1"),
    "walker2d-2x3": Scenario("Walker2d", "2x3"),
}

# Reacher-v5 has no observation_structure, so MaMuJoCo has no factorization for it. Its local
# observation (agent_obsk=1) is, in state indices (state = cos q0, cos q1, sin q0, sin q1,
# target x, y, qvel0, qvel1, fingertip-target x, y): agent_0 = sin q0, cos q0, qvel0 | sin q1,
# cos q1 | target x, y; agent_1 = sin q1, cos q1, qvel1, fingertip-target x, y, z(=0) |
# sin q0, cos q0 | target x, y. Verified against the live env in tests/test_envs_mamujoco.py.
_REACHER_LOCAL = [[2, 0, 6, 3, 1, 4, 5], [3, 1, 7, 8, 9, ZERO, 2, 0, 4, 5]]

# MOMA-PPO partial observability (MOMA-PPO reference implementation, PBarde/moma-ppo). Reacher schemes exclude the
# fingertip-target vector: agents must derive the tip position from joint angles.
_REACHER_PO = {
    "po-independent": [[0, 2, 6, 4, 5], [1, 3, 7, 4, 5]],  # own cos, sin, qvel + target
    "po-leader": [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 6, 7]],  # leader sees target
}
_ANT_TORSO = [0, 1, 2, 3, 4, 13, 14, 15, 16, 17, 18]  # z, quaternion, linear + angular velocity

SCHEME_ALIASES = {"reacher-2x1": {"po": "po-independent"}}

# Gymnasium v5's termination rules ("unhealthy" with terminate_when_unhealthy=True), written on
# offmarl's state (the single-agent observation): (index, low, high, strict) per condition.
# Ant-v5: finite state and 0.2 <= torso z <= 1.0 (z = qpos[2] = state[0]). Hopper-v5: z > 0.7,
# -0.2 < angle < 0.2 and |qpos[2:], qvel| < 100 (the state's qvel is clipped to +-10, so only
# qpos[2:] = state[1:5] can break it). Walker2d-v5: 0.8 < z < 2.0, -1 < angle < 1.
# Reacher and HalfCheetah never terminate. Tested against the live envs.
_HEALTHY = {
    "Ant": [(0, 0.2, 1.0, False)],
    "Hopper": [(0, 0.7, float("inf"), True), (1, -0.2, 0.2, True)] + [(i, -100.0, 100.0, True) for i in range(1, 5)],
    "Walker2d": [(0, 0.8, 2.0, True), (1, -1.0, 1.0, True)],
}


@contextlib.contextmanager
def _quiet():
    """Silence import-time notices (gymnasium-robotics prints an unrelated Adroit notice to
    stderr) and MuJoCo's C-level compiler deprecation warnings while a model is built."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = [os.dup(1), os.dup(2)]
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved + [devnull]:
                os.close(fd)


# Gymnasium's half_cheetah.xml sets the total mass with the compiler attribute ``settotalmass``,
# which MuJoCo >= 3.3 reports as deprecated by writing MUJOCO_LOG.TXT into the working directory.
# The env is built from a copy without the attribute, and the compiled model is scaled as MuJoCo's
# message says (mj_setTotalmass + mj_setConst): the same model arrays and the same trajectories
# (tests/test_envs_mamujoco.py).
_TOTAL_MASS_XML = {"HalfCheetah": "half_cheetah.xml"}
_patched_xml: dict[str, tuple[str, float]] = {}


def _xml_without_settotalmass(fname: str) -> tuple[str, float]:
    """(path of a copy of Gymnasium's ``fname`` without settotalmass, the total mass it set)."""
    if fname not in _patched_xml:
        import atexit
        import re
        import tempfile

        import gymnasium

        src = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", fname)
        with open(src) as f:
            text = f.read()
        found = re.search(r'\s+settotalmass="([^"]+)"', text)
        if found is None:  # a Gymnasium without the attribute: nothing to patch
            _patched_xml[fname] = (src, 0.0)
        else:
            fd, path = tempfile.mkstemp(prefix="offmarl-", suffix=f"-{fname}")
            with os.fdopen(fd, "w") as f:
                f.write(text[: found.start()] + text[found.end():])
            atexit.register(lambda p=path: os.path.exists(p) and os.unlink(p))
            _patched_xml[fname] = (path, float(found.group(1)))
    return _patched_xml[fname]


def _quiet_import_mamujoco():
    with _quiet():
        from gymnasium_robotics import mamujoco_v1
    return mamujoco_v1


class MaMuJoCoEnv(MultiAgentEnv):
    """One MaMuJoCo scenario. ``obs`` selects the observation scheme (see ``spec.obs_schemes``)."""

    def __init__(self, name: str, obs: str = "fo", agent_obsk: int = 1):
        if name not in SCENARIOS:
            raise EnvError(f"unknown MaMuJoCo scenario {name!r}; known: {', '.join(SCENARIOS)}")
        sc = SCENARIOS[name]
        self.scenario = sc
        self.name = name
        mamujoco_v1 = _quiet_import_mamujoco()
        kwargs = dict(sc.gym_kwargs)
        if sc.local_categories is not None:
            kwargs["local_categories"] = sc.local_categories
        total_mass = 0.0
        if sc.scenario in _TOTAL_MASS_XML:
            kwargs["xml_file"], total_mass = _xml_without_settotalmass(_TOTAL_MASS_XML[sc.scenario])
        with _quiet():
            self._env = mamujoco_v1.parallel_env(sc.scenario, sc.agent_conf, agent_obsk=agent_obsk, **kwargs)
        self._single = self._env.single_agent_env
        if total_mass > 0:
            import mujoco

            unwrapped = self._single.unwrapped
            mujoco.mj_setTotalmass(unwrapped.model, total_mass)
            mujoco.mj_setConst(unwrapped.model, unwrapped.data)
        self.agents = list(self._env.possible_agents)
        n = len(self.agents)
        self.global_action_dim = int(self._single.action_space.shape[0])
        self.state_dim = int(self._single.observation_space.shape[0])

        # action_index[i, j] = global action id of agent i's j-th action, from MaMuJoCo's helper
        probe = self._env.map_global_action_to_local_actions(np.arange(self.global_action_dim, dtype=np.float64))
        self.action_dims = tuple(len(probe[a]) for a in self.agents)
        self.action_index = np.full((n, max(self.action_dims)), ZERO, dtype=np.int64)
        for i, a in enumerate(self.agents):
            self.action_index[i, : self.action_dims[i]] = np.asarray(probe[a]).astype(np.int64)

        self.obs_index = self._build_schemes(name, agent_obsk)
        scheme = SCHEME_ALIASES.get(name, {}).get(obs, obs)
        if scheme not in self.obs_index:
            raise EnvError(
                f"observation scheme {obs!r} is not available for {name}; "
                f"choose one of: {', '.join(self.available_schemes())}"
            )
        self.scheme = scheme
        idx = self.obs_index[scheme]
        obs_dims = tuple(len(ix) for ix in idx)
        # padded gather table [N, O_max]; padding points at the appended zero column
        self._gather = np.full((n, max(obs_dims)), self.state_dim, dtype=np.int64)
        for i, ix in enumerate(idx):
            self._gather[i, : len(ix)] = [self.state_dim if k == ZERO else k for k in ix]
        self._torch_gather = {}
        limit = int(self._single.spec.max_episode_steps)
        self.spec = EnvSpec(
            name=name, n_agents=n, obs_dims=obs_dims, state_dim=self.state_dim, discrete=False,
            action_dims=self.action_dims, episode_limit=limit, obs_scheme=scheme,
            obs_schemes=tuple(self.available_schemes()), action_low=-1.0, action_high=1.0,
            backend="mujoco", extra={"agents": self.agents, "scenario": sc.scenario, "agent_conf": sc.agent_conf},
        )
        self._t = 0

    # ----------------------------------------------------------------- schemes
    def _build_schemes(self, name: str, agent_obsk: int) -> dict[str, list[list[int]]]:
        n = len(self.agents)
        schemes: dict[str, list[list[int]]] = {"fo": [list(range(self.state_dim))] * n}
        fac = self._env.observation_factorization
        if fac is not None:
            schemes["local"] = [[int(k) for k in fac[a]] for a in self.agents]
        elif name == "reacher-2x1" and agent_obsk == 1:
            schemes["local"] = _REACHER_LOCAL
        if name == "ant-4x2":
            # own joints = the qpos/qvel entries of the agent's own partition: the first
            # 2 * (#joints) entries of MaMuJoCo's local obs with categories [qpos, qvel].
            own = [sorted(int(k) for k in fac[a][: 2 * self.action_dims[i]]) for i, a in enumerate(self.agents)]
            schemes["po"] = [sorted(_ANT_TORSO + own[0])] + [own[i] for i in range(1, n)]
        if name == "reacher-2x1":
            schemes.update(_REACHER_PO)
        return schemes

    def available_schemes(self) -> list[str]:
        return list(self.obs_index) + list(SCHEME_ALIASES.get(self.name, {}))

    # ----------------------------------------------------------------- pure maps
    def observe(self, states):
        """states [B, S] (numpy or torch) -> obs [B, N, O_max], zero-padded."""
        if hasattr(states, "new_zeros"):  # torch
            import torch  # lazy: the env itself runs on numpy; torch only when given torch states

            key = states.device
            if key not in self._torch_gather:
                self._torch_gather[key] = torch.as_tensor(self._gather, device=states.device)
            padded = torch.cat([states, states.new_zeros(*states.shape[:-1], 1)], dim=-1)
            return padded[..., self._torch_gather[key]]
        states = np.asarray(states)
        padded = np.concatenate([states, np.zeros(states.shape[:-1] + (1,), states.dtype)], axis=-1)
        return padded[..., self._gather]

    has_termination_rule = True

    @property
    def termination_conditions(self) -> list[tuple[int, float, float, bool]]:
        return list(_HEALTHY.get(self.scenario.scenario, []))

    def terminated(self, states):
        """The environment's own termination rule applied to states [B, S] (numpy or torch)
        -> bool [B] (True = the episode would end on reaching this state). Used by model
        rollouts instead of a learned termination head (MBPO/MOPO's static termination)."""
        is_torch = hasattr(states, "new_zeros")
        if is_torch:
            import torch  # lazy: as in observe

            healthy = torch.isfinite(states).all(-1)
        else:
            states = np.asarray(states)
            healthy = np.isfinite(states).all(-1)
        for i, lo, hi, strict in _HEALTHY.get(self.scenario.scenario, []):
            x = states[..., i]
            healthy = healthy & (((x > lo) & (x < hi)) if strict else ((x >= lo) & (x <= hi)))
        return ~healthy

    def to_global_actions(self, actions):
        """Per-agent actions [..., N, A] -> single-agent action [..., A_global] (numpy)."""
        actions = np.asarray(actions)
        out = np.zeros(actions.shape[:-2] + (self.global_action_dim,), dtype=actions.dtype)
        mask = self.action_index >= 0
        out[..., self.action_index[mask]] = actions[..., mask]
        return out

    def to_local_actions(self, global_actions):
        """Single-agent action [..., A_global] -> per-agent actions [..., N, A] (zero-padded)."""
        g = np.asarray(global_actions)
        padded = np.concatenate([g, np.zeros(g.shape[:-1] + (1,), g.dtype)], axis=-1)
        index = np.where(self.action_index >= 0, self.action_index, self.global_action_dim)
        return padded[..., index]

    # ----------------------------------------------------------------- stepping
    def reset(self, seed: int | None = None):
        self._env.reset(seed=seed)
        self._t = 0
        state = np.asarray(self._env.state(), dtype=np.float64)
        return self.observe(state[None])[0], state, {}

    def step(self, actions):
        a = check_actions(self.spec, actions)
        global_action = self.to_global_actions(a)
        state, reward, terminated, truncated, info = self._single.step(global_action)
        self._t += 1
        state = np.asarray(state, dtype=np.float64)
        return self.observe(state[None])[0], state, float(reward), bool(terminated), bool(truncated), info

    @property
    def mujoco_data(self):
        """The live MuJoCo data (qpos/qvel), e.g. to set a state for model-error analysis."""
        return self._single.unwrapped.data

    def local_observations_from_mamujoco(self) -> np.ndarray:
        """MaMuJoCo's own local observations of the current state [N, O_max] (for checks)."""
        own = self._env._get_obs()
        out = np.zeros((len(self.agents), max(len(v) for v in own.values())))
        for i, a in enumerate(self.agents):
            out[i, : len(own[a])] = own[a]
        return out

    def close(self):
        self._env.close()

