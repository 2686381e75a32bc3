"""The heads' signal (paper Eq. 10-12): learned distances from the pooled deviation maps.

With labelled anomalies (or pseudo-anomalies, ``pseudo.heads``), one head per scale,
g^(s) ∘ φ (Eq. 10): φ an adaptive average pool of Δ^(s) to p x p, g a 2-layer MLP with
one output, trained with the double hinge (Eq. 11-12, :func:`fit_heads` below)
while encoder and memories stay frozen. Once trained, their standardised distances take
the memory's Eq. 9 scores' place in the image score.

Symbols: B batch, C channels, H W spatial, S scales, D = C·p·p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from anomem.errors import ConfigError
from anomem.model.losses import double_hinge
from anomem.model.schedule import cosine_with_warmup
from anomem.stage2.standard import Standard
from anomem.stage2.state import StateError, entry, statistic


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
    """g^(s) ∘ φ of Eq. 10 for one scale; the pooled features are standardised by fixed
    statistics of the training normals (``inputs``) so that one learning rate suits
    every scale.

    Shape:
        Δ (B, C, H, W) -> d (B,)
    """

    def __init__(self, channels: int, pool: int, hidden: int) -> None:
        super().__init__()
        self.pool = pool
        dim = channels * pool * pool
        self.inputs = Standard(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def pool_features(self, delta: torch.Tensor) -> torch.Tensor:
        """φ(Δ), adaptive average pooling: (B, C, H, W) -> (B, C·pool·pool)."""
        h, w = int(delta.shape[2]), int(delta.shape[3])
        m = adaptive_pool_matrix(h, w, self.pool).to(device=delta.device, dtype=delta.dtype)
        return (delta.flatten(2) @ m).flatten(1)

    def distance(self, pooled: torch.Tensor) -> torch.Tensor:
        """g(φ(Δ)) from already pooled features (B, D) -> (B,)."""
        return self.mlp(self.inputs(pooled)).squeeze(1)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.distance(self.pool_features(delta))


class HeadsSignal(nn.Module):
    """One :class:`DeviationHead` per scale, the statistics of their distances on
    normals (``z``) and whether they were trained (``trained``, a 0-d bool buffer)."""

    def __init__(self, channels: Sequence[int], pool: int, hidden: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(DeviationHead(c, pool, hidden) for c in channels)
        self.z = Standard(len(channels))
        self.register_buffer("trained", torch.tensor(False))

    def pool(self, deviations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """φ(Δ^(s)) of every scale: S x (B, D_s)."""
        return [h.pool_features(d) for h, d in zip(self.nets, deviations)]

    def distances(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """g^(s)(φ(Δ^(s))) of every scale (Eq. 10): S x (B, D_s) -> (B, S)."""
        return torch.stack([h.distance(p) for h, p in zip(self.nets, pooled)], dim=1)

    @torch.no_grad()
    def calibrate(self, normal_pooled: Sequence[torch.Tensor], standardise: bool = True) -> None:
        """After training: statistics of the normals' distances, and mark trained."""
        if standardise:
            self.z.fit(self.distances(normal_pooled))
        else:
            self.z.identity()
        self.trained.fill_(True)

    def scores(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """Standardised distances (B, S)."""
        return self.z(self.distances(pooled))

    def forward(self, deviations: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.scores(self.pool(deviations))

    @staticmethod
    def check_state(state, prefix: str, max_scales: int) -> list[int]:
        """Refuse (StateError) saved heads that could not score; return each scale's
        pooled input width D_s (the number of heads is the number of scales)."""
        dims = []
        while f"{prefix}nets.{len(dims)}.inputs.mean" in state:
            dims.append(int(entry(state, f"{prefix}nets.{len(dims)}.inputs.mean", ndim=1).numel()))
        if not 1 <= len(dims) <= max_scales:
            raise StateError(f"scorer must hold 1 to {max_scales} heads, got {len(dims)}")
        for i, d in enumerate(dims):
            statistic(state, f"{prefix}nets.{i}.inputs.", d, "one per input")
            for part in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"):
                entry(state, f"{prefix}nets.{i}.{part}", floating=True)
        statistic(state, f"{prefix}z.", len(dims))
        if entry(state, f"{prefix}trained").numel() != 1:
            raise StateError(f"scorer['{prefix}trained'] must be one flag")
        return dims


def fit_heads(
    heads: nn.ModuleList,
    normal_feats: list[torch.Tensor],
    anomaly_feats: list[torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    margin: float,
    seed: int,
) -> list[float]:
    """Train g^(s) on pooled deviations φ(Δ^(s)) with the double hinge (Eq. 11-12).

    Anomalies are rare, so every batch is drawn half from normals and half from
    anomalies (with replacement), which guarantees both labels in each batch.

    Args:
        heads: one DeviationHead per scale (their input statistics are set here).
        normal_feats, anomaly_feats: per scale, pooled features (N, D_s) / (M, D_s).
        steps, batch_size, lr, weight_decay: SGD (Nesterov momentum 0.9, cosine schedule).
        margin: M of Eq. 11.
        seed: seeds the batch draws and the head initialisation.

    Returns:
        the loss of each step (for logging and tests).
    """
    gen = torch.Generator().manual_seed(seed)
    n, m = normal_feats[0].shape[0], anomaly_feats[0].shape[0]
    if n == 0 or m == 0:
        raise ConfigError("supervised heads need both normal and anomalous training samples")
    device = normal_feats[0].device
    with torch.no_grad():
        for head, f in zip(heads, normal_feats):
            head.inputs.fit(f)
            for layer in head.mlp:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    w = torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=gen)
                    layer.weight.copy_(w)  # drawn on the CPU generator, copied to the device
                    layer.bias.zero_()
    params = [p for h in heads for p in h.mlp.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, steps, 0))
    half = max(1, batch_size // 2)
    y = torch.cat([torch.ones(half), torch.zeros(half)]).to(device)  # 1 = normal
    losses = []
    for h in heads:
        h.train()
    for _ in range(steps):
        ni = torch.randint(n, (half,), generator=gen).to(device)
        ai = torch.randint(m, (half,), generator=gen).to(device)
        loss = 0.0
        for head, fn, fa in zip(heads, normal_feats, anomaly_feats):
            d = head.distance(torch.cat([fn[ni], fa[ai]]))  # (2·half,)
            loss = loss + double_hinge(d, y, margin).mean()
        loss = loss / len(heads)  # Eq. 12: mean over samples and scales
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    for h in heads:
        h.eval()
    return torch.stack(losses).tolist()  # one host sync, after the loop


__all__ = ["DeviationHead", "HeadsSignal", "adaptive_pool_matrix", "fit_heads"]
