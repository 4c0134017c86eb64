"""OG-MARL vaults (offmarl/data/sources/vault.py): import, export, round trip, bad vaults.

The "foreign" vaults here are written with flashbax's own Vault the way OG-MARL records them
(per-agent rewards and flags, infos/state, infos/legals), from REAL MaMuJoCo Ant 4x2 steps
(Gymnasium-Robotics, agent_obsk=1, contact forces in the state, as OG-MARL's gymnasium_mamujoco)
and REAL SMAX episodes — not by offmarl's exporter.
"""
from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from offmarl.data import registry
from offmarl.data.convert import convert, export
from offmarl.data.dataset import DatasetError
from offmarl.data.sources.vault import download_vault, export_vault, read_vault
from offmarl.data.storage import load_dataset_file


def write_flashbax_vault(vlt, uid: str, exp: dict) -> None:
    """Write ``exp`` ([1, T, ...] leaves) with flashbax itself, as OG-MARL's recorders do."""
    import jax.numpy as jnp
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    t = next(iter(v for v in exp.values() if not isinstance(v, dict))).shape[1]
    with contextlib.redirect_stdout(io.StringIO()):
        v = Vault(vault_name=vlt.name, experience_structure=exp, rel_dir=str(vlt.parent), vault_uid=uid)
        v.write(TrajectoryBufferState(experience=exp, current_index=jnp.asarray(t), is_full=jnp.asarray(False)))


def record_ant_og_marl(n_steps: int, limit: int, seed: int = 0) -> dict:
    """Real Ant 4x2 steps recorded like OG-MARL's gymnasium_mamujoco wrapper: MaMuJoCo's local
    observations (agent_obsk=1), env.state() (105-d, contact forces included) in infos."""
    from gymnasium_robotics import mamujoco_v1

    env = mamujoco_v1.parallel_env("Ant", "4x2", agent_obsk=1, max_episode_steps=limit)
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "truncations", "state")}
    obs, _ = env.reset(seed=seed)
    for _ in range(n_steps):
        state = env.state().astype(np.float32)
        acts = {a: rng.uniform(-1, 1, 2).astype(np.float32) for a in env.agents}
        nxt, rew, term, trunc, _ = env.step(acts)
        rows["observations"].append(np.stack([obs[a] for a in env.possible_agents]))
        rows["actions"].append(np.stack([acts[a] for a in env.possible_agents]))
        rows["rewards"].append(np.array([rew[a] for a in env.possible_agents], np.float32))
        rows["terminals"].append(np.array([term[a] for a in env.possible_agents]))
        rows["truncations"].append(np.array([trunc[a] for a in env.possible_agents]))
        rows["state"].append(state)
        obs = nxt
        if any(term.values()) or any(trunc.values()):
            obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
    env.close()
    exp = {k: np.asarray(v)[None] for k, v in rows.items() if k != "state"}
    exp["observations"] = exp["observations"].astype(np.float32)
    exp["infos"] = {"state": np.asarray(rows["state"])[None]}
    return exp


@pytest.fixture(scope="module")
def smax_exp() -> dict:
    """A few real SMAX 3m episodes with random legal actions, OG-MARL's SMAC layout."""
    from offmarl.envs import make_env

    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "truncations", "state", "legals")}
    with make_env("smac-3m") as env:
        for ep in range(3):
            obs, state, _ = env.reset(seed=ep)
            done = False
            while not done:
                legal = env.avail_actions()
                a = np.array([rng.choice(np.flatnonzero(row)) for row in legal], np.int32)
                nxt, nstate, r, term, trunc, _ = env.step(a)
                for k, v in zip(rows, (obs, a, np.full(3, r, np.float32), np.full(3, term), np.full(3, trunc),
                                       state, legal)):
                    rows[k].append(v)
                obs, state, done = nxt, nstate, term or trunc
    exp = {k: np.asarray(v)[None] for k, v in rows.items() if k not in ("state", "legals")}
    exp["infos"] = {"state": np.asarray(rows["state"])[None], "legals": np.asarray(rows["legals"])[None]}
    return exp


