"""Configuration: dataclass defaults, named override blocks, dotted ``--set key=value`` overrides.

Layers, later wins: the dataclass defaults (what runs; each field's comment cites its source) <-
override blocks (a block is a named mapping in a YAML file of configs/, e.g. ``ant`` in
``configs/moma-ppo.yaml``, or a user's YAML file; offmarl/driver.py chooses them) <- ``--set
a.b=value`` overrides. Unknown keys are errors with a suggestion, never silently ignored. The
fully resolved config, with the names of the blocks applied, is written to the run directory as
``config.yaml``.

Blocks compose: ``--config a --config b`` applies a, then b. Two keys of a block are not config
keys: ``extends: NAME`` (or a list of names) applies those blocks of the same file first, and
``maps: {MAP: {...}}`` adds keys for one map of an online run (e.g. MAG's per-map planner).
``build_with_sources`` records which layer set each key (``--print-config``).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from offmarl.errors import OffmarlError

_HERE = Path(__file__).resolve().parent
# configs/ of the source tree, or the copy installed with the package as offmarl.configs
CONFIG_DIR = next((p for p in (_HERE.parent / "configs", _HERE / "configs") if p.is_dir()), _HERE.parent / "configs")


class ConfigError(OffmarlError):
    pass


def shipped_config(name: str) -> Path | None:
    """configs/<name>.yaml, or None when not shipped."""
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.exists() else None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["ppo.lr=3e-4", "rollout.horizon=5"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (example: --set rollout.horizon=5)")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parsed
    return out


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _coerce(value, typ, where: str):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if typ in (int, float) and isinstance(value, bool):  # YAML true/false would pass as 1/0
        raise ConfigError(f"config key {where}: expected {typ.__name__}, got {str(value).lower()}")
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; people write learning rates that way
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, bool) is False and isinstance(value, (int,)):
        return value
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if origin in (tuple, list):
        args = typing.get_args(typ)
        inner = args[0] if args else None
        if not isinstance(value, (list, tuple)):
            what = f"a list of {inner.__name__}" if isinstance(inner, type) else "a list"
            raise ConfigError(f"config key {where}: expected {what} (e.g. [256, 256]), got {value!r}")
        seq = [(_coerce(v, inner, f"{where}[{i}]") if inner not in (None, Ellipsis) else v)
               for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if typ in (int, float, str, bool) and not isinstance(value, typ):
        raise ConfigError(f"config key {where}: expected {typ.__name__}, got {value!r}")
    return value


def merge_into(obj, data: dict[str, Any], prefix: str = ""):
    """Return a copy of dataclass ``obj`` with ``data`` (nested dict) applied."""
    types_ = _field_types(type(obj))
    changes = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key {where!r}.{hint}")
        typ = types_[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where!r} is a section; give sub-keys (e.g. {where}.x=...)")
            changes[key] = merge_into(current, value, prefix=f"{where}.")
        else:
            changes[key] = _coerce(value, typ, where)
    return dataclasses.replace(obj, **changes)


def read_blocks(path: Path) -> dict[str, dict[str, Any]]:
    """A file of named override blocks: a mapping of block name -> mapping of config keys."""
    data = read_yaml(path)
    for name, block in data.items():
        if not isinstance(block, dict):
            raise ConfigError(f"config file {path}: block {name!r} must be a mapping of config keys")
    return data


# keys of a block that structure blocks instead of setting config keys (module docstring)
BLOCK_KEYS = ("extends", "maps")


def expand_block(name: str, block: dict[str, Any], blocks: dict[str, dict[str, Any]], label: str,
                 map_name: str | None = None, _seen: tuple[str, ...] = (),
                 blocks_label: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """One block -> the layers it stands for, in order, as (name, mapping): the blocks it
    ``extends`` (of ``blocks``, a file of blocks named ``blocks_label``, default ``label``:
    layers ``blocks_label:NAME``), the block's own keys (``label:name``, or ``name`` when
    ``label`` is empty: a user's file), then its ``maps`` entry for ``map_name``. A map-less
    command refuses a block with ``maps`` (nothing else would read it); a cycle of ``extends``
    is an error."""
    where = f"{label}:{name}" if label else name
    if name in _seen:
        raise ConfigError(f"{where}: 'extends' loops back to itself ({' -> '.join((*_seen, name))})")
    parents = block.get("extends", [])
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{where}: 'extends' takes a block name or a list of block names, got {parents!r}")
    layers: list[tuple[str, dict[str, Any]]] = []
    for parent in parents:
        if parent not in blocks:
            close = difflib.get_close_matches(parent, list(blocks), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: extends {parent!r}, which is not a block of "
                              f"{blocks_label or label or 'the same file'}.{hint}")
        parents_label = label if blocks_label is None else blocks_label
        layers += expand_block(parent, blocks[parent], blocks, parents_label, map_name, (*_seen, name))
    own = {k: v for k, v in block.items() if k not in BLOCK_KEYS}
    if own:
        layers.append((where, own))
    maps = block.get("maps")
    if maps is not None:
        if not isinstance(maps, dict) or not all(isinstance(v, dict) for v in maps.values()):
            raise ConfigError(f"{where}: 'maps' takes a mapping of map name -> config keys")
        if map_name is None:
            raise ConfigError(f"{where}: 'maps' (per-map keys) applies to `offmarl online` runs only")
        if map_name in maps:
            layers.append((f"{where} maps.{map_name}", maps[map_name]))
    return layers


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_with_sources(cls, layers: Sequence[tuple[str, dict[str, Any]]]):
    """Defaults of ``cls`` <- each (name, mapping) layer in order. Returns (config, sources):
    ``sources[dotted key]`` is the name of the last layer that set the key (keys no layer set
    are the defaults)."""
    cfg = build_config(cls, layers)
    sources: dict[str, str] = {}
    for name, data in layers:
        for key in _flatten(data):
            sources[key] = name
    return cfg, sources


def describe(cfg, sources: dict[str, str], notes: dict[str, str] | None = None) -> str:
    """The resolved config, one ``dotted.key: value`` line each, followed by where the value came
    from: ``# default`` or ``# <layer>`` (a block, a YAML file or a CLI option), then
    ``notes[dotted key]`` in parentheses where given (e.g. "offline only")."""
    flat = _flatten(to_dict(cfg))
    default = _flatten(to_dict(type(cfg)()))
    width = max(len(k) for k in flat) + 2
    lines = []
    for key, value in flat.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        where = sources.get(key, "default")
        if where != "default" and value == default.get(key):
            where += " (= default)"
        if notes and key in notes:
            where += f" ({notes[key]})"
        lines.append(f"{key + ':':<{width}}{text:<14} # {where}")
    return "\n".join(lines)


def build_config(cls, layers: Sequence[str | Path | tuple[str, dict[str, Any]]] = (),
                 overrides: dict[str, Any] | None = None):
    """Defaults of ``cls`` <- each layer in order <- overrides. A layer is a YAML file of config
    keys or a ``(name, mapping)`` pair (an override block; its name prefixes any error)."""
    cfg = cls()
    for layer in layers:
        if isinstance(layer, tuple):
            name, data = layer
            try:
                cfg = merge_into(cfg, data)
            except ConfigError as e:
                raise ConfigError(f"{name}: {e}") from None
        else:
            cfg = merge_into(cfg, read_yaml(Path(layer)))
    if overrides:
        cfg = merge_into(cfg, overrides)
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def from_dict(cls, data: dict[str, Any]):
    return merge_into(cls(), data)
