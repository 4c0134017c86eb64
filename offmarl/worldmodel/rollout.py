"""Short synthetic rollouts of the joint policy in the ensemble world model (MOMA-PPO, MBPO/MOPO),
optionally planned step by step by the MAG planner (planners/mag.py) as a plug-in.

From B dataset start states, H steps are taken in parallel; the only Python loop is over the H
steps (never over rollouts, agents or members). Each step:

    obs        = obs_fn(state)                               the env's observation scheme  [B, N, O]
    a, logp    = policy.act(obs, history)                    [B, N, A], [B, N]
    candidates = model.sample_candidates(state, a, L)        L = 1 without a planner: one random elite per
                                                             row, its mean (or a Gaussian sample)
    pick       = planner.choose(candidates, ...) per row     MAG: the candidate whose H-step continuation
                                                             (EnsembleLookahead) accumulates the least error;
                                                             candidate 0 without a planner
    next_state, r = clip to the dataset box                  (MOMA-PPO reference)
    eps_g, eps_r  from the elites' UNCLIPPED means           (clipping would hide disagreement)
    r~ = r - lambda_g eps_g - lambda_r eps_r                 (penalised_reward)
    done = env_rule(next_state)  or  done_prob > 0.5         termination (no bootstrap): the env's own rule on
                                                             the UNCLIPPED predicted state when the env has one
                                                             (MBPO/MOPO), else the model's learned head
    eps_g > threshold (RAW eps_g) ends the rollout as ``uncertain_end`` says:
        halt     (default) terminal, and the step's reward gets gamma * r_halt / (1 - gamma):
                 the pessimistic value of an absorbing HALT state (MOReL), r_halt = the
                 ``halt_quantile`` quantile of the dataset's rewards (0: the lowest, MOReL's
                 r_min), 0 if it is not negative. The minimum can be one outlier worth ~140
                 steps of reward (ant-medium: -470), which drowns the PPO signal.
        timeout  bootstrap from V(next_state) (MBPO-style truncation)
        terminal no bootstrap, value 0 — exploitable when rewards are negative (reacher): ending
                 early is then better than continuing, so the policy seeks uncertainty
    timeout at the last step (bootstrap from V(next_state))
    history <- shift in (obs, action)                        each agent's last K pairs

Defect avoided: the reference clamps eps_g to the threshold (2) before testing ``eps_g > 2``, so
its uncertainty-based termination never fires; here the raw value is tested.

A row stays ``valid`` up to and including its terminal step; afterwards its entries are filler
(the state is frozen at its last valid value so nothing diverges) and must be masked out.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from offmarl.errors import OffmarlError
from offmarl.nn.functional import shift_in
from offmarl.planners.mag import MAGPlanner, Scorer
from offmarl.worldmodel.ensemble import EnsembleWorldModel
from offmarl.worldmodel.uncertainty import eps_aleatoric, eps_g, eps_r, penalised_reward


@dataclass
class RolloutConfig:
    """The memory length K and the discount of the HALT value are not here: they are the policy's
    (MOMA-PPO passes ppo.history_len and ppo.gamma to ``model_rollout``)."""
    horizon: int = 10               # MOMA-PPO reference rollout length k = 10 (MOPO: 1-5)
    lambda_g: float = 0.1           # MOMA-PPO reference weight of eps_g in the penalised reward
    lambda_r: float = 0.05          # MOMA-PPO reference weight of eps_r
    lambda_a: float = 0.0           # MOPO aleatoric penalty weight (off in MOMA-PPO)
    eps_g_threshold: float | None = None  # end when eps_g > this (tested RAW); None = calibrated on the data
    #                                 (MOMA-PPO's calibrate_eps_g, calibrate_eps_g_threshold); reference: fixed 2
    done_threshold: float = 0.5     # predicted termination probability above which a rollout ends
    sample: bool = False            # False: chosen elite's mean (MOMA-PPO reference); True: Gaussian sample (MOPO)
    clip_to_box: bool = True        # MOMA-PPO reference: clip next state and reward to the dataset min/max
    uncertain_end: str = "halt"     # halt | timeout | terminal: how eps_g > threshold ends a rollout (module doc)
    termination: str = "env"        # env: the env's rule on predicted states when it has one (MBPO/MOPO), else
                                    # the model's head; model: always the learned head (MOMA-PPO reference)
    halt_quantile: float = 0.0      # HALT value from this quantile of the data's rewards; 0 = the minimum
    #                                 (MOReL's r_min); ``dataset_box(..., halt_quantile=)`` computes it

    def __post_init__(self):
        if self.uncertain_end not in ("halt", "timeout", "terminal"):
            raise OffmarlError(f"rollout.uncertain_end must be halt, timeout or terminal, got {self.uncertain_end!r}")
        if self.termination not in ("env", "model"):
            raise OffmarlError(f"rollout.termination must be env or model, got {self.termination!r}")
        if not 0.0 <= self.halt_quantile < 1.0:
            raise OffmarlError(f"rollout.halt_quantile must be in [0, 1), got {self.halt_quantile}")


class Policy(Protocol):
    def act(self, obs: torch.Tensor, hist: dict[str, torch.Tensor] | None, avail: torch.Tensor | None = None,
            deterministic: bool = False, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        ...


def dataset_box(dataset, device: str | torch.device = "cpu", halt_quantile: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-dimension min/max of the dataset's states (and next states) and of its rewards, and the
    reward that values the HALT state (RolloutConfig.halt_quantile).

    returns state_low [S], state_high [S], reward_low [], reward_high [], halt_reward [] (the
    ``halt_quantile`` quantile of the rewards, capped at 0), halt_quantile []
    """
    t = dataset.tensors(device)
    s = torch.cat([t["states"], t["next_states"]], dim=0)
    r = t["rewards"]
    q = torch.quantile(r, halt_quantile) if halt_quantile > 0 else r.amin()
    return {
        "state_low": s.amin(0), "state_high": s.amax(0), "reward_low": r.amin(), "reward_high": r.amax(),
        "halt_reward": q.clamp(max=0.0), "halt_quantile": torch.tensor(float(halt_quantile), device=r.device),
    }


