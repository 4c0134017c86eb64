"""Configuration: dataclass defaults, named override blocks, dotted ``--set key=value`` overrides.

Layers, later wins: the dataclass defaults (what runs; each field's comment cites its source) <-
override blocks (a block is a named mapping in a YAML file of configs/, e.g. ``ant`` in
``configs/moma-ppo.yaml``, or a user's YAML file; offmarl/driver.py chooses them) <- ``--set
a.b=value`` overrides. Unknown keys are errors with a suggestion, never silently ignored. The
fully resolved config, with the names of the blocks applied, is written to the run directory as
``config.yaml``.
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
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        args = typing.get_args(typ)
        inner = args[0] if args else None
        seq = [(_coerce(v, inner, where) if inner not in (None, Ellipsis) else v) for v in value]
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
