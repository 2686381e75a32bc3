"""The weights of the linear score: one flat dict, and the settings it is composed from.

The image score is ``Σ_k w[k] · parts[k]`` over named z-scores (:mod:`anomem.stage2.scorer`)
and the heat-map the same over the ``map.*`` parts; :class:`Weights` holds ``w`` by name
(saved with the scorer). Nobody writes those numbers by hand: :func:`compose` derives them
from a handful of **settings**, the knobs a user thinks in, which come from the config
(section ``weights``) and, for ``image`` and ``map``, from the fit
(:mod:`anomem.fit.fusion`):

=============  ===============================================================
setting        meaning
=============  ===============================================================
scales         λ^(s) of Eq. 13, one per scale (normalised to sum to 1)
bank           share of the pooled-feature bank in each scale's score
pixel_global   share of the raw-pixel kNN score beside the scales
pixel_local    share of the raw-pixel local score beside the scales
contrast       the share pixel_global takes instead, read from the contrast,
               once labelled anomalies are stored and the heads score
image          (global, feature_patches, pixel_patches): the global score made
               of the terms above, and the local signals (``LOCAL``)
map_pixel      share of the pixel bank's local map beside the memory's maps
map            (memory, feature_patches, pixel_patches) of the heat-map
=============  ===============================================================

A part the detector cannot read (a bank that is off, heads never trained, no stored
anomalies) gets weight 0, and the shares of what is left are not renormalised except
where the table says so: this is exactly the nested formula of format 2, multiplied out.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from typing import Any

import torch
from torch import nn

from anomem.stage2.patch_bank import LOCAL as LOCAL_SIGNALS
from anomem.stage2.state import StateError, entry

SHARES = ("bank", "pixel_global", "pixel_local", "contrast", "map_pixel")  # one number in [0, 1]
SIMPLEX = ("image", "map")  # three numbers >= 0 summing to 1
SETTINGS = ("scales", *SHARES, *SIMPLEX)
LOCAL = tuple(LOCAL_SIGNALS)  # the local signals, in the order of the image and map splits
PIXELS = ("pixel_global", "pixel_local", "contrast")


def part_names(scales: int) -> list[str]:
    """Every weight's name, image parts then map parts, in the order they are saved."""
    per = [f"{kind}.{s}" for kind in ("memory", "heads", "bank") for s in range(scales)]
    image = per + [*PIXELS, *LOCAL]
    maps = [f"map.memory.{s}" for s in range(scales)] + ["map.pixel_local", *(f"map.{p}" for p in LOCAL)]
    return image + maps


