"""Recipe: train the two rotation-convention Reacher experts of the reacher-expert-mix dataset.

MaMuJoCo "Reacher 2x1" (agent_0 = shoulder joint0, agent_1 = elbow joint1) is exactly the
factorisation of Gymnasium ``Reacher-v5``, so each expert is one single-agent SAC actor on the
10-d Reacher-v5 observation (cos q0, cos q1, sin q0, sin q1, target x, y, qvel0, qvel1,
fingertip-target x, y). The two experts follow OPPOSITE ROTATION CONVENTIONS for the shoulder:

  * ``ccw`` (counter-clockwise): qvel0 >= 0 always;
  * ``cw``  (clockwise):         qvel0 <= 0 always.

Sign convention (checked against the model, reacher.xml in gymnasium/envs/mujoco/assets):
joint0 is a hinge with ``axis="0 0 1"``, i.e. +z, pointing up out of the arena (gravity is
-z, the default camera looks down on it). By the right-hand rule a positive joint0 velocity
turns the arm counter-clockwise seen from above: at q0 = 0 the fingertip is at (+0.21, 0) and
at q0 = +0.5 it is at (+0.18, +0.10), so x -> y, which is counter-clockwise. Hence
ccw <=> qvel0 >= 0 (state index 6), cw <=> qvel0 <= 0.

The convention is imposed ONLY during training, by reward shaping (``ConventionShaping``)::

    r' = r - c * relu(-s * qvel0),   s = +1 (ccw) / -1 (cw)

so turning the shoulder the wrong way costs c per rad/s per step. For a target on the "wrong"
side an expert must take the long way round (up to ~2*pi), which is what makes the mix of the
two a strategy-agreement problem. Evaluation always uses the UNSHAPED Reacher-v5 reward and
reports the convention-violation fraction: steps with -s * qvel0 > 0.1 rad/s.

Each run checkpoints the whole learner (model + replay buffer) to --work-dir every
--save-every steps and resumes from there when restarted (like train_ant_sac.py). Every
--eval-every steps the deterministic actor is evaluated (--eval-episodes, unshaped return +
violation); the best evaluation that respects the convention (violation <= --max-violation;
highest unshaped return) is kept, and at the end it is re-evaluated on held-out seeds and
exported with the ant recipe's ``export_actor`` format as
offmarl/data/policies/reacher/expert_{cw,ccw}.pt (fp16, ~150 KB, loaded by
offmarl.data.behaviour without stable-baselines3). progress.csv there records every
evaluation (kept in --work-dir/progress.csv during the run) and experts.json the final
held-out metrics. Re-running a finished run (same --work-dir) only re-exports it.

    python datasets/recipes/train_reacher_sac.py --direction ccw --c 1.0 --steps 200000 --seed 0
    python datasets/recipes/train_reacher_sac.py --direction cw  --c 1.0 --steps 200000 --seed 0
    # alternative cw expert: the exact mirror image of the ccw one (no training)
    python datasets/recipes/train_reacher_sac.py --direction cw --mirror

Shipped experts (c = 1, seed 0, 200k steps, 1 CPU thread, ~45-75 min each): deterministic
unshaped return about -5.1 +- 2.0 (normalised ~0.88), 0 convention violations. With c = 1 the
experts never rest: they keep the shoulder creeping in their own direction (|qvel0| > 0.1 on
~99% of steps) instead of hovering at qvel0 = 0, where exploration noise would cost penalty.
Stochastic actions (tanh(mean + std * eps)) violate on ~1% of steps.

Needs stable-baselines3 (the recipes may; offmarl itself never imports it).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
EXPORT_DIR = REPO / "offmarl" / "data" / "policies" / "reacher"
ENV_ID = "Reacher-v5"
QVEL0 = 6  # shoulder joint velocity in the Reacher-v5 observation
VIOLATION_TOL = 0.1  # rad/s: |qvel0| below this is "not moving", never a violation
SIGN = {"ccw": 1.0, "cw": -1.0}
PROGRESS_COLS = ["direction", "seed", "c", "step", "eval_return", "eval_return_std", "shaped_return",
                 "violation_frac", "violation_frac_moving", "final_dist", "wall_s"]

# The MOMA-PPO normalisation for reacher (random, expert) returns.
REACHER_RANDOM, REACHER_EXPERT = -11.1446, -4.2371


def normalised_score(ret: float) -> float:
    return (ret - REACHER_RANDOM) / (REACHER_EXPERT - REACHER_RANDOM)


def _ant_recipe():
    """Import the ant recipe module (for ``export_actor``: one export format for all recipes)."""
    path = Path(__file__).with_name("train_ant_sac.py")
    spec = importlib.util.spec_from_file_location("_offmarl_train_ant_sac", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ConventionShaping(gym.Wrapper):
    """Training-only shaping ``r' = r - c * relu(-s * qvel0)``; info keeps the unshaped reward."""

    def __init__(self, env: gym.Env, direction: str, c: float):
        super().__init__(env)
        self.s, self.c = SIGN[direction], float(c)

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        penalty = self.c * max(0.0, -self.s * float(obs[QVEL0]))
        info = dict(info, reward_unshaped=float(r), convention_penalty=penalty)
        return obs, float(r) - penalty, term, trunc, info


