"""One standardisation for every stage-2 signal.

Each signal is turned into a z-score, z = (v - mean) / std, with the mean and standard
deviation of its values on training normals, so that signals of different units (a
norm of a deviation map, a cosine distance, a pixel distance) can be added with
weights. :class:`Standard` holds those two statistics and is the only place they are
computed: one per signal, or one per scale (then applied along dimension 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

EPS = 1e-6  # the smallest standard deviation a statistic may hold (a constant signal)


class Standard(nn.Module):
    """z = (v - mean) / std with statistics of normals (buffers ``mean`` and ``std``).

    Args:
        size: None for one statistic over every value of the signal, or the number of
            scales for one statistic per scale (values (N, S) or maps (N, S, H, W)).
    """

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        shape = () if size is None else (int(size),)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def _columns(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` as (rows, statistics): every value, or one column per scale."""
        if self.mean.dim() == 0:
            return values.reshape(-1, 1)
        return values.movedim(1, -1).reshape(-1, self.mean.shape[0])

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> Standard:
        """Set mean and std (population) from values of normals; fewer than two values
        leave std at 1 (nothing to estimate a spread from)."""
        cols = self._columns(values.float())
        mean = cols.mean(0).reshape(self.mean.shape)
        std = cols.std(0, unbiased=False).clamp_min(EPS) if cols.shape[0] > 1 else torch.ones_like(cols[0])
        self.mean.copy_(mean)
        self.std.copy_(std.reshape(self.std.shape))
        return self

    @torch.no_grad()
    def fit_moments(self, mean: torch.Tensor, mean_sq: torch.Tensor) -> Standard:
        """Set the statistics from running moments E[v] and E[v²] (values too many to keep)."""
        self.mean.copy_(mean)
        self.std.copy_((mean_sq - mean**2).clamp_min(EPS**2).sqrt())
        return self

    @torch.no_grad()
    def identity(self) -> Standard:
        """Mean 0, std 1: values pass unchanged (the paper's raw scores, ``scorer.merge=weighted``)."""
        self.mean.zero_()
        self.std.fill_(1.0)
        return self

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """z-scores of ``values``: any shape for one statistic; (B, S, *) per scale."""
        if self.mean.dim() == 0 or values.dim() <= 2:
            return (values - self.mean) / self.std
        shape = (-1,) + (1,) * (values.dim() - 2)
        return (values - self.mean.view(shape)) / self.std.view(shape)


class Local(NamedTuple):
    """A local signal of a batch, standardised: ``score`` (B,), read off ``map`` (B, h, w)."""

    score: torch.Tensor
    map: torch.Tensor


__all__ = ["EPS", "Local", "Standard"]
