"""Multi-scale contrasted memory loss L_COM-MS (paper Eq. 3-4, 6-7).

The model hands over, per scale, the memory branch Mem(z_ij, y) (Eq. 3) and the other
view z'_ij at the positions Ω^(s) it sampled. This module only combines them:

    L = 1/Σ_s|Ω^(s)| · Σ_s Σ_{(i,j)∈Ω^(s)} λ^(s) [ L_COM(ij) + λ_V · L_V(ij) ]

where L_COM is a pairwise objective over the batch at one position (NT-Xent by default,
Barlow Twins as the alternative the paper names).

Shape:
    per scale: mem (P_s, B, C_s), other (P_s, B, C_s) [, normal (P_s, B) bool]; normal (B,) bool -> scalar.
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
        normal: y per position, (P, B) bool, where it differs from position to position
            (a local defect makes only the positions it touches y = 0); None: the images'
            labels hold at every position.
        deviation: ‖ξ - HF(ξ)‖ / ‖ξ‖ at every sampled position of the first view, (P, B),
            for the local hinge (:func:`local_hinge`); None when it is not trained.
        partial: (P, B) bool, positions a local defect touches but covers less of than
            ``loss.local_cover``: y = 0 in Eq. 3, left out of the local hinge; None: none.
    """

    mem: torch.Tensor
    other: torch.Tensor
    normal: torch.Tensor | None = None
    deviation: torch.Tensor | None = None
    partial: torch.Tensor | None = None


def local_hinge(deviation: torch.Tensor, normal: torch.Tensor, margins: tuple[float, float],
                partial: torch.Tensor | None = None) -> torch.Tensor:
    """The double hinge of Eq. 11 read position by position on the memory's own deviation.

    A normal position is pulled within ``margins[0]`` of what the memory recalls for it, an
    altered one pushed beyond ``margins[1]``, both relative to the query's length: at 1 the
    recollection is no closer to the query than the origin is (the memory holds nothing
    like it). Each side is averaged over its own positions, so a few altered positions
    weigh as much as the many normal ones; a side with no position adds 0. Positions marked
    ``partial`` (a defect touches their cell but covers little of it) are on neither side.

    Shape:
        deviation (P, B), normal (P, B) bool, partial (P, B) bool -> scalar
    """
    y = normal.to(deviation.dtype)
    a = 1 - y if partial is None else (~normal & ~partial).to(deviation.dtype)
    near = (y * torch.relu(deviation - margins[0])).sum() / y.sum().clamp_min(1.0)
    far = (a * torch.relu(margins[1] - deviation)).sum() / a.sum().clamp_min(1.0)
    return near + far


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
        local_weight: λ_L of the local hinge (:func:`local_hinge`), added for the scales
            whose pairs carry per-position labels and deviations, weighted by λ^(s) / Σ λ^(s).
        local_margins: its (normal, altered) margins.
    """

    def __init__(
        self,
        objective: PairwiseObjective,
        scale_weights: Sequence[float],
        variance_weight: float = 0.05,
        variance_eps: float = 1e-4,
        local_weight: float = 0.0,
        local_margins: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        super().__init__()
        self.objective = objective
        self.local_weight, self.local_margins = local_weight, tuple(local_margins)
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
            y = normal if p.normal is None else p.normal
            v = lam * variance_loss(p.mem, y, self.variance_eps).sum()  # Σ_ij λ L_V
            com = c if com is None else com + c
            var = v if var is None else var + v
        com, var = com / n_pos, var / n_pos
        total = com + self.variance_weight * var
        if self.local_weight > 0:
            lam_sum = sum(self.scale_weights)
            for lam, p in zip(self.scale_weights, pairs):
                if p.deviation is not None and p.normal is not None:
                    total = total + self.local_weight * lam / lam_sum * local_hinge(p.deviation, p.normal, self.local_margins,
                                                                                 p.partial)
        return LossTerms(total, com.detach(), var.detach())
