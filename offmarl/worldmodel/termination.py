"""Termination in the model that matches reality: the env's own rule with a calibrated margin.

The env's rule (MaMuJoCo ant / hopper / walker2d: ``env.termination_conditions``, bounds on state
dimensions such as ant's 0.2 <= torso z <= 1.0) applied to the model's MEAN predictions fires too
rarely: the mean flattens the peaks that end episodes (on ant-medium a 10-step replay of real
actions sees only ~30% of the real jumps above z = 1; docs/worldmodel.md). Tested on predicted
states, each bound is moved inwards by ``margin`` standard deviations of its dimension (the
dataset's std):

    slack(s)   = min over conditions i of min(s[i] - low_i, high_i - s[i]) / std_i     (inf bounds: inf)
    terminated = slack(s) < margin  or  s not finite                                   margin 0 = the env's rule

``margin`` is fitted on dataset windows: from a real state, the real actions of the next k steps
are replayed in the model (one random elite's mean per step, clipped as rollouts are) and the
margin is chosen so that the share of windows the model terminates within k steps equals the
share that really terminated within k steps (a weighted quantile of the windows' min slack; the
windows are stratified so the rare real terminations are well represented: ``window_starts``). The
model still RANKS the risk well, so matching the rate also lifts recall.

Windows: every start row t whose episode either runs k more steps or ends by termination within
them (windows cut by a time-out are left out). The model is tested only on the steps that
really happened (up to the real end).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from offmarl.errors import OffmarlError
from offmarl.worldmodel.ensemble import EnsembleWorldModel
from offmarl.worldmodel.rollout import clip_states
from offmarl.worldmodel.uncertainty import eps_g


@dataclass
class TerminationRule:
    """The env's bounds with a margin; callable as a rollout ``done_fn``: states [..., S] -> bool [...]."""
    index: torch.Tensor   # [C] long: state dimension of each condition
    low: torch.Tensor     # [C] (may be -inf)
    high: torch.Tensor    # [C] (may be +inf)
    scale: torch.Tensor   # [C] > 0: the dataset's std of that dimension (margin unit)
    margin: float = 0.0   # in units of ``scale``; > 0 terminates earlier than the env

    def slack(self, states: torch.Tensor) -> torch.Tensor:
        """states [..., S] -> [...]: distance to the nearest bound in std units (< 0: outside)."""
        x = states[..., self.index]
        d = torch.minimum(x - self.low, self.high - x) / self.scale
        return d.amin(-1)

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        return (self.slack(states) < self.margin) | ~torch.isfinite(states).all(-1)

    def with_margin(self, margin: float) -> TerminationRule:
        return TerminationRule(self.index, self.low, self.high, self.scale, float(margin))


def termination_rule(env, dataset, margin: float = 0.0, device: str | torch.device = "cpu"
                     ) -> TerminationRule | None:
    """The env's rule on ``dataset``'s state scale (None when the env has no rule on states)."""
    conds = getattr(env, "termination_conditions", [])
    if not conds:
        return None
    idx = [c[0] for c in conds]
    std = np.asarray(dataset.states, np.float64)[:, idx].std(0)
    f = {"dtype": torch.float32, "device": device}
    return TerminationRule(torch.as_tensor(idx, dtype=torch.long, device=device),
                           torch.as_tensor([c[1] for c in conds], **f), torch.as_tensor([c[2] for c in conds], **f),
                           torch.as_tensor(np.maximum(std, 1e-6), **f), float(margin))


