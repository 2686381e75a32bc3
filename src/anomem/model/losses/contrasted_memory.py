"""Multi-scale contrasted memory loss L_COM-MS (paper Eq. 3-4, 6-7).

The model hands over, per scale, the memory branch Mem(z_ij, y) (Eq. 3) and the other
view z'_ij at the positions Ω^(s) it sampled. This module only combines them:

    L = 1/Σ_s|Ω^(s)| · Σ_s Σ_{(i,j)∈Ω^(s)} λ^(s) [ L_COM(ij) + λ_V · L_V(ij) ]

where L_COM is a pairwise objective over the batch at one position (NT-Xent by default,
Barlow Twins as the alternative the paper names).

Shape:
    per scale: mem (P_s, B, C_s), other (P_s, B, C_s); normal (B,) bool -> scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from anomem.model.losses.variance import variance_loss

PairwiseObjective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(a (P, B, C), b (P, B, C)) -> (P,) loss per position, e.g. NTXent or BarlowTwins."""


class ScalePairs(NamedTuple):
    """The two branches at the sampled positions of one scale.

    Attributes:
        mem: Mem(z, y) of the first view, shape (P, B, C).
        other: z' of the second view, shape (P, B, C).
    """

    mem: torch.Tensor
    other: torch.Tensor


class LossTerms(NamedTuple):
    """Total loss and its parts (detached parts are for logging)."""

    total: torch.Tensor
    contrastive: torch.Tensor
    variance: torch.Tensor


class ContrastedMemoryLoss(torch.nn.Module):
    """L_COM-MS of Eq. 7.

    Args:
        objective: pairwise loss per position (Eq. 4-5 with NT-Xent).
        scale_weights: λ^(s) per scale (paper: 2^(s-1)).
        variance_weight: λ_V (paper: 0.05).
        variance_eps: ε of the variance term.
    """

    def __init__(
        self,
        objective: PairwiseObjective,
        scale_weights: Sequence[float],
        variance_weight: float = 0.05,
        variance_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.objective = objective
        self.scale_weights = tuple(float(w) for w in scale_weights)
        self.variance_weight = variance_weight
        self.variance_eps = variance_eps

    def forward(self, pairs: Sequence[ScalePairs], normal: torch.Tensor) -> LossTerms:
        if len(pairs) != len(self.scale_weights):
            raise ValueError(f"got {len(pairs)} scales for {len(self.scale_weights)} scale weights")
        n_pos = sum(p.mem.shape[0] for p in pairs)  # Σ_s |Ω^(s)|
        com = var = None
        for lam, p in zip(self.scale_weights, pairs):
            c = lam * self.objective(p.mem, p.other).sum()  # Σ_ij λ L_COM
            v = lam * variance_loss(p.mem, normal, self.variance_eps).sum()  # Σ_ij λ L_V
            com = c if com is None else com + c
            var = v if var is None else var + v
        com, var = com / n_pos, var / n_pos
        return LossTerms(com + self.variance_weight * var, com.detach(), var.detach())
