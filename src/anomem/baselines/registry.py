"""Name -> baseline detector registry, so protocols and the CLI can pick one by name."""

from __future__ import annotations

import inspect
from typing import Any

from anomem.baselines.base import BaseDetector
from anomem.baselines.deep_sad import DeepSAD
from anomem.baselines.raw_pixel import (
    RawPixelIsolationForest,
    RawPixelKNN,
    RawPixelOCSVM,
    RawPixelPatchKNN,
)
from anomem.errors import ConfigError

__all__ = ["BASELINES", "make_baseline"]

_REGISTRY: dict[str, type[BaseDetector]] = {
    "ocsvm": RawPixelOCSVM,
    "iforest": RawPixelIsolationForest,
    "knn": RawPixelKNN,
    "patch-knn": RawPixelPatchKNN,
    "deepsad": DeepSAD,
}

#: Names accepted by :func:`make_baseline`, in a fixed order.
BASELINES: tuple[str, ...] = tuple(_REGISTRY)


def make_baseline(name: str, **kwargs: Any) -> BaseDetector:
    """Construct the baseline detector called ``name`` with constructor arguments ``kwargs``.

    Names: ``"ocsvm"`` (:class:`RawPixelOCSVM`), ``"iforest"``
    (:class:`RawPixelIsolationForest`), ``"knn"`` (:class:`RawPixelKNN`), ``"patch-knn"``
    (:class:`RawPixelPatchKNN`), ``"deepsad"``
    (:class:`DeepSAD`). Every one accepts ``random_state``.

    Raises:
        ConfigError: unknown name (the message lists the known ones) or an argument the
            detector does not take.
    """
    if not isinstance(name, str) or name.strip().lower() not in _REGISTRY:
        raise ConfigError(f"unknown baseline {name!r}; known baselines: {', '.join(BASELINES)}")
    cls = _REGISTRY[name.strip().lower()]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"baseline {name!r} ({cls.__name__}) takes no argument {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid)}"
        )
    return cls(**kwargs)
