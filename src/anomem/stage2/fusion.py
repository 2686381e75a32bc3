"""How the named parts become one image score and one heat-map: :func:`fuse`.

The image score of a batch, from its :class:`~anomem.stage2.parts.ScoreParts` and the
weights w (:class:`Weights`), in three steps:

1. each scale: m_s = heads_s if the heads score (Eq. 10) else memory_s (Eq. 9), mixed
   with the pooled-feature bank, (1 - w_bank) · m_s + w_bank · bank_s;
2. the scales merged by Eq. 13, g = Σ_s λ_s m_s / Σ_s λ_s (λ = ``w.scales``), then the
   raw-pixel bank: g ← (1 - w_pg - w_pl) · g + w_pg · pixel_global + w_pl · pixel_local,
   where the contrast (with weight ``w.contrast``) takes pixel_global's place when the
   heads score and labelled anomalies are stored (unless either weight is 0);
3. the fusion with the patch banks: s = w_image · (g, feature_patches, pixel_patches).

The heat-map: the memory's standardised per-scale maps merged by Eq. 13 position by
position, mixed with the pixel bank's local map by ``w.map_pixel``, then fused with the
two patch maps by ``w.map``. Every part is a z-score on training normals
(:class:`~anomem.stage2.standard.Standard`), so the weights compare like with like.

The weights are state: set from the config at fit, ``image`` and ``map`` fitted per
dataset (:mod:`anomem.stage2.fit_fusion`), saved in the checkpoint; any of them can be
replaced for one call (:meth:`FusionWeights.merged_with`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from anomem.stage2.parts import MapParts, ScoreParts
from anomem.stage2.state import StateError, entry

IMAGE_SIGNALS = ("global", "feature_patches", "pixel_patches")  # the order of ``image`` and ``map``


class Weights(NamedTuple):
    """Every weight of the fusion (tensors).

    Attributes:
        scales: (S,) λ^(s) of Eq. 13.
        bank: share of the pooled-feature bank in each scale's score.
        pixel_global: share of the raw-pixel kNN score after Eq. 13.
        pixel_local: share of the raw-pixel local score after Eq. 13.
        contrast: share of the contrast in pixel_global's place when the heads score.
        image: (3,) global score, feature patches, pixel patches.
        map_pixel: share of the pixel bank's local map in the memory's map.
        map: (3,) memory map, feature-patch map, pixel-patch map.
    """

    scales: torch.Tensor
    bank: torch.Tensor
    pixel_global: torch.Tensor
    pixel_local: torch.Tensor
    contrast: torch.Tensor
    image: torch.Tensor
    map_pixel: torch.Tensor
    map: torch.Tensor


SHARES = ("bank", "pixel_global", "pixel_local", "contrast", "map_pixel")  # one number in [0, 1] each
SIMPLEX = ("image", "map")  # three numbers >= 0 summing to 1


def check_weight(name: str, value: Any, scales: int) -> torch.Tensor:
    """One weight as a tensor, checked (ValueError naming it otherwise)."""
    if name not in Weights._fields:
        raise ValueError(f"unknown fusion weight {name!r}; expected one of {', '.join(Weights._fields)}")
    try:
        t = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"fusion weight {name} must be numbers, got {value!r}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"fusion weight {name} must be finite, got {t.tolist()}")
    if name in SHARES:
        if t.numel() != 1 or not 0 <= float(t) <= 1:
            raise ValueError(f"fusion weight {name} must be one number in [0, 1], got {t.tolist()}")
        return t.reshape(())
    t = t.flatten()
    if name == "scales":
        if t.numel() != scales or bool((t < 0).any()) or not float(t.sum()) > 0:
            raise ValueError(f"fusion weight scales must be {scales} numbers >= 0 with a positive sum, got {t.tolist()}")
        return t
    if t.numel() != 3 or bool((t < 0).any()) or not math.isclose(float(t.sum()), 1.0, abs_tol=1e-4):
        raise ValueError(f"fusion weight {name} must be 3 numbers >= 0 summing to 1 "
                         f"({', '.join(IMAGE_SIGNALS)}), got {t.tolist()}")
    return t


class FusionWeights(nn.Module):
    """The fusion's weights as buffers (saved with the scorer): :class:`Weights` by name."""

    def __init__(self, scales: int) -> None:
        super().__init__()
        self.register_buffer("scales", torch.tensor([float(2**s) for s in range(scales)]))
        for name in SHARES:
            self.register_buffer(name, torch.zeros(()))
        for name in SIMPLEX:
            self.register_buffer(name, torch.tensor([1.0, 0.0, 0.0]))

    @property
    def scales_count(self) -> int:
        """S, the number of scales (the length of ``scales``)."""
        return int(self.scales.numel())

    def get(self) -> Weights:
        return Weights(*(getattr(self, n) for n in Weights._fields))

    @torch.no_grad()
    def set(self, **values: Any) -> None:
        """Set weights by name, each checked (:func:`check_weight`)."""
        for name, v in values.items():
            getattr(self, name).copy_(check_weight(name, v, self.scales_count))

    def merged_with(self, values: Mapping[str, Any] | None) -> Weights:
        """These weights with some replaced for one call (the others as fitted)."""
        w = self.get()
        if not values:
            return w
        return w._replace(**{k: check_weight(k, v, self.scales_count).to(getattr(w, k).device)
                             for k, v in values.items()})

    @staticmethod
    def check_state(state, prefix: str, scales: int) -> None:
        """Refuse (StateError) saved weights :func:`check_weight` would refuse."""
        for name in Weights._fields:
            try:
                check_weight(name, entry(state, f"{prefix}{name}", floating=True), scales)
            except StateError:
                raise
            except ValueError as e:
                raise StateError(f"scorer['{prefix}{name}']: {e}") from None

    def describe(self) -> dict[str, float | list[float]]:
        """Plain numbers, for reports and metadata."""
        return {n: (t.tolist() if t.dim() else float(t)) for n, t in zip(Weights._fields, self.get())}


