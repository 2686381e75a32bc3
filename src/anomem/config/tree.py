"""Dataclass trees from plain nested dicts (YAML, JSON, ``key=value`` overrides).

Generic machinery behind :meth:`anomem.config.AnoMemConfig.from_dict`: every value is
converted to the type of its field's default, and every error is one
:class:`~anomem.errors.ConfigError` line naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields
from typing import Any

from anomem.config.legacy import MOVED
from anomem.errors import ConfigError


def coerce(value: Any, default: Any, key: str) -> Any:
    """Convert ``value`` to the type of the field's default (YAML/CLI give lists/strings)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple) or default is None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = default[0] if isinstance(default, tuple) and default else None
        return tuple(coerce(v, inner, key) if inner is not None else v for v in value)
    return value


def build_dataclass(cls: type, d: Any, prefix: str) -> Any:
    """An instance of the (frozen, defaulted) dataclass ``cls`` from a possibly partial
    nested dict: nested dataclass fields recurse, values are coerced to the type of
    each default, unknown or non-name keys are errors naming the dotted key."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    bad = [k for k in d if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config key(s) must be names, got {bad[:3]!r} in {prefix or 'the top level'}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        moved = [f"{prefix}{k} is now {MOVED[prefix + k]}" for k in unknown if prefix + k in MOVED]
        hint = f" ({'; '.join(moved)})" if moved else ""
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}{hint}; "
                          f"expected one of {sorted(known)}")
    defaults = cls()
    kwargs = {}
    for name, value in d.items():
        key = prefix + name
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_dataclass(type(default), value, key + ".")
        else:
            kwargs[name] = coerce(value, default, key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the unknown-key check
        raise ConfigError(str(e)) from None


__all__ = ["build_dataclass", "coerce"]
