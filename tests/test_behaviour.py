"""offmarl.data.behaviour: the SB3-free loader of exported SAC actors."""
from __future__ import annotations

import pytest
import torch

from offmarl.data.behaviour import FORMAT, POLICY_ROOT, ActorFormatError, TanhGaussianActor, load_actor, policy_dir


def _fake_payload(obs_dim=5, act_dim=3, hidden=(8, 8), seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    tensors, last = {}, obs_dim
    for i, h in enumerate(hidden):
        tensors[f"hidden.{i}.weight"] = (torch.randn(h, last, generator=g) * scale).half()
        tensors[f"hidden.{i}.bias"] = (torch.randn(h, generator=g) * scale).half()
        last = h
    for name in ("mu", "log_std"):
        tensors[f"{name}.weight"] = (torch.randn(act_dim, last, generator=g) * scale).half()
        tensors[f"{name}.bias"] = (torch.randn(act_dim, generator=g) * scale).half()
    return {"format": FORMAT, "env": "Fake-v0", "obs_dim": obs_dim, "act_dim": act_dim,
            "activation": "relu", "step": 7, "eval_return": -1.0, "eval_return_std": 0.5,
            "tensors": tensors}


def _reference(payload, obs):
    """SB3 SAC actor semantics, written out by hand."""
    t = {k: v.float() for k, v in payload["tensors"].items()}
    h, i = obs, 0
    while f"hidden.{i}.weight" in t:
        h = torch.relu(h @ t[f"hidden.{i}.weight"].T + t[f"hidden.{i}.bias"])
        i += 1
    mean = h @ t["mu.weight"].T + t["mu.bias"]
    log_std = (h @ t["log_std.weight"].T + t["log_std.bias"]).clamp(-20, 2)
    return mean, log_std


def test_roundtrip_shapes_bounds_and_semantics(tmp_path):
    payload = _fake_payload(scale=3.0)  # large weights: saturating tanh, clamped log_std
    torch.save(payload, tmp_path / "a.pt")
    actor = load_actor(tmp_path / "a.pt")
    assert isinstance(actor, TanhGaussianActor)
    assert (actor.obs_dim, actor.act_dim) == (5, 3)
    assert actor.meta["env"] == "Fake-v0" and actor.meta["step"] == 7
    obs = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))
    mean, log_std = actor(obs)
    ref_mean, ref_log_std = _reference(payload, obs)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(log_std, ref_log_std)
    assert log_std.min() >= -20 and log_std.max() <= 2
    det = actor.act(obs, deterministic=True)
    assert det.shape == (64, 3) and det.dtype == torch.float32
    torch.testing.assert_close(det, torch.tanh(ref_mean))
    sto = actor.act(obs.numpy(), deterministic=False, generator=torch.Generator().manual_seed(0))
    assert sto.shape == (64, 3) and sto.dtype == torch.float32
    for a in (det, sto):
        assert torch.all(a >= -1) and torch.all(a <= 1)


def test_stochastic_is_seeded():
    actor = TanhGaussianActor(4, 2, (16, 16))
    obs = torch.randn(32, 4)
    a1 = actor.act(obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    a2 = actor.act(obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    a3 = actor.act(obs, deterministic=False, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a1, a2)
    assert not torch.allclose(a1, a3)
    d1, d2 = actor.act(obs, deterministic=True), actor.act(obs, deterministic=True)
    torch.testing.assert_close(d1, d2)
    assert not torch.allclose(a1, d1)


def test_bad_obs_shape_rejected():
    actor = TanhGaussianActor(4, 2, (8,))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        actor.act(torch.zeros(3, 5))


def test_wrong_format_raises_clear_error(tmp_path):
    bad = _fake_payload()
    bad["format"] = "something-else"
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ActorFormatError, match="not an offmarl actor file"):
        load_actor(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "nofmt.pt")
    with pytest.raises(ActorFormatError, match="expected 'offmarl-tanh-gaussian-actor-v1'"):
        load_actor(tmp_path / "nofmt.pt")
    missing = _fake_payload()
    del missing["tensors"]["mu.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ActorFormatError, match="mu.bias"):
        load_actor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ActorFormatError, match="cannot read"):
        load_actor(tmp_path / "junk.pt")


def test_policy_dir_holds_every_actor_the_recipes_use():
    """The files build() loads for each named dataset are shipped (in the installed package)."""
    from offmarl.data.registry import ant_policy_selection

    assert (policy_dir("reacher") / "expert_cw.pt").is_file() and (policy_dir("reacher") / "expert_ccw.pt").is_file()
    sel = ant_policy_selection()
    files = [sel[k] for k in ("random", "medium", "expert")] + list(sel["full_replay"])
    missing = [f for f in files if not (policy_dir("ant") / f).is_file()]
    assert not missing, missing
    assert policy_dir("ant").parent == POLICY_ROOT


_SHIPPED = sorted(p for p in POLICY_ROOT.glob("*/*.pt")) if POLICY_ROOT.is_dir() else []


@pytest.mark.parametrize("path", _SHIPPED or [None], ids=lambda p: f"{p.parent.name}/{p.name}" if p else "none")
def test_shipped_policies_load(path):
    if path is None:
        pytest.skip("no shipped policy files under offmarl/data/policies/*/")
    actor = load_actor(path)
    assert actor.meta["format"] == FORMAT
    obs = torch.randn(16, actor.obs_dim, generator=torch.Generator().manual_seed(0))
    for det in (True, False):
        a = actor.act(obs, deterministic=det, generator=torch.Generator().manual_seed(0))
        assert a.shape == (16, actor.act_dim)
        assert torch.isfinite(a).all() and a.abs().max() <= 1
