"""`offmarl diagnose`: what a trained run's world model, R_m and MAG planner do on HELD-OUT real data.

Online runs (``offmarl online``): the run's policy collects fresh real steps in new SMAX episodes
(seeds apart from training's). Offline MOMA-PPO runs (± MAG): the held-out split of the run's
dataset. From real start states s_t (with the real actions that followed):

    model       k-step open-loop error under the REAL actions (k = 1, 5, H), per agent, vs the
                mean-observation baseline; reward error vs the mean-reward baseline;
                continuation / termination prediction
    planner     the L candidates of s_{t+1} the planner would choose among; each is scored by the
                planner (twice, independent look-aheads: ``score_repeatability``) and continued
                under the REAL actions a_{t+1..t+H-1}; its "real error" is the mean observation
                error against the real o_{t+1..t+H}. Per start state: Spearman(score, real error),
                the pick (argmin score) beating candidate 0, the pick's real error vs a random
                candidate's (``pick_error_change``, relative, negative = better) and the best
                candidate's (``oracle_error_change``: the ceiling of any scorer)
    bias        own agents decoded dead per imagined step with the planner and with L = 1
                (online); rollouts ending terminal / uncertain (offline)
    policy      imagined vs real return over the same horizon

Errors are per agent: the L2 norm of the observation error, averaged over the agents alive at the
start of the step (a dead agent's observation is zeros). Candidates' real continuations draw the
model's own randomness (prior samples / elites), ``real_samples`` times, averaged.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offmarl.errors import OffmarlError
from offmarl.planners.mag import planner_figures, spearman, spearman_rows  # noqa: F401 (re-exported)

KEYS = ("planner.spearman", "planner.pick_beats_first", "planner.pick_error_change", "planner.oracle_error_change",
        "planner.score_repeatability", "model.open_loop_error", "model.baseline_error")


def _masked_mean(err: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """err [..., N], alive [..., N] bool -> mean over alive agents [...] (0 where none is alive)."""
    a = alive.to(err.dtype)
    return (err * a).sum(-1) / a.sum(-1).clamp_min(1.0)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("open_loop_error"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------- online
def collect_online(algo, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """``steps`` fresh real env steps with the run's (stochastic) policy in new episodes ->
    time-major tensors [T, E, ...]: obs, avail, action, reward, first, terminal, alive."""
    from offmarl.data.replay import SequenceReplay
    from offmarl.envs import make_vec_env

    cfg = algo.cfg
    e = cfg.n_envs
    per = -(-steps // e)
    algo.env = make_vec_env(f"smac-{cfg.map}", e, backend=cfg.backend, seed=seed)
    algo.replay = SequenceReplay(2 * e * (per + 2) * 2, e, algo.spec.n_agents, algo.spec.max_obs_dim,
                                 algo.spec.n_actions)
    algo.seed = seed
    algo.generators["collect"] = torch.Generator().manual_seed(seed)
    algo._obs = None
    algo._reset()
    import dataclasses
    algo.cfg = dataclasses.replace(cfg, collect_steps=per * e)
    algo._collect_into_replay()
    algo.cfg = cfg
    rep = algo.replay
    t = int(rep.count.min())
    return {k: torch.as_tensor(np.ascontiguousarray(np.swapaxes(v[:, :t], 0, 1)), device=algo.device)
            for k, v in rep.data.items()}


def _online_starts(data: dict[str, torch.Tensor], span: int, max_starts: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, e) of start rows whose next ``span`` rows continue the episode without ending before
    the last, with an own agent alive at t; at most ``max_starts`` of them."""
    first, terminal = data["first"].cpu(), data["terminal"].cpu()
    t_len = first.shape[0]
    if t_len <= span:
        raise OffmarlError(f"diagnose: {t_len} rows per env copy is too few for a {span}-step horizon; "
                           "raise --steps")
    ok = torch.ones(t_len - span, first.shape[1], dtype=torch.bool)
    for j in range(span):
        ok &= ~terminal[j:t_len - span + j]
        ok &= ~first[j + 1:t_len - span + j + 1]
    ok &= data["alive"].cpu()[:t_len - span].any(-1)
    ts, es = ok.nonzero(as_tuple=True)
    if len(ts) == 0:
        raise OffmarlError("diagnose: no start state with a long enough real future; raise --steps")
    if len(ts) > max_starts:
        keep = torch.randperm(len(ts), generator=gen)[:max_starts].sort().values
        ts, es = ts[keep], es[keep]
    return ts, es