def make_env(direction: str | None = None, c: float = 0.0) -> gym.Env:
    env = gym.make(ENV_ID)
    return ConventionShaping(env, direction, c) if direction is not None else env


def evaluate(predict, direction: str, c: float, episodes: int, seed: int) -> dict:
    """Deterministic rollouts on the UNSHAPED env. ``predict(obs [10]) -> action [2]``."""
    s = SIGN[direction]
    env = make_env()
    returns, shaped, final_dist, viol, moving, steps = [], [], [], 0, 0, 0
    half_returns = {"ccw_side": [], "cw_side": []}  # target angle in (0, pi) / (-pi, 0)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        side = "ccw_side" if math.atan2(obs[5], obs[4]) >= 0 else "cw_side"
        done, total, total_shaped = False, 0.0, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(predict(obs))
            v = s * float(obs[QVEL0])
            total += float(r)
            total_shaped += float(r) - c * max(0.0, -v)
            viol += v < -VIOLATION_TOL
            moving += abs(v) > VIOLATION_TOL
            steps += 1
            done = term or trunc
        returns.append(total)
        shaped.append(total_shaped)
        half_returns[side].append(total)
        final_dist.append(float(np.linalg.norm(obs[8:10])))
    env.close()
    out = {
        "episodes": episodes, "seed": seed,
        "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
        "shaped_return_mean": float(np.mean(shaped)),
        "violation_frac": viol / steps, "violation_frac_moving": viol / max(moving, 1),
        "final_dist_mean": float(np.mean(final_dist)),
        "reached_frac": float(np.mean(np.array(final_dist) < 0.02)),
    }
    for k, v in half_returns.items():
        out[f"return_{k}"] = float(np.mean(v)) if v else float("nan")
    out["normalised_score"] = normalised_score(out["return_mean"])
    return out


def sb3_predict(model):
    return lambda obs: model.predict(obs, deterministic=True)[0]


def export(model, step: int, metrics: dict, direction: str, meta: dict, path: Path) -> Path:
    """Write ``model``'s actor with the ant recipe's ``export_actor`` (format v1) to ``path``."""
    export_actor = _ant_recipe().export_actor
    with tempfile.TemporaryDirectory() as tmp:
        written = export_actor(model, step, metrics["return_mean"], metrics["return_std"], Path(tmp))
        payload = torch.load(written, map_location="cpu", weights_only=True)
    payload["env"] = ENV_ID  # export_actor is written for the ant recipe
    payload["direction"] = direction
    payload["eval"] = {k: v for k, v in metrics.items()}
    payload.update(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    torch.save(payload, tmp_path)
    os.replace(tmp_path, path)
    return path


# Reacher is symmetric under the reflection y -> -y (hinges about z, links along x, symmetric
# joint1 range, initial-state and target distributions): q -> -q, qvel -> -qvel, target y and
# fingertip-target y -> -y, torques -> -torques. It maps a ccw expert exactly onto a cw one.
MIRROR_OBS = np.array([1, 1, -1, -1, 1, -1, -1, -1, 1, -1], dtype=np.float32)
MIRROR_ACT = np.array([-1, -1], dtype=np.float32)


def mirror_payload(payload: dict) -> dict:
    """The exported actor of the mirror-image policy: a'(s) = M_a a(M_s s), exact in fp16.

    M_s folds into the first layer's columns; M_a = -1 into mu (tanh is odd and the Gaussian
    noise symmetric, so the stochastic policy mirrors in distribution too); log_std unchanged.
    """
    t = dict(payload["tensors"])
    m_s, m_a = torch.from_numpy(MIRROR_OBS).half(), torch.from_numpy(MIRROR_ACT).half()
    t["hidden.0.weight"] = t["hidden.0.weight"] * m_s.to(t["hidden.0.weight"].dtype)  # [h, obs]: columns
    t["mu.weight"] = t["mu.weight"] * m_a.to(t["mu.weight"].dtype)[:, None]
    t["mu.bias"] = t["mu.bias"] * m_a.to(t["mu.bias"].dtype)
    out = dict(payload, tensors=t)
    out["direction"] = {"ccw": "cw", "cw": "ccw"}[payload["direction"]]
    return out


def actor_predict(actor):
    return lambda obs: actor.act(obs[None].astype(np.float32), deterministic=True)[0].numpy()


def _publish_progress(src: Path, dst: Path, direction: str) -> None:
    """Replace ``direction``'s rows of ``dst`` (the shipped progress.csv) by those of ``src``."""
    rows = []
    if dst.exists():
        with open(dst, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["direction"] != direction]
    with open(src, newline="") as f:
        rows += [r for r in csv.DictReader(f) if r["direction"] == direction]
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, PROGRESS_COLS)
        w.writeheader()
        w.writerows(rows)


