"""Stage 2 scores a batch in three steps: read it, name its parts, add them up.

1. :meth:`Scorer.read` turns one encoder pass (and the pixels) into a :class:`Reading`;
   a cached reading of held-out normals (:mod:`anomem.fit.stage2`) has the same fields.
2. :meth:`Scorer.parts` names every z-score of the reading: ``memory.s`` (Eq. 9),
   ``heads.s`` (Eq. 10), ``bank.s``, ``pixel_global``, ``pixel_local``, ``contrast``,
   ``feature_patches``, ``pixel_patches``; :meth:`Scorer.map_parts` the same for heat-maps
   (``map.memory.s``, ``map.pixel_local``, ``map.feature_patches``, ``map.pixel_patches``).
3. :func:`fuse`: the score is ``Σ_k w[k] · parts[k]``, the heat-map the same over the
   map parts, with the flat weights of :mod:`anomem.stage2.weights`.

``SIGNALS`` is the registry: one module per signal, each with its own state, statistics
and ``check_state``. Symbols: B batch, S scales, H W input size.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anomem.maps import smooth_maps
from anomem.stage2.feature_bank import FeatureBank
from anomem.stage2.heads import HeadsSignal
from anomem.stage2.memory import MemorySignal, norm_maps, one_class_scores
from anomem.stage2.patch_bank import LOCAL as LOCAL_SIGNALS
from anomem.stage2.patch_bank import PatchBank
from anomem.stage2.pixel_bank import Contrast, PixelBank
from anomem.stage2.weights import LOCAL, Weights

SIGNALS = {"memory": MemorySignal, "heads": HeadsSignal, "bank": FeatureBank, "pixels": PixelBank,
           "contrast": Contrast, **dict.fromkeys(LOCAL_SIGNALS, PatchBank)}


class Reading(NamedTuple):
    """What stage 2 reads of B images. ``eq9`` (B, S) raw ‖Δ^(s)‖₂; ``pooled`` S x (B, D_s)
    φ(Δ^(s)) for the heads; ``bank`` (B, S) the feature bank's z-scores; ``inputs`` the
    input-level image z-scores by part name and ``maps`` their maps (B, h, w); ``net`` the
    encoder's evidence (None for a cached reading, which has no maps)."""

    eq9: torch.Tensor
    pooled: list[torch.Tensor] | None = None
    bank: torch.Tensor | None = None
    inputs: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    net: object = None


