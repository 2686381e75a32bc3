"""Constructor parameters of :class:`anomem.AnoMem`: config overrides by keyword.

``AnoMem(config, progress, **overrides)`` takes any config value as a keyword, applied
on top of ``config`` when ``fit`` runs (through :func:`anomem.config.with_overrides`,
so every value is checked as a ``key=value`` override is). The rule for a keyword:

* ``section__field`` (scikit-learn's nested-parameter spelling) is ``section.field``:
  ``train__epochs=3`` is ``train.epochs=3``;
* a bare ``field`` is the one config field of that name in any section: ``epochs=3``
  is ``train.epochs``, ``contamination=0.1`` is ``threshold.contamination``. Names found
  in several sections (``batch_size``, ``lr``, ``weight_decay``, ``enabled``) must be
  written ``section__field``;
* ``**{"train.epochs": 3}`` (the dotted key itself) is accepted too.

Unknown or ambiguous names are a :class:`~anomem.errors.ConfigError` naming them as soon
as they are given (in ``__init__`` or ``set_params``); their values are checked at fit.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from anomem.config import AnoMemConfig, with_overrides
from anomem.errors import ConfigError
from anomem.stage2.weights import SETTINGS, check_parts, compose

__all__ = ["ParamsMixin", "apply_overrides", "check_overrides", "config_key", "config_keys", "weights_for_call"]


@cache
def config_keys() -> tuple[str, ...]:
    """Every dotted config key an override can set (``train.epochs``, ...)."""

    def walk(cls: type, prefix: str) -> list[str]:
        out = []
        defaults = cls()
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if dataclasses.is_dataclass(value):
                out += walk(type(value), prefix + f.name + ".")
            elif prefix:  # the top-level ``preset`` is a name, not a setting: pass config=
                out.append(prefix + f.name)
        return out

    return tuple(walk(AnoMemConfig, ""))


def config_key(name: str) -> str:
    """The dotted config key a constructor keyword stands for (see the module doc)."""
    keys = config_keys()
    dotted = name.replace("__", ".") if "__" in name else name
    if "." in dotted:
        if dotted in keys:
            return dotted
        hint = difflib.get_close_matches(dotted, keys, n=1)
        raise ConfigError(f"AnoMem has no config key {dotted!r} (from {name!r})"
                          + (f"; did you mean {hint[0].replace('.', '__')!r}?" if hint else ""))
    found = [k for k in keys if k.rpartition(".")[2] == name]
    if len(found) == 1:
        return found[0]
    if found:
        spelled = " or ".join(k.replace(".", "__") for k in found)
        raise ConfigError(f"AnoMem parameter {name!r} is ambiguous: write {spelled}")
    hint = difflib.get_close_matches(name, sorted({k.rpartition('.')[2] for k in keys}), n=1)
    raise ConfigError(f"AnoMem got an unknown parameter {name!r}; pass config keys as field=value or "
                      "section__field=value (e.g. epochs=3, train__epochs=3)"
                      + (f"; did you mean {hint[0]!r}?" if hint else ""))


def check_overrides(overrides: dict[str, Any]) -> dict[str, str]:
    """Each keyword's dotted key; a key given twice (``epochs`` and ``train__epochs``) is an error."""
    seen: dict[str, str] = {}
    for name in overrides:
        key = config_key(name)
        if key in seen:
            raise ConfigError(f"AnoMem parameters {seen[key]!r} and {name!r} both set {key}")
        seen[key] = name
    return {name: key for key, name in seen.items()}


def _plain(value: Any, name: str) -> Any:
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):  # NumPy / torch scalars
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"AnoMem parameter {name!r}: a config value must be a number, string, bool, None or list, "
                      f"got {type(value).__name__}")


def apply_overrides(cfg: AnoMemConfig, overrides: dict[str, Any]) -> AnoMemConfig:
    """``cfg`` with the constructor keywords applied and the whole config re-validated."""
    if not overrides:
        return cfg
    keys = check_overrides(overrides)
    items = [f"{keys[name]}={json.dumps(_plain(value, name))}" for name, value in overrides.items()]
    return with_overrides(cfg, items)


class ParamsMixin:
    """``get_params`` / ``set_params`` / ``__repr__`` of :class:`anomem.AnoMem`: its
    parameters are ``config``, ``progress`` and the overrides, stored as attributes under
    the names they were given (scikit-learn's rule, so ``sklearn.base.clone`` works)."""

    def _overrides(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("config", "progress") and not k.endswith("_")
                and not k.startswith("_")}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """``config``, ``progress`` and every config override, by the name it was given."""
        return {"config": self.config, "progress": self.progress, **self._overrides()}

    def set_params(self, **params: Any) -> ParamsMixin:
        """Set parameters by name (an override replaces any other spelling of its key);
        they take effect at the next :meth:`fit`. Returns ``self``."""
        given = {k: v for k, v in params.items() if k not in ("config", "progress")}
        keys = check_overrides(given)
        for name, key in check_overrides(self._overrides()).items():
            if key in keys.values():
                delattr(self, name)
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        cfg = self.config
        shown = f"AnoMemConfig(preset={cfg.preset!r}, ...)" if isinstance(cfg, AnoMemConfig) else repr(cfg)
        args = [f"config={shown}"] + ([] if self.progress else ["progress=False"])
        text = f"{type(self).__name__}({', '.join(args + [f'{k}={v!r}' for k, v in self._overrides().items()])})"
        if not hasattr(self, "model_"):
            return text
        c, (h, w) = self.in_channels_, self.image_size_
        kind = "supervised" if self.model_.use_heads else "one-class"
        t = "no threshold" if self.threshold_ is None else self.threshold_.describe()
        return f"{text} fitted on {c}x{h}x{w} images, {kind} scores, {t}"


def weights_for_call(model: Any, settings: Mapping[str, Any], weights: Mapping[str, Any] | None,
                     fusion: Any = None) -> dict[str, float] | None:
    """Flat weights for one call (None when none are given): settings named in ``weights``
    replace those of ``settings`` and the weights are recomposed for what ``model`` (an
    :class:`~anomem.inference.AnoMemModel`) can read; part names in ``weights`` then
    replace single entries. ``fusion`` is ``weights={"image": fusion}``. Bad names or
    values are a :class:`~anomem.errors.ConfigError` naming them."""
    if fusion is not None:
        weights = {**(weights or {}), "image": fusion}
    if weights is None:
        return None
    if not isinstance(weights, Mapping):
        raise ConfigError(f"weights must be a mapping of weight names to values, got {type(weights).__name__}")
    scorer = model.scorer
    try:
        given = {k: v for k, v in weights.items() if k in SETTINGS}
        flat = scorer.weights.as_dict()
        if given:
            flat = compose({**settings, **given}, scorer.readable(model.use_heads), scorer.num_scales, model.use_heads)
        return {**flat, **check_parts({k: v for k, v in weights.items() if k not in SETTINGS}, scorer.weights.names)}
    except ValueError as e:
        raise ConfigError(str(e)) from None