@torch.no_grad()
def clip_states(states: torch.Tensor, box: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Clip states [..., S] to the dataset's per-dimension box (no-op without a box)."""
    if box is None:
        return states
    return torch.maximum(torch.minimum(states, box["state_high"]), box["state_low"])


def calibrate_eps_g_threshold(model: EnsembleWorldModel, dataset, quantile: float = 0.99, n: int = 10_000,
                              generator: torch.Generator | None = None, device: str | torch.device | None = None
                              ) -> float:
    """The ``quantile`` of eps_g over ``n`` dataset (state, joint action) pairs.

    eps_g is in the state's raw units, so the reference's fixed threshold 2 may end almost every
    rollout on one dataset and none on another (docs/worldmodel.md, Measured). A quantile of the
    disagreement ON the data (cf. MOReL's USAD threshold) says "stop when the model is less sure
    than on 1 - quantile of the data it was fitted on" in any units.
    """
    device = device if device is not None else model.elite_idx.device
    t = dataset.tensors(device)
    idx = torch.randint(len(dataset), (min(n, len(dataset)),), generator=generator, device=device)
    out = model.step(t["states"][idx], model.encode_actions(t["actions"][idx]), generator)
    return float(torch.quantile(eps_g(out["elite_means"]), quantile))



def executed_actions(policy: Policy, actions: torch.Tensor) -> torch.Tensor:
    """What the environment would execute (in-box actions): the model was fitted on those."""
    return policy.env_actions(actions) if hasattr(policy, "env_actions") else actions


def shift_history(hist: dict[str, torch.Tensor], obs: torch.Tensor, env_actions: torch.Tensor) -> dict:
    """Each agent's memory after this step: drop the oldest pair, append (obs, executed action)."""
    return {"hist_obs": shift_in(hist["hist_obs"], obs),
            "hist_actions": shift_in(hist["hist_actions"], env_actions),  # what was executed, as in the data
            "hist_mask": shift_in(hist["hist_mask"], torch.ones_like(hist["hist_mask"][:, 0]))}


def initial_history(start: dict, obs: torch.Tensor, model: EnsembleWorldModel, k: int) -> dict | None:
    """The rollouts' initial memory: ``start``'s history, or an empty all-masked one when it has
    none. -> {hist_obs [B,K,N,O], hist_actions [B,K,N,A] (or [B,K,N] long), hist_mask [B,K]} or None (K=0)."""
    if k == 0:
        return None
    b, dev = obs.shape[0], obs.device
    hist_obs = start.get("hist_obs")
    if hist_obs is None:
        hist_obs = obs.new_zeros(b, k, *obs.shape[1:])
        n = model.n_agents
        hist_actions = (torch.zeros(b, k, n, dtype=torch.long, device=dev) if model.discrete
                        else obs.new_zeros(b, k, n, model.action_dim))
        hist_mask = torch.zeros(b, k, dtype=torch.bool, device=dev)
    else:
        hist_actions, hist_mask = start["hist_actions"], start["hist_mask"].bool()
        if hist_obs.shape[1] != k:
            raise OffmarlError(f"model_rollout: start history has {hist_obs.shape[1]} steps, history={k}")
    return {"hist_obs": hist_obs, "hist_actions": hist_actions, "hist_mask": hist_mask}


class EnsembleLookahead:
    """The offline ensemble as the MAG planner's LookaheadWorld (planners/mag.py): states [M, S], the
    memory is the policy's history dict (or None); each look-ahead step the current policy acts on
    obs_fn(state), one ``model.step`` (a random elite, as rollouts step) predicts the next state
    (clipped to ``box``; None: no clipping) and reward, and ``scorer`` scores that transition. The
    look-ahead stops where the step is predicted terminal (``done_fn``, the env's rule on the
    unclipped prediction, else the model's done_prob > ``done_threshold``)."""

    def __init__(self, model: EnsembleWorldModel, policy: Policy, obs_fn: Callable[[torch.Tensor], torch.Tensor],
                 scorer: Scorer, box: dict[str, torch.Tensor] | None = None, sample: bool = False,
                 done_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, done_threshold: float = 0.5):
        self.model, self.policy, self.obs_fn, self.scorer, self.box, self.sample = \
            model, policy, obs_fn, scorer, box, sample
        self.done_fn, self.done_threshold = done_fn, done_threshold

    def _done(self, unclipped: torch.Tensor, done_prob: torch.Tensor) -> torch.Tensor:
        if self.done_fn is not None:
            return self.done_fn(unclipped).to(torch.bool)
        return done_prob > self.done_threshold

    def judge(self, context: dict[str, torch.Tensor], candidates: torch.Tensor):
        """context: states [B, S], joint [B, NA], rewards [B, L] (the candidates'), unclipped [B, L, S],
        done_prob [B, L], elite_means [Ee, B, S+1]; candidates [B, L, S] (clipped)."""
        b, l = candidates.shape[:2]
        em = context["elite_means"]
        out = {"next_states": candidates.reshape(b * l, -1), "rewards": context["rewards"].reshape(b * l),
               "elite_means": em.repeat_interleave(l, dim=1)}
        score = self.scorer(context["states"].repeat_interleave(l, 0), context["joint"].repeat_interleave(l, 0), out)
        done = self._done(context["unclipped"].reshape(b * l, -1), context["done_prob"].reshape(b * l))
        return score, torch.ones_like(score), ~done

    def tile(self, memory: dict[str, torch.Tensor] | None, l: int) -> dict[str, torch.Tensor] | None:
        return None if memory is None else {k: v.repeat_interleave(l, dim=0) for k, v in memory.items()}

    def advance(self, states: torch.Tensor, memory: dict[str, torch.Tensor] | None,
                generator: torch.Generator | None, last: bool):
        obs = self.obs_fn(states)
        actions, _ = self.policy.act(obs, memory, avail=None, deterministic=False, generator=generator)
        env_actions = executed_actions(self.policy, actions)
        joint = self.model.encode_actions(env_actions)
        out = self.model.step(states, joint, generator, sample=self.sample)
        nxt = clip_states(out["next_states"], self.box)
        r = out["rewards"] if self.box is None else out["rewards"].clamp(min=self.box["reward_low"],
                                                                           max=self.box["reward_high"])
        score = self.scorer(states, joint, {**out, "next_states": nxt, "rewards": r})
        cont = ~self._done(out["next_states"], out["done_prob"])
        if last:
            return None, memory, score, torch.ones_like(score), cont
        if memory is not None:
            memory = shift_history(memory, obs, env_actions)
        return nxt, memory, score, torch.ones_like(score), cont


def halt_reward(cfg: RolloutConfig, box: dict[str, torch.Tensor] | None, like: torch.Tensor) -> torch.Tensor:
    """The per-step reward of the absorbing HALT state: box["halt_reward"] (0 without a box)."""
    if box is None:
        return like.new_zeros(())
    if "halt_reward" not in box:  # a box made by hand: the minimum, as before halt_quantile existed
        return box["reward_low"].clamp(max=0.0)
    if abs(float(box["halt_quantile"]) - cfg.halt_quantile) > 1e-6:
        raise OffmarlError(f"rollout.halt_quantile={cfg.halt_quantile} but the box was made with "
                           f"halt_quantile={float(box['halt_quantile'])}; pass the same value to dataset_box")
    return box["halt_reward"]


def end_step(cfg: RolloutConfig, h: int, rewards: torch.Tensor, done_prob: torch.Tensor, g: torch.Tensor,
             box: dict[str, torch.Tensor] | None, gamma: float, next_states: torch.Tensor | None = None,
             done_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """How step ``h`` ends each row.

    next_states: the UNCLIPPED predicted states, for ``done_fn`` (the env's termination rule;
    used when cfg.termination == "env" and given, else the model's done_prob).
    returns rewards (with the HALT value added where it applies), dones (no bootstrap),
    timeouts (bootstrap), ended (the row stops after this step), model_done, unc_done.
    """
    if cfg.termination == "env" and done_fn is not None and next_states is not None:
        model_done = done_fn(next_states).to(torch.bool)
    else:
        model_done = done_prob > cfg.done_threshold
    unc_done = g > cfg.eps_g_threshold  # RAW eps_g: the reference's clamp-then-test never fires
    last = h == cfg.horizon - 1
    if cfg.uncertain_end == "timeout":
        done = model_done
        timeout = ~done & (unc_done | last)
    else:
        done = model_done | unc_done
        timeout = ~done if last else torch.zeros_like(done)
        if cfg.uncertain_end == "halt":
            r_halt = halt_reward(cfg, box, rewards)
            halt = gamma * r_halt / (1.0 - gamma)
            rewards = torch.where(unc_done & ~model_done, rewards + halt, rewards)
    return {"rewards": rewards, "dones": done, "timeouts": timeout, "ended": done | unc_done,
            "model_done": model_done, "unc_done": unc_done}


@torch.no_grad()
def model_rollout(model: EnsembleWorldModel, policy: Policy, start: dict[str, torch.Tensor | None],
                  obs_fn: Callable[[torch.Tensor], torch.Tensor], cfg: RolloutConfig,
                  box: dict[str, torch.Tensor] | None, generator: torch.Generator | None = None,
                  done_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, *, gamma: float, history: int = 0,
                  planner: MAGPlanner | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Roll the policy H = cfg.horizon steps in the model from ``start``, each step chosen by ``planner``.

    start: states [B, S]; optionally hist_obs [B, K, N, O], hist_actions [B, K, N, A] (or [B, K, N] int),
           hist_mask [B, K] (oldest first; missing/None with K > 0 -> an empty, all-masked history)
    obs_fn: states [B, S] -> obs [B, N, O] (the env's ``observe``)
    box: from ``dataset_box`` (required when cfg.clip_to_box)
    generator: on the device of the states; the same seed gives the same rollout
    done_fn: the env's termination rule on states (``env.terminated``; None = the model's head)
    gamma: discount of the HALT value (the policy's discount)
    history: K, each agent's last K (obs, executed action) pairs kept as the policy's memory (0 = none)
    planner: None = plain rollouts (candidate 0: one random elite per row); a MAGPlanner picks each
           row's step among ``planner.l`` candidates by look-ahead (L = 1 gives plain rollouts bit for bit)

    returns (batch, info). batch entries are [H, B, ...]: states, obs, [hist_obs, hist_actions,
    hist_mask, next_hist_obs, next_hist_actions, next_hist_mask when K > 0], actions, logp [H, B, N],
    rewards (penalised), raw_rewards, eps_g, eps_r, done_prob, dones (terminal: no bootstrap),
    timeouts (bootstrap), valid, next_states, next_obs.
    info: frac_uncertainty_terminated, frac_model_terminated, frac_halted (rows ended by uncertainty
    alone: the HALT fraction), mean_length, mean_eps_g, mean_raw_reward, mean_penalty (means over
    valid steps), penalty_over_raw (mean_penalty / |mean_raw_reward|); with a planner also
    planner_seconds (sampling the candidates and looking ahead; host time: on CUDA, where nothing in
    the loop waits for the device, it counts the kernel launches), planner_rollout_seconds (the whole
    rollout), planner_frac_replaced
    (valid steps where a candidate other than 0 won), planner_score_gain (mean score of candidate 0
    minus the chosen one's, over valid steps).
    """
    t_start = time.perf_counter()
    states = start["states"]
    b, dev = states.shape[0], states.device
    if cfg.eps_g_threshold is None:
        raise OffmarlError("model_rollout: rollout.eps_g_threshold is None; calibrate it on the data "
                           "(calibrate_eps_g_threshold) or set a value")
    if cfg.clip_to_box and box is None:
        raise OffmarlError("model_rollout: clip_to_box=True needs a box (see dataset_box)")
    l, mode = (planner.l, planner.candidates) if planner is not None else (1, "elites")
    plan_gen = planner.plan_generator(generator, dev) if planner is not None else None
    world = (EnsembleLookahead(model, policy, obs_fn, planner.scorer, box if cfg.clip_to_box else None, cfg.sample,
                               done_fn if cfg.termination == "env" else None, cfg.done_threshold)
             if l > 1 else None)
    obs = obs_fn(states)
    hist = initial_history(start, obs, model, history)

    steps: list[dict[str, torch.Tensor]] = []
    alive = torch.ones(b, dtype=torch.bool, device=dev)
    by_uncertainty, by_model, halted = torch.zeros_like(alive), torch.zeros_like(alive), torch.zeros_like(alive)
    rows = torch.arange(b, device=dev)
    plan_seconds = 0.0
    replaced, gain, n_valid = (states.new_zeros(()) for _ in range(3))  # summed on the device: no sync per step
    for h in range(cfg.horizon):
        actions, logp = policy.act(obs, hist, avail=None, deterministic=False, generator=generator)
        env_actions = executed_actions(policy, actions)
        t0 = time.perf_counter()
        cand = model.sample_candidates(states, model.encode_actions(env_actions), l, generator, plan_gen, mode,
                                       cfg.sample)
        cand_states, cand_r = cand["next_states"], cand["rewards"]  # [B, L, S], [B, L]
        unclipped = cand_states
        if cfg.clip_to_box:
            cand_states = clip_states(cand_states, box)
            cand_r = cand_r.clamp(min=box["reward_low"], max=box["reward_high"])
        nxt = None if hist is None else shift_history(hist, obs, env_actions)
        if world is not None:
            context = {"states": states, "joint": model.encode_actions(env_actions), "rewards": cand_r,
                       "unclipped": unclipped, "done_prob": cand["done_prob"], "elite_means": cand["elite_means"]}
            idx, scores = planner.choose(cand_states, nxt, world, plan_gen, context)
            chosen = scores.gather(1, idx[:, None]).squeeze(1)
            replaced = replaced + ((idx != 0) & alive).sum()
            gain = gain + ((scores[:, 0] - chosen) * alive).sum()
            n_valid = n_valid + alive.sum()
        else:
            idx = torch.zeros(b, dtype=torch.long, device=dev)
        plan_seconds += time.perf_counter() - t0

        # the chosen transition: uncertainty of (state, action), penalised reward, how the step ends
        em = cand["elite_means"]
        raw_r, done_prob = cand_r[rows, idx], cand["done_prob"][rows, idx]
        g, rv = eps_g(em), eps_r(em)
        a = eps_aleatoric(cand["elite_logvars"]) if cfg.lambda_a != 0.0 else None
        r = penalised_reward(raw_r, g, rv, cfg.lambda_g, cfg.lambda_r, a, cfg.lambda_a)
        end = end_step(cfg, h, r, done_prob, g, box, gamma, unclipped[rows, idx], done_fn)
        valid = alive.clone()
        # finished rows stay frozen at their last valid state (bounded filler, masked by ``valid``)
        next_states = torch.where(alive.unsqueeze(-1), cand_states[rows, idx], states)
        rec = {"states": states, "obs": obs, "actions": actions, "logp": logp, "rewards": end["rewards"],
               "raw_rewards": raw_r, "eps_g": g, "eps_r": rv, "done_prob": done_prob,
               "dones": end["dones"] & valid, "timeouts": end["timeouts"] & valid, "valid": valid,
               "next_states": next_states, "next_obs": obs_fn(next_states)}
        if hist is not None:
            rec.update(hist)
            rec.update({"next_" + key: v for key, v in nxt.items()})
        steps.append(rec)
        by_uncertainty |= alive & end["unc_done"]
        by_model |= alive & end["model_done"]
        halted |= alive & end["unc_done"] & ~end["model_done"]
        alive = alive & ~end["ended"]
        states, obs, hist = next_states, rec["next_obs"], nxt

    batch = {key: torch.stack([s[key] for s in steps]) for key in steps[0]}
    v = batch["valid"]
    nv = v.sum().clamp_min(1)
    info = {
        "frac_uncertainty_terminated": float(by_uncertainty.float().mean()),
        "frac_model_terminated": float(by_model.float().mean()),
        "mean_length": float(v.float().sum(0).mean()),
        "mean_eps_g": float((batch["eps_g"] * v).sum() / nv),
        "mean_raw_reward": float((batch["raw_rewards"] * v).sum() / nv),
        "mean_penalty": float(((batch["raw_rewards"] - batch["rewards"]) * v).sum() / nv),
        "frac_halted": float(halted.float().mean()),
    }
    # the penalty (eps terms + HALT values) against the raw model reward it competes with
    info["penalty_over_raw"] = info["mean_penalty"] / max(abs(info["mean_raw_reward"]), 1e-8)
    if planner is not None:
        info.update({"planner_seconds": plan_seconds, "planner_rollout_seconds": time.perf_counter() - t_start,
                     "planner_frac_replaced": float(replaced / n_valid.clamp_min(1.0)),
                     "planner_score_gain": float(gain / n_valid.clamp_min(1.0))})
    return batch, info