def fuse(parts: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Σ_k w[k] · parts[k]: the image score (B,) of image parts, the heat-map of map parts."""
    first = next(iter(parts.values()))
    return sum((float(weights.get(k, 0.0)) * v for k, v in parts.items() if weights.get(k, 0.0)),
               torch.zeros_like(first))


class Scorer(nn.Module):
    """The fitted stage 2: the ``SIGNALS`` and the flat ``weights``. Built from the config
    by :func:`anomem.factory.build_scorer`, where every default lives."""

    def __init__(self, channels: Sequence[int], *, pool: int, hidden: int, bank_k: int, pixel_side: int,
                 local_k: int, map_sigma: float, patch_banks: Mapping[str, int], patch_top_k: float) -> None:
        super().__init__()
        s = len(channels)
        self.memory, self.heads, self.bank = MemorySignal(s), HeadsSignal(channels, pool, hidden), FeatureBank(channels, bank_k)
        self.pixels, self.contrast = PixelBank(pixel_side, bank_k, local_k, map_sigma), Contrast(bank_k)
        for name, source in LOCAL_SIGNALS.items():  # the local signals' registry (off where no size is given)
            self.add_module(name, PatchBank(patch_banks.get(name, 0), patch_top_k, source))
        self.weights = Weights(s)

    def local(self, name: str) -> PatchBank:
        """The local signal ``name`` of :data:`~anomem.stage2.patch_bank.LOCAL`."""
        return getattr(self, name)

    @property
    def num_scales(self) -> int:
        return self.memory.score.mean.numel()

    def reads_encoder_patches(self, need: Container[str]) -> bool:
        """Whether reading ``need`` asks the encoder pass for its patch descriptors."""
        return any(self.local(p).reads_encoder and self.local(p).ready and (p in need or f"map.{p}" in need)
                   for p in LOCAL)

    def readable(self, heads: bool) -> set[str]:
        """The image parts this scorer can read now (``heads``: the heads score)."""
        out = {f"memory.{s}" for s in range(self.num_scales)}
        out |= {f"heads.{s}" for s in range(self.num_scales)} if heads else set()
        out |= {f"bank.{s}" for s in range(self.num_scales)} if self.bank.ready else set()
        out |= {"pixel_global", "pixel_local"} if self.pixels.ready else set()
        out |= {"contrast"} if heads and self.contrast.ready_for(self.pixels) else set()
        return out | {p for p in LOCAL if self.local(p).ready}

    def read(self, x: torch.Tensor, ev, need: Container[str]) -> Reading:
        """The reading of a batch x (B, C, H, W) in [0, 1] and its encoder evidence ``ev``;
        the input-level signals only where ``need`` names one of their parts."""
        inputs, maps = {}, {}
        if self.pixels.ready and any(k in need for k in ("pixel_global", "pixel_local", "contrast", "map.pixel_local")):
            inputs, maps = self.pixel_parts(self.pixels.features(x))
        for name in LOCAL:
            if self.local(name).ready and (name in need or f"map.{name}" in need):
                inputs[name], maps[name] = self.local(name).read(x, ev)
        pooled = self.heads.pool(ev.deviations) if self.heads.trained else None
        bank = self.bank(ev.embeddings) if self.bank.ready else None
        return Reading(one_class_scores(ev.deviations), pooled, bank, inputs, maps, ev)

    def pixel_parts(self, feats: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The pixel bank's and the contrast's image parts, and the local map, of pixel vectors (B, D)."""
        raw, glob, local = self.pixels.scores(feats)
        inputs = {"pixel_global": glob, "pixel_local": local.score}
        if self.contrast.ready_for(self.pixels):
            inputs["contrast"] = self.contrast(raw.global_distance, feats)
        return inputs, {"pixel_local": local.map}

    def parts(self, r: Reading) -> dict[str, torch.Tensor]:
        """Every image z-score (B,) of a reading, by name."""
        cols = {"memory": self.memory.score(r.eq9)}
        if r.pooled is not None:
            cols["heads"] = self.heads.scores(r.pooled)
        if r.bank is not None:
            cols["bank"] = r.bank
        named = {f"{k}.{s}": v[:, s] for k, v in cols.items() for s in range(v.shape[1])}
        return {**named, **r.inputs}

    def map_parts(self, r: Reading, size: tuple[int, int], sigma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-scale smoothed norm maps (B, S, H, W) and every map z-score (B, H, W) at
        ``size``, by name; the patch maps smoothed by ``sigma`` pixels like the memory's."""
        maps = norm_maps(r.net.deviations, size, sigma)
        z = self.memory.map(maps)
        out = {f"map.memory.{s}": z[:, s] for s in range(z.shape[1])}
        for name, m in r.maps.items():
            m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)
            out[f"map.{name}"] = (smooth_maps(m, sigma) if name in LOCAL and sigma > 0 else m)[:, 0]
        return maps, out

    def forward(self, r: Reading, weights: Mapping[str, float]) -> torch.Tensor:
        """Image anomaly score (B,), higher = more anomalous."""
        return fuse(self.parts(r), weights)

    @staticmethod
    def check_state(state, pixel_grid: list[int], max_scales: int) -> list[int]:
        """Each signal checks its own saved entries (StateError naming the first wrong
        one); returns each scale's pooled input width."""
        dims = HeadsSignal.check_state(state, "heads.", max_scales)
        n = len(dims)
        MemorySignal.check_state(state, "memory.", n)
        FeatureBank.check_state(state, "bank.", n)
        Contrast.check_state(state, "contrast.", PixelBank.check_state(state, "pixels.", pixel_grid))
        for name in LOCAL:
            PatchBank.check_state(state, f"{name}.")
        Weights.check_state(state, "weights.", n)
        return dims

    def resize_like(self, state: dict) -> None:
        """Give every variable-size buffer the shape a saved state holds, before load_state_dict."""
        for name in SIGNALS:
            if hasattr(getattr(self, name), "resize_like"):
                getattr(self, name).resize_like(state, f"{name}.")


__all__ = ["Reading", "SIGNALS", "Scorer", "fuse"]
