"""What fit makes of the training data before the stages run: the calibration split
and the pseudo-anomalies (:mod:`anomem.model.pseudo`).

Symbols: N images.
"""

from __future__ import annotations

import torch

from anomem.config import AnoMemConfig
from anomem.errors import ConfigError
from anomem.inputs import to_float
from anomem.model.pseudo import make_pseudo_anomalies, shift_separability


def calibration_split(normal: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the normals held out to set the threshold: floor(fraction · n) of the
    n normals, drawn with a generator seeded by ``seed`` (the global RNG is untouched),
    never leaving fewer than 2 normals to train on. (M,) int64, sorted; M may be 0."""
    idx = normal.nonzero().flatten()
    m = min(int(fraction * idx.numel()), idx.numel() - 2)
    if m <= 0:
        return idx[:0]
    gen = torch.Generator().manual_seed(seed + 7919)  # a stream of its own, not the training one
    return idx[torch.randperm(idx.numel(), generator=gen)[:m]].sort().values


def usable_shifts(x: torch.Tensor, shifts: tuple[str, ...], cfg: AnoMemConfig) -> tuple[str, ...]:
    """The shifts that move these normals (N, C, H, W) off their distribution: a shift the
    class is (nearly) invariant to makes pseudo-anomalies that look normal."""
    p = cfg.pseudo
    if shifts and p.min_separability > 0 and x.shape[0] >= 4:
        sep = shift_separability(x, shifts, generator=torch.Generator().manual_seed(cfg.train.seed + 7))
        shifts = tuple(k for k in shifts if sep[k] >= p.min_separability)
    return shifts


def pseudo_anomalies(normals: torch.Tensor, cfg: AnoMemConfig) -> torch.Tensor:
    """``pseudo.ratio`` x N pseudo-anomalies of the training normals (float, CPU), seeded
    by ``train.seed`` on a stream of their own (:mod:`anomem.model.pseudo`)."""
    p = cfg.pseudo
    count = max(1, round(p.ratio * normals.shape[0]))
    gen = torch.Generator().manual_seed(cfg.train.seed + 104729)
    shifts = p.shifts
    if normals.shape[-1] != normals.shape[-2]:  # quarter turns need square images
        shifts = tuple(k for k in shifts if k not in ("rot90", "rot270"))
        if not shifts and not p.defects:
            raise ConfigError("pseudo.shifts holds only quarter turns, which need square images; add rot180 or vflip")
    x = to_float(normals)
    shifts = usable_shifts(x, shifts, cfg)
    if not shifts and (p.defect_fraction == 0 or not p.defects):
        return x[:0]  # nothing left that makes an anomaly: the paper's stage 1
    return make_pseudo_anomalies(x, count, shifts, p.defects, p.defect_fraction, p.defect_size, gen).images


__all__ = ["calibration_split", "pseudo_anomalies", "usable_shifts"]
