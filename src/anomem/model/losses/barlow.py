"""Barlow Twins objective, the paper's named alternative to NT-Xent (§3.1).

Per position, both views are standardised over the batch and their cross-correlation
matrix C (C x C) is pushed to the identity:

    L = Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²

Reference: [0] Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021.

Shape:
    a, b: (P, B, C) -> (P,) loss per position.
"""

from __future__ import annotations

import torch


def barlow_twins(a: torch.Tensor, b: torch.Tensor, off_diagonal_weight: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss between aligned rows of ``a`` and ``b``; symmetric in (a, b)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"barlow_twins expects two (P, B, C) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    bsz = a.shape[1]
    za = (a - a.mean(1, keepdim=True)) / (a.std(1, unbiased=False, keepdim=True) + eps)  # (P, B, C)
    zb = (b - b.mean(1, keepdim=True)) / (b.std(1, unbiased=False, keepdim=True) + eps)
    corr = torch.bmm(za.transpose(1, 2), zb) / bsz  # (P, C, C)
    diag = torch.diagonal(corr, dim1=1, dim2=2)  # (P, C)
    on = (1 - diag).pow(2).sum(-1)
    off = corr.pow(2).sum((1, 2)) - diag.pow(2).sum(-1)
    return on + off_diagonal_weight * off  # (P,)


class BarlowTwins(torch.nn.Module):
    """Module form of :func:`barlow_twins` holding λ."""

    def __init__(self, off_diagonal_weight: float = 5e-3) -> None:
        super().__init__()
        self.off_diagonal_weight = off_diagonal_weight

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return barlow_twins(a, b, self.off_diagonal_weight)
