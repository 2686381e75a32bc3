"""NT-Xent, the SimCLR loss (paper Eq. 2 and 5), batched over spatial positions.

    ℓ(u, v) = -log( exp(sim(u, v)/τ) / Σ_{p ≠ u} exp(sim(u, p)/τ) )

with sim the cosine similarity and p ranging over the 2B vectors of the two-view batch.
The symmetrised mean (1/2B) Σ_k [ℓ(a_k, b_k) + ℓ(b_k, a_k)] is Eq. 4 once ``a`` holds
Mem(z_k, y_k). Every position gets its own 2B x 2B similarity matrix (paper Eq. 7, sum over Ω): the
batch of P positions is one ``bmm``, never a (2B·P)² matrix.

Reference: [0] Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020.

Shape:
    a, b: (P, B, C) -> (P,) loss per position.

Example:
    >>> a, b = torch.randn(4, 8, 16), torch.randn(4, 8, 16)
    >>> nt_xent(a, b, temperature=0.1).shape
    torch.Size([4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetrised NT-Xent between aligned rows of ``a`` and ``b`` (Eq. 4-5)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"nt_xent expects two (P, B, C) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    p, bsz, _ = a.shape
    z = F.normalize(torch.cat([a, b], dim=1), dim=-1)  # (P, 2B, C)
    sim = torch.bmm(z, z.transpose(1, 2)) / temperature  # (P, 2B, 2B)
    self_mask = torch.eye(2 * bsz, dtype=torch.bool, device=a.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # p ≠ u in Eq. 5
    idx = torch.arange(bsz, device=a.device)
    targets = torch.cat([idx + bsz, idx])  # row k pairs with k+B and back, (2B,)
    loss = F.cross_entropy(sim.flatten(0, 1), targets.repeat(p), reduction="none")  # (P·2B,)
    return loss.view(p, 2 * bsz).mean(dim=1)  # (P,)


class NTXent(torch.nn.Module):
    """Module form of :func:`nt_xent` holding the temperature τ (paper: 0.1)."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.temperature)
