"""The memory's signal: how far each position is from what the Hopfield memory recalls.

Image level, one score per scale, s^(s) = ‖Δ^(s)‖₂ over the whole deviation map (paper
Eq. 9); map level, ‖Δ^(s)_ij‖₂ at each position, brought to input size and smoothed.
Both are standardised per scale by their statistics on training normals (the raw norms
of different scales differ by orders of magnitude); with ``scorer.merge=weighted`` the
image scores stay raw, as the paper has them.

Symbols: B batch, C channels, H W spatial, S scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomem.maps import smooth_maps
from anomem.stage2.standard import Standard
from anomem.stage2.state import statistic


def one_class_scores(deviations: Sequence[torch.Tensor]) -> torch.Tensor:
    """s^(s) = ‖Δ^(s)‖₂ over the whole map (Eq. 9): S maps (B, C_s, H_s, W_s) -> (B, S)."""
    return torch.stack([d.flatten(1).norm(dim=1) for d in deviations], dim=1)


def norm_maps(deviations: Sequence[torch.Tensor], size: tuple[int, int], sigma: float) -> torch.Tensor:
    """‖Δ^(s)_ij‖₂ of every scale upsampled (bilinear) to ``size`` and smoothed by a
    Gaussian of ``sigma`` pixels: S maps -> (B, S, H, W)."""
    norms = torch.stack([F.interpolate(d.norm(dim=1, keepdim=True), size=size, mode="bilinear",
                                       align_corners=False)[:, 0] for d in deviations], dim=1)
    return smooth_maps(norms, sigma)


class MemorySignal(nn.Module):
    """Standardised Eq. 9 scores and per-position norms (statistics ``score``, ``map``)."""

    def __init__(self, scales: int) -> None:
        super().__init__()
        self.score = Standard(scales)
        self.map = Standard(scales)

    @torch.no_grad()
    def fit(self, raw: torch.Tensor, map_mean: torch.Tensor, map_sq: torch.Tensor, standardise: bool = True) -> None:
        """Statistics from normals: ``raw`` (N, S) Eq. 9 scores, and the first two moments
        (S,) of their per-position norms; ``standardise=False`` keeps image scores raw."""
        if standardise:
            self.score.fit(raw)
        else:
            self.score.identity()
        self.map.fit_moments(map_mean, map_sq)

    @staticmethod
    def check_state(state, prefix: str, scales: int) -> None:
        """Refuse (StateError) saved entries this signal could not score with."""
        statistic(state, f"{prefix}score.", scales)
        statistic(state, f"{prefix}map.", scales)

    def forward(self, deviations: Sequence[torch.Tensor]) -> torch.Tensor:
        """Standardised Eq. 9 scores (B, S)."""
        return self.score(one_class_scores(deviations))


__all__ = ["MemorySignal", "norm_maps", "one_class_scores"]
