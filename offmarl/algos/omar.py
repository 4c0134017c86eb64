"""OMAR (Pan et al. 2022, "Plan Better Amid Conservatism"): ICQL + actor rectification.

The critics are exactly ICQL's (``ConservativeActorCritic``, offmarl/nn/actor_critic.py: TD target
plus the CQL(H) logsumexp regulariser, per-agent gradient clipping). The actor does not only climb the
conservative Q locally — where CQL's pessimism makes many bad local optima — it is also pulled
towards the best action a global search over Q finds:

    a*_i = argmax over {pi_i(o_i)} U CEM_i  of  Q_i1(o_i, a)
    CEM_i: start N(mu=0, sigma=2.0) per action dim; 2 iterations of 20 clipped samples, keep the
           5 best (elites carried over between iterations), refit mu/sigma to the elites
    actor_i   min  omar_coe * (pi_i(o_i) - a*_i)^2 - (1 - omar_coe) * Q_i1(o_i, pi_i(o_i))
              + 1e-3 * pi_i(o_i)^2                                       (OMAR release)

omar_coe and cql_alpha depend on the dataset in the release's MaMuJoCo table (OMAR, Pan et al., ICML 2022):
random 1.0/1.0, medium-replay 0.9/5.0, medium 0.7/1.0, expert 0.5/5.0 — blocks of configs/omar.yaml.
The release silently trains with gamma 0.95 (main.py sets 0.99 but never passes it); we use 0.99.

Discrete form: the search is exhaustive (K own actions instead of CEM samples), so
a*_i = argmax_{available a} Q_i1(o_i, a) and the mimic term is the cross-entropy CE(pi_i, a*_i);
the Q term is the expected Q_i1 under the categorical actor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offmarl.loop import BuildsWhole, LoopConfig
from offmarl.nn.actor_critic import ConservativeActorCritic, ConservativeConfig
from offmarl.nn.actors import mask_logits
from offmarl.nn.agents import check_action_box
from offmarl.nn.losses import action_l2, bc_mse


@dataclass
class Config(ConservativeConfig):
    """ICQL's values (the OMAR release's; offmarl/nn/actor_critic.py: ConservativeConfig, cql_alpha
    there is the MaMuJoCo table's "medium" value) plus the actor rectification's."""

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000))  # OMAR release, MaMuJoCo: 1e6
    omar_coe: float = 0.7                 # OMAR release MaMuJoCo table, "medium"; configs/omar.yaml per dataset
    omar_iters: int = 2                   # OMAR release, MaMuJoCo (argparse default 3)
    omar_num_samples: int = 20            # OMAR release, MaMuJoCo
    omar_num_elites: int = 5              # OMAR release, MaMuJoCo
    omar_mu: float = 0.0                  # OMAR release --omar_mu: initial CEM mean
    omar_sigma: float = 2.0               # OMAR release --omar_sigma: initial CEM std


def check_dataset(dataset, cfg: Config) -> None:
    """Called by ``offmarl train`` before it creates the run directory."""
    check_action_box(dataset, "omar")


class Algorithm(ConservativeActorCritic, BuildsWhole):
    """ICQL's critics and update (ConservativeActorCritic); only the actor loss differs."""

    name = "omar"

    @torch.no_grad()
    def rectified_actions(self, obs, pi, q_pi) -> torch.Tensor:
        """a* [B, N, A]: the best of pi(o) and the CEM search over Q_1 (per agent, all batched)."""
        cfg, gen, mask = self.cfg, self.generators["sample"], self.actor.action_mask
        batch, n, a = pi.shape
        mu = torch.full_like(pi, cfg.omar_mu)
        sigma = torch.full_like(pi, cfg.omar_sigma)
        obs_rep = obs.unsqueeze(1).expand(-1, cfg.omar_num_samples, -1, -1)
        elite_actions = elite_q = None
        for _ in range(cfg.omar_iters):
            noise = torch.randn((batch, cfg.omar_num_samples, n, a), generator=gen, device=pi.device)
            samples = (mu.unsqueeze(1) + sigma.unsqueeze(1) * noise).clamp(-1.0, 1.0) * mask
            q = self.critic.q1(obs_rep, samples)  # [B, S, N]
            if elite_actions is not None:  # last iteration's elites compete again (release)
                samples, q = torch.cat([samples, elite_actions], 1), torch.cat([q, elite_q], 1)
            elite_q, idx = q.topk(cfg.omar_num_elites, dim=1)  # [B, E, N]
            elite_actions = samples.gather(1, idx.unsqueeze(-1).expand(-1, -1, -1, a))
            mu, sigma = elite_actions.mean(1), elite_actions.std(1)
        best_q, best = q.max(1)  # [B, N]
        best_action = samples.gather(1, best[:, None, :, None].expand(-1, 1, -1, a)).squeeze(1)
        return torch.where((q_pi >= best_q).unsqueeze(-1), pi, best_action)

    def actor_loss(self, obs, actions, avail):
        coe = self.cfg.omar_coe
        if self.layout.discrete:
            with torch.no_grad():
                q1 = self.critic.q1(obs)  # [B, N, K]
                best = mask_logits(q1, avail, self.actor.action_mask).argmax(-1)  # exhaustive search
            log_probs = self.actor.log_probs(obs, avail)
            mimic = -log_probs.gather(-1, best.unsqueeze(-1)).squeeze(-1).mean(0)  # [N]
            q_pi = (log_probs.exp() * q1).sum(-1)
            loss = (coe * mimic - (1.0 - coe) * q_pi.mean(0)).sum()
        else:
            pi = self.actor(obs)
            q_pi = self.critic.q1(obs, pi)  # [B, N]
            target = self.rectified_actions(obs, pi.detach(), q_pi.detach())
            mimic = bc_mse(pi, target, self.actor.action_mask)  # [N]
            loss = ((coe * mimic - (1.0 - coe) * q_pi.mean(0)).sum()
                    + self.cfg.actor_l2 * action_l2(pi, self.actor.action_mask))
        return loss, {"actor_loss": loss.detach(), "mimic_loss": mimic.sum().detach(), "q_pi": q_pi.mean().detach()}