def test_export_round_trip_generated_ant(tmp_path, assert_same_dataset):
    ds = registry.build("ant-medium", 300, seed=0, n_envs=2)  # real generated data (shipped SAC actor)
    dest = export_vault(ds, tmp_path / "4ant.vlt", uid="medium")
    assert dest == tmp_path / "4ant.vlt" / "medium" and (dest / "metadata.json").is_file()
    back = read_vault(tmp_path / "4ant.vlt")
    assert_same_dataset(ds, back)
    assert back.checksum() == ds.checksum()
    # the standard OG-MARL leaves as flashbax reads them: [1, T, N, ...], per-agent rewards
    from flashbax.vault import Vault

    with contextlib.redirect_stdout(io.StringIO()):
        exp = Vault(vault_name="4ant.vlt", rel_dir=str(tmp_path), vault_uid="medium").read().experience
    assert exp["observations"].shape == (1, len(ds), 4, 27) and exp["rewards"].shape == (1, len(ds), 4)
    assert exp["infos"]["state"].shape == (1, len(ds), 27)
    np.testing.assert_array_equal(np.asarray(exp["rewards"])[0, :, 3], ds.rewards)
    with pytest.raises(DatasetError, match="already exists"):
        export_vault(ds, tmp_path / "4ant.vlt", uid="medium")
    # po observations (padded widths 15/4/4/4) come back exactly too; X.vlt/UID path form
    po = ds.with_obs("po")
    export_vault(po, tmp_path / "4ant.vlt" / "medium-po")
    assert read_vault(tmp_path / "4ant.vlt" / "medium-po").checksum() == po.checksum()
    with pytest.raises(DatasetError, match="several datasets"):
        read_vault(tmp_path / "4ant.vlt")


def test_export_edited_next_rows_and_float64_refused(tmp_path, assert_same_dataset):
    ds = registry.build("ant-medium", 120, seed=1, n_envs=2)
    ds.next_states[5] += 0.25  # a next state that is not the following row comes back exactly
    export_vault(ds, tmp_path / "a.vlt", uid="odd")
    assert_same_dataset(ds, read_vault(tmp_path / "a.vlt/odd"))
    wide = registry.build("ant-medium", 60, seed=2, n_envs=1)
    wide.states = wide.states.astype(np.float64)
    wide.states[0, 0] = 0.1  # not representable in float32
    with pytest.raises(DatasetError, match=r"key 'states' \(float64\)"):
        export_vault(wide, tmp_path / "a.vlt", uid="wide")
    assert not (tmp_path / "a.vlt" / "wide").exists()


def test_foreign_og_marl_ant_vault(tmp_path):
    exp = record_ant_og_marl(60, limit=25)
    write_flashbax_vault(tmp_path / "4ant.vlt", "Random", exp)
    ds = read_vault(tmp_path / "4ant.vlt", env="ant-4x2", obs="po")
    term = exp["terminals"][0].all(-1)
    trunc = exp["truncations"][0].all(-1)
    state = exp["infos"]["state"][0][:, :27]
    last_end = np.flatnonzero(term | trunc)[-1]
    keep = ~(trunc & ~term)
    keep[last_end + 1:] = False  # the trailing partial episode
    np.testing.assert_array_equal(ds.states, state[keep])
    np.testing.assert_array_equal(ds.actions, exp["actions"][0][keep])
    np.testing.assert_array_equal(ds.rewards, exp["rewards"][0][keep].mean(-1).astype(np.float32))
    assert ds.meta.obs_dims == (15, 4, 4, 4) and ds.meta.ref_min_return == -325.6
    assert ds.meta.source == "vault:4ant.vlt/Random"
    # inside an episode the next state is the following row; the step before a dropped
    # truncated end is a time-out whose next state is that dropped step's state
    idx = np.flatnonzero(keep)
    for j, i in enumerate(idx):
        if term[i]:
            assert ds.terminals[j]
        else:
            np.testing.assert_array_equal(ds.next_states[j], state[i + 1])
            assert ds.timeouts[j] == bool(trunc[i + 1] and not term[i + 1])
    assert ds.meta.extra["vault_dropped_truncated_steps"] == int((trunc & ~term)[: last_end + 1].sum()) >= 1
    with pytest.raises(DatasetError, match="4 agents, env 'reacher-2x1' has 2"):
        read_vault(tmp_path / "4ant.vlt", env="reacher-2x1")


