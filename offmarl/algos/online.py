"""Online MAG / MAMBA / MA-PPO on SMAC maps, one engine (MAMBA: Egorov & Shpilman, AAMAS 2022,
github.com/jbr-ai-labs/mamba; MAG: Models as Agents, AAAI 2023, github.com/ZifanWu/MAG).

    --algo mamba   agents collect real battles from SMAX copies stepped together; a per-agent
                   latent world model (worldmodel/latent.py) learns from replayed sequences; MA-PPO
                   (algos/mappo.py) trains on H-step imagined rollouts from posterior states
    --algo mag     the same, with the MAG planner choosing every imagined next state among L
                   prior samples by the R_m-predicted error of its (H-1)-step continuation, per
                   start state (planners/mag.py ``plan``)
    --algo mappo   the same MA-PPO on the real battles, no model (model-free baseline)

One iteration (``update``) = collect ``collect_steps`` env steps, then train. The three share the
env, the actor/critic networks, the evaluation (offmarl.evaluation, greedy, separate episodes)
and the seeds, so their curves differ only by the method.

``agent_input`` chooses what the actor and critic read. "obs": observations, real ones in the env
and the model's decoded ones in imagination; the centralised critic sees all agents' observations
concatenated. "latent" (MAMBA): the model's features, the posterior from real observations in the
env (``LatentAgent``: the encoder and posterior travel with the policy, so ``offmarl evaluate``
needs only the env) and the prior in imagination.

Randomness: one torch generator per stream (collect, model, imagine, ppo), the env's JAX key
and every env copy's state travel with the checkpoint, so ``--resume`` continues exactly.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from offmarl.algos.mappo import MAPPO, MAPPOConfig
from offmarl.data.replay import SequenceReplay
from offmarl.envs import SMAC_BACKENDS, VecMultiAgentEnv, make_env, make_vec_env, smac_alive
from offmarl.envs.base import EnvSpec
from offmarl.errors import OffmarlError
from offmarl.loop import LoopConfig
from offmarl.planners.mag import OFFLINE_ONLY, PlannerConfig, plan, planner_figures
from offmarl.safeload import arrays_to_tensors, tensors_to_arrays
from offmarl.worldmodel.error_model import LatentDeviationScore, LatentErrorModel, latent_error_model_step
from offmarl.worldmodel.latent import (
    LatentLookahead,
    LatentModelConfig,
    LatentWorldModel,
    imagine,
    real_continuation_errors,
)
from offmarl.worldmodel.trainer import sequence_model_step


@dataclass(frozen=True)
class Method:
    """What tells the three methods apart, decided once from ``OnlineConfig.algo``; everything
    else (env copies, networks, evaluation, seeds) is shared."""
    name: str
    world_model: bool  # learn the latent model from replay and train MA-PPO in imagination (else on real rollouts)
    planner: bool  # MAG: R_m is trained and the planner picks each imagined next state among L candidates


METHODS = {
    "mag": Method("mag", world_model=True, planner=True),
    "mamba": Method("mamba", world_model=True, planner=False),
    "mappo": Method("mappo", world_model=False, planner=False),
}
ALGOS = tuple(METHODS)
UPDATE_PER = ("iteration", "episode")


def _online_mappo() -> MAPPOConfig:
    """MA-PPO as MAMBA trains it (paper Table 1), sized for CPU."""
    return MAPPOConfig(
        actor_hidden=(128, 128),  # CPU preset; MAMBA 256-wide actor
        critic_hidden=(128, 128),  # CPU preset
        share_parameters=True,  # MAMBA: one actor shared by the agents (+ agent one-hot inside)
        critic="state",  # the critic sees every agent's observation (MAMBA: attention critic)
        lr=5e-4,  # MAMBA actor/critic lr
        epochs=5,  # MAMBA
        minibatch_size=1024,  # ours: a few minibatches per imagined batch
        gae_lambda=0.95,  # MAMBA
        entropy_mode="fixed",  # MAMBA: fixed coefficient, annealed
        entropy_coef=0.001,  # MAMBA ENTROPY
        entropy_per_agent=True,  # MAMBA: per-agent entropy, mean over agents (the coefficient is per agent)
        joint_ratio=False,  # MAMBA: each agent's ratio clipped on its own (offline MOMA-PPO keeps the joint ratio)
        entropy_annealing=0.99998,  # MAMBA ENTROPY_ANNEALING, after every actor step
    )


# online planner scores: MAG's R_m trained alongside the latent model, or the label-free distance from
# the prior's mean prediction (docs/mag.md, "Is R_m more than ...")
ONLINE_SCORES = ("error_model", "deviation")


def online_planner() -> PlannerConfig:
    """The MAG planner's settings online: planners.mag.PlannerConfig (one config for both loops)
    with the online loop's own measured defaults; its offline-only keys stay at their defaults
    (``OnlineConfig`` refuses them, planners.mag.OFFLINE_ONLY)."""
    return PlannerConfig(
        # CPU preset (ours, benchmarks/online_speed.py): L 4 x H 5 costs ~1/3 of MAG's L 5 x H 10 per
        # imagined step; MAG's per-map values (L 4-5, H 6-10, MAG paper appendix B) come with
        # `--config mag-reference` (configs/online.yaml, its `maps` entries)
        l=4,  # MAG's L
        h=5,
        discount=1.0,  # MAG Algorithm 1 sums the errors undiscounted
        # K continuations per candidate (ours; docs/mag.md "Diagnose", 2s3z 2000 steps: K = 4 raises the score's
        # repeatability 0.24 -> 0.53 but hardly the ranking (Spearman 0.02 -> 0.08) for 4x the planner's cost)
        continuations=1,
        error_inputs="transition",  # R_m(feat, a, o_hat', r_hat') (MAG paper) | state_action: R_m(feat, a)
        check_every=10,  # ours: every N updates log planner_spearman etc. on a replay batch (0 = never)
    )


def _online_loop() -> LoopConfig:
    """The training loop's settings (offmarl/loop.py, the offline algorithms' LoopConfig), counted
    in ENV steps here: offmarl/driver.py ``online_loop_config`` turns them into iterations."""
    return LoopConfig(
        steps=100_000,  # env steps: the budget MAMBA and MARIE report on these maps
        eval_every=5_000,  # env steps between greedy evaluations (MARIE: every 500 with 10 episodes)
        eval_episodes=32,  # win rate over 32 separate greedy episodes (OG-MARL's protocol)
        final_eval_episodes=32,  # OG-MARL's protocol
        eval_envs=32,  # env copies of the evaluation (ours: one batch of 32 episodes)
        log_every=1,  # env steps: a metrics row every iteration (ours)
        checkpoint_every=5_000,  # env steps; also at every evaluation (ours)
    )


def migrate_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """config.yaml of online runs written by older versions. Before the loop settings became a
    LoopConfig: their ``loop.env_steps`` is ``loop.steps`` (env steps). Before the planner's
    settings became planners.mag.PlannerConfig, ``planner`` held l, h, discount, continuations,
    error_inputs and check_every: all PlannerConfig keys of the same meaning, so they load as they
    are (the other keys take ``online_planner``'s defaults)."""
    loop = data.get("loop")
    if isinstance(loop, dict) and "env_steps" in loop:
        data = {**data, "loop": {("steps" if k == "env_steps" else k): v for k, v in loop.items()}}
    return data


@dataclass
class OnlineConfig:
    algo: str = "mag"
    map: str = "2s3z"
    backend: str = "smax"
    n_envs: int = 4  # ours: SMAX copies stepped together while collecting
    collect_steps: int = 100  # env steps per iteration (MAMBA: one update per episode, ~50-120 steps)
    prefill_steps: int = 500  # ours: env steps collected before the first model update
    replay_capacity: int = 100_000  # MAMBA 2.5e5; our budgets are <= 1e5 steps
    model_updates: int = 10  # model (and R_m) gradient steps per update; MAMBA 60 per episode
    # "iteration": one update (model_updates model steps, ppo_rounds PPO rounds) per iteration;
    # "episode": MAMBA's schedule, one update per real episode finished in the iteration (none when
    # no episode ended; exact per episode with collect_steps = n_envs)
    update_per: str = "iteration"
    ppo_rounds: int = 1  # imagination + PPO rounds per iteration; MAMBA 4
    imagine_horizon: int = 15  # MAMBA
    mappo_rollout: int = 50  # --algo mappo: steps per env copy between PPO updates (ours)
    # what actor and critic read: "obs" (observations; decoded ones in imagination) or "latent"
    # (MAMBA: the model's features, posterior in the env, prior in imagination). "obs" until the
    # latent agents are measured not worse (docs/online.md)
    agent_input: str = "obs"
    model: LatentModelConfig = field(default_factory=LatentModelConfig)
    planner: PlannerConfig = field(default_factory=online_planner)  # planners/mag.py; online defaults above
    mappo: MAPPOConfig = field(default_factory=_online_mappo)
    loop: LoopConfig = field(default_factory=_online_loop)  # in env steps

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise OffmarlError(f"online.algo = {self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.backend not in SMAC_BACKENDS:
            raise OffmarlError(f"online.backend = {self.backend!r}; choose one of {', '.join(SMAC_BACKENDS)}")
        if self.update_per not in UPDATE_PER:
            raise OffmarlError(f"online.update_per = {self.update_per!r}; choose one of {', '.join(UPDATE_PER)}")
        if self.agent_input not in ("obs", "latent"):
            raise OffmarlError(f"online.agent_input = {self.agent_input!r}; choose 'obs' or 'latent'")
        if self.agent_input == "latent" and self.algo == "mappo":
            raise OffmarlError("online.agent_input = 'latent' needs a world model; --algo mappo has none (use 'obs')")
        if self.collect_steps < self.n_envs:
            raise OffmarlError(f"online.collect_steps ({self.collect_steps}) must be >= online.n_envs ({self.n_envs})")
        # error_inputs, check_every, continuations: checked by PlannerConfig itself
        default = PlannerConfig()
        for key, instead in OFFLINE_ONLY.items():
            if getattr(self.planner, key) != getattr(default, key):
                raise OffmarlError(f"online.planner.{key} is an offline-only setting (offline MOMA-PPO + MAG); "
                                   f"online it means nothing. Online: {instead}")
        if self.planner.score not in ONLINE_SCORES:
            raise OffmarlError(f"online.planner.score = {self.planner.score!r}; online choose one of "
                               f"{', '.join(ONLINE_SCORES)} (the latent model has no ensemble to disagree)")
        if self.planner.l < 1 or (self.planner.l > 1 and self.planner.h < 2):
            raise OffmarlError(f"online.planner: l={self.planner.l}, h={self.planner.h}; need l >= 1 and h >= 2 "
                               "when l > 1")

    @property
    def method(self) -> Method:
        return METHODS[self.algo]

    @property
    def iteration_steps(self) -> int:
        """Env steps per iteration (all copies)."""
        per_copy = self.collect_steps // self.n_envs if self.method.world_model else self.mappo_rollout
        return per_copy * self.n_envs

    @property
    def iterations(self) -> int:
        return -(-self.loop.steps // self.iteration_steps)


def policy_spec(spec: EnvSpec, feat_dim: int | None = None) -> EnvSpec:
    """The env spec as MA-PPO sees it here: the critic's "state" is all agents' inputs concatenated;
    with ``feat_dim`` the agents' inputs are the world model's features."""
    if feat_dim is not None:
        spec = dataclasses.replace(spec, obs_dims=(feat_dim,) * spec.n_agents)
    return dataclasses.replace(spec, state_dim=spec.n_agents * spec.max_obs_dim)


class LatentAgent(torch.nn.Module):
    """MAMBA's acting path in the real env: the world model's posterior from the observations (its
    recurrent state carried from step to step), the actor on the features. ``act`` has
    MAPPOPolicy's signature, so evaluation runs it like any policy; ``reset_state()`` starts new
    episodes (all copies, or those in a mask)."""

    history_len = 0

    def __init__(self, model: LatentWorldModel, actor, backend: str):
        super().__init__()
        self.model, self.actor, self.backend = model, actor, backend
        self.discrete = True
        self.state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def reset_state(self, mask: np.ndarray | None = None) -> None:
        if mask is None or self.state is None:
            self.state = None
            return
        feat, prev_a, prev_ok = self.state
        m = torch.as_tensor(np.array(mask, dtype=bool), device=feat.device)
        self.state = (feat * (~m).to(feat.dtype)[:, None, None], prev_a, prev_ok & ~m[:, None])

    @torch.no_grad()
    def act(self, obs: torch.Tensor, hist=None, avail: torch.Tensor | None = None, deterministic: bool = False,
            generator: torch.Generator | None = None):
        b, n = obs.shape[:2]
        if self.state is None or self.state[0].shape[0] != b:
            self.state = (self.model.initial(b, obs.device), torch.zeros(b, n, dtype=torch.long, device=obs.device),
                          torch.zeros(b, n, dtype=torch.bool, device=obs.device))
        alive = torch.ones(b, n, dtype=torch.bool, device=obs.device) if avail is None else \
            smac_alive(avail.bool(), self.backend)
        self.model.eval()
        feat = self.model.observe_step(*self.state, obs, alive, generator)
        actions, logp = self.actor.act(feat, None, avail, deterministic, generator)
        self.state = (feat, actions, alive)
        return actions, logp

    def env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions


def _adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, eps=1e-5)  # DreamerV2 model optimiser eps


class OnlineAlgorithm:
    """One online run: env copies, replay, model, R_m and MA-PPO; ``update(step)`` = one iteration."""

    def __init__(self, dataset, cfg: OnlineConfig, device, seed: int, log=print, build_env: bool = True):
        self.cfg, self.device, self.seed, self.log = cfg, torch.device(device), int(seed), log
        torch.manual_seed(seed)  # network initialisation
        self.env: VecMultiAgentEnv | None = None
        if build_env:
            self.env = make_vec_env(f"smac-{cfg.map}", cfg.n_envs, backend=cfg.backend, seed=seed)
            spec = self.env.spec
        else:
            spec = make_env(f"smac-{cfg.map}", backend=cfg.backend).spec
        self.spec = spec
        self.env_name = spec.name
        latent = cfg.agent_input == "latent"
        self.mappo = MAPPO(policy_spec(spec, cfg.model.feat if latent else None), cfg.mappo, self.device)
        self.generators = {name: torch.Generator().manual_seed(seed * 10 + i)
                           for i, name in enumerate(("collect", "model", "imagine", "ppo"))}
        n, o, k = spec.n_agents, spec.max_obs_dim, spec.n_actions
        self.model = self.error_model = None
        if cfg.method.world_model:
            self.model = LatentWorldModel(n, o, k, cfg.model).to(self.device)
            self.model_opt = _adam(self.model.parameters(), cfg.model.lr)
            if cfg.method.planner and cfg.planner.score == "deviation":  # no network, nothing to train
                self.error_model = LatentDeviationScore().to(self.device)
            elif cfg.method.planner:
                self.error_model = LatentErrorModel(cfg.model.feat, k, cfg.model.error_hidden, o,
                                                    cfg.planner.error_inputs == "transition").to(self.device)
                self.error_opt = _adam(self.error_model.parameters(), cfg.model.error_lr)
            if build_env:
                self.replay = SequenceReplay(cfg.replay_capacity, cfg.n_envs, n, o, k)
        # latent agents: one acting path for evaluation, one for collection (each with its own
        # recurrent state, so an evaluation between iterations leaves the collection's episodes intact)
        self.agent = LatentAgent(self.model, self.mappo.policy, cfg.backend) if latent else None
        self.collector = LatentAgent(self.model, self.mappo.policy, cfg.backend) if latent else None
        self.env_steps = 0
        self.episodes = 0
        self._obs: np.ndarray | None = None
        self._recent: list[tuple[float, bool]] = []  # (return, won) of training episodes this iteration
        self._planner_seconds = 0.0

    @classmethod
    def for_evaluation(cls, dataset, cfg: OnlineConfig, device, seed: int, log=print) -> OnlineAlgorithm:
        """Only what evaluation needs: the policy (no env copies, no replay)."""
        return cls(dataset, cfg, device, seed, log, build_env=False)

    @property
    def policy(self):
        """What acts in the real env (collection, evaluation, ``offmarl evaluate``)."""
        return self.agent if self.agent is not None else self.mappo.policy

    @property
    def features(self) -> bool:
        return self.agent is not None

    # -- collection ---------------------------------------------------------------------------------
    def _reset(self) -> None:
        obs, _, avail = self.env.reset(seed=self.seed)
        self._obs = obs
        if self.collector is not None:
            self.collector.reset_state()
        if self.model is not None:
            self._add_rows(obs, avail, np.zeros(self.cfg.n_envs, np.float32), first=True, terminal=None)

    def _add_rows(self, obs, avail, reward, first: bool, terminal, valid=None) -> None:
        b, n = obs.shape[:2]
        self.replay.add({"obs": obs, "avail": avail, "action": np.full((b, n), self.env.idle_action),
                         "reward": reward, "first": np.full(b, first),
                         "terminal": np.zeros(b, bool) if terminal is None else terminal,
                         "alive": self.env.alive(avail)}, valid)

    def _act(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        obs = torch.tensor(self._obs, device=self.device)  # a copy: never shares memory with the env's array
        avail = self.env.avail_actions()
        actor = self.collector if self.collector is not None else self.policy
        actions, logp = actor.act(obs, None, torch.as_tensor(avail, device=self.device), deterministic=False,
                                  generator=self.generators["collect"])
        return actions, logp, avail

    def _finish_episodes(self, done, info) -> None:
        for b in np.flatnonzero(done):
            self._recent.append((float(info["episode_return"][b]), bool(info["battle_won"][b])))
        self.episodes += int(done.sum())

    def _collect_into_replay(self) -> None:
        for _ in range(self.cfg.collect_steps // self.cfg.n_envs):
            actions, _, _ = self._act()
            a = actions.cpu().numpy()
            self.replay.set_last_action(a)
            obs, _, reward, done, info = self.env.step(a)
            # the row reached by this step: the final observation where an episode ended
            self._add_rows(info["final_obs"], np.where(done[:, None, None], info["final_avail"], info["avail_actions"]),
                           reward, first=False, terminal=info["terminated"])
            if done.any():  # the next episode's first row, only for the copies that were reset
                self._add_rows(obs, info["avail_actions"], np.zeros_like(reward), first=True, terminal=None, valid=done)
                if self.collector is not None:
                    self.collector.reset_state(done)
            self._obs = obs
            self.env_steps += self.cfg.n_envs
            self._finish_episodes(done, info)

    def _collect_rollout(self) -> dict[str, torch.Tensor]:
        """--algo mappo: [T, B] on-policy rollout of the real env in MA-PPO's batch format."""
        keys = ("obs", "avail", "actions", "logp", "rewards", "dones", "timeouts", "next_obs")
        rec: dict[str, list] = {k: [] for k in keys}
        for _ in range(self.cfg.mappo_rollout):
            actions, logp, avail = self._act()
            obs_before = self._obs
            obs, _, reward, done, info = self.env.step(actions.cpu().numpy())
            for k, v in (("obs", obs_before), ("avail", avail), ("actions", actions), ("logp", logp),
                         ("rewards", reward), ("dones", info["terminated"]), ("timeouts", info["truncated"]),
                         ("next_obs", info["final_obs"])):
                rec[k].append(torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v.cpu()))
            self._obs = obs
            self.env_steps += self.cfg.n_envs
            self._finish_episodes(done, info)
        batch = {k: torch.stack(v).to(self.device) for k, v in rec.items()}
        batch["states"], batch["next_states"] = batch["obs"].flatten(-2), batch["next_obs"].flatten(-2)
        batch["valid"] = torch.ones_like(batch["dones"])
        return batch

    # -- training -----------------------------------------------------------------------------------
    def _sample(self) -> dict[str, torch.Tensor]:
        m = self.cfg.model
        return self.replay.sample(m.batch, m.seq_len, self.generators["model"], self.device)

    def _train_model(self) -> dict[str, float]:
        """``model_updates`` steps of the latent model (worldmodel/trainer.py ``sequence_model_step``),
        each followed by one R_m step (mag); -> the mean of their terms."""
        sums: dict[str, float] = {}
        self.model.train()
        for _ in range(self.cfg.model_updates):
            batch = self._sample()
            terms, feat = sequence_model_step(self.model, self.model_opt, batch, self.generators["model"],
                                              self.cfg.model.grad_clip)
            if self.trains_error_model:
                terms.update(self.train_error_model(feat.detach(), batch))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return {k: v / self.cfg.model_updates for k, v in sums.items()}

    @property
    def trains_error_model(self) -> bool:
        """MAG's R_m is a network trained with the model (planner.score error_model; deviation has none)."""
        return isinstance(self.error_model, LatentErrorModel)

    def train_error_model(self, feat: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One R_m step on real sequences (after each model step: as often as the model), MAG's
        label on the transitions of agents alive at t (worldmodel/error_model.py ``latent_error_model_step``)."""
        return latent_error_model_step(self.error_model, self.error_opt, self.model, feat, batch,
                                       self.generators["model"])

    @torch.no_grad()
    def planner_check(self, step: int, max_starts: int = 128) -> dict[str, float]:
        """A cheap subset of ``offmarl diagnose`` on one replay batch (training data, not held out;
        its own generators, so training's streams are untouched): the planner's L candidates of
        real start states, scored as in imagination and continued under the REAL actions ->
        planner_spearman (score vs real error, per start state), planner_pick_beats_first,
        planner_pick_error_change (vs a random candidate), planner_oracle_error_change."""
        p, m = self.cfg.planner, self.cfg.model
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + step)
        batch = self.replay.sample(m.batch, m.seq_len, torch.Generator().manual_seed(self.seed * 100_003 + step),
                                   self.device)
        self.model.eval()
        feat = self.model.observe(batch["obs"], batch["action"], batch["first"], gen)["feat"]
        t_len, h = feat.shape[0], p.h
        if t_len <= h:
            return {}
        ok = torch.ones(t_len - h, feat.shape[1], dtype=torch.bool, device=self.device)
        for j in range(h):
            ok &= ~batch["terminal"][j:t_len - h + j] & ~batch["first"][j + 1:t_len - h + j + 1]
        ok &= batch["alive"][:t_len - h].any(-1)
        ts, es = ok.nonzero(as_tuple=True)
        if len(ts) < 2:
            return {}
        keep = torch.randperm(len(ts), generator=gen, device=self.device)[:max_starts]
        ts, es = ts[keep], es[keep]
        f0, a0 = feat[ts, es], batch["action"][ts, es]
        cand = self.model.candidates(f0, a0, p.l, gen, gen)
        ctx = ({"feat": f0, "actions": a0, "avail": self.model.decode(f0, outcome=False)["avail"]}
               if self.error_model.transition else None)
        _, scores = plan(cand, None, self.lookahead(), h, p.discount, gen, ctx, p.continuations)
        flat = cand.reshape(-1, *cand.shape[2:])
        real = real_continuation_errors(self.model, flat, batch, ts.repeat_interleave(p.l), es.repeat_interleave(p.l),
                                        batch["alive"], h, gen).mean(-1).view(len(ts), p.l)
        fig = planner_figures(scores, scores, real, real)
        return {f"planner_{k}": fig[k] for k in ("spearman", "pick_beats_first", "pick_error_change",
                                                 "oracle_error_change")}

    def lookahead(self) -> LatentLookahead:
        """The planner's look-ahead world: the model, the current policy, R_m, alive agents from
        the decoded available actions."""
        backend = self.cfg.backend
        return LatentLookahead(self.model, self.mappo.policy, self.error_model,
                               lambda avail: smac_alive(avail, backend), features=self.features)

    def _select(self, candidates: torch.Tensor, plan_gen: torch.Generator, context: dict | None = None):
        t0 = time.perf_counter()
        p = self.cfg.planner
        ctx = context if self.error_model.transition else None  # R_m(feat, a): the j = 0 term is the same for all
        out = plan(candidates, None, self.lookahead(), p.h, p.discount, plan_gen, ctx, p.continuations)
        self._planner_seconds += time.perf_counter() - t0
        return out

    def imagine_batch(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Posterior states of a fresh replay batch (terminal rows left out) -> imagined MA-PPO batch."""
        self.model.eval()  # no dropout while imagining
        with torch.no_grad():
            batch = self._sample()
            feat = self.model.observe(batch["obs"], batch["action"], batch["first"], self.generators["imagine"],
                                      alive=batch["alive"])["feat"]
            keep = ~batch["terminal"]
            start, start_alive = feat[keep], batch["alive"][keep]
        n_cand = self.cfg.planner.l if self.cfg.method.planner else 1
        t0 = time.perf_counter()
        out, info = imagine(self.model, self.mappo.policy, start, self.cfg.imagine_horizon, self.generators["imagine"],
                            l=n_cand, select=self._select, alive=start_alive, features=self.features)
        info["imagine_seconds"] = time.perf_counter() - t0
        return out, info

    def update(self, step: int) -> dict[str, Any]:
        """One iteration: collect, then (model, R_m, imagination +) MA-PPO."""
        t0 = time.perf_counter()
        if self._obs is None:
            self._reset()
        metrics: dict[str, Any] = {}
        if not self.cfg.method.world_model:
            batch = self._collect_rollout()
            t1 = time.perf_counter()
            metrics.update(self.mappo.update(batch, self.generators["ppo"]))
        else:
            episodes_before = self.episodes
            self._collect_into_replay()
            t1 = time.perf_counter()
            if self.env_steps >= self.cfg.prefill_steps and self.replay.can_sample(self.cfg.model.seq_len):
                updates = self.episodes - episodes_before if self.cfg.update_per == "episode" else 1
                model_s = plan_s = 0.0
                self._planner_seconds = 0.0
                rows = []  # one row of model / imagination / PPO metrics per update
                for _ in range(updates):
                    t2 = time.perf_counter()
                    row = self._train_model()
                    model_s += time.perf_counter() - t2
                    for _ in range(self.cfg.ppo_rounds):
                        batch, info = self.imagine_batch()
                        plan_s += info.pop("imagine_seconds")
                        row.update(info)
                        row.update(self.mappo.update(batch, self.generators["ppo"]))
                    rows.append(row)
                if len(rows) == 1:
                    metrics.update(rows[0])
                elif rows:  # update_per=episode with several episodes ended: their mean
                    metrics.update({k: float(np.mean([r[k] for r in rows if k in r])) for k in rows[-1]})
                every = self.cfg.planner.check_every
                if self.error_model is not None and every and self.cfg.planner.l > 1 and step % every == 0:
                    metrics.update(self.planner_check(step))
                metrics["updates"] = updates
                metrics["model_seconds"] = model_s
                metrics["imagine_seconds"] = plan_s  # imagination, planner included
                if self.cfg.method.planner:
                    metrics["planner_seconds"] = self._planner_seconds
        metrics["collect_seconds"] = t1 - t0
        metrics["iteration_seconds"] = time.perf_counter() - t0
        metrics["env_steps"] = self.env_steps
        metrics["episodes"] = self.episodes
        if self._recent:
            metrics["train_return"] = float(np.mean([r for r, _ in self._recent]))
            metrics["train_win_rate"] = float(np.mean([w for _, w in self._recent]))
            self._recent = []
        return metrics

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"mappo": self.mappo.state_dict(), "env_steps": self.env_steps, "episodes": self.episodes,
                              "obs": arrays_to_tensors(self._obs), "recent": list(self._recent)}
        if self.collector is not None:  # the collecting posterior's recurrent state (exact resume)
            state = self.collector.state
            st["agent_state"] = None if state is None else [t.clone() for t in state]
        # the env (JAX state) and the replay keep numpy arrays: stored as tensors, checkpoints stay plain data
        if self.env is not None:
            st["env"] = arrays_to_tensors(self.env.state_dict())
        if self.model is not None:
            st["model"], st["model_opt"] = self.model.state_dict(), self.model_opt.state_dict()
            if self.env is not None:
                st["replay"] = arrays_to_tensors(self.replay.state_dict())
        if self.trains_error_model:
            st["error_model"], st["error_opt"] = self.error_model.state_dict(), self.error_opt.state_dict()
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.mappo.load_state_dict(st["mappo"])
        if self.model is not None and st.get("model") is not None:
            self.model.load_state_dict(st["model"])
        if self.env is None:  # evaluation only needs the policy (and, with latent agents, the model)
            return
        if self.collector is not None:
            self.collector.state = None if st.get("agent_state") is None else tuple(st["agent_state"])
        self.env_steps, self.episodes = int(st["env_steps"]), int(st["episodes"])
        self._obs, self._recent = tensors_to_arrays(st["obs"]), list(st["recent"])
        if self.env is not None and "env" in st:
            self.env.load_state_dict(tensors_to_arrays(st["env"]))
        if self.model is not None and st.get("model") is not None:
            self.model_opt.load_state_dict(st["model_opt"])
            if self.env is not None:
                self.replay.load_state_dict(tensors_to_arrays(st["replay"]))
        if self.trains_error_model:
            want = self.error_model.net[0].weight.shape[1] if hasattr(self.error_model.net[0], "weight") else None
            got = next((v.shape[1] for k, v in st["error_model"].items() if k.endswith("weight")), None)
            if want is not None and got is not None and want != got:
                raise OffmarlError(f"this checkpoint's R_m takes {got} inputs, this version's {want}: the run was "
                                   "trained with an earlier R_m (docs/mag.md); start a new run (`offmarl diagnose` "
                                   "still reads it)")
            self.error_model.load_state_dict(st["error_model"])
            self.error_opt.load_state_dict(st["error_opt"])


Algorithm = OnlineAlgorithm
Config = OnlineConfig

__all__ = ["ALGOS", "METHODS", "Algorithm", "Config", "LatentAgent", "Method", "OnlineAlgorithm", "OnlineConfig",
           "migrate_saved_config", "online_planner", "policy_spec"]
