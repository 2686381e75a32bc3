"""Checks of saved state, shared by every signal's ``check_state``.

A detector file is something someone may hand you: before a scorer is built from it,
each signal checks its own entries (:meth:`anomem.stage2.scorer.Scorer.check_state`)
with these primitives, so that NaN statistics, a zero standard deviation or a bank of
the wrong width are refused with one line naming the entry, never scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

MAX_MAGNITUDE = 1e15  # no trained weight or statistic comes near; float32 arithmetic on it stays finite


class StateError(ValueError):
    """One entry of a saved state is wrong; the message names it."""


def tensor(value: Any, field: str, ndim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    """``value`` if it is a dense, finite tensor of bounded magnitude (and the asked rank/kind)."""
    if not isinstance(value, torch.Tensor):
        raise StateError(f"{field} must be a tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.device.type == "meta":
        raise StateError(f"{field} must be a dense tensor, got layout {value.layout} on {value.device.type}")
    if ndim is not None and value.ndim != ndim:
        raise StateError(f"{field} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if floating is True and not value.is_floating_point():
        raise StateError(f"{field} must be floating point, got {value.dtype}")
    if value.is_floating_point() or value.is_complex():
        if not bool(torch.isfinite(value).all()):
            raise StateError(f"{field} holds NaN or infinite values")
        if value.numel() and float(value.abs().max()) > MAX_MAGNITUDE:
            raise StateError(f"{field} holds values of magnitude above {MAX_MAGNITUDE:g} (they overflow when scored)")
    return value


def entry(state: Mapping[str, Any], key: str, ndim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    """``state[key]`` checked by :func:`tensor`; a missing entry is an error naming it."""
    if key not in state:
        raise StateError(f"scorer[{key!r}] is missing")
    return tensor(state[key], f"scorer[{key!r}]", ndim, floating)


def statistic(state: Mapping[str, Any], prefix: str, size: int | None, what: str = "one per scale") -> None:
    """A :class:`~anomem.stage2.standard.Standard` at ``prefix``: ``mean`` and ``std`` of
    one value (``size`` None) or ``size`` values, the std > 0."""
    for part in ("mean", "std"):
        key = f"{prefix}{part}"
        t = entry(state, key, ndim=0 if size is None else 1, floating=True)
        if size is not None and t.shape[0] != size:
            raise StateError(f"scorer[{key!r}] must hold {size} values ({what}), got shape {tuple(t.shape)}")
        if part == "std" and not bool((t > 0).all()):
            raise StateError(f"scorer[{key!r}] must be > 0 (a standard deviation), got {t.tolist()}")


__all__ = ["MAX_MAGNITUDE", "StateError", "entry", "statistic", "tensor"]