@pytest.mark.slow
def test_foreign_ant_vault_converts_fo_and_trains_centralised_iql(tmp_path):
    """An OG-MARL ant vault through the CLI: convert with --obs fo (observations re-derived from
    infos/state), then a few steps of centralised IQL, which needs the full state."""
    write_flashbax_vault(tmp_path / "4ant.vlt", "Random", record_ant_og_marl(60, limit=25))
    cli = [sys.executable, "-m", "offmarl.cli.main"]
    conv = subprocess.run([*cli, "datasets", "convert", str(tmp_path / "4ant.vlt"), "--from", "vault", "--env",
                           "ant-4x2", "--obs", "fo", "--out", str(tmp_path / "ant.hdf5")],
                          check=False, capture_output=True, text=True, timeout=600)
    assert conv.returncode == 0, conv.stderr[-2000:]
    ds = load_dataset_file(tmp_path / "ant.hdf5")
    assert ds.meta.obs_scheme == "fo" and set(ds.meta.obs_dims) == {ds.meta.state_dim}
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [*cli, "train", "--dataset", str(tmp_path / "ant.hdf5"), "--algo", "iql", "--steps", "5",
         "--set", "loop.eval_every=0", "--set", "loop.final_eval_episodes=2", "--set", "loop.eval_envs=2",
         "--no-progress", "--out", str(runs)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = list(runs.iterdir())
    assert json.loads((run / "eval.json").read_text())["episodes"] == 2


def test_smax_vault_convert_train_export(smax_exp, tmp_path, assert_same_dataset):
    write_flashbax_vault(tmp_path / "3m.vlt", "Random", smax_exp)
    out = tmp_path / "smax.hdf5"
    ds = convert(tmp_path / "3m.vlt", "vault", env="smac-3m", obs=None, out=out)
    term = smax_exp["terminals"][0, :, 0]
    trunc = smax_exp["truncations"][0, :, 0]
    keep = ~(trunc & ~term)
    np.testing.assert_array_equal(ds.observations, smax_exp["observations"][0][keep])
    np.testing.assert_array_equal(ds.actions, smax_exp["actions"][0][keep].astype(np.int64))
    np.testing.assert_array_equal(ds.avail_actions, smax_exp["infos"]["legals"][0][keep])
    np.testing.assert_array_equal(ds.states, smax_exp["infos"]["state"][0][keep])
    assert ds.terminals.sum() == term.sum() and ds.meta.discrete and ds.actions.dtype == np.int64
    assert ds.rewards.sum() == pytest.approx(smax_exp["rewards"][0][keep, 0].sum())
    # a few MA-IQL steps through the real CLI (centralised IQL needs fo; SMAX has local obs), then export back
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "offmarl.cli.main", "train", "--dataset", str(out), "--algo", "ma-iql", "--steps", "5",
         "--set", "loop.eval_every=0", "--set", "loop.final_eval_episodes=2", "--set", "loop.eval_envs=2",
         "--no-progress", "--out", str(runs)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = list(runs.iterdir())
    assert json.loads((run / "eval.json").read_text())["episodes"] == 2
    dest = export(out, "vault", "random", out=tmp_path / "back.vlt")
    back = read_vault(dest)
    assert back.checksum() == load_dataset_file(out).checksum()
    assert_same_dataset(load_dataset_file(out), back)


# ------------------------------------------------------------------------- bad vaults
def _one_line(fn) -> str:
    with pytest.raises(DatasetError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_bad_vaults(smax_exp, tmp_path):
    def variant(uid, **changes):
        exp = {k: (dict(v) if isinstance(v, dict) else v) for k, v in smax_exp.items()}
        for k, v in changes.items():
            if k.startswith("infos_"):
                if v is None:
                    exp["infos"].pop(k[6:])
                else:
                    exp["infos"][k[6:]] = v
            elif v is None:
                exp.pop(k)
            else:
                exp[k] = v
        write_flashbax_vault(tmp_path / "bad.vlt", uid, exp)
        return tmp_path / "bad.vlt" / uid

    p = variant("nostate", infos_state=None)
    msg = _one_line(lambda: read_vault(p, env="smac-3m"))
    assert "missing key(s) infos/state" in msg and str(p) in msg
    obs = smax_exp["observations"].copy()
    obs[0, 4, 1, 2] = np.nan
    p = variant("nan", observations=obs)
    msg = _one_line(lambda: read_vault(p, env="smac-3m"))
    assert str(p) in msg and "key 'observations' contains NaN" in msg and "step 4" in msg
    p = variant("agents", observations=smax_exp["observations"][:, :, :2], actions=smax_exp["actions"][:, :, :2])
    assert "has 2 agents, env 'smac-3m' has 3" in _one_line(lambda: read_vault(p, env="smac-3m"))
    p = variant("legals", infos_legals=smax_exp["infos"]["legals"][..., :5])
    assert "key 'infos/legals' has shape" in _one_line(lambda: read_vault(p, env="smac-3m"))
    p = variant("wrongenv")
    assert "key 'infos/state' has width 72, expected 11" in _one_line(lambda: read_vault(p, env="hopper-3x1"))
    p = variant("noend", terminals=np.zeros_like(smax_exp["terminals"]),
                truncations=np.zeros_like(smax_exp["truncations"]))
    with pytest.warns(UserWarning, match="end no episode"):
        assert "no complete episode" in _one_line(lambda: read_vault(p, env="smac-3m"))
    empty = {k: (({kk: vv[:, :0] for kk, vv in v.items()}) if isinstance(v, dict) else v[:, :0])
             for k, v in smax_exp.items()}
    write_flashbax_vault(tmp_path / "bad.vlt", "empty", empty)
    assert "the vault is empty" in _one_line(lambda: read_vault(tmp_path / "bad.vlt/empty", env="smac-3m"))
    broken = variant("broken")
    (broken / "metadata.json").write_text("{not json")
    assert "metadata.json: cannot be read as JSON" in _one_line(lambda: read_vault(broken))
    (tmp_path / "plain").mkdir()
    assert "not a flashbax vault" in _one_line(lambda: read_vault(tmp_path / "plain"))
    assert "no such vault" in _one_line(lambda: read_vault(tmp_path / "nothing.vlt"))
    # the CLI prints one red line and exits 2
    proc = subprocess.run([sys.executable, "-m", "offmarl.cli.main", "datasets", "convert", str(tmp_path / "plain"),
                           "--from", "vault", "--out", str(tmp_path / "x.hdf5")],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and "not a flashbax vault" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_download_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connects = []

    def connect(sock, address):
        connects.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    msg = _one_line(lambda: download_vault("gymnasium_mamujoco", "4ant", root=tmp_path))
    assert connects == []  # refused before any connection attempt
    assert "HF_HUB_OFFLINE" in msg and "huggingface.co/datasets/InstaDeepAI/og-marl" in msg and str(tmp_path) in msg
    assert "is unknown" in _one_line(lambda: download_vault("gymnasium_mamujoco", "5ant", root=tmp_path))
    monkeypatch.setenv("OFFMARL_VAULT_DIR", str(tmp_path))
    msg = _one_line(lambda: read_vault("og-marl:gymnasium_mamujoco/4ant/Good"))
    assert "og-marl:gymnasium_mamujoco/4ant" in msg and "not downloaded" in msg
