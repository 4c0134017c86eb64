"""Evaluation in the REAL environment, shared by every algorithm (one evaluation path).

A policy is anything with
    act(obs [B,N,O], hist: dict | None, avail [B,N,K] | None, deterministic: bool, generator)
        -> (actions [B,N,A] float | [B,N] long, logp [B,N])
and an optional ``history_len`` attribute (K > 0: the evaluator keeps each agent's last K
(observation, action) pairs, zero-masked before the episode start, exactly as the datasets'
``sample_histories`` and the model rollouts build them).

Several env copies are stepped together so that the policy runs one batched forward per step.
Scores are normalised with the dataset's reference returns:
(R - ref_min) / (ref_max - ref_min) (ant: the D4RL references, as the MOMA-PPO slides use).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from offmarl.envs import make_env
from offmarl.errors import OffmarlError


class EvaluationError(OffmarlError):
    pass


class CrossPlayPolicy:
    """Agent i acts with ``policies[assignment[i]]`` (e.g. agents trained with different seeds):
    tests whether independently trained agents agree on a convention."""

    def __init__(self, policies: list, assignment: list[int]):
        self.policies, self.assignment = policies, list(assignment)
        self.history_len = max(getattr(p, "history_len", 0) for p in policies)

    @torch.no_grad()
    def act(self, obs, hist=None, avail=None, deterministic=True, generator=None):
        outs = [p.act(obs, _trim_hist(hist, getattr(p, "history_len", 0)), avail, deterministic, generator)
                for p in self.policies]
        agent = torch.arange(obs.shape[1], device=obs.device)
        actions = torch.stack([o[0] for o in outs])  # [P, B, N, ...]
        logp = torch.stack([o[1] for o in outs])
        pick = torch.as_tensor(self.assignment, device=obs.device)
        return actions[pick, :, agent].transpose(0, 1), logp[pick, :, agent].transpose(0, 1)


def _trim_hist(hist, k):
    if hist is None or k == 0:
        return None
    return {key: v[:, -k:] for key, v in hist.items()}


@torch.no_grad()
def evaluate_policy(policy, env_name: str, obs_scheme: str | None = None, episodes: int = 10, seed: int = 0,
                    n_envs: int = 10, deterministic: bool = True, device="cpu",
                    ref_min: float | None = None, ref_max: float | None = None,
                    env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes (seeds seed, seed+1, ...) and return returns, lengths, mean/std,
    normalised scores and (SMAC) the win rate."""
    device = torch.device(device)
    # env_kwargs: e.g. {"backend": "sc2"} for an online run on StarCraft II
    envs = [make_env(env_name, obs=obs_scheme, **(env_kwargs or {})) for _ in range(min(n_envs, episodes))]
    spec = envs[0].spec
    k = int(getattr(policy, "history_len", 0) or 0)
    gen = torch.Generator(device=device).manual_seed(seed)
    returns, lengths, wins, terms = [], [], [], []
    t0, steps = time.perf_counter(), 0
    next_ep = 0
    try:
        while next_ep < episodes:
            wave = min(len(envs), episodes - next_ep)
            obs = np.zeros((wave, spec.n_agents, spec.max_obs_dim), dtype=np.float32)
            for b in range(wave):
                obs[b] = envs[b].reset(seed=seed + next_ep + b)[0]
            next_ep += wave
            if hasattr(policy, "reset_state"):  # a recurrent policy (online latent agents) starts new episodes
                policy.reset_state()
            alive = np.ones(wave, dtype=bool)
            ret = np.zeros(wave)
            length = np.zeros(wave, dtype=np.int64)
            won = np.zeros(wave, dtype=bool)
            ended = np.zeros(wave, dtype=bool)  # by the env's termination (ant: a fall), not the time-out
            act_shape = (spec.n_agents,) if spec.discrete else (spec.n_agents, spec.max_action_dim)
            hist = None
            if k > 0:
                hist = {
                    "hist_obs": torch.zeros(wave, k, spec.n_agents, spec.max_obs_dim, device=device),
                    "hist_actions": torch.zeros((wave, k) + act_shape, device=device,
                                                dtype=torch.long if spec.discrete else torch.float32),
                    "hist_mask": torch.zeros(wave, k, dtype=torch.bool, device=device),
                }
            while alive.any():
                obs_t = torch.as_tensor(obs, device=device)
                avail = None
                if spec.discrete:
                    avail = torch.as_tensor(
                        np.stack([envs[b].avail_actions() if alive[b]
                                  else np.ones((spec.n_agents, spec.n_actions), bool)
                                  for b in range(wave)]), device=device)
                actions, _ = policy.act(obs_t, hist, avail, deterministic, gen)
                if not spec.discrete:  # the env and the memory get what is executed (as in the dataset)
                    actions = actions.clamp(min=spec.action_low, max=spec.action_high)
                if hist is not None:
                    hist = {
                        "hist_obs": torch.cat([hist["hist_obs"][:, 1:], obs_t[:, None]], 1),
                        "hist_actions": torch.cat([hist["hist_actions"][:, 1:],
                                                   actions[:, None].to(hist["hist_actions"].dtype)], 1),
                        "hist_mask": torch.cat([hist["hist_mask"][:, 1:],
                                                torch.ones(wave, 1, dtype=torch.bool, device=device)], 1),
                    }
                a = actions.cpu().numpy()
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    # only non-finite weights make a policy act NaN: say that, not "bad actions"
                    raise EvaluationError(
                        f"the policy acts NaN/inf at step {int(length.max())} of episode {next_ep - wave + 1} in "
                        f"{env_name}: its weights are not finite (the training diverged); evaluate an earlier "
                        f"checkpoint (--checkpoint best) or train again with a smaller learning rate")
                for b in np.flatnonzero(alive):
                    o, _, r, term, trunc, info = envs[b].step(a[b])
                    obs[b] = o
                    ret[b] += r
                    length[b] += 1
                    steps += 1
                    if term or trunc:
                        alive[b] = False
                        ended[b] = bool(term)
                        won[b] = bool(info.get("battle_won", False))
            returns += ret.tolist()
            lengths += length.tolist()
            wins += won.tolist()
            terms += ended.tolist()
    finally:
        for e in envs:
            e.close()
    returns_a = np.asarray(returns)
    out: dict[str, Any] = {
        "env": env_name, "obs_scheme": spec.obs_scheme, "episodes": episodes, "seed": seed,
        "returns": returns, "lengths": lengths,
        "return_mean": float(returns_a.mean()), "return_std": float(returns_a.std()),
        "length_mean": float(np.mean(lengths)),  # logged with every evaluation (ant: early falls)
        "frac_terminated": float(np.mean(terms)),  # episodes ended by the env's rule (ant: the torso left [0.2, 1])
        "reward_per_step": float(returns_a.sum() / max(int(np.sum(lengths)), 1)),  # vs the model's (MOMA-PPO)
        "steps_per_s": steps / max(time.perf_counter() - t0, 1e-9),
    }
    if env_name.startswith("smac-"):
        out["win_rate"] = float(np.mean(wins))
    if ref_min is not None and ref_max is not None:
        norm = (returns_a - ref_min) / (ref_max - ref_min)
        out["normalised_scores"] = norm.tolist()
        out["normalised_mean"] = float(norm.mean())
        out["normalized_score"] = out["normalised_mean"]  # the name eval.json consumers expect
        out["normalised_std"] = float(norm.std())
    return out