@torch.no_grad()
def diagnose_online(algo, steps: int = 400, seed: int | None = None, max_starts: int = 512,
                    continuations: int | None = None, real_samples: int = 4, log: Callable[[str], None] = print
                    ) -> dict[str, Any]:
    """The diagnosis of a loaded online algorithm (OnlineAlgorithm with its model, policy and, for
    mag, R_m). ``continuations``: the planner's K (None: the run's)."""
    from offmarl.planners.mag import plan
    from offmarl.worldmodel.latent import LatentLookahead, imagine, real_continuation_errors

    cfg = algo.cfg
    if algo.model is None:
        raise OffmarlError("diagnose: this online run has no world model (--algo mappo); nothing to diagnose")
    if continuations is not None:  # the planner section and the imagination of the bias section
        cfg.planner.continuations = int(continuations)
    seed = (algo.seed * 1000 + 777) if seed is None else seed
    gen = torch.Generator(device=algo.device).manual_seed(seed)
    log(f"collecting {steps} held-out real steps with the run's policy (env seed {seed})")
    data = collect_online(algo, steps, seed)
    model, policy = algo.model.eval(), algo.policy
    from offmarl.envs import smac_alive

    alive_fn = functools.partial(smac_alive, backend=cfg.backend)  # the one SMAC alive rule
    alive_real = data["alive"]
    feat = model.observe(data["obs"].float(), data["action"], data["first"], gen)["feat"]
    p = cfg.planner
    h, hi = p.h, cfg.imagine_horizon
    ks = sorted({1, 5, h, hi})
    span = max(ks)
    ts, es = _online_starts(data, span, max_starts, torch.Generator().manual_seed(seed))
    ts, es = ts.to(algo.device), es.to(algo.device)
    b = len(ts)
    f0, a0 = feat[ts, es], data["action"][ts, es]
    res: dict[str, Any] = {"kind": "online", "algo": cfg.algo, "map": cfg.map, "held_out_steps": int(
        data["first"].numel()), "start_states": b, "seed": seed}

    # -- world model: open loop under the real actions, baselines
    nxt = model.candidates(f0, a0, 1, gen)[:, 0]
    ol = real_continuation_errors(model, nxt, data, ts, es, alive_real, span, gen)  # [B, span]
    alive_rows = alive_real.reshape(-1, alive_real.shape[-1])
    obs_rows = data["obs"].reshape(-1, *data["obs"].shape[2:])
    mean_obs = (obs_rows * alive_rows[..., None]).sum(0) / alive_rows.sum(0).clamp_min(1)[:, None]  # [N, O]
    base = torch.stack([_masked_mean((mean_obs - data["obs"][ts + j, es]).norm(dim=-1),
                                     alive_real[ts + j - 1, es] & alive_real[ts + j, es])
                        for j in range(1, span + 1)], -1)
    res["model"] = {"open_loop_error": {str(k): float(ol[:, k - 1].mean()) for k in ks},
                    "baseline_error": float(base.mean()),
                    "baseline_error_by_k": {str(k): float(base[:, k - 1].mean()) for k in ks}}
    o_hat, r_hat, cont = _outcome(model, nxt)
    r_real = data["reward"][ts + 1, es]
    mean_r = data["reward"][1:][~data["first"][1:]].mean()
    res["reward"] = {"mae": float((r_hat.mean(-1) - r_real).abs().mean()),
                     "baseline_mae": float((mean_r - r_real).abs().mean())}
    # continuation: every row t -> t+1 inside an episode (terminal ones included)
    t_all, e_all = (~data["first"][1:] & ~data["terminal"][:-1]).nonzero(as_tuple=True)
    c_next = model.candidates(feat[t_all, e_all], data["action"][t_all, e_all], 1, gen)[:, 0]
    c_prob = _outcome(model, c_next)[2]
    term = data["terminal"][t_all + 1, e_all]
    pred_end = c_prob < 0.5
    res["continuation"] = {"accuracy": float((pred_end == term).float().mean()),
                           "terminal_rows": int(term.sum()),
                           "terminal_recall": float(pred_end[term].float().mean()) if term.any() else float("nan"),
                           "false_end_rate": float(pred_end[~term].float().mean())}

    # -- planner
    if algo.error_model is not None and p.l > 1:
        k_cont = p.continuations if continuations is None else int(continuations)
        world = LatentLookahead(model, policy, algo.error_model, alive_fn)
        cand = model.candidates(f0, a0, p.l, gen, gen)  # [B, L, N, D]
        ctx = ({"feat": f0, "actions": a0, "avail": model.decode(f0, outcome=False)["avail"]}
               if algo.error_model.transition else None)
        g1, g2 = (torch.Generator(device=algo.device).manual_seed(seed + i) for i in (1, 2))
        _, s1 = plan(cand, None, world, h, p.discount, g1, ctx, k_cont)
        _, s2 = plan(cand, None, world, h, p.discount, g2, ctx, k_cont)
        flat = cand.reshape(b * p.l, *cand.shape[2:]).repeat_interleave(real_samples, 0)
        ts_c, es_c = ts.repeat_interleave(p.l), es.repeat_interleave(p.l)
        real = real_continuation_errors(model, flat, data, ts_c, es_c, alive_real, h, gen)  # [B*L*R, h]
        real = real.view(b, p.l, real_samples, h).mean(2)
        res["planner"] = planner_figures(s1, s2, real.mean(-1), real[..., 0])
        res["planner"].update({"l": p.l, "h": h, "continuations": k_cont, "real_samples": real_samples,
                               "error_inputs": "transition" if algo.error_model.transition else "state_action"})

    # -- bias and policy: imagination from the same start states, L = 1 and the planner's L
    dead_real = float((~alive_real[ts, es]).sum(-1).float().mean())
    res["bias"] = {"dead_per_row_real": dead_real}
    runs = [("plain", 1)] + ([("planner", p.l)] if algo.error_model is not None and p.l > 1 else [])
    for name, n_cand in runs:
        out, _ = imagine(model, policy, f0, hi, torch.Generator(device=algo.device).manual_seed(seed + 10), l=n_cand,
                         select=algo._select)
        v = out["valid"]
        dead = (~alive_fn(out["avail"])).sum(-1).float()
        res["bias"][f"dead_per_step_{name}"] = float((dead * v).sum() / v.sum().clamp_min(1))
        res["bias"][f"dead_last_step_{name}"] = float((dead[-1] * v[-1]).sum() / v[-1].sum().clamp_min(1))
        res["bias"][f"valid_frac_{name}"] = float(v.float().mean())
        if name == "plain":
            res["policy"] = {"imagined_return": float((out["rewards"] * v).sum(0).mean()),
                             "real_return": float(sum(data["reward"][ts + j, es] for j in range(1, hi + 1)).mean()),
                             "horizon": hi}
    if "dead_per_step_planner" in res["bias"]:
        plain = res["bias"]["dead_per_step_plain"]
        res["bias"]["dead_change"] = res["bias"]["dead_per_step_planner"] / max(plain, 1e-8) - 1.0
    return res


