"""Stage 2: anomaly scores from the deviation maps (paper Eq. 9-13).

One-class: s^(s) = ‖Δ^(s)‖₂ over the whole map (Eq. 9). Semi-supervised: a head per
scale, g^(s) ∘ φ (Eq. 10), trained with the double hinge (Eq. 11-12) while encoder and
memories stay frozen. Scales are merged by the λ-weighted mean (Eq. 13), optionally
after standardising each scale by its statistics on training normals (the raw norms of
different scales differ by orders of magnitude, so the deepest scale would otherwise
dominate whatever λ says).

Symbols: B batch, C channels, H W spatial, S scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from anomem.stage2.patch_bank import PatchBank
from anomem.stage2.pixel_bank import PixelBank, euclidean_distances

PATCH_SIGNALS = ("feature", "pixel")  # the patch banks, in the order of the fusion weights


def one_class_scores(deviations: Sequence[torch.Tensor]) -> torch.Tensor:
    """s^(s) = ‖Δ^(s)‖₂ over the whole map (Eq. 9).

    Shape:
        S maps (B, C_s, H_s, W_s) -> (B, S)
    """
    return torch.stack([d.flatten(1).norm(dim=1) for d in deviations], dim=1)


def merge_scales(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """s_a = Σ_s λ^(s) s^(s) / Σ_s λ^(s) (Eq. 13), for image scores or, position by
    position, for heat-maps.

    Shape:
        scores (B, S, *) , weights (S,) -> (B, *)
    """
    w = weights.reshape(-1, *([1] * (scores.dim() - 2)))  # (S, 1, ...) against (B, S, ...)
    return (scores * w).sum(1) / weights.sum()


@lru_cache(maxsize=32)
def adaptive_pool_matrix(h: int, w: int, pool: int) -> torch.Tensor:
    """The linear map of ``adaptive_avg_pool2d(·, pool)`` on an h×w grid, (h·w, pool²).

    Bin i along a side of n cells covers cells floor(i·n/p) .. ceil((i+1)·n/p) - 1, as
    in torch. Built from Python numbers, so a traced or exported graph holds it as a
    constant (ONNX has no adaptive pooling for sizes that do not divide evenly).
    """
    def bins(n: int) -> list[tuple[int, int]]:
        return [((i * n) // pool, -((-(i + 1) * n) // pool)) for i in range(pool)]

    m = torch.zeros(h * w, pool * pool)
    for a, (y0, y1) in enumerate(bins(h)):
        for b, (x0, x1) in enumerate(bins(w)):
            cells = [y * w + x for y in range(y0, y1) for x in range(x0, x1)]
            m[cells, a * pool + b] = 1.0 / len(cells)
    return m


class DeviationHead(nn.Module):
    """g^(s) ∘ φ of Eq. 10 for one scale.

    φ is an adaptive average pool to ``pool x pool``; the pooled features are
    standardised with fixed statistics of the training normals (buffers set by
    :meth:`set_input_stats`) so that one learning rate suits every scale; g is a
    2-layer MLP with one scalar output, the anomaly distance d.

    Shape:
        Δ (B, C, H, W) -> d (B,)
    """

    def __init__(self, channels: int, pool: int, hidden: int) -> None:
        super().__init__()
        self.pool = pool
        dim = channels * pool * pool
        self.register_buffer("in_mean", torch.zeros(dim))
        self.register_buffer("in_std", torch.ones(dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def pool_features(self, delta: torch.Tensor) -> torch.Tensor:
        """φ(Δ), adaptive average pooling: (B, C, H, W) -> (B, C·pool·pool)."""
        h, w = int(delta.shape[2]), int(delta.shape[3])
        m = adaptive_pool_matrix(h, w, self.pool).to(device=delta.device, dtype=delta.dtype)
        return (delta.flatten(2) @ m).flatten(1)

    def set_input_stats(self, pooled_normals: torch.Tensor) -> None:
        self.in_mean.copy_(pooled_normals.mean(0))
        self.in_std.copy_(pooled_normals.std(0, unbiased=False).clamp_min(1e-6))

    def distance(self, pooled: torch.Tensor) -> torch.Tensor:
        """g(φ(Δ)) from already pooled features (B, D) -> (B,)."""
        return self.mlp((pooled - self.in_mean) / self.in_std).squeeze(1)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.distance(self.pool_features(delta))


def bank_distances(embeddings: torch.Tensor, bank: torch.Tensor, k: int, exclude_self: bool = False,
                   metric: str = "cosine") -> torch.Tensor:
    """Mean distance of each embedding to its k nearest rows of a normal bank.

    The bank is a memory that keeps every stored normal: Hopfield retrieval (Eq. 1) with
    β → ∞ recalls the nearest stored pattern, and this is the distance to it (averaged
    over the k nearest, as kNN anomaly detectors do). ``metric`` is ``cosine`` (the
    bank holds unit rows) or ``euclidean``. ``exclude_self`` skips the i-th bank row for
    the i-th query (leave-one-out statistics of the bank itself).

    Shape:
        embeddings (B, D), bank (K, D) -> (B,)
    """
    q = embeddings.to(bank.dtype)  # the bank's precision (float32 in the scorer)
    if metric == "cosine":
        dist = 1.0 - F.normalize(q, dim=1) @ bank.T  # (B, K)
    elif metric == "euclidean":
        dist = euclidean_distances(q, bank)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if exclude_self:
        far = 4.0 if metric == "cosine" else float(dist.max()) * 2 + 1.0  # never picked
        dist = dist + far * torch.eye(*dist.shape, device=dist.device, dtype=dist.dtype)
    k = min(k, bank.shape[0] - int(exclude_self))
    return dist.topk(k, dim=1, largest=False).values.mean(1)


def mix_bank(per_scale: torch.Tensor, bank: torch.Tensor, weight: float) -> torch.Tensor:
    """Each scale's score from its standardised memory signal and bank distance:
    (1 - w) · memory + w · bank. The one place the two signals meet.

    Shape:
        per_scale (B, S), bank (B, S) -> (B, S)
    """
    return (1 - weight) * per_scale + weight * bank


class Scorer(nn.Module):
    """Everything stage 2 learns: per-scale statistics, the optional heads and banks.

    Buffers ``score_mean``/``score_std`` hold each scale's one-class score statistics
    on training normals; ``head_mean``/``head_std`` the same for head distances;
    ``map_mean``/``map_std`` those of per-position deviation norms (for heat-maps);
    ``bank<s>`` the unit pooled tap features of up to ``scorer.bank`` training normals
    and ``bank_mean``/``bank_std`` their leave-one-out kNN-distance statistics.
    ``supervised`` (a 0-d bool buffer) says whether the heads were trained.

    Each scale's score mixes its standardised signals — the memory's (Eq. 9, or the
    heads' Eq. 10 once trained) with weight 1 - ``bank_weight`` and, when banks are
    stored, the bank distance with weight ``bank_weight`` — and scales merge by Eq. 13.

    Shape:
        Evidence of B images -> per-scale scores (B, S)
    """

    def __init__(self, channels: Sequence[int], scale_weights: Sequence[float], pool: int, hidden: int,
                 standardize: bool, bank_k: int = 2, bank_weight: float = 0.5, pixel_weight: float = 0.0,
                 pixel_side: int = 32, local_weight: float = 0.0, map_pixel_weight: float = 0.0,
                 local_k: int = 20, map_sigma: float = 0.04, contrast_weight: float = 0.0,
                 patch_banks: tuple[int, int] = (0, 0), patch_top_k: float = 0.01) -> None:
        super().__init__()
        s = len(channels)
        self.standardize = standardize
        self.bank_k = bank_k
        self.bank_weight = bank_weight
        self.pixel_weight, self.local_weight, self.map_pixel_weight = pixel_weight, local_weight, map_pixel_weight
        self.contrast_weight = contrast_weight
        active = standardize and max(pixel_weight, local_weight, map_pixel_weight, contrast_weight) > 0
        self.pixels = PixelBank(pixel_side, bank_k, local_k, map_sigma, active)
        self.register_buffer("scale_weights", torch.tensor([float(w) for w in scale_weights]))
        self.register_buffer("score_mean", torch.zeros(s))
        self.register_buffer("score_std", torch.ones(s))
        self.register_buffer("head_mean", torch.zeros(s))
        self.register_buffer("head_std", torch.ones(s))
        self.register_buffer("map_mean", torch.zeros(s))  # per-position ‖Δ_ij‖ stats, for heat-maps
        self.register_buffer("map_std", torch.ones(s))
        self.register_buffer("supervised", torch.tensor(False))
        self.register_buffer("bank_mean", torch.zeros(s))
        self.register_buffer("bank_std", torch.ones(s))
        for i, c in enumerate(channels):
            self.register_buffer(f"bank{i}", torch.zeros(0, c))
        self.heads = nn.ModuleList(DeviationHead(c, pool, hidden) for c in channels)
        # Patch-level evidence (anomem.stage2.patch_bank) and the fusion of the image score:
        # w_global · (the score above) + w_feature · feature patches + w_pixel · pixel patches.
        self.patches = nn.ModuleDict({name: PatchBank(n, patch_top_k) for name, n in zip(PATCH_SIGNALS, patch_banks)})
        self.register_buffer("fusion", torch.tensor([1.0, 0.0, 0.0]))  # (global, *PATCH_SIGNALS), fitted
        self.register_buffer("map_fusion", torch.tensor([1.0, 0.0, 0.0]))  # the same for heat-maps

    @property
    def banks(self) -> list[torch.Tensor]:
        return [getattr(self, f"bank{i}") for i in range(len(self.heads))]

    @property
    def has_banks(self) -> bool:
        return self.bank0.shape[0] > 1

    def set_banks(self, embeddings: Sequence[torch.Tensor]) -> None:
        """Store unit training-normal embeddings per scale and their leave-one-out stats."""
        for i, e in enumerate(embeddings):
            setattr(self, f"bank{i}", F.normalize(e.float(), dim=1).contiguous())
        if self.has_banks:
            d = torch.stack([bank_distances(b, b, self.bank_k, exclude_self=True) for b in self.banks], 1)
            self.bank_mean.copy_(d.mean(0))
            self.bank_std.copy_(d.std(0, unbiased=False).clamp_min(1e-8))

    def resize_banks(self, state: dict) -> None:
        """Give the bank buffers the shapes a saved state holds, before load_state_dict."""
        for i in range(len(self.heads)):
            t = state.get(f"bank{i}")
            if t is not None:
                setattr(self, f"bank{i}", torch.zeros_like(t))
        for name in ("bank", "anomalies"):
            if f"pixels.{name}" in state:
                setattr(self.pixels, name, torch.zeros_like(state[f"pixels.{name}"]))
        for name, bank in self.patches.items():
            bank.resize_like(state, f"patches.{name}.")

    @property
    def has_patches(self) -> bool:
        """True when a patch bank is kept and the fusion gives it weight."""
        weight = torch.maximum(self.fusion[1:], self.map_fusion[1:])
        return any(b.ready and float(w) > 0 for b, w in zip(self.patches.values(), weight))

    def fuse(self, image: torch.Tensor, patch_scores: torch.Tensor | None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        """The fused image score: w · (image-level score (B,), patch scores (B, 2)), with
        the fitted :attr:`fusion` weights or ``weights`` (3,). The one place they meet."""
        w = self.fusion if weights is None else weights.to(image)
        if patch_scores is None or not patch_scores.numel():
            return image
        return w[0] * image + (patch_scores * w[1:]).sum(1)

    def image_score(self, per_scale: torch.Tensor, pixels: torch.Tensor | None, supervised: bool = False) -> torch.Tensor:
        """The image score: Eq. 13 over the scales, then, when the pixel bank is kept,
        mixed with its standardised scores ``pixels`` (B, 3: global, local, contrast):
        (1 - w_g - w_l) · Eq. 13 + w_g · global + w_l · local. Scored by the heads
        (``supervised``) with anomalies in the pixel bank, the contrast takes the global
        score's place, with weight ``contrast_weight`` as w_g (unless ``pixel_weight`` is 0:
        no global pixel evidence at all)."""
        merged = self.merge(per_scale)
        if self.pixels.ready and pixels is not None and pixels.numel():
            wg, wl, glob = self.pixel_weight, self.local_weight, pixels[:, 0]
            if supervised and wg > 0 and self.contrast_weight > 0 and self.pixels.has_anomalies and pixels.shape[1] > 2:
                wg, glob = self.contrast_weight, pixels[:, 2]
            merged = (1 - wg - wl) * merged + wg * glob + wl * pixels[:, 1]
        return merged

    def pixel_scores(self, pixel_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pixel bank's standardised (global, local, contrast) scores (B, 3) and local
        map (B, h, w)."""
        p = self.pixels.scores(pixel_features)
        return torch.stack([p.global_score, p.local_score, p.contrast_score], 1), p.local_map

    def bank_scores(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Standardised bank distances (B, S)."""
        d = torch.stack([bank_distances(e, b, self.bank_k) for e, b in zip(embeddings, self.banks)], 1)
        return (d - self.bank_mean) / self.bank_std

    def head_distances(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """g^(s)(φ(Δ^(s))) of every scale from pooled deviations (Eq. 10): S x (B, D_s) -> (B, S)."""
        return torch.stack([h.distance(p) for h, p in zip(self.heads, pooled)], dim=1)

    def memory_scores(self, deviations: Sequence[torch.Tensor], supervised: bool) -> torch.Tensor:
        """Raw per-scale scores from Δ: the heads' distances (Eq. 10) or ‖Δ‖ (Eq. 9). (B, S)"""
        if supervised:
            return self.head_distances([h.pool_features(d) for h, d in zip(self.heads, deviations)])
        return one_class_scores(deviations)

    def standardise(self, raw: torch.Tensor, supervised: bool, bank: torch.Tensor | None) -> torch.Tensor:
        """Per-scale scores from raw memory scores (B, S) and standardised bank distances
        (B, S) or None: each standardised by its training-normal statistics, then mixed
        (:func:`mix_bank`). Unchanged when ``scorer.merge`` is ``mean``."""
        if not self.standardize:
            return raw
        mean, std = (self.head_mean, self.head_std) if supervised else (self.score_mean, self.score_std)
        per = (raw - mean) / std
        if self.has_banks and bank is not None and bank.numel():
            per = mix_bank(per, bank, self.bank_weight)
        return per

    def per_scale(self, evidence, supervised: bool) -> torch.Tensor:
        """Per-scale anomaly scores of a batch's evidence, standardised if configured. (B, S)"""
        bank = self.bank_scores(evidence.embeddings) if self.has_banks and self.standardize else None
        return self.standardise(self.memory_scores(evidence.deviations, supervised), supervised, bank)

    def map_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-position deviation norms standardised by their training-normal statistics:
        (B, S, H, W) -> (B, S, H, W)."""
        return (maps - self.map_mean[:, None, None]) / self.map_std[:, None, None]

    def merge(self, per_scale: torch.Tensor) -> torch.Tensor:
        """Eq. 13 with this scorer's λ: (B, S, *) -> (B, *)."""
        return merge_scales(per_scale, self.scale_weights)

    def forward(self, evidence, supervised: bool, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Image anomaly score (B,), higher = more anomalous (Eq. 13, then the pixel bank,
        then the fusion with the patch banks, with the fitted or the given ``weights``)."""
        image = self.image_score(self.per_scale(evidence, supervised), evidence.pixel_scores, supervised)
        return self.fuse(image, evidence.patch_scores, weights)
