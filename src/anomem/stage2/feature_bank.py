"""The pooled-feature bank: a kNN memory of whole training normals, per scale.

Up to ``bank.size`` training normals are kept as their tap features averaged over
positions (unit length), and an image's signal at scale s is the mean cosine distance
of its pooled features to the k nearest stored ones. This is Hopfield retrieval (Eq. 1)
with β → ∞ and a memory that keeps every stored normal, as kNN detectors do.
Standardised by the bank's own leave-one-out distances (each stored normal against
the others).

Symbols: B batch, K stored normals, C_s channels of scale s, S scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomem.stage2.standard import Standard
from anomem.stage2.state import StateError, entry, statistic


def euclidean_distances(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, N) by one matmul, |q|² + |b|² - 2 q·b (exportable to ONNX)."""
    sq = (q * q).sum(1, keepdim=True) + (bank * bank).sum(1)[None] - 2.0 * q @ bank.T
    return sq.clamp_min(0.0).sqrt()


def knn_mean(d: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k smallest entries of each row of a distance matrix (B, N) -> (B,)."""
    return d.topk(min(k, d.shape[1]), dim=1, largest=False).values.mean(1)


def bank_distances(embeddings: torch.Tensor, bank: torch.Tensor, k: int, exclude_self: bool = False,
                   metric: str = "cosine") -> torch.Tensor:
    """Mean distance of each embedding to its k nearest rows of a bank, (B, D), (K, D) -> (B,).

    ``metric`` is ``cosine`` (the bank holds unit rows) or ``euclidean``; ``exclude_self``
    skips the i-th bank row for the i-th query (leave-one-out statistics of the bank).
    """
    q = embeddings.to(bank.dtype)
    if metric == "cosine":
        dist = 1.0 - F.normalize(q, dim=1) @ bank.T  # (B, K)
    elif metric == "euclidean":
        dist = euclidean_distances(q, bank)
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if exclude_self:
        far = 4.0 if metric == "cosine" else float(dist.max()) * 2 + 1.0  # never picked
        dist = dist + far * torch.eye(*dist.shape, device=dist.device, dtype=dist.dtype)
    return knn_mean(dist, min(k, bank.shape[0] - int(exclude_self)))


class FeatureBank(nn.Module):
    """Unit pooled tap features of stored normals per scale (``rows0``, ``rows1``, ...) and
    the statistics ``z`` of their leave-one-out distances.

    Shape:
        S x (B, C_s) pooled tap features -> (B, S)
    """

    def __init__(self, channels: Sequence[int], k: int = 2) -> None:
        super().__init__()
        self.k = int(k)
        self.scales = len(channels)
        for i, c in enumerate(channels):
            self.register_buffer(f"rows{i}", torch.zeros(0, c))
        self.z = Standard(self.scales)

    @property
    def rows(self) -> list[torch.Tensor]:
        return [getattr(self, f"rows{i}") for i in range(self.scales)]

    @property
    def ready(self) -> bool:
        return self.rows0.shape[0] > 1

    @torch.no_grad()
    def fit(self, embeddings: Sequence[torch.Tensor]) -> None:
        """Store the normals' pooled features S x (K, C_s) and their leave-one-out statistics."""
        for i, e in enumerate(embeddings):
            setattr(self, f"rows{i}", F.normalize(e.float(), dim=1).contiguous())
        if self.ready:
            self.z.fit(torch.stack([bank_distances(b, b, self.k, exclude_self=True) for b in self.rows], 1))

    def forward(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Standardised distances (B, S)."""
        return self.z(torch.stack([bank_distances(e, b, self.k) for e, b in zip(embeddings, self.rows)], 1))

    @staticmethod
    def check_state(state, prefix: str, scales: int) -> None:
        """Refuse (StateError) a saved bank of mismatched or non-unit rows, or bad statistics."""
        rows = None
        for i in range(scales):
            key = f"{prefix}rows{i}"
            bank = entry(state, key, ndim=2, floating=True)
            if rows is not None and bank.shape[0] != rows:
                raise StateError(f"scorer[{key!r}] holds {bank.shape[0]} rows, {prefix}rows0 holds {rows}")
            rows = bank.shape[0]
            if bank.numel() and not bool(((bank.float().norm(dim=1) - 1).abs() < 1e-3).all()):
                raise StateError(f"scorer[{key!r}] must hold unit-length embeddings (rows of norm 1)")
        statistic(state, f"{prefix}z.", scales)

    def resize_like(self, state: dict, prefix: str) -> None:
        """Give the row buffers the shapes a saved state holds, before load_state_dict."""
        for i in range(self.scales):
            if f"{prefix}rows{i}" in state:
                setattr(self, f"rows{i}", torch.zeros_like(state[f"{prefix}rows{i}"]))


__all__ = ["FeatureBank", "bank_distances", "euclidean_distances", "knn_mean"]
