"""Configuration: frozen dataclasses loaded from `conf/*.yaml`, scalars overridable from the environment.

Every scalar field can be overridden by an environment variable named after its path, upper-cased and joined
with underscores, under a prefix: `kafka.port` in `conf/services.yaml` is `STREAMREC_KAFKA_PORT`. Secrets are
never read from YAML; they come only from the environment.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = Path(os.environ.get("STREAMREC_CONF_DIR", REPO_ROOT / "conf"))


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, members[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item_tp = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: not a boolean: {value!r}")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from e
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from e
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def _env_overrides(cls: type, prefix: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict of overrides for every scalar field whose env var is set."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}_{f.name.upper()}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            sub = _env_overrides(tp, name, env)
            if sub:
                out[f.name] = sub
        elif name in env:
            out[f.name] = env[name]
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load(cls: type[T], path: str | Path, prefix: str = "STREAMREC", env: Mapping[str, str] | None = None) -> T:
    """Load `path` (YAML) into `cls`, then apply `PREFIX_FIELD_...` environment overrides."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = CONF_DIR / p
    raw = _read(p, ())
    merged = _merge(raw, _env_overrides(cls, prefix, os.environ if env is None else env))
    return _build(cls, merged, str(p))


def _read(p: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """One YAML mapping; a top-level `base: other.yaml` (next to it) is read first and overridden key by key."""
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {p}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from e
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: top level must be a mapping")
    raw = dict(raw)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: base must be a file name, not {base!r}")
    bp = p.parent / base
    if bp.resolve() in seen or bp.resolve() == p.resolve():
        raise ConfigError(f"{p}: base {base!r} includes itself")
    return _merge(_read(bp, (*seen, p.resolve())), raw)


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "<mapping>") -> T:
    """Build a config dataclass from an in-memory mapping (tests, overrides)."""
    return _build(cls, data, where)