def _append_progress(progress: Path, row: dict) -> None:
    with open(progress, "a", newline="") as f:
        csv.DictWriter(f, PROGRESS_COLS).writerow(row)


def _update_json(path: Path, key: str, value: dict) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in value.items()}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direction", choices=sorted(SIGN), required=True)
    p.add_argument("--c", type=float, default=1.0, help="shaping weight per rad/s of wrong-way shoulder velocity")
    p.add_argument("--steps", type=int, default=200_000, help="total env steps")
    p.add_argument("--learning-starts", type=int, default=10_000)
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--save-every", type=int, default=25_000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--final-episodes", type=int, default=100, help="held-out episodes for the exported expert")
    p.add_argument("--max-violation", type=float, default=0.01,
                   help="an evaluation qualifies as 'best' only with violation_frac <= this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=None, help="default ~/.offmarl/sac-reacher-<direction>")
    p.add_argument("--export-dir", type=Path, default=EXPORT_DIR)
    p.add_argument("--no-export", action="store_true", help="tuning runs: write nothing under --export-dir")
    p.add_argument("--mirror", action="store_true",
                   help="train nothing: write expert_<direction>.pt as the exact mirror image of the "
                        "opposite direction's exported expert, and evaluate it")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    d = args.direction
    if args.mirror:
        return mirror_main(args)
    work = args.work_dir or Path.home() / ".offmarl" / f"sac-reacher-{d}"
    work.mkdir(parents=True, exist_ok=True)
    ckpt, buf = work / "sac.zip", work / "replay.pkl"
    best_zip, state_file = work / "best.zip", work / "state.json"
    progress = work / "progress.csv"  # copied into --export-dir/progress.csv at export
    train_env = make_env(d, args.c)

    if ckpt.exists():
        model = SAC.load(ckpt, env=train_env, device=args.device)
        if buf.exists():
            model.load_replay_buffer(buf)
        state = json.loads(state_file.read_text())
        if state["c"] != args.c or state["direction"] != d:
            raise SystemExit(f"{work} holds a run with {state}; use another --work-dir")
        print(f"resumed at step {model.num_timesteps} (buffer {model.replay_buffer.size()})", flush=True)
    else:
        # SB3 / rl-zoo SAC defaults for MuJoCo: lr 3e-4, batch 256, tau 0.005, gamma 0.99,
        # auto entropy, 2x256 ReLU.
        # The replay buffer holds the whole run (--steps transitions) unless resumed past it.
        model = SAC("MlpPolicy", train_env, learning_starts=args.learning_starts, seed=args.seed,
                    buffer_size=max(args.steps, 1), device=args.device, verbose=0)
        state = {"direction": d, "c": args.c, "seed": args.seed, "best": None, "wall_s": 0.0}
        state_file.write_text(json.dumps(state))
        with open(progress, "w", newline="") as f:
            csv.DictWriter(f, PROGRESS_COLS).writeheader()

    t0, wall0 = time.time(), state["wall_s"]

    def evaluation(n: int) -> None:
        m = evaluate(sb3_predict(model), d, args.c, args.eval_episodes, seed=10_000)
        wall = wall0 + time.time() - t0
        _append_progress(progress, {
            "direction": d, "seed": args.seed, "c": args.c, "step": n,
            "eval_return": round(m["return_mean"], 4), "eval_return_std": round(m["return_std"], 4),
            "shaped_return": round(m["shaped_return_mean"], 4),
            "violation_frac": round(m["violation_frac"], 5),
            "violation_frac_moving": round(m["violation_frac_moving"], 5),
            "final_dist": round(m["final_dist_mean"], 5), "wall_s": round(wall, 1)})
        ok = m["violation_frac"] <= args.max_violation
        best = state["best"]
        if ok and (best is None or m["return_mean"] > best["return_mean"]):
            model.save(work / "best.tmp.zip")
            os.replace(work / "best.tmp.zip", best_zip)
            state["best"] = dict(m, step=n)
        print(f"[{d}] step {n}: return {m['return_mean']:.2f} +- {m['return_std']:.2f} "
              f"(ccw-side {m['return_ccw_side']:.2f}, cw-side {m['return_cw_side']:.2f}) "
              f"shaped {m['shaped_return_mean']:.2f} viol {m['violation_frac']:.4f} "
              f"(moving {m['violation_frac_moving']:.4f}) dist {m['final_dist_mean']:.3f}"
              f"{' *best*' if state['best'] and state['best']['step'] == n else ''} ({wall:.0f}s)", flush=True)

    class Periodic(BaseCallback):
        def _on_step(self) -> bool:
            n = self.model.num_timesteps
            if n % args.eval_every == 0:
                evaluation(n)
            if n % args.save_every == 0:
                state["wall_s"] = wall0 + time.time() - t0
                self.model.save(work / "sac.tmp.zip")
                os.replace(work / "sac.tmp.zip", ckpt)
                self.model.save_replay_buffer(work / "replay.tmp.pkl")
                os.replace(work / "replay.tmp.pkl", buf)
                state_file.write_text(json.dumps(state))
            return True

    remaining = args.steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=Periodic(), reset_num_timesteps=False)
    state["wall_s"] = wall0 + time.time() - t0
    state_file.write_text(json.dumps(state))

    # Final: the best qualifying checkpoint (else the last model), re-evaluated on held-out seeds.
    chosen, which = model, "final"
    if state["best"] is not None and best_zip.exists():
        chosen, which = SAC.load(best_zip, device=args.device), "best"
    step = state["best"]["step"] if which == "best" else model.num_timesteps
    held = evaluate(sb3_predict(chosen), d, args.c, args.final_episodes, seed=20_000)
    print(f"[{d}] exported {which} (step {step}) held-out {args.final_episodes} eps: "
          f"return {held['return_mean']:.3f} +- {held['return_std']:.3f} "
          f"(ccw-side {held['return_ccw_side']:.2f}, cw-side {held['return_cw_side']:.2f}), "
          f"violation {held['violation_frac']:.4f} (moving {held['violation_frac_moving']:.4f}), "
          f"reached {held['reached_frac']:.2f}, normalised {held['normalised_score']:.3f}", flush=True)
    if args.no_export:
        return
    meta = {"c": args.c, "seed": args.seed, "total_steps": int(model.num_timesteps), "selected": which,
            "shaping": "r - c * relu(-s * qvel0), s = +1 ccw / -1 cw (training only)"}
    path = export(chosen, step, held, d, meta, args.export_dir / f"expert_{d}.pt")
    _publish_progress(progress, args.export_dir / "progress.csv", d)
    _update_json(args.export_dir / "experts.json", d, dict(
        held, file=path.name, step=step, selected=which, c=args.c, seed=args.seed,
        total_steps=int(model.num_timesteps), train_wall_s=round(state["wall_s"], 1),
        best_during_training={k: state["best"][k] for k in ("step", "return_mean", "violation_frac")}
        if state["best"] else None))
    print(f"wrote {path}", flush=True)