def _outcome(model, nxt):
    from offmarl.worldmodel.latent import predicted_outcome

    return predicted_outcome(model, nxt)


def load_online(run_dir: Path, device, log: Callable[[str], None] = print):
    """The OnlineAlgorithm of an ``offmarl online`` run with its model, policy and R_m (the
    checkpoint's R_m input decides ``planner.error_inputs``)."""
    from offmarl.algos import online
    from offmarl.config import from_dict
    from offmarl.runs import RunDir

    run = RunDir.open(run_dir)
    saved = run.config
    cfg = from_dict(online.Config, online.migrate_saved_config(saved["config"]))
    st = run.load_checkpoint("latest", map_location=device)["algo"]
    em = st.get("error_model")
    deviation = True
    if em is not None:
        first = next(v for k, v in em.items() if k.endswith("weight"))
        plain_width = cfg.model.feat + make_n_actions(cfg)
        cfg.planner.error_inputs = "state_action" if first.shape[1] == plain_width else "transition"
        # an R_m trained before the deviation input: (feat, a, o_hat, r_hat) only
        deviation = first.shape[1] != plain_width + _obs_dim(cfg) + 1
    algo = online.OnlineAlgorithm(None, cfg, device, saved["seed"], log=log, build_env=False)
    if em is not None and not deviation:
        from offmarl.worldmodel.error_model import LatentErrorModel

        algo.error_model = LatentErrorModel(cfg.model.feat, algo.spec.n_actions, cfg.model.error_hidden,
                                            algo.spec.max_obs_dim, True, deviation=False).to(device)
    algo.mappo.load_state_dict(st["mappo"])
    if algo.model is not None:
        algo.model.load_state_dict(st["model"])
    if em is not None:
        algo.error_model.load_state_dict(em)
    algo.env_steps = int(st.get("env_steps", 0))
    if algo.model is not None and st.get("replay") is not None:  # the run's own replay (refit_error_model)
        from offmarl.data.replay import SequenceReplay
        from offmarl.safeload import tensors_to_arrays

        algo.replay = SequenceReplay(cfg.replay_capacity, cfg.n_envs, algo.spec.n_agents, algo.spec.max_obs_dim,
                                     algo.spec.n_actions)
        algo.replay.load_state_dict(tensors_to_arrays(st["replay"]))
    return algo, run


