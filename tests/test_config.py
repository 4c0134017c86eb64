"""Config layering: dataclass defaults <- YAML files <- --set overrides; clear errors."""
from dataclasses import dataclass, field

import pytest

from offmarl.config import ConfigError, build_config, parse_overrides, to_dict
from offmarl.driver import ALGORITHMS, _config_files


@dataclass
class Inner:
    horizon: int = 10
    lam: float = 0.1


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    hidden: tuple[int, ...] = (256, 256)
    name: str = "x"
    path: str | None = None


def test_layers_and_overrides(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("inner:\n  horizon: 5\nhidden: [64, 64]\n")
    cfg = build_config(Outer, [f], parse_overrides(["inner.lam=0.5", "name=y", "path=/tmp/z"]))
    assert cfg.inner.horizon == 5 and cfg.inner.lam == 0.5 and cfg.hidden == (64, 64)
    assert cfg.name == "y" and cfg.path == "/tmp/z"
    assert to_dict(cfg)["hidden"] == [64, 64]


def test_floats_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; --set ppo.lr=1e-4 and "lr: 3e-4" in a file must still work
    f = tmp_path / "a.yaml"
    f.write_text("inner:\n  lam: 3e-4\n")
    assert build_config(Outer, [f], {}).inner.lam == 3e-4
    assert build_config(Outer, [], parse_overrides(["inner.lam=1e-4"])).inner.lam == 1e-4
    with pytest.raises(ConfigError, match="expected float"):
        build_config(Outer, [], parse_overrides(["inner.lam=fast"]))


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'inner.horizn'.*inner.horizon"):
        build_config(Outer, [], parse_overrides(["inner.horizn=3"]))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["inner.horizon"])
    with pytest.raises(ConfigError, match="expected int"):
        build_config(Outer, [], parse_overrides(["inner.horizon=abc"]))


def test_algo_config_files_pick_task_and_po_files():
    names = lambda files: [p.name for p in files]  # noqa: E731
    assert names(_config_files("moma-ppo", "coordination-unfavorable", None, None)) == [
        "moma-ppo.yaml", "moma-ppo-coordination.yaml"]
    assert names(_config_files("moma-ppo", "reacher-expert-mix", None, "po-leader")) == [
        "moma-ppo.yaml", "moma-ppo-po.yaml"]
    # the most specific task file is applied last
    assert names(_config_files("omar", "ant-medium-replay", None, None)) == [
        "omar.yaml", "omar-medium.yaml", "omar-medium-replay.yaml"]


def test_every_shipped_config_builds_against_its_algorithm():
    """configs/<algo>[-variant].yaml must only use keys the algorithm's Config has."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    checked = 0
    for f in sorted(root.glob("*.yaml")):
        algo = max((a for a in ALGORITHMS if f.stem == a or f.stem.startswith(a + "-")), key=len, default=None)
        if algo is None:  # mappo*.yaml (MAPPOConfig, tests/test_mappo.py), mag-smac.yaml (online loop)
            continue
        build_config(ALGORITHMS[algo].Config, [_config_files(algo, "x", None, None)[0], f])
        checked += 1
    assert checked >= 20
