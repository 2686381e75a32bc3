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

import torch
import torch.nn.functional as F
from torch import nn


def one_class_scores(deviations: Sequence[torch.Tensor]) -> torch.Tensor:
    """s^(s) = ‖Δ^(s)‖₂ over the whole map (Eq. 9).

    Shape:
        S maps (B, C_s, H_s, W_s) -> (B, S)
    """
    return torch.stack([d.flatten(1).norm(dim=1) for d in deviations], dim=1)


def merge_scales(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """s_a = Σ_s λ^(s) s^(s) / Σ_s λ^(s) (Eq. 13).

    Shape:
        scores (B, S), weights (S,) -> (B,)
    """
    return (scores * weights).sum(1) / weights.sum()


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
        """φ(Δ): (B, C, H, W) -> (B, C·pool·pool)."""
        return F.adaptive_avg_pool2d(delta, self.pool).flatten(1)

    def set_input_stats(self, pooled_normals: torch.Tensor) -> None:
        self.in_mean.copy_(pooled_normals.mean(0))
        self.in_std.copy_(pooled_normals.std(0, unbiased=False).clamp_min(1e-6))

    def distance(self, pooled: torch.Tensor) -> torch.Tensor:
        """g(φ(Δ)) from already pooled features (B, D) -> (B,)."""
        return self.mlp((pooled - self.in_mean) / self.in_std).squeeze(1)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.distance(self.pool_features(delta))


def bank_distances(embeddings: torch.Tensor, bank: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """Mean cosine distance of each embedding to its k nearest rows of a normal bank.

    The bank is a memory that keeps every stored normal: Hopfield retrieval (Eq. 1) with
    β → ∞ recalls the nearest stored pattern, and this is the distance to it (averaged
    over the k nearest, as kNN anomaly detectors do). ``exclude_self`` skips the i-th
    bank row for the i-th query (leave-one-out statistics of the bank itself).

    Shape:
        embeddings (B, C), bank (K, C) unit rows -> (B,)
    """
    q = F.normalize(embeddings.float(), dim=1)
    sim = q @ bank.T  # (B, K)
    if exclude_self:
        sim = sim - 4.0 * torch.eye(*sim.shape, device=sim.device, dtype=sim.dtype)  # cosine >= -1: never picked
    k = min(k, bank.shape[0] - int(exclude_self))
    return 1.0 - sim.topk(k, dim=1).values.mean(1)


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
                 standardize: bool, bank_k: int = 2, bank_weight: float = 0.5) -> None:
        super().__init__()
        s = len(channels)
        self.standardize = standardize
        self.bank_k = bank_k
        self.bank_weight = bank_weight
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

    def bank_scores(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Standardised bank distances (B, S)."""
        d = torch.stack([bank_distances(e, b, self.bank_k) for e, b in zip(embeddings, self.banks)], 1)
        return (d - self.bank_mean) / self.bank_std

    def per_scale(self, evidence, supervised: bool) -> torch.Tensor:
        """Per-scale anomaly scores, standardised if configured. (B, S)"""
        deviations = evidence.deviations
        if supervised:
            raw = torch.stack([h(d) for h, d in zip(self.heads, deviations)], dim=1)  # Eq. 10
            mean, std = self.head_mean, self.head_std
        else:
            raw = one_class_scores(deviations)  # Eq. 9
            mean, std = self.score_mean, self.score_std
        if not self.standardize:
            return raw
        per = (raw - mean) / std
        if self.has_banks:
            per = mix_bank(per, self.bank_scores(evidence.embeddings), self.bank_weight)
        return per

    def forward(self, evidence, supervised: bool) -> torch.Tensor:
        """Merged anomaly score (B,), higher = more anomalous (Eq. 13)."""
        return merge_scales(self.per_scale(evidence, supervised), self.scale_weights)