def refit_error_model(algo, steps: int, inputs: str, seed: int = 0, log: Callable[[str], None] = print) -> None:
    """A fresh R_m (``inputs``: transition | state_action) trained ``steps`` steps on the run's replay
    with the run's frozen world model, exactly as training trains it (``train_error_model``): the
    two R_m inputs compared on one model and one policy."""
    from offmarl.worldmodel.error_model import LatentErrorModel

    cfg = algo.cfg
    if algo.model is None or getattr(algo, "replay", None) is None:
        raise OffmarlError("diagnose --refit-rm: the run has no world model or no replay in its checkpoint")
    cfg.planner.error_inputs = inputs
    torch.manual_seed(seed)
    algo.error_model = LatentErrorModel(cfg.model.feat, algo.spec.n_actions, cfg.model.error_hidden,
                                        algo.spec.max_obs_dim, inputs == "transition").to(algo.device)
    algo.error_opt = torch.optim.Adam(algo.error_model.parameters(), lr=cfg.model.error_lr, eps=1e-5)
    algo.generators["model"] = torch.Generator().manual_seed(seed)
    algo.model.eval()
    losses = []
    for _ in range(steps):
        batch = algo._sample()
        with torch.no_grad():
            feat = algo.model.observe(batch["obs"], batch["action"], batch["first"], algo.generators["model"])["feat"]
        losses.append(float(algo.train_error_model(feat, batch)["error_model_loss"]))
    k = max(1, len(losses) // 10)
    log(f"refitted R_m ({inputs}) for {steps} steps on the run's replay: loss {np.mean(losses[:k]):.4f} -> "
        f"{np.mean(losses[-k:]):.4f}")


def make_n_actions(cfg) -> int:
    from offmarl.envs import make_env

    return make_env(f"smac-{cfg.map}", backend=cfg.backend).spec.n_actions


def _obs_dim(cfg) -> int:
    from offmarl.envs import make_env

    return make_env(f"smac-{cfg.map}", backend=cfg.backend).spec.max_obs_dim


# ---------------------------------------------------------------- offline (MOMA-PPO ± MAG)
def holdout_rows(model, n: int, device) -> torch.Tensor:
    """The world model's holdout transitions, recomputed from its seed (worldmodel/trainer.py
    ``holdout_split``: the first min(fraction * n, max_holdout) of one permutation)."""
    c = model.config
    n_hold = min(int(n * c.holdout_fraction), c.max_holdout) if c.max_holdout is not None else int(
        n * c.holdout_fraction)
    perm = torch.randperm(n, generator=torch.Generator(device=device).manual_seed(c.seed), device=device)
    return perm[:n_hold]


def rescore_offline(algo, ds, score: str, log: Callable[[str], None] = print) -> None:
    """Give the loaded MOMA-PPO run's planner another scorer (``planner.score``: error_model fits or
    loads R_m with the run's settings; deviation / uncertainty need no network). A run trained
    without the planner gets the default planner with this scorer, so its candidates can be ranked."""
    import dataclasses
    from pathlib import Path

    from offmarl.worldmodel.scorers import make_planner

    pcfg = dataclasses.replace(algo.cfg.planner, kind="mag", score=score)
    path = algo.model_info.get("path")
    planner = make_planner(pcfg, algo.model, ds, algo.env.observe, Path(path).parent if path else None,
                           algo.device, log=log)
    algo.planner = planner
    log(f"scoring the candidates with planner.score={score} (the run's: {algo.cfg.planner.score}"
        f"{'' if algo.cfg.planner.kind == 'mag' else ', trained without the planner'})")


@torch.no_grad()
def diagnose_offline(algo, ds, seed: int | None = None, max_starts: int = 512, continuations: int | None = None,
                     real_samples: int = 4, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The diagnosis of a loaded MOMA-PPO algorithm (its ensemble, policy and MAG planner if any) on
    its dataset: start transitions from the world model's holdout split (never trained on; the
    real rows after the first one may be training rows), continued under the dataset's real actions."""
    from offmarl.planners.mag import plan
    from offmarl.worldmodel.rollout import (
        EnsembleLookahead,
        clip_states,
        executed_actions,
        model_rollout,
        shift_history,
    )

    model, policy, obs_fn, dev = algo.model, algo.policy, algo.env.observe, algo.device
    planner, rcfg, box = algo.planner, algo.rollout_cfg, algo.box if algo.rollout_cfg.clip_to_box else None
    done_fn = algo.done_rule or (algo.env.terminated if algo.env.has_termination_rule else None)
    seed = 4242 if seed is None else seed
    gen = torch.Generator(device=dev).manual_seed(seed)
    t = ds.tensors(dev)
    n = len(ds)
    h = planner.h if planner is not None else 4
    ks = sorted({1, 5, h, rcfg.horizon})
    span = max(ks)
    ends = (t["terminals"] | t["timeouts"]).bool()
    hold = holdout_rows(model, n, dev)

    def windows(k: int) -> torch.Tensor:
        ok = hold + k - 1 < n
        for j in range(k - 1):
            ok &= ~ends[(hold + j).clamp_max(n - 1)]
        return hold[ok]

    starts = windows(span)
    while len(starts) < 8 and span > 1:  # short episodes: the longest horizon the data has
        span -= 1
        starts = windows(span)
    ks = [k for k in ks if k <= span]
    if len(starts) == 0:
        raise OffmarlError("diagnose: no held-out start transition in the data")
    if len(starts) > max_starts:
        starts = starts[torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))[:max_starts]
                        .to(dev)]
    b = len(starts)
    res: dict[str, Any] = {"kind": "offline", "algo": "moma-ppo" + ("+mag" if planner is not None else ""),
                           "dataset": ds.meta.name, "obs": ds.meta.obs_scheme, "start_states": b, "seed": seed}

    def obs_err(states: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """per-agent-mean observation error of predicted states [M, S] vs the real next_states[rows]."""
        return (obs_fn(states) - obs_fn(t["next_states"][rows].float())).norm(dim=-1).mean(-1)

    def continue_real(states: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
        """states [M, S] reached after transition rows [M]; continue under the real actions -> [M, k]."""
        out, s = [], states
        for j in range(k):
            out.append(obs_err(s, rows + j))
            if j < k - 1:
                step = model.step(s, model.encode_actions(t["actions"][rows + j + 1]), gen, sample=rcfg.sample)
                s = clip_states(step["next_states"], box)
        return torch.stack(out, -1)

    s0, a0 = t["states"][starts].float(), t["actions"][starts]
    joint0 = model.encode_actions(a0.float() if a0.is_floating_point() else a0)
    step0 = model.step(s0, joint0, gen, sample=rcfg.sample)
    ol = continue_real(clip_states(step0["next_states"], box), starts, span)
    obs_all = obs_fn(t["next_states"].float())
    mean_obs = obs_all.mean(0)
    base = torch.stack([(mean_obs - obs_all[starts + j]).norm(dim=-1).mean(-1) for j in range(span)], -1)
    res["model"] = {"open_loop_error": {str(k): float(ol[:, k - 1].mean()) for k in ks},
                    "baseline_error": float(base.mean()),
                    "baseline_error_by_k": {str(k): float(base[:, k - 1].mean()) for k in ks}}
    r_real = t["rewards"][starts].float()
    res["reward"] = {"mae": float((step0["rewards"] - r_real).abs().mean()),
                     "baseline_mae": float((t["rewards"].float().mean() - r_real).abs().mean())}
    # termination on every held-out transition
    sh, ah = t["states"][hold].float(), t["actions"][hold]
    st_h = model.step(sh, model.encode_actions(ah.float() if ah.is_floating_point() else ah), gen)
    pred_end = (done_fn(st_h["next_states"]).bool() if done_fn is not None
                else st_h["done_prob"] > rcfg.done_threshold)
    term = t["terminals"][hold].bool()
    res["continuation"] = {"accuracy": float((pred_end == term).float().mean()), "terminal_rows": int(term.sum()),
                           "terminal_recall": float(pred_end[term].float().mean()) if term.any() else float("nan"),
                           "false_end_rate": float(pred_end[~term].float().mean())}

    hist = None
    if algo.k > 0:
        hidx, valid = ds.history_indices(starts, algo.k)
        o, a = t["observations"][hidx], t["actions"][hidx]
        hist = {"hist_obs": o * valid.view(*valid.shape, *([1] * (o.dim() - 2))),
                "hist_actions": a * valid.view(*valid.shape, *([1] * (a.dim() - 2))).to(a.dtype),
                "hist_mask": valid}
    if planner is not None and planner.l > 1 and h > span:
        res["planner"] = {"note": f"episodes shorter than the planner's H = {h}: no real continuation to compare"}
    elif planner is not None and planner.l > 1:
        k_cont = planner.continuations if continuations is None else int(continuations)
        pgen = torch.Generator(device=dev).manual_seed(seed + 3)
        cand = model.sample_candidates(s0, joint0, planner.l, gen, pgen, planner.candidates, rcfg.sample)
        cs, cr = cand["next_states"], cand["rewards"]
        if box is not None:
            cs, cr = clip_states(cs, box), cr.clamp(min=box["reward_low"], max=box["reward_high"])
        world = EnsembleLookahead(model, policy, obs_fn, planner.scorer, box, rcfg.sample,
                                  done_fn if rcfg.termination == "env" else None, rcfg.done_threshold)
        ctx = {"states": s0, "joint": joint0, "rewards": cr, "unclipped": cand["next_states"],
               "done_prob": cand["done_prob"], "elite_means": cand["elite_means"]}
        if getattr(getattr(planner.scorer, "error_model", None), "transition", True) is False:
            ctx = None  # R_m(s, a): the j = 0 term is the same for every candidate
        mem = None if hist is None else shift_history(hist, obs_fn(s0), executed_actions(policy, a0))
        scores = []
        for i in (1, 2):
            g = torch.Generator(device=dev).manual_seed(seed + 10 * i)
            scores.append(plan(cs, mem, world, h, planner.discount, g, ctx, k_cont)[1])
        l_n = planner.l
        flat = cs.reshape(b * l_n, -1).repeat_interleave(real_samples, 0)
        real = continue_real(flat, starts.repeat_interleave(l_n * real_samples), h)
        real = real.view(b, l_n, real_samples, h).mean(2)
        res["planner"] = planner_figures(scores[0], scores[1], real.mean(-1), real[..., 0])
        res["planner"].update({"l": l_n, "h": h, "continuations": k_cont, "real_samples": real_samples})

    # -- bias and policy: model rollouts from the held-out start states, with and without the planner
    start = {"states": s0}
    if hist is not None:
        start.update(hist)
    res["bias"] = {}
    for name, pl in [("plain", None)] + ([("planner", planner)] if planner is not None else []):
        batch, info = model_rollout(model, policy, start, obs_fn, rcfg, algo.box,
                                    torch.Generator(device=dev).manual_seed(seed + 20), done_fn=done_fn,
                                    gamma=algo.gamma, history=algo.k, planner=pl)
        res["bias"][f"terminated_frac_{name}"] = info["frac_model_terminated"]
        res["bias"][f"uncertain_frac_{name}"] = info["frac_uncertainty_terminated"]
        res["bias"][f"mean_length_{name}"] = info["mean_length"]
        v = batch["valid"]
        if name == "plain":
            hr = rcfg.horizon
            res["policy"] = {"imagined_return": float((batch["raw_rewards"] * v).sum(0).mean()),
                             "real_return": float(sum(t["rewards"][starts + j].float() for j in range(hr)).mean()),
                             "horizon": hr, "note": "real: the dataset's actions; imagined: the policy's"}
    return res


# ---------------------------------------------------------------- output
def table(res: dict[str, Any]) -> str:
    """A short text table of the diagnosis."""
    lines = [f"diagnose: {res.get('kind')} {res.get('algo')} {res.get('map', res.get('dataset', ''))}, "
             f"{res.get('start_states')} held-out start states"]
    m = res.get("model", {})
    if m:
        ol = ", ".join(f"k={k}: {v:.3f}" for k, v in m["open_loop_error"].items())
        lines.append(f"  model open-loop error   {ol}   (mean-observation baseline {m['baseline_error']:.3f})")
    if "reward" in res:
        rw = res["reward"]
        lines.append(f"  reward MAE              {rw['mae']:.4f}   (baseline {rw['baseline_mae']:.4f})")
    if "planner" in res:
        pl = res["planner"]
        lines += [f"  planner Spearman        {pl['spearman']:.3f} per start state (goal >= 0.3); one-step "
                  f"{pl['spearman_one_step']:.3f}; across states {pl['spearman_across_states']:.3f}",
                  f"  pick beats candidate 0  {pl['pick_beats_first']:.1%} (goal >= 60%; "
                  f"replaced {pl['replaced']:.1%})",
                  f"  pick error vs random    {pl['pick_error_change']:+.2%} (goal <= -5%); oracle "
                  f"{pl['oracle_error_change']:+.2%}",
                  f"  score repeatability     {pl['score_repeatability']:.3f} (Spearman of two scorings)"]
    bias = res.get("bias", {})
    if "dead_per_step_plain" in bias:
        s = f"  own agents dead / step  plain {bias['dead_per_step_plain']:.3f}"
        if "dead_per_step_planner" in bias:
            s += f", planner {bias['dead_per_step_planner']:.3f} ({bias['dead_change']:+.1%}; goal within 5%)"
        lines.append(s + f"; real {bias['dead_per_row_real']:.3f}")
    for key in ("terminated_frac_plain", "terminated_frac_planner"):
        if key in bias:
            lines.append(f"  {key:<23} {bias[key]:.3f}")
    if "policy" in res:
        po = res["policy"]
        lines.append(f"  {po['horizon']}-step return       imagined {po['imagined_return']:.3f}, "
                     f"real {po['real_return']:.3f}")
    return "\n".join(lines)


def write_outputs(res: dict[str, Any], run_dir: Path, json_path: Path | None = None) -> Path:
    """diagnose.json (nested, plus the flat dotted keys) and diagnose.png in the run directory
    (and the JSON at ``json_path`` too)."""
    out = dict(res)
    out.update(_flat({k: v for k, v in res.items() if isinstance(v, dict)}))
    text = json.dumps(_finite(out), indent=2, sort_keys=True)
    path = Path(run_dir) / "diagnose.json"
    path.write_text(text)
    if json_path is not None:
        Path(json_path).write_text(text)
    _figure(res, Path(run_dir) / "diagnose.png")
    return path


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def _figure(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    m = res.get("model", {})
    if m:
        ks = [int(k) for k in m["open_loop_error"]]
        ax[0].plot(ks, list(m["open_loop_error"].values()), "o-", label="model, open loop")
        base = m.get("baseline_error_by_k", {str(k): m["baseline_error"] for k in ks})
        ax[0].plot(ks, [base[str(k)] for k in ks], "s--", label="mean-observation baseline")
        ax[0].set_xlabel("k (steps under the real actions)")
        ax[0].set_ylabel("observation error per agent")
        ax[0].legend()
    pl = res.get("planner")
    if pl:
        names = ["Spearman", "pick beats 0", "pick vs random", "oracle vs random", "repeatability"]
        vals = [pl["spearman"], pl["pick_beats_first"], pl["pick_error_change"], pl["oracle_error_change"],
                pl["score_repeatability"]]
        ax[1].bar(range(len(vals)), [0 if v != v else v for v in vals])
        ax[1].set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
        ax[1].axhline(0, color="k", lw=0.5)
        ax[1].set_title(f"planner (L={pl['candidates']}, H={pl['h']})")
    else:
        ax[1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
