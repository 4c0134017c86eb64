"""MOMA-PPO: MA-PPO on uncertainty-penalised rollouts of a world-model ensemble (Barde et al.; PBarde/moma-ppo).

    dataset ──► EnsembleWorldModel.fit (cached by the data's dynamics checksum + config: fo/po share it)
            └─► every iteration: B start states (+ each agent's last K (obs, action) pairs)
                ──► model_rollout (H steps, penalised reward r - λg·eps_g - λr·eps_r,
                    termination on predicted done or RAW eps_g above the threshold)
                ──► MAPPO.update (GAE, joint clipped ratio, value clipping, adaptive entropy)

One training "step" of offmarl.loop is one iteration. The world model is fixed during
policy training, so resuming needs only the MA-PPO state and the generator.

Deviation from the reference, on purpose: its uncertainty termination never fired (it clamps
eps_g to the threshold 2 before testing ``> 2``). eps_g is in the state's raw units, so a fixed
2 ends almost every ant rollout after one step once tested correctly (docs/worldmodel.md).
By default the threshold is calibrated on the data: the ``calibrate_eps_g`` quantile of eps_g
over dataset (state, action) pairs — "stop where the model is less sure than on 99% of the data".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from offmarl.algos.mappo import HIST_KEYS, MAPPO, MAPPOConfig
from offmarl.envs import make_env
from offmarl.errors import OffmarlError
from offmarl.loop import LoopConfig
from offmarl.paths import cache_dir
from offmarl.planners.mag import ONLINE_ONLY, PlannerConfig
from offmarl.worldmodel.ensemble import EnsembleConfig, load_or_fit, load_world_model
from offmarl.worldmodel.rollout import RolloutConfig, calibrate_eps_g_threshold, dataset_box, model_rollout
from offmarl.worldmodel.scorers import make_planner
from offmarl.worldmodel.termination import calibrate_termination, termination_rule


@dataclass
class Config:
    world_model: EnsembleConfig = field(default_factory=EnsembleConfig)  # see offmarl/worldmodel/ensemble.py
    rollout: RolloutConfig = field(default_factory=RolloutConfig)         # horizon 10, λg 0.1, λr 0.05 (reference)
    # MA-PPO's own defaults (offmarl/algos/mappo.py) except:
    #   actor/critic 2x128: ours, the reference's 2x256 costs 2.8x per update on CPU (docs/benchmarks.md);
    #     SB3/CleanRL PPO use 2x64 on MuJoCo
    #   minibatch 2048: ours (ref 64), 5 minibatches of the default 10k synthetic transitions per epoch
    #   critic "state": Yu et al. MAPPO V(s) on the global state (ref: per-agent values mixed by a
    #     hypernetwork, `critic: mixer`, 2.2x the cost)
    ppo: MAPPOConfig = field(default_factory=lambda: MAPPOConfig(
        actor_hidden=(128, 128), critic_hidden=(128, 128), minibatch_size=2048, critic="state"))
    planner: PlannerConfig = field(default_factory=PlannerConfig)  # off; configs/moma-ppo.yaml `mag`, docs/mag.md
    rollout_batch: int = 1_000       # ours: 1000 start states x 10 steps = 10k synthetic transitions (ref ~2k)
    calibrate_eps_g: float | None = 0.99  # quantile of eps_g on the data used as threshold (ours); None = use
    #                                      rollout.eps_g_threshold (the reference's fixed value is 2)
    calibrate_termination: bool = False  # ours: fit a margin on the env's termination rule so the model's
    #                                      horizon-step termination rate matches the data's (worldmodel/
    #                                      termination.py; docs/history.md); opt-in (configs/moma-ppo.yaml
    #                                      `ant-calibrated`) until measured at budget; no-op without a rule
    termination_margin: float = 0.0       # fixed margin (std units) when calibrate_termination is false; 0 = env rule
    termination_windows: int = 5_000      # dataset windows the margin is fitted on (ours; ~1 s on CPU)
    # behaviour anchor (ours, docs/ant.md): the actors start as behaviour clones of the data and PPO keeps a
    # BC term (mappo.bc_coef) on dataset pairs, so the policy improves from the data instead of from scratch
    # into states the model has never seen. BPPO (Zhuang et al., ICLR 2023) starts offline PPO from BC the same way.
    bc_pretrain_steps: int = 0            # Gaussian max-likelihood steps on dataset pairs before PPO (0 = off)
    bc_pretrain_batch: int = 512          # ours
    bc_pretrain_lr: float = 1e-3          # ours (Adam; the PPO optimiser's state is untouched)
    bc_anchor_batch: int = 10_000         # dataset pairs per iteration for mappo.bc_coef (ours: = the rollouts)
    world_model_path: str | None = None   # reuse this fitted model (--world-model) instead of fitting/caching
    cache_dir: str | None = None          # world-model cache (default: default_cache_dir())
    # ours: 600 iterations fit `offmarl train --dataset ant-medium` in < 1 h on 2 CPU cores; evaluation:
    # ref 10 deterministic episodes
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        steps=600, eval_every=100, eval_episodes=10, final_eval_episodes=50, log_every=10, checkpoint_every=50))
    # final_eval_episodes 50: 10 ant episodes have a standard error of ~0.09 normalised


def default_cache_dir() -> Path:
    """Where trained world models are cached: ``offmarl.paths.cache_dir("worldmodels")``."""
    return cache_dir("worldmodels")


def check_dataset(ds, cfg: Config) -> None:
    check_config(cfg)


def check_config(cfg: Config) -> None:
    """Options that contradict each other are errors, never silently overridden."""
    if cfg.rollout_batch < 1:
        raise OffmarlError("rollout_batch must be >= 1")
    for key in ONLINE_ONLY:  # planners/mag.py: PlannerConfig is shared with the online loop
        if getattr(cfg.planner, key) != getattr(PlannerConfig(), key):
            raise OffmarlError(f"planner.{key} is an online-only setting (offmarl online); offline it means nothing "
                               "(`offmarl diagnose` measures the offline planner)")
    if cfg.bc_pretrain_steps < 0 or cfg.bc_pretrain_batch < 1 or cfg.bc_anchor_batch < 1:
        raise OffmarlError("bc_pretrain_steps must be >= 0, bc_pretrain_batch and bc_anchor_batch >= 1")
    thr, q = cfg.rollout.eps_g_threshold, cfg.calibrate_eps_g
    if thr is not None and q is not None:
        raise OffmarlError(f"rollout.eps_g_threshold={thr} is set but calibrate_eps_g={q} would replace it with the "
                           f"data's eps_g quantile; set calibrate_eps_g=null to use the fixed threshold, or drop "
                           f"rollout.eps_g_threshold to calibrate")
    if cfg.calibrate_termination and cfg.termination_margin != 0.0:
        raise OffmarlError(f"termination_margin={cfg.termination_margin} is set but calibrate_termination=true would "
                           f"replace it; set calibrate_termination=false to use the fixed margin, or drop it")
    if thr is None and q is None:
        raise OffmarlError("no eps_g termination threshold: set calibrate_eps_g (a quantile, default 0.99) or "
                           "rollout.eps_g_threshold (a fixed value; the reference's is 2)")


def migrate_saved_config(saved: dict) -> dict:
    """A run's saved ``config`` dict from before rollout.history / rollout.gamma became derived (they
    are ppo.history_len / ppo.gamma) and before eps_g_threshold=None meant "calibrated": drop the
    derived keys, and the fixed threshold that calibration replaced. Newer dicts pass unchanged."""
    rollout = {k: v for k, v in (saved.get("rollout") or {}).items() if k not in ("history", "gamma")}
    if saved.get("calibrate_eps_g", Config.calibrate_eps_g) is not None:
        rollout.pop("eps_g_threshold", None)
    return {**saved, "rollout": rollout} if "rollout" in saved else saved


class Algorithm:
    def _setup_agents(self, dataset, cfg: Config, device, seed: int, log=print) -> None:
        """Shared by training and ``for_evaluation``: env, memory length, rollout config, generator.
        The caller builds the MA-PPO agents (training builds them after the world model, so the
        global RNG stream that initialises them is the same as before this helper existed)."""
        self.cfg, self.device, self.dataset = cfg, torch.device(device), dataset
        self.env = make_env(dataset.meta.env, obs=dataset.meta.obs_scheme)
        # the same K feeds the policy's memory and the rollouts' histories; the HALT value uses the policy's gamma
        self.k, self.gamma = cfg.ppo.history_len, cfg.ppo.gamma
        self.rollout_cfg = cfg.rollout
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.generators = {"moma": self.gen}
        self.model, self.planner, self.model_info, self.done_rule = None, None, {}, None
        self._since_eval: list[tuple[float, float, float]] = []  # (raw reward, length, terminated) per iteration
        self.log = log

    def __init__(self, dataset, cfg: Config, device, seed: int, log=print):
        check_config(cfg)
        self._setup_agents(dataset, cfg, device, seed, log)
        spec = self.env.spec
        if spec.obs_dims != tuple(dataset.meta.obs_dims) or spec.state_dim != dataset.meta.state_dim:
            raise OffmarlError(
                f"dataset {dataset.meta.name or dataset.origin} does not match {spec.name} under scheme "
                f"{spec.obs_scheme}: obs dims {dataset.meta.obs_dims} vs {spec.obs_dims}, state "
                f"{dataset.meta.state_dim} vs {spec.state_dim}")

        wm_cfg = dataclasses.replace(cfg.world_model, seed=cfg.world_model.seed + seed)
        if cfg.world_model_path:
            self.model = load_world_model(cfg.world_model_path, device=self.device, dataset=dataset)
            self.model_info = {"cached": True, "path": cfg.world_model_path}
        else:
            cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
            cap = (f"up to {wm_cfg.max_steps} steps" if wm_cfg.early_stopping == "steps" else
                   f"early stopping on {wm_cfg.patience} epochs" + (f", up to {wm_cfg.max_epochs} epochs"
                                                                    if wm_cfg.max_epochs else ""))
            log(f"world model: looking in the cache {cache} (or fitting {wm_cfg.members} members, {cap})")

            def report(p):
                eta = "" if p["eta_seconds"] is None else f", at most {p['eta_seconds'] / 60:.1f} min left"
                log(f"  world model step {p['step']} (epoch {p['epoch']:.1f}): best holdout mse "
                    f"{min(p['best_holdout_mse']):.4f}, worst dimension {p['worst_dim']} "
                    f"({max(p['holdout_dim_mse']):.4f}){eta}")

            self.model, self.model_info = load_or_fit(dataset, wm_cfg, cache, device=self.device, progress=report,
                                                          log=log)
        log(("loaded" if self.model_info.get("cached") else "fitted") + f" world model {self.model_info.get('path')}")
        self.model.eval()

        self.box = dataset_box(dataset, self.device, halt_quantile=cfg.rollout.halt_quantile)
        if cfg.calibrate_eps_g is not None:
            g = torch.Generator(device=self.device).manual_seed(seed + 1)
            thr = calibrate_eps_g_threshold(self.model, dataset, quantile=cfg.calibrate_eps_g, generator=g,
                                            device=self.device)
            self.rollout_cfg = dataclasses.replace(self.rollout_cfg, eps_g_threshold=float(thr))
        log(f"model rollouts stop where the ensemble disagrees (eps_g > {self.rollout_cfg.eps_g_threshold:.4g}) and "
            f"are valued as an absorbing HALT state worth {float(self.box['halt_reward']):.4g}/step (quantile "
            f"{cfg.rollout.halt_quantile} of the data's rewards)")
        self.done_rule = termination_rule(self.env, dataset, cfg.termination_margin, self.device)
        if self.done_rule is not None and cfg.calibrate_termination:
            g = torch.Generator().manual_seed(seed + 2)
            self.done_rule, cal = calibrate_termination(self.model, dataset, self.done_rule, self.rollout_cfg.horizon,
                                                        cfg.termination_windows, self.box, g)
            b, a = cal["before"], cal["after"]
            log(f"termination margin {cal['margin']:.4g} std: {self.rollout_cfg.horizon}-step termination rate "
                f"real {b['real_rate']:.3f}, model {b['model_rate']:.3f} -> {a['model_rate']:.3f} "
                f"(recall {b['recall']:.2f} -> {a['recall']:.2f}, false positives {b['false_positive_rate']:.3f} "
                f"-> {a['false_positive_rate']:.3f}, {a['windows']} windows)")

        self.mappo = MAPPO.from_spec(spec, cfg.ppo, self.device)
        t = dataset.tensors(self.device)
        self.mappo.update_normalisers(t["observations"], t["states"])
        if cfg.planner.kind == "mag":
            model_dir = Path(self.model_info["path"]).parent if self.model_info.get("path") else None
            self.planner = make_planner(cfg.planner, self.model, dataset, self.env.observe, model_dir, self.device,
                                        log=log)

    @classmethod
    def for_evaluation(cls, dataset, cfg: Config, device, seed: int, log=print) -> Algorithm:
        """Only what acting needs (the MA-PPO agents): no world model, no planner, no fitting.
        ``offmarl evaluate`` uses this, then ``load_state_dict`` restores the agents."""
        self = cls.__new__(cls)
        self._setup_agents(dataset, cfg, device, seed, log)
        self.mappo = MAPPO.from_spec(self.env.spec, cfg.ppo, self.device)
        return self

    @property
    def policy(self):
        return self.mappo.policy

    def _start_states(self) -> dict:
        b = self.cfg.rollout_batch
        if self.k > 0:
            batch = self.dataset.sample_histories(b, self.k, generator=self.gen, device=self.device)
            return {"states": batch["states"], "hist_obs": batch["hist_obs"],
                    "hist_actions": batch["hist_actions"], "hist_mask": batch["hist_mask"]}
        return {"states": self.dataset.sample(b, generator=self.gen, device=self.device)["states"]}

    def _dataset_pairs(self, n: int) -> dict:
        """n dataset (obs, action) pairs in MAPPO's keys (with each agent's memory when k > 0)."""
        if self.k > 0:
            b = self.dataset.sample_histories(n, self.k, generator=self.gen, device=self.device)
        else:
            b = self.dataset.sample(n, generator=self.gen, device=self.device)
        out = {"obs": b["observations"], "actions": b["actions"]}
        if "avail_actions" in b:
            out["avail"] = b["avail_actions"]
        out.update({k: b[k] for k in HIST_KEYS if k in b})
        return out

    def anchor_batch(self) -> dict | None:
        """The dataset pairs of one iteration's BC term (``bc_anchor_batch`` of them), or None when
        ``ppo.bc_coef`` is 0; what ``update`` passes to ``MAPPO.update(anchor=...)``."""
        return self._dataset_pairs(self.cfg.bc_anchor_batch) if self.cfg.ppo.bc_coef > 0 else None

    def _clone_behaviour(self) -> dict:
        """Gaussian maximum likelihood of the data's actions (means and stds) before PPO starts."""
        cfg = self.cfg
        opt = torch.optim.Adam(self.mappo.policy.parameters(), lr=cfg.bc_pretrain_lr)
        first = last = None
        every = max(1, cfg.bc_pretrain_steps // 5)
        for i in range(cfg.bc_pretrain_steps):
            p = self._dataset_pairs(cfg.bc_pretrain_batch)
            hist = {k: p[k] for k in HIST_KEYS if k in p} or None
            loss = self.mappo.behaviour_loss(p["obs"], hist, p.get("avail"), p["actions"], nll=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i == 0:
                first = float(loss.detach())
            if (i + 1) % every == 0 or i + 1 == cfg.bc_pretrain_steps:
                last = float(loss.detach())
                self.log(f"  behaviour cloning step {i + 1}/{cfg.bc_pretrain_steps}: negative log-likelihood "
                         f"{last:.4f} per agent")
        return {"bc_pretrain_nll_first": first, "bc_pretrain_nll_last": last}

    def update(self, step: int) -> dict:
        extra = {}
        if self.cfg.bc_pretrain_steps > 0 and self.mappo.iterations == 0:  # before the first PPO update only
            self.log(f"behaviour cloning the actors on the data: {self.cfg.bc_pretrain_steps} steps of "
                     f"{self.cfg.bc_pretrain_batch} pairs")
            extra = self._clone_behaviour()
        start = self._start_states()
        # the env's rule with its (calibrated) margin; envs whose rule is only "state finite" (reacher):
        # that rule; envs without one: None = the model's head
        done_fn = self.done_rule or (self.env.terminated if self.env.has_termination_rule else None)
        batch, info = model_rollout(self.model, self.mappo.policy, start, self.env.observe, self.rollout_cfg,
                                    self.box, self.gen, done_fn=done_fn, gamma=self.gamma, history=self.k,
                                    planner=self.planner)
        metrics = self.mappo.update(batch, self.gen, anchor=self.anchor_batch())
        metrics.update({k: float(v) for k, v in info.items()})
        metrics.update(extra)
        self._since_eval.append((info["mean_raw_reward"], info["mean_length"], info["frac_model_terminated"]))
        return metrics

    def evaluation_extras(self, real: dict) -> dict:
        """The model-vs-real gap logged with every evaluation (the driver's hook): the model's raw
        reward per step, rollout length and termination share under the policy since the last
        evaluation, next to the real reward per step (``real`` = evaluate_policy's result)."""
        rows, self._since_eval = self._since_eval, []
        if not rows:
            return {}
        n = len(rows)
        model_r = sum(r[0] for r in rows) / n
        real_r = real.get("reward_per_step")
        out = {"model_reward_per_step": model_r, "model_rollout_length": sum(r[1] for r in rows) / n,
               "model_frac_terminated": sum(r[2] for r in rows) / n}
        if real_r:
            out["model_over_real_reward"] = model_r / real_r
        return out

    def state_dict(self) -> dict:
        margin = None if self.done_rule is None else self.done_rule.margin
        return {"mappo": self.mappo.state_dict(), "eps_g_threshold": self.rollout_cfg.eps_g_threshold,
                "termination_margin": margin, "since_eval": list(self._since_eval)}

    def load_state_dict(self, d: dict) -> None:
        self.mappo.load_state_dict(d["mappo"])
        self.rollout_cfg = dataclasses.replace(self.rollout_cfg, eps_g_threshold=float(d["eps_g_threshold"]))
        self._since_eval = [tuple(r) for r in d.get("since_eval", [])]  # a resumed run logs the same gap
        if self.done_rule is not None and d.get("termination_margin") is not None:  # older checkpoints: none saved
            self.done_rule = self.done_rule.with_margin(d["termination_margin"])
