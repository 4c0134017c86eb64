"""Recipe: train the single-agent SAC whose actors generate the ant-* datasets.

This is how the shipped ant behaviour policies were made (the D4RL recipe, Fu et al., 2020):
one online SAC run on Gymnasium ``Ant-v5`` with the 27-d D4RL observation
(``include_cfrc_ext_in_observation=False``); its actor is exported at regular steps so that
  * step 0        -> ant-random  (the uniformly initialised policy)
  * an intermediate checkpoint -> ant-medium (1/3..2/3 of the expert's return)
  * the best one  -> ant-expert
  * all of them   -> ant-full-replay (the learning history, emulated by rolling each checkpoint)

It needs stable-baselines3 (``pip install stable-baselines3``), which offmarl itself never
imports. It checkpoints the whole learner (model + replay buffer) to --work-dir every
--save-every steps and resumes from there when restarted, so it can run across sessions:

    python datasets/recipes/train_ant_sac.py --steps 1000000 --work-dir ~/.offmarl/sac-ant

On a machine without that work dir it continues from datasets/recipes/state/ant-sac.zip (the
learner snapshot committed with the repo; weights and optimiser states, no replay buffer).

Exported actors are small fp16 files in offmarl/data/policies/ant/ (loaded by
offmarl.data.policies without stable-baselines3); progress.csv there records the
deterministic evaluation return of each.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
EXPORT_DIR = REPO / "offmarl" / "data" / "policies" / "ant"


def make_env():
    return gym.make("Ant-v5", include_cfrc_ext_in_observation=False)


def export_actor(model, step: int, eval_return: float, eval_std: float, out_dir: Path) -> Path:
    """Save the SAC actor as plain tensors (fp16): offmarl reads these without SB3."""
    actor = model.policy.actor
    linears = [m for m in actor.latent_pi if isinstance(m, torch.nn.Linear)]
    tensors = {}
    for i, lin in enumerate(linears):
        tensors[f"hidden.{i}.weight"] = lin.weight.detach().cpu().half()
        tensors[f"hidden.{i}.bias"] = lin.bias.detach().cpu().half()
    for name in ("mu", "log_std"):
        lin = getattr(actor, name)
        tensors[f"{name}.weight"] = lin.weight.detach().cpu().half()
        tensors[f"{name}.bias"] = lin.bias.detach().cpu().half()
    payload = {
        "format": "offmarl-tanh-gaussian-actor-v1",
        "env": "Ant-v5",
        "obs_dim": int(model.observation_space.shape[0]),
        "act_dim": int(model.action_space.shape[0]),
        "activation": "relu",
        "step": int(step),
        "eval_return": float(eval_return),
        "eval_return_std": float(eval_std),
        "tensors": tensors,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"sac_step{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def evaluate(model, episodes: int, seed: int) -> tuple[float, float]:
    env = make_env()
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def main() -> None:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1_000_000, help="total env steps (D4RL: 1M)")
    p.add_argument("--export-every", type=int, default=50_000)
    p.add_argument("--save-every", type=int, default=50_000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--work-dir", type=Path, default=Path.home() / ".offmarl" / "sac-ant")
    p.add_argument("--export-dir", type=Path, default=EXPORT_DIR)
    p.add_argument("--resume-from", type=Path, default=Path(__file__).resolve().parent / "state" / "ant-sac.zip",
                   help="learner snapshot to continue from when --work-dir holds no checkpoint (committed "
                        "periodically so that training can continue on a fresh machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ckpt, buf = args.work_dir / "sac.zip", args.work_dir / "replay.pkl"
    progress = args.export_dir / "progress.csv"

    if not ckpt.exists() and args.resume_from is not None and args.resume_from.exists():
        # a fresh machine: continue from the committed learner snapshot (weights + optimisers,
        # no replay buffer: the first --learning-starts-after-resume steps refill it)
        model = SAC.load(args.resume_from, env=make_env(), device=args.device)
        model.learning_starts = model.num_timesteps + 10_000
        print(f"continuing from {args.resume_from} at step {model.num_timesteps} with an empty replay buffer",
              flush=True)
    elif ckpt.exists():
        model = SAC.load(ckpt, env=make_env(), device=args.device)
        if buf.exists():
            model.load_replay_buffer(buf)
        print(f"resumed at step {model.num_timesteps} (buffer {model.replay_buffer.size()})", flush=True)
    else:
        # SB3 / rl-zoo SAC defaults for MuJoCo: lr 3e-4, batch 256, buffer 1M, tau 0.005,
        # gamma 0.99, auto entropy, 2x256 ReLU, learning_starts 10k.
        model = SAC("MlpPolicy", make_env(), learning_starts=10_000, seed=args.seed,
                    device=args.device, verbose=0)
        mean, std = evaluate(model, args.eval_episodes, seed=10_000)
        export_actor(model, 0, mean, std, args.export_dir)
        with open(progress, "w", newline="") as f:
            csv.writer(f).writerow(["step", "eval_return", "eval_return_std", "wall_s"])
            csv.writer(f).writerow([0, mean, std, 0.0])
        print(f"step 0 (random init): return {mean:.1f} +- {std:.1f}", flush=True)

    t0 = time.time()

    class Periodic(BaseCallback):
        def _on_step(self) -> bool:
            n = self.model.num_timesteps
            if n % args.export_every == 0:
                mean, std = evaluate(self.model, args.eval_episodes, seed=10_000)
                export_actor(self.model, n, mean, std, args.export_dir)
                with open(progress, "a", newline="") as f:
                    csv.writer(f).writerow([n, mean, std, round(time.time() - t0, 1)])
                print(f"step {n}: return {mean:.1f} +- {std:.1f} ({time.time() - t0:.0f}s)", flush=True)
            if n % args.save_every == 0:
                self.model.save(args.work_dir / "sac.tmp.zip")
                os.replace(args.work_dir / "sac.tmp.zip", ckpt)
                self.model.save_replay_buffer(args.work_dir / "replay.tmp.pkl")
                os.replace(args.work_dir / "replay.tmp.pkl", buf)
            return True

    remaining = args.steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=Periodic(), reset_num_timesteps=False)


if __name__ == "__main__":
    main()
