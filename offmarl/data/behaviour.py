"""Behaviour policies shipped with offmarl (the actors that generate the datasets).

The recipes in ``datasets/recipes/`` train single-agent SAC with stable-baselines3 and export
each actor with ``export_actor`` as a small fp16 payload (``FORMAT``)::

    {"format": "offmarl-tanh-gaussian-actor-v1", "env": ..., "obs_dim": int, "act_dim": int,
     "activation": "relu", "step": int, "eval_return": float, ...,
     "tensors": {"hidden.{i}.weight", "hidden.{i}.bias", "mu.weight", "mu.bias",
                 "log_std.weight", "log_std.bias"}}

This module reads them with plain torch (stable-baselines3 is never needed at run time) and
reproduces SB3's SAC actor exactly: ``h = ReLU-MLP(obs)``, ``mean = mu(h)``,
``log_std = clamp(log_std(h), -20, 2)``; the action is ``tanh(mean)`` (deterministic) or
``tanh(mean + exp(log_std) * eps)`` with ``eps ~ N(0, I)`` (stochastic), in [-1, 1]^act_dim.
The actors act on the single-agent (global-state) observation; the multi-agent factorisation
is applied by the dataset generator, not here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offmarl.errors import OffmarlError
from offmarl.safeload import UnsafeFileError, torch_load_plain

FORMAT = "offmarl-tanh-gaussian-actor-v1"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3 sac/policies.py
POLICY_ROOT = Path(__file__).resolve().parent / "policies"

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ActorFormatError(OffmarlError):
    """The file is not an offmarl tanh-Gaussian actor payload (or is malformed)."""


class TanhGaussianActor(nn.Module):
    """SB3-SAC-equivalent squashed Gaussian actor (float32, CPU by default)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int] | tuple[int, ...] = (256, 256),
                 activation: str = "relu", meta: dict[str, Any] | None = None):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ActorFormatError(f"unsupported activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.activation = activation
        self.meta = dict(meta or {})
        layers: list[nn.Module] = []
        last = self.obs_dim
        for width in hidden:
            layers += [nn.Linear(last, int(width)), _ACTIVATIONS[activation]()]
            last = int(width)
        self.hidden = nn.Sequential(*layers)
        self.mu = nn.Linear(last, self.act_dim)
        self.log_std = nn.Linear(last, self.act_dim)
        self._float64: TanhGaussianActor | None = None  # float64 copy for act_float64, made on first use

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, obs_dim]`` -> ``(mean [B, act_dim], log_std [B, act_dim])`` (pre-tanh)."""
        h = self.hidden(obs)
        return self.mu(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Batched actions in [-1, 1]: ``obs [B, obs_dim]`` (tensor or array) -> ``[B, act_dim]`` float32."""
        p = next(self.parameters())
        obs = torch.as_tensor(obs, dtype=p.dtype, device=p.device)
        if obs.ndim != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"expected obs of shape [B, {self.obs_dim}], got {tuple(obs.shape)}")
        mean, log_std = self(obs)
        if deterministic:
            pre = mean
        else:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                              device=generator.device if generator is not None else mean.device)
            pre = mean + log_std.exp() * eps.to(mean.device)
        return torch.tanh(pre).float()

    @torch.no_grad()
    def act_float64(self, states: np.ndarray, eps: np.ndarray | None) -> np.ndarray:
        """Reproducible actions for dataset generation: the actor evaluated in float64 on float64
        ``states [B, obs_dim]``, noise ``eps [B, act_dim]`` from the caller (None = deterministic),
        and the squashed action rounded to float32 -> ``[B, act_dim]`` float32.

        float32 matmuls give different low bits under different SIMD kernels (PyTorch picks them
        by instruction set) and batch sizes; in float64 those differences are ~1e-16, far below
        float32's resolution, so the rounded action is the same on every x86-64 machine
        (docs/datasets.md, "Reproducibility")."""
        if self._float64 is None:
            import copy

            # not a registered submodule: state_dict and parameters() stay the float32 actor's
            object.__setattr__(self, "_float64", copy.deepcopy(self).double())
        x = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float64))
        mean, log_std = self._float64(x)
        pre = mean if eps is None else mean + log_std.exp() * torch.from_numpy(np.asarray(eps, dtype=np.float64))
        return torch.tanh(pre).numpy().astype(np.float32)


def _tensor(tensors: dict, key: str, path) -> torch.Tensor:
    if key not in tensors:
        raise ActorFormatError(f"{path}: actor payload has no tensor {key!r}")
    return tensors[key].float()


def actor_from_payload(payload: dict, path: str | Path = "<payload>") -> TanhGaussianActor:
    """Build a :class:`TanhGaussianActor` from an exported payload dict."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ActorFormatError(f"{path}: not an offmarl actor file (format {got!r}, expected {FORMAT!r})")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict):
        raise ActorFormatError(f"{path}: actor payload has no 'tensors' dict")
    n_hidden = 0
    while f"hidden.{n_hidden}.weight" in tensors:
        n_hidden += 1
    ws = [_tensor(tensors, f"hidden.{i}.weight", path) for i in range(n_hidden)]
    bs = [_tensor(tensors, f"hidden.{i}.bias", path) for i in range(n_hidden)]
    mu_w, mu_b = _tensor(tensors, "mu.weight", path), _tensor(tensors, "mu.bias", path)
    ls_w, ls_b = _tensor(tensors, "log_std.weight", path), _tensor(tensors, "log_std.bias", path)
    obs_dim = int(payload.get("obs_dim", ws[0].shape[1] if ws else mu_w.shape[1]))
    act_dim = int(payload.get("act_dim", mu_w.shape[0]))
    hidden = [w.shape[0] for w in ws]
    actor = TanhGaussianActor(obs_dim, act_dim, hidden, payload.get("activation", "relu"),
                              meta={k: v for k, v in payload.items() if k != "tensors"})
    state = {}
    for i, (w, b) in enumerate(zip(ws, bs)):
        state[f"hidden.{2 * i}.weight"], state[f"hidden.{2 * i}.bias"] = w, b
    state.update({"mu.weight": mu_w, "mu.bias": mu_b, "log_std.weight": ls_w, "log_std.bias": ls_b})
    try:
        actor.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatch between tensors and declared dims
        raise ActorFormatError(f"{path}: inconsistent actor tensors: {e}") from None
    return actor.eval()


def load_actor(path: str | Path) -> TanhGaussianActor:
    """Load an exported actor file (``*.pt`` written by a ``datasets/recipes`` script)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: actor file not found")
    try:  # plain data only: a policy file from elsewhere must not be able to run code
        payload = torch_load_plain(path, "offmarl actor file")
    except UnsafeFileError as e:
        raise ActorFormatError(f"cannot read as an offmarl actor file: {e}") from None
    return actor_from_payload(payload, path)


def policy_dir(env_key: str) -> Path:
    """Directory holding the shipped behaviour policies of one environment, e.g. ``"reacher"``."""
    return POLICY_ROOT / env_key
