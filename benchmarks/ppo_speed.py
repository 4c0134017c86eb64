"""MA-PPO update speed at a scenario's sizes: one ``MAPPO.update`` on a random [H, B] batch.

    python benchmarks/ppo_speed.py --env ant-4x2 --obs fo --batch 1000 --hidden 128 --critic state
    python benchmarks/ppo_speed.py --env reacher-2x1 --obs po-independent --history 10 --history-dim 64

Prints one JSON line per (device, configuration): seconds per update (after one warm-up update)
and transitions per second. The batch is H = 10 steps x ``--batch`` rollouts (MOMA-PPO's
rollout_batch), the update runs the config's epochs and minibatches.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from offmarl.algos.mappo import MAPPO, MAPPOConfig
from offmarl.envs import make_env


def random_batch(agent: MAPPO, spec, h: int, b: int, k: int, device, gen) -> dict:
    n, o, s = spec.n_agents, max(spec.obs_dims), spec.state_dim
    obs = torch.randn(h, b, n, o, device=device)
    hist = None
    if k:
        hist = {"hist_obs": torch.randn(h * b, k, n, o, device=device),
                "hist_actions": torch.rand(h * b, k, n, max(spec.action_dims), device=device) * 2 - 1,
                "hist_mask": torch.ones(h * b, k, dtype=torch.bool, device=device)}
    with torch.no_grad():
        act, logp = agent.policy.act(obs.reshape(h * b, n, o), hist, None, generator=gen)
    batch = dict(states=torch.randn(h, b, s, device=device), obs=obs, actions=act.reshape(h, b, n, -1),
                 logp=logp.reshape(h, b, n), rewards=torch.randn(h, b, device=device),
                 dones=torch.zeros(h, b, dtype=torch.bool, device=device),
                 timeouts=torch.zeros(h, b, dtype=torch.bool, device=device),
                 valid=torch.ones(h, b, dtype=torch.bool, device=device),
                 next_states=torch.randn(h, b, s, device=device), next_obs=torch.randn(h, b, n, o, device=device))
    if hist:
        batch.update({key: v.reshape(h, b, *v.shape[1:]) for key, v in hist.items()})
    return batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="ant-4x2")
    p.add_argument("--obs", default="fo")
    p.add_argument("--batch", type=int, default=1000, help="rollouts B (x 10 steps)")
    p.add_argument("--hidden", type=int, default=128, help="actor and critic width (2 layers)")
    p.add_argument("--critic", default="state", choices=["state", "mixer"])
    p.add_argument("--minibatch", type=int, default=2048)
    p.add_argument("--history", type=int, default=0, help="memory length K (0 = none)")
    p.add_argument("--history-dim", type=int, default=64)
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as offmarl's entry points (docs/benchmarks.md, "Denormal floats")
    spec = make_env(args.env, obs=args.obs).spec
    for dev in args.devices:
        device = torch.device(dev)
        cfg = MAPPOConfig(critic=args.critic, actor_hidden=[args.hidden] * 2, critic_hidden=[args.hidden] * 2,
                          minibatch_size=args.minibatch, history_len=args.history, history_dim=args.history_dim)
        agent = MAPPO.from_spec(spec, cfg, device)
        gen = torch.Generator(device=device).manual_seed(0)
        batch = random_batch(agent, spec, 10, args.batch, args.history, device, gen)
        agent.update(batch, gen)  # warm-up
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            agent.update(batch, gen)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        s = min(times)
        print(json.dumps({"bench": "ppo_speed", "device": dev, "env": args.env, "obs": args.obs,
                          "batch": 10 * args.batch,
                          "hidden": args.hidden, "critic": args.critic, "history": args.history,
                          "history_dim": args.history_dim, "threads": args.threads, "s_per_update": round(s, 3),
                          "transitions_per_s": round(10 * args.batch / s)}), flush=True)


if __name__ == "__main__":
    main()