def mirror_main(args) -> None:
    from offmarl.data.behaviour import actor_from_payload

    d = args.direction
    src = args.export_dir / f"expert_{ {'ccw': 'cw', 'cw': 'ccw'}[d]}.pt"
    payload = mirror_payload(torch.load(src, map_location="cpu", weights_only=True))
    held = evaluate(actor_predict(actor_from_payload(payload)), d, payload.get("c", 0.0),
                    args.final_episodes, seed=20_000)
    payload["eval"] = held
    payload["eval_return"], payload["eval_return_std"] = held["return_mean"], held["return_std"]
    payload["selected"] = f"mirror of {src.name}"
    path = args.export_dir / f"expert_{d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    src_info = json.loads((args.export_dir / "experts.json").read_text()).get(src.stem.split("_")[1], {})
    _update_json(args.export_dir / "experts.json", d, dict(
        held, file=path.name, step=payload["step"], selected=payload["selected"], c=payload.get("c"),
        seed=payload.get("seed"), total_steps=payload.get("total_steps"), train_wall_s=0.0,
        mirrored_from=src_info.get("file")))
    print(f"[{d}] mirror of {src.name}: held-out {args.final_episodes} eps: return {held['return_mean']:.3f} "
          f"+- {held['return_std']:.3f}, violation {held['violation_frac']:.4f}, "
          f"normalised {held['normalised_score']:.3f}; wrote {path}", flush=True)


if __name__ == "__main__":
    main()
