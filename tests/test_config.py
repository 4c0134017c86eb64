"""Config layering: dataclass defaults <- override blocks <- --set overrides; clear errors."""
from dataclasses import dataclass, field

import pytest

from offmarl.config import (
    CONFIG_DIR,
    ConfigError,
    build_config,
    expand_block,
    parse_overrides,
    read_blocks,
    to_dict,
)
from offmarl.data.registry import RECIPES
from offmarl.driver import (
    ALGORITHMS,
    OBS_CONFIG_TAGS,
    override_blocks,
    print_config,
    print_online_config,
    resolve_config,
    resolve_online_config,
)


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


# ------------------------------------------------------------------ composition and --print-config
def test_repeated_config_composes_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("rollout_batch: 7\nrollout: {horizon: 3}\n")
    b.write_text("rollout_batch: 9\n")
    cfg, applied = resolve_config("moma-ppo", "ant-medium", None, [str(a), str(b)], [], None, {})
    assert (cfg.rollout_batch, cfg.rollout.horizon) == (9, 3) and applied == ["moma-ppo.yaml:ant", str(a), str(b)]
    cfg, _ = resolve_config("moma-ppo", "ant-medium", None, [str(b), str(a)], [], None, {})
    assert cfg.rollout_batch == 7
    # a shipped block, then a file over it, then --set over both
    cfg, applied = resolve_config("moma-ppo", "ant-medium", None, ["reference", str(a)], ["rollout.horizon=4"],
                                  None, {})
    assert cfg.ppo.lr == 5e-5 and cfg.rollout.horizon == 4 and applied[-2:] == ["moma-ppo.yaml:reference", str(a)]


def test_extends_and_maps_expand_in_order():
    blocks = {"base": {"inner": {"horizon": 1, "lam": 0.5}},
              "child": {"extends": "base", "inner": {"horizon": 2}, "maps": {"m1": {"name": "on-m1"}}},
              "loop": {"extends": "loop"}}
    layers = expand_block("child", blocks["child"], blocks, "f.yaml", map_name="m1")
    assert [n for n, _ in layers] == ["f.yaml:base", "f.yaml:child", "f.yaml:child maps.m1"]
    cfg = build_config(Outer, layers)
    assert (cfg.inner.horizon, cfg.inner.lam, cfg.name) == (2, 0.5, "on-m1")
    assert [n for n, _ in expand_block("child", blocks["child"], blocks, "f.yaml", map_name="m2")][-1] == "f.yaml:child"
    with pytest.raises(ConfigError, match="applies to `offmarl online` runs only"):
        expand_block("child", blocks["child"], blocks, "f.yaml")
    with pytest.raises(ConfigError, match="loops back"):
        expand_block("loop", blocks["loop"], blocks, "f.yaml")
    with pytest.raises(ConfigError, match="extends 'bse'.*Did you mean: base"):
        expand_block("x", {"extends": "bse"}, blocks, "f.yaml")


def test_mag_reference_is_mamba_reference_plus_mag_values_and_its_map():
    mamba, _ = resolve_online_config("mag", "2s3z", None, ["mamba-reference"], None, None)
    mag, applied = resolve_online_config("mag", "2s3z", None, ["mag-reference"], None, None)
    assert applied == ["online.yaml:mamba-reference", "online.yaml:mag-reference",
                       "online.yaml:mag-reference maps.2s3z"]
    assert (mag.planner.l, mag.planner.h, mag.model.lr, mag.model.error_hidden) == (5, 10, 5e-4, (256,) * 4)
    assert mag.model.deter == mamba.model.deter == 256 and mag.ppo_rounds == mamba.ppo_rounds == 4
    # a map MAG has no values for: MAMBA's sizes, the CPU preset's planner
    mag3m, applied = resolve_online_config("mag", "3m", None, ["mag-reference"], None, None)
    assert applied[-1] == "online.yaml:mag-reference" and (mag3m.planner.l, mag3m.planner.h) == (4, 5)
    # --config a --config b composes in order; --set comes last
    cfg, applied = resolve_online_config("mag", "2s3z", None, ["mag-reference", "cpu-quick"], ["planner.h=7"], None)
    assert applied[-1] == "online.yaml:cpu-quick" and cfg.model_updates == 5 and cfg.model.deter == 256
    assert (cfg.planner.l, cfg.planner.h) == (5, 7)


def _sources(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        key, rest = line.split(":", 1)
        value, source = rest.rsplit("# ", 1)
        out[key] = (value.strip(), source.strip())
    return out


def test_print_config_names_each_values_source(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("rollout_batch: 7\n")
    rows = _sources(print_config("moma-ppo", "ant-medium", None, ["reference", str(f)], ["ppo.lr=1e-4"], 5,
                                 {"planner.kind": "mag"}))
    assert rows["rollout_batch"] == ("7", str(f))
    assert rows["ppo.lr"] == ("0.0001", "--set")
    assert rows["loop.steps"] == ("5", "--steps") and rows["planner.kind"] == ("mag", "--planner")
    assert rows["world_model.hidden"] == ("[1024, 1024, 1024, 1024]", "moma-ppo.yaml:reference")
    assert rows["rollout.horizon"][1] in ("moma-ppo.yaml:reference", "moma-ppo.yaml:reference (= default)")
    assert sum(src == "default" for _, src in rows.values()) > 10  # untouched keys say so

    rows = _sources(print_online_config("mamba", "3s_vs_4z", None, ["mag-reference"], ["planner.h=7"], 5000))
    assert rows["algo"] == ("mamba", "--algo") and rows["map"] == ("3s_vs_4z", "--map")
    assert rows["backend"] == ("smax", "default")
    assert rows["model.lr"] == ("0.0005", "online.yaml:mag-reference")
    assert rows["model.deter"] == ("256", "online.yaml:mamba-reference")
    assert rows["planner.l"] == ("4", "online.yaml:mag-reference maps.3s_vs_4z (= default)")
    assert rows["planner.h"] == ("7", "--set") and rows["loop.steps"] == ("5000", "--steps")
    # one PlannerConfig for both loops: each loop's printout marks the keys only the other one reads
    assert rows["planner.error_steps"] == ("3000", "default (offline only)")
    assert rows["planner.check_every"] == ("10", "default")
    offline = _sources(print_config("moma-ppo", "ant-medium", None, ["reference"], None, 5, {"planner.kind": "mag"}))
    assert offline["planner.check_every"] == ("10", "default (online only)")
    assert offline["planner.error_steps"][1] in ("default", "moma-ppo.yaml:reference (= default)")


def test_a_users_file_extends_a_shipped_block(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: mag-reference\nmodel: {batch: 8}\n")
    cfg, applied = resolve_online_config("mag", "3s_vs_4z", None, [str(f)], None, None)
    assert applied == ["online.yaml:mamba-reference", "online.yaml:mag-reference",
                       "online.yaml:mag-reference maps.3s_vs_4z", str(f)]
    assert (cfg.model.batch, cfg.model.lr, cfg.planner.h) == (8, 5e-4, 10)
    f.write_text("extends: mag-refrence\n")
    with pytest.raises(ConfigError, match="not a block of online.yaml. Did you mean: mag-reference"):
        resolve_online_config("mag", "2s3z", None, [str(f)], None, None)