def window_starts(dataset, k: int, n: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` start rows among those whose next k steps stay in the episode or end it by
    termination (not by a time-out), STRATIFIED: terminations within k are rare (ant-medium: ~2%
    of 25-step windows, ~0.1% of 1-step ones), so up to n/2 windows that really end are drawn, the
    rest among those that do not, and each window is weighted by its class's share of all windows.

    returns starts [W] (cpu long), weights [W] (sum 1: weighted means are rates over all windows)
    """
    ends = np.flatnonzero(dataset.episode_ends)
    end_of = ends[np.searchsorted(ends, np.arange(len(dataset)))]  # last row of each row's episode
    left = end_of - np.arange(len(dataset)) + 1                      # real steps from the row to the end
    term = dataset.terminals.astype(bool)[end_of]
    ok = (left >= k) | term
    pos, neg = np.flatnonzero(ok & term & (left <= k)), np.flatnonzero(ok & ~(term & (left <= k)))
    if len(pos) + len(neg) == 0:
        raise OffmarlError(f"termination calibration: no {k}-step window in {dataset.origin} (episodes too short)")
    p = len(pos) / (len(pos) + len(neg))
    n_pos = min(len(pos), n // 2) if len(neg) else min(len(pos), n)
    n_neg = min(len(neg), n - n_pos)
    pick_pos = torch.as_tensor(pos)[torch.randperm(len(pos), generator=generator)[:n_pos]]
    pick_neg = torch.as_tensor(neg)[torch.randperm(len(neg), generator=generator)[:n_neg]]
    w = torch.cat([torch.full((n_pos,), p / max(n_pos, 1)), torch.full((n_neg,), (1 - p) / max(n_neg, 1))])
    return torch.cat([pick_pos, pick_neg]), w.double()


@torch.no_grad()
def replay_windows(model: EnsembleWorldModel, dataset, starts: torch.Tensor, k: int,
                   box: dict[str, torch.Tensor] | None, generator: torch.Generator | None = None,
                   rule: TerminationRule | None = None) -> dict[str, torch.Tensor]:
    """Replay the real actions of k steps from each start row in the model (open loop).

    starts: [W] rows (``window_starts``); box: clip the continuing state as rollouts do (None: no clip)
    returns slack [k, W] (``rule.slack`` of the UNCLIPPED predicted state; absent without a rule),
    eps_g [k, W], model_reward [k, W], real_reward [k, W], steps [W] (real steps in the window,
    <= k), real_done [W] (the episode terminated within the window), valid [k, W] (step j < steps)
    """
    dev = model.elite_idx.device
    t = dataset.tensors(dev)
    starts = starts.to(dev)
    n = len(dataset)
    ends = torch.as_tensor(np.flatnonzero(dataset.episode_ends), device=dev)
    end_of = ends[torch.searchsorted(ends, starts)]
    steps = (end_of - starts + 1).clamp(max=k)
    real_done = t["terminals"].bool()[end_of] & (end_of - starts + 1 <= k)
    states = t["states"][starts]
    out: dict[str, list] = {"slack": [], "eps_g": [], "model_reward": [], "real_reward": []}
    for j in range(k):
        row = torch.minimum(starts + torch.minimum(torch.full_like(starts, j), steps - 1), torch.tensor(n - 1))
        o = model.step(states, model.encode_actions(t["actions"][row]), generator)
        if rule is not None:
            out["slack"].append(rule.slack(o["next_states"]))
        out["eps_g"].append(eps_g(o["elite_means"]))
        out["model_reward"].append(o["rewards"])
        out["real_reward"].append(t["rewards"][row])
        states = clip_states(o["next_states"], box)
    res = {key: torch.stack(v) for key, v in out.items() if v}
    res.update({"steps": steps, "real_done": real_done,
                "valid": torch.arange(k, device=dev)[:, None] < steps[None]})
    return res


def first_model_end(slack: torch.Tensor, valid: torch.Tensor, margin: float) -> torch.Tensor:
    """slack, valid [k, W] -> [W] long: first step where slack < margin (k if none among valid steps)."""
    hit = (slack < margin) & valid
    k = hit.shape[0]
    return torch.where(hit.any(0), hit.float().argmax(0), torch.full_like(hit[0], k, dtype=torch.long))


def fit_margin(slack: torch.Tensor, valid: torch.Tensor, real_done: torch.Tensor, weights: torch.Tensor
               ) -> float:
    """The margin at which the weighted share of windows with min valid slack < margin equals the
    weighted share of real terminations (midpoint between neighbouring sorted min-slacks: exact up to
    one window's weight and ties)."""
    m = torch.where(valid, slack, torch.full_like(slack, float("inf"))).amin(0)
    order = m.argsort()
    m, cum = m[order], weights.to(m.device)[order].cumsum(0)
    target = float((weights.to(real_done.device) * real_done).sum())
    r = int((cum <= target + 1e-12).sum())  # windows below the margin: their weight does not pass the target
    if r < len(m) and abs(float(cum[r]) - target) < abs(target - (float(cum[r - 1]) if r else 0.0)):
        r += 1  # one more window lands closer to the target
    if r == 0:
        return float(m[0]) - 1e-6 if torch.isfinite(m[0]) else 0.0
    if r == len(m) or not torch.isfinite(m[r]):
        return float(m[r - 1]) + 1e-6
    return float(0.5 * (m[r - 1] + m[r]))


def termination_scores(slack: torch.Tensor, valid: torch.Tensor, real_done: torch.Tensor, margin: float,
                       weights: torch.Tensor) -> dict[str, float]:
    """Rates (weighted: over all windows), recall and false-positive rate of the model's termination."""
    pred = first_model_end(slack, valid, margin) < slack.shape[0]
    pos, neg = real_done, ~real_done
    w = weights.to(pred.device)
    return {"real_rate": float((w * pos).sum()), "model_rate": float((w * pred).sum()),
            "recall": float((pred & pos).sum() / pos.sum().clamp_min(1)),
            "false_positive_rate": float((pred & neg).sum() / neg.sum().clamp_min(1)),
            "windows": int(pos.numel()), "positives": int(pos.sum())}


def calibrate_termination(model: EnsembleWorldModel, dataset, rule: TerminationRule, k: int, n: int = 5_000,
                          box: dict[str, torch.Tensor] | None = None, generator: torch.Generator | None = None
                          ) -> tuple[TerminationRule, dict[str, float]]:
    """Fit ``rule``'s margin on ``n`` k-step windows of ``dataset`` (module docstring).

    generator: a CPU generator (window draws) — the model's draws use a fresh one seeded from it.
    returns (the rule with the fitted margin, {margin, before: scores at margin 0, after: scores})
    """
    starts, w = window_starts(dataset, k, n, generator)
    dev = model.elite_idx.device
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    g = torch.Generator(device=dev).manual_seed(seed)
    rep = replay_windows(model, dataset, starts, k, box, g, rule)
    margin = fit_margin(rep["slack"], rep["valid"], rep["real_done"], w)
    before = termination_scores(rep["slack"], rep["valid"], rep["real_done"], rule.margin, w)
    after = termination_scores(rep["slack"], rep["valid"], rep["real_done"], margin, w)
    return rule.with_margin(margin), {"margin": margin, "before": before, "after": after}
