"""The two-player coordination matrix game of MOMA-PPO (Barde et al., MOMA-PPO slides).

Two agents each pick left (0) or right (1); the shared payoff is 1 when they pick the same
action and 0 otherwise. Episodes last one step. There is nothing to observe: the state and
every observation is a single constant 1.0 (a non-empty input for the networks), so the only
information an offline learner has about the other agent's convention is in the dataset.
"""
from __future__ import annotations

import numpy as np

from offmarl.envs.base import EnvError, EnvSpec, MultiAgentEnv, check_actions

PAYOFF = np.array([[1.0, 0.0], [0.0, 1.0]])  # PAYOFF[a0, a1]
ACTION_NAMES = ("left", "right")


class CoordinationGame(MultiAgentEnv):
    def __init__(self, obs: str = "fo"):
        if obs not in ("fo",):
            raise EnvError(f"observation scheme {obs!r} is not available for coordination; choose one of: fo")
        self.spec = EnvSpec(
            name="coordination", n_agents=2, obs_dims=(1, 1), state_dim=1, discrete=True,
            action_dims=(2, 2), episode_limit=1, obs_scheme="fo", obs_schemes=("fo",), backend="numpy",
        )
        self._done = True

    def observe(self, states):
        """states [B, 1] -> obs [B, 2, 1]: every agent sees the (constant) state."""
        if hasattr(states, "new_zeros"):
            return states[..., None, :].expand(*states.shape[:-1], 2, states.shape[-1])
        states = np.asarray(states)
        return np.broadcast_to(states[..., None, :], states.shape[:-1] + (2, states.shape[-1])).copy()

    def reset(self, seed: int | None = None):
        self._done = False
        state = np.ones(1)
        return self.observe(state[None])[0], state, {}

    def step(self, actions):
        if self._done:
            raise EnvError("coordination: the episode has ended; call reset() first")
        a = check_actions(self.spec, actions)
        if np.any((a < 0) | (a > 1)):
            raise EnvError(f"coordination: actions must be 0 (left) or 1 (right), got {a.tolist()}")
        self._done = True
        state = np.ones(1)
        reward = float(PAYOFF[a[0], a[1]])
        # a one-step game ends by its rules (terminated), not by a time-out
        return self.observe(state[None])[0], state, reward, True, False, {}

    def avail_actions(self) -> np.ndarray:
        return np.ones((2, 2), dtype=bool)
