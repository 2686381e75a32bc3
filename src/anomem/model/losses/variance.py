"""Variance regulariser against prototype collapse (paper Eq. 6; the variance is over the batch, see below).

Var is taken ACROSS the normal samples of the batch, per feature dimension, so that
all retrieved prototypes collapsing onto one point drives it to zero:

    L_V = - mean_d sqrt( Var_k[Mem(z_k, y_k)]_d + ε ),   k over normal samples

ε keeps the gradient finite at exact collapse (d sqrt(v)/dv is infinite at v = 0).

Shape:
    mem: (P, B, C), normal: (B,) or per position (P, B) bool -> (P,). Fewer than two
    normals (at a position) -> zero there.
"""

from __future__ import annotations

import torch


def variance_loss(mem: torch.Tensor, normal: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Negative mean per-dimension standard deviation of ``mem`` over normal rows."""
    if mem.ndim != 3 or normal.shape not in (mem.shape[1:2], mem.shape[:2]):
        raise ValueError(f"variance_loss expects mem (P, B, C) and normal (B,) or (P, B), got {tuple(mem.shape)}, "
                         f"{tuple(normal.shape)}")
    w = normal.to(mem.dtype).expand(mem.shape[:2])[..., None]  # (P, B, 1): 1 for normals, weights: no host sync
    n = w.sum(1)  # (P, 1)
    denom = n.clamp_min(1.0)
    mean = (mem * w).sum(1, keepdim=True) / denom[:, None]  # (P, 1, C)
    var = (((mem - mean) ** 2) * w).sum(1) / denom  # (P, C)
    loss = -torch.sqrt(var + eps).mean(-1)  # (P,)
    n = n[:, 0]
    return torch.where(n >= 2, loss, torch.zeros_like(loss))
