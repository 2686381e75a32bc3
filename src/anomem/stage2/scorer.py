"""Everything stage 2 keeps, and the one path from evidence to named parts to scores.

:class:`Scorer` holds one module per signal, each with its own state and statistics:

=================  =========================================  ===========================
signal             evidence                                   module
=================  =========================================  ===========================
memory             ‖Δ^(s)‖₂ (Eq. 9) and its per-position map  :mod:`.memory`
heads              g^(s)(φ(Δ^(s))) (Eq. 10-12)                :mod:`.heads`
bank               kNN of pooled tap features                 :mod:`.feature_bank`
pixel_global/local raw-pixel kNN, per-position difference     :mod:`.pixel_bank`
contrast           normals vs stored anomalies, raw pixels    :mod:`.pixel_bank`
*_patches          patch descriptors vs coresets              :mod:`.patch_bank`
=================  =========================================  ===========================

and the fusion's weights (:mod:`.fusion`). Reading a batch is: :meth:`Scorer.signals`
(the input-level evidence, once per batch), :meth:`Scorer.parts` (every image-level
z-score by name), :func:`~anomem.stage2.fusion.fuse` (the image score); heat-maps go
the same way through :meth:`Scorer.map_parts` and :func:`~anomem.stage2.fusion.fuse_maps`.

Symbols: B batch, S scales, H W input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomem.maps import smooth_maps
from anomem.stage2.feature_bank import FeatureBank
from anomem.stage2.fusion import FusionWeights, Weights, fuse
from anomem.stage2.heads import HeadsSignal
from anomem.stage2.memory import MemorySignal, norm_maps
from anomem.stage2.parts import Local, MapParts, ScoreParts, Signals
from anomem.stage2.patch_bank import PatchBank, pixel_descriptors
from anomem.stage2.pixel_bank import Contrast, PixelBank

PATCH_BANKS = ("feature", "pixel")  # the patch banks, in the order of the fusion's image weights 1 and 2


class Scorer(nn.Module):
    """The fitted stage 2: one module per signal and the fusion's weights.

    Args:
        channels: C_s of each tapped scale.
        pool, hidden: the heads' pooling side and MLP width (Eq. 10).
        bank_k: neighbours of the kNN distances (feature bank, pixel bank, contrast).
        pixel_side, local_k, map_sigma: the pixel bank's resolution, local neighbours and
            smoothing (:class:`~anomem.stage2.pixel_bank.PixelBank`).
        patch_banks: coreset sizes of the feature and pixel patch banks (0 = off).
        patch_top_k: share of a patch map's positions averaged into its image score.

    No defaults: :func:`anomem.factory.build_scorer` builds it from the config, where
    every default lives.

    Shape:
        evidence of B images -> image score (B,)
    """

    def __init__(self, channels: Sequence[int], *, pool: int, hidden: int, bank_k: int, pixel_side: int,
                 local_k: int, map_sigma: float, patch_banks: tuple[int, int], patch_top_k: float) -> None:
        super().__init__()
        s = len(channels)
        self.memory = MemorySignal(s)
        self.heads = HeadsSignal(channels, pool, hidden)
        self.bank = FeatureBank(channels, bank_k)
        self.pixels = PixelBank(pixel_side, bank_k, local_k, map_sigma)
        self.contrast = Contrast(bank_k)
        self.patches = nn.ModuleDict({n: PatchBank(size, patch_top_k) for n, size in zip(PATCH_BANKS, patch_banks)})
        self.weights = FusionWeights(s)

    @property
    def num_scales(self) -> int:
        return self.weights.scales_count

    def patch_banks_read(self, every: bool = False) -> dict[str, bool]:
        """Which patch banks a batch is read with: ready ones the image or the map fusion
        weighs (all ready ones with ``every``)."""
        w = torch.maximum(self.weights.image[1:], self.weights.map[1:])
        return {n: b.ready and (every or float(w[i]) > 0) for i, (n, b) in enumerate(self.patches.items())}

    def signals(self, x: torch.Tensor, local_features: torch.Tensor | None, every: bool = False) -> Signals:
        """The input-level evidence of a batch x (B, C, H, W) in [0, 1], from the pixels and
        the encoder's patch descriptors; each patch bank only when read."""
        pixel_global = pixel_local = contrast = None
        if self.pixels.ready:
            pixel_global, pixel_local, contrast = self.pixel_signals(self.pixels.features(x))
        read = self.patch_banks_read(every)
        descriptors = {"feature": lambda: local_features, "pixel": lambda: pixel_descriptors(x)}
        patches = {}
        for name, bank in self.patches.items():
            d = descriptors[name]() if read[name] else None  # computed only when read
            patches[name] = None if d is None else bank(d)
        return Signals(pixel_global, pixel_local, contrast, patches.get("feature"), patches.get("pixel"))

    def pixel_signals(self, feats: torch.Tensor, contrast: bool = True) -> tuple[torch.Tensor, Local, torch.Tensor | None]:
        """The pixel bank's global score (B,) and local signal, and the contrast (B,) (None
        without stored anomalies, or unless ``contrast``), of pixel vectors (B, D)."""
        raw, glob, local = self.pixels.scores(feats)
        c = self.contrast(raw.global_distance, feats) if contrast and self.contrast.ready_for(self.pixels) else None
        return glob, local, c

    def parts(self, evidence, use_heads: bool) -> ScoreParts:
        """Every standardised image-level part of a batch, by name. The heads' distances
        are read when ``use_heads`` (and the contrast then too)."""
        sig = evidence.signals if evidence.signals is not None else Signals()
        pixel_global, pixel_local, feature_patches, pixel_patches = sig.image_scores()
        return ScoreParts(
            memory=self.memory(evidence.deviations),
            heads=self.heads(evidence.deviations) if use_heads else None,
            bank=self.bank(evidence.embeddings) if self.bank.ready else None,
            pixel_global=pixel_global,
            pixel_local=pixel_local,
            contrast=sig.contrast if use_heads else None,
            feature_patches=feature_patches,
            pixel_patches=pixel_patches,
        )

    def map_parts(self, evidence, size: tuple[int, int], sigma: float) -> tuple[torch.Tensor, MapParts]:
        """The per-scale smoothed norm maps (B, S, H, W) and every standardised map part at
        ``size``, smoothed by ``sigma`` pixels."""
        maps = norm_maps(evidence.deviations, size, sigma)
        sig = evidence.signals if evidence.signals is not None else Signals()

        def up(local: Local | None, smooth: bool) -> torch.Tensor | None:
            if local is None:
                return None
            m = F.interpolate(local.map[:, None], size=size, mode="bilinear", align_corners=False)
            return (smooth_maps(m, sigma) if smooth and sigma > 0 else m)[:, 0]

        return maps, MapParts(self.memory.map(maps), up(sig.pixel_local, False), up(sig.feature_patches, True),
                              up(sig.pixel_patches, True))

    def forward(self, evidence, use_heads: bool, weights: Weights | None = None) -> torch.Tensor:
        """Image anomaly score (B,), higher = more anomalous: the parts fused with the
        fitted weights or ``weights``."""
        return fuse(self.parts(evidence, use_heads), self.weights.get() if weights is None else weights)

    @staticmethod
    def check_state(state, pixel_grid: list[int], max_scales: int) -> list[int]:
        """Every signal checks its own saved entries (StateError naming the first wrong
        one); returns each scale's pooled input width. ``pixel_grid`` (C, h, w) is what
        the detector's input size gives the pixel bank."""
        dims = HeadsSignal.check_state(state, "heads.", max_scales)
        n = len(dims)
        MemorySignal.check_state(state, "memory.", n)
        FeatureBank.check_state(state, "bank.", n)
        width = PixelBank.check_state(state, "pixels.", pixel_grid)
        Contrast.check_state(state, "contrast.", width)
        for name in PATCH_BANKS:
            PatchBank.check_state(state, f"patches.{name}.")
        FusionWeights.check_state(state, "weights.", n)
        return dims

    def resize_like(self, state: dict) -> None:
        """Give every variable-size buffer the shape a saved state holds, before load_state_dict."""
        self.bank.resize_like(state, "bank.")
        self.pixels.resize_like(state, "pixels.")
        self.contrast.resize_like(state, "contrast.")
        for name, bank in self.patches.items():
            bank.resize_like(state, f"patches.{name}.")


__all__ = ["PATCH_BANKS", "Scorer"]