def per_scale(parts: ScoreParts, w: Weights) -> torch.Tensor:
    """Step 1: each scale's score (B, S), the heads' or the memory's, mixed with the bank."""
    base = parts.memory if parts.heads is None else parts.heads
    if parts.bank is None:
        return base
    return (1 - w.bank) * base + w.bank * parts.bank


def merge_scales(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 13, s = Σ_s λ^(s) s^(s) / Σ_s λ^(s), for image scores (B, S) or, position by
    position, maps (B, S, H, W) -> (B, *)."""
    lam = weights.reshape(-1, *([1] * (scores.dim() - 2)))
    return (scores * lam).sum(1) / weights.sum()


def global_score(parts: ScoreParts, w: Weights) -> torch.Tensor:
    """Step 2: Eq. 13 over the scales, then the raw-pixel bank. (B,)"""
    g = merge_scales(per_scale(parts, w), w.scales)
    if parts.pixel_global is None:
        return g
    wg, glob = w.pixel_global, parts.pixel_global
    if parts.contrast is not None:  # the heads score and anomalies are stored
        use = (w.contrast > 0) & (w.pixel_global > 0)
        wg, glob = torch.where(use, w.contrast, wg), torch.where(use, parts.contrast, glob)
    local = torch.zeros_like(g) if parts.pixel_local is None else parts.pixel_local
    return (1 - wg - w.pixel_local) * g + wg * glob + w.pixel_local * local


def image_components(parts: ScoreParts, w: Weights) -> torch.Tensor | None:
    """The three scores step 3 weighs (B, 3): global, feature patches, pixel patches
    (zeros where a bank is not read); None when no patch bank was read."""
    if parts.feature_patches is None and parts.pixel_patches is None:
        return None
    g = global_score(parts, w)
    zero = torch.zeros_like(g)
    return torch.stack([g, zero if parts.feature_patches is None else parts.feature_patches,
                        zero if parts.pixel_patches is None else parts.pixel_patches], 1)


def fuse(parts: ScoreParts, w: Weights) -> torch.Tensor:
    """The image score (B,): steps 1-3 of the module docstring."""
    comp = image_components(parts, w)
    if comp is None:
        return global_score(parts, w)
    return w.image[0] * comp[:, 0] + (comp[:, 1:] * w.image[1:]).sum(1)


def map_components(maps: MapParts, w: Weights) -> torch.Tensor:
    """The three maps the heat-map weighs (B, 3, H, W): the memory's (Eq. 13 per position,
    with the pixel bank's local map), the feature patches', the pixel patches' (zeros
    where a bank is not read)."""
    memory = merge_scales(maps.memory, w.scales)
    if maps.pixel_local is not None:
        memory = (1 - w.map_pixel) * memory + w.map_pixel * maps.pixel_local
    zero = torch.zeros_like(memory)
    return torch.stack([memory, zero if maps.feature_patches is None else maps.feature_patches,
                        zero if maps.pixel_patches is None else maps.pixel_patches], 1)


def fuse_maps(maps: MapParts, w: Weights) -> torch.Tensor:
    """The fused heat-map (B, H, W)."""
    return (map_components(maps, w) * w.map[None, :, None, None]).sum(1)


__all__ = ["FusionWeights", "IMAGE_SIGNALS", "Weights", "check_weight", "fuse", "fuse_maps", "global_score",
           "image_components", "map_components", "merge_scales", "per_scale"]
