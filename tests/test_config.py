"""Config layering: dataclass defaults <- override blocks <- --set overrides; clear errors."""
from dataclasses import dataclass, field

import pytest

from offmarl.config import CONFIG_DIR, ConfigError, build_config, parse_overrides, read_blocks, to_dict
from offmarl.data.registry import RECIPES
from offmarl.driver import ALGORITHMS, OBS_CONFIG_TAGS, override_blocks, resolve_config


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


def test_override_blocks_come_from_recipe_tags_obs_and_config():
    names = lambda *args: [n for n, _ in override_blocks(*args)]  # noqa: E731
    assert names("moma-ppo", "coordination-unfavorable", None, None) == ["coordination.yaml:moma-ppo"]
    assert names("moma-ppo", "reacher-expert-mix", "po-leader", None) == ["moma-ppo.yaml:po"]
    assert names("moma-ppo", "ant-medium", "po", "reference") == [
        "moma-ppo.yaml:ant", "moma-ppo.yaml:po", "moma-ppo.yaml:reference"]
    assert names("omar", "ant-full-replay", "fo", None) == ["omar.yaml:full-replay"]
    assert names("iql", "ant-medium", None, None) == []
    # a dataset file selects nothing, whatever its name says
    assert names("moma-ppo", "/tmp/ant-medium-coordination-po.hdf5", None, None) == []


def test_config_option_takes_a_block_or_a_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("rollout_batch: 7\n")
    cfg, applied = resolve_config("moma-ppo", "ant-medium", None, str(f), ["loop.steps=3"], None, {})
    assert cfg.rollout_batch == 7 and cfg.loop.steps == 3 and applied == ["moma-ppo.yaml:ant", str(f)]
    cfg, applied = resolve_config("moma-ppo", "ant-medium", None, "mag", [], 5, {"world_model_path": "/x.pt"})
    assert cfg.planner.kind == "mag" and cfg.loop.steps == 5 and cfg.world_model_path == "/x.pt"
    with pytest.raises(ConfigError, match="block of configs/moma-ppo.yaml.*Did you mean: reference"):
        resolve_config("moma-ppo", "ant-medium", None, "moma-ppo-reference", [], None, {})


def test_blocks_apply_over_the_defaults_in_order():
    default = ALGORITHMS["moma-ppo"].Config()
    ant, _ = resolve_config("moma-ppo", "ant-medium", None, None, [], None, {})
    ref, _ = resolve_config("moma-ppo", "ant-medium", None, "reference", [], None, {})
    assert (default.rollout.horizon, ant.rollout.horizon, ref.rollout.horizon) == (10, 25, 10)
    assert ant.ppo.lr == 1e-4 and ref.ppo.lr == 5e-5 and ref.world_model.hidden == (1024,) * 4
    omar = {kind: resolve_config("omar", f"ant-{kind}", None, None, [], None, {})[0]
            for kind in ("random", "medium", "expert", "full-replay")}
    table = {"random": (1.0, 1.0), "medium": (0.7, 1.0), "expert": (0.5, 5.0), "full-replay": (0.9, 5.0)}
    assert {k: (c.omar_coe, c.cql_alpha) for k, c in omar.items()} == table
    coord, _ = resolve_config("iql", "coordination-neutral", None, None, [], None, {})
    assert coord.hidden == (64, 64) and coord.loop.steps == 3000 and coord.normalize_reward is False


def test_every_shipped_block_builds_and_every_tag_is_used():
    """Every block of configs/<algo>.yaml and every <algo> block of a task file only uses keys the
    algorithm's Config has; every recipe tag selects a block for some algorithm."""
    used = set()
    checked = set()  # (file, block) pairs built against an algorithm's Config
    for algo, mod in ALGORITHMS.items():
        own = read_blocks(CONFIG_DIR / f"{algo}.yaml") if (CONFIG_DIR / f"{algo}.yaml").exists() else {}
        for name, block in own.items():
            build_config(mod.Config, [(name, block)])
            used.add(name)
            checked.add((f"{algo}.yaml", name))
        for task in CONFIG_DIR.glob("*.yaml"):
            if task.stem in ALGORITHMS or task.stem == "online":  # online: blocks of offmarl online (test_online_cli)
                continue
            blocks = read_blocks(task)
            assert set(blocks) <= set(ALGORITHMS), f"{task.name}: blocks must be algorithm names"
            if algo in blocks:
                build_config(mod.Config, [(task.name, blocks[algo])])
                used.add(task.stem)
                checked.add((task.name, algo))
    shipped = {(f.name, b) for f in CONFIG_DIR.glob("*.yaml") if f.stem != "online" for b in read_blocks(f)}
    assert checked == shipped, f"blocks never built: {sorted(shipped - checked)}"
    tags = {t for rec in RECIPES.values() for t in rec.config} | {t for ts in OBS_CONFIG_TAGS.values() for t in ts}
    assert tags <= used, f"tags that select nothing: {tags - used}"


def test_a_bad_block_names_itself():
    with pytest.raises(ConfigError, match="coordination.yaml:x: unknown config key 'hiden'"):
        build_config(Outer, [("coordination.yaml:x", {"hiden": 3})])