def check_setting(name: str, value: Any, scales: int) -> list[float] | float:
    """One setting, checked (ValueError naming it otherwise), as plain numbers."""
    if name not in SETTINGS:
        raise ValueError(f"unknown weight {name!r}; the settings are {', '.join(SETTINGS)}, "
                         f"the parts {', '.join(part_names(scales))}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"weight {name} must be numbers, got {value!r}"[:200]) from None
    if not bool(torch.isfinite(t).all()) or not math.isfinite(float(t.sum())):
        raise ValueError(f"weight {name} must be finite numbers with a finite sum, got {t.tolist()}"[:200])
    if name in SHARES:
        if t.numel() != 1 or not 0 <= float(t) <= 1:
            raise ValueError(f"weight {name} must be one number in [0, 1], got {t.tolist()}"[:200])
        return float(t)
    if name == "scales":
        if t.numel() != scales or bool((t < 0).any()) or not float(t.sum()) > 0:
            raise ValueError(f"weight scales must be {scales} numbers >= 0 with a positive sum, got {t.tolist()}"[:200])
        return t.tolist()
    n = 1 + len(LOCAL)
    if t.numel() != n or bool((t < 0).any()) or not math.isclose(float(t.sum()), 1.0, abs_tol=1e-4):
        raise ValueError(f"weight {name} must be {n} numbers >= 0 summing to 1 (global, {', '.join(LOCAL)}), "
                         f"got {t.tolist()}"[:200])
    return t.tolist()


def compose(settings: Mapping[str, Any], readable: Container[str], scales: int, heads: bool) -> dict[str, float]:
    """The flat weights of ``settings`` for a scorer that can read the parts ``readable``;
    ``heads``: each scale is read from the heads (Eq. 10) instead of the memory (Eq. 9)."""
    st = {k: check_setting(k, v, scales) for k, v in settings.items()}
    w = dict.fromkeys(part_names(scales), 0.0)
    lam = [v / sum(st["scales"]) for v in st["scales"]]
    base = "heads" if heads else "memory"
    for s in range(scales):
        share = st["bank"] if f"bank.{s}" in readable else 0.0
        w[f"{base}.{s}"], w[f"bank.{s}"] = lam[s] * (1 - share), lam[s] * share
    glob = [f"{base}.{s}" for s in range(scales)] + [f"bank.{s}" for s in range(scales)]
    if "pixel_global" in readable:
        name, share = "pixel_global", st["pixel_global"]
        if "contrast" in readable and st["contrast"] > 0 and share > 0:  # the contrast takes its place
            name, share = "contrast", st["contrast"]
        rest = 1 - share - st["pixel_local"]
        for k in glob:
            w[k] *= rest
        w[name], w["pixel_local"] = share, st["pixel_local"]
        glob += [name, "pixel_local"]
    if any(p in readable for p in LOCAL):  # without a local signal the image split is not read
        for k in glob:
            w[k] *= st["image"][0]
        for i, p in enumerate(LOCAL, 1):
            w[p] = st["image"][i] if p in readable else 0.0
    mem = [f"map.memory.{s}" for s in range(scales)]
    for s, k in enumerate(mem):
        w[k] = lam[s]
    if "pixel_local" in readable:
        for k in mem:
            w[k] *= 1 - st["map_pixel"]
        w["map.pixel_local"] = st["map_pixel"]
        mem.append("map.pixel_local")
    for k in mem:
        w[k] *= st["map"][0]
    for i, p in enumerate(LOCAL, 1):
        w[f"map.{p}"] = st["map"][i] if p in readable else 0.0
    return w


def global_only() -> list[float]:
    """The split that reads the global score alone: (1, 0, ..., 0)."""
    return [1.0] + [0.0] * len(LOCAL)


def split_of(weights: Mapping[str, float], prefix: str = "") -> list[float]:
    """The (global, *LOCAL) split that flat weights were composed with (``prefix`` ``map.``
    for the heat-map's): the local signals' weights stand alone."""
    local = [float(weights.get(f"{prefix}{p}", 0.0)) for p in LOCAL]
    return [max(0.0, 1.0 - sum(local)), *local]


class Weights(nn.Module):
    """The flat weights as one saved buffer ``values``, in :func:`part_names` order."""

    def __init__(self, scales: int) -> None:
        super().__init__()
        self.names = part_names(scales)
        self.register_buffer("values", torch.zeros(len(self.names)))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values.tolist()))

    @torch.no_grad()
    def set(self, weights: Mapping[str, float]) -> None:
        """Replace the weights named in ``weights`` (the others kept), each checked."""
        new = {**self.as_dict(), **check_parts(weights, self.names)}
        self.values.copy_(torch.tensor([new[n] for n in self.names]))

    @staticmethod
    def check_state(state: Mapping[str, Any], prefix: str, scales: int) -> None:
        """Refuse (StateError) saved weights of the wrong length, negative or not finite."""
        t = entry(state, f"{prefix}values", ndim=1, floating=True)
        if t.numel() != len(part_names(scales)) or bool((t < 0).any()):
            raise StateError(f"scorer['{prefix}values'] must be {len(part_names(scales))} numbers >= 0, "
                             f"got shape {tuple(t.shape)}")


def check_parts(weights: Mapping[str, Any], names: list[str]) -> dict[str, float]:
    """Part weights by name, each a finite number >= 0 (ValueError naming it otherwise)."""
    out = {}
    for k, v in weights.items():
        if k not in names:
            raise ValueError(f"unknown weight {k!r}; the settings are {', '.join(SETTINGS)}, the parts {', '.join(names)}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= float(v) < 1e6:
            raise ValueError(f"weight {k} must be a number in [0, 1e6), got {v!r}"[:200])
        out[k] = float(v)
    return out


__all__ = ["LOCAL", "SETTINGS", "Weights", "check_parts", "check_setting", "compose", "global_only", "part_names",
           "split_of"]
