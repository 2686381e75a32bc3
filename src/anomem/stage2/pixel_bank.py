"""The input itself as the finest scale: a bank of training-normal pixels.

Beside the memories' deviations, stage 2 can keep up to ``scorer.bank`` training normals
as pixel vectors (the longer side brought to at most ``pixel_side``). Two signals come
from it, both standardised by the bank's own leave-one-out statistics (each stored
normal scored against the others), like the feature bank of :mod:`anomem.stage2.scorer`:

* **global**: the mean Euclidean distance to the k nearest stored normals (kNN on raw
  pixels, k = ``bank_k``): evidence for images unlike any normal as a whole;
* **local**: a map, position by position, of the smallest absolute difference between
  the image and any of its ``local_k`` nearest normals (mean over channels), smoothed
  by a Gaussian of σ = ``sigma`` × the shorter side. A normal position is matched by at
  least one of the neighbours; a local defect by none. Its maximum scores the image,
  the standardised map joins the heat-map;
* **contrast** (only once labelled anomalies are given): the global distance to the
  normals minus the mean Euclidean distance to the k nearest stored *anomalies*, a kNN
  likelihood-ratio on raw pixels, standardised over the stored normals (their distance
  to the other normals, leave-one-out, minus their distance to the anomalies). It
  replaces the global score when the detector scores with its heads.

docs/method.md, Decisions 6, 7 and 9, measure them on validation splits.

Symbols: B batch, N stored normals, M stored anomalies, C channels, h w bank resolution,
D = C·h·w.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anomem.maps import smooth_maps


class PixelSignals(NamedTuple):
    """Unstandardised signals of a batch: ``global_distance`` (B,), ``local_map`` (B, h, w)."""

    global_distance: torch.Tensor
    local_map: torch.Tensor


class PixelScores(NamedTuple):
    """Standardised scores of a batch: ``global_score`` (B,), ``local_score`` (B,) (the
    maximum of the map), ``local_map`` (B, h, w) and ``contrast_score`` (B,) (zeros
    while no anomalies are stored)."""

    global_score: torch.Tensor
    local_score: torch.Tensor
    local_map: torch.Tensor
    contrast_score: torch.Tensor


def euclidean_distances(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, N) by one matmul, |q|² + |b|² - 2 q·b (exportable to ONNX)."""
    sq = (q * q).sum(1, keepdim=True) + (bank * bank).sum(1)[None] - 2.0 * q @ bank.T
    return sq.clamp_min(0.0).sqrt()


def _knn_mean(d: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k smallest entries of each row of a distance matrix (B, N) -> (B,)."""
    return d.topk(min(k, d.shape[1]), dim=1, largest=False).values.mean(1)


class PixelBank(nn.Module):
    """Raw-pixel normal bank: global kNN score, local min-difference map and its score.

    Args:
        side: the longer side, in pixels, images are brought down to (never up).
        k: neighbours of the global distance.
        local_k: neighbours the local map takes its per-position minimum over.
        sigma: smoothing of the local map, as a fraction of the shorter side.
        active: keep the bank at all (False: every method is a no-op).

    Shape:
        x (B, C, H, W) in [0, 1] -> features (B, D); map (B, h, w); scores (B,)
    """

    def __init__(self, side: int = 32, k: int = 2, local_k: int = 20, sigma: float = 0.04,
                 active: bool = True) -> None:
        super().__init__()
        self.side, self.k, self.local_k, self.sigma, self.active = side, k, local_k, sigma, active
        self.register_buffer("bank", torch.zeros(0, 0))
        self.register_buffer("grid", torch.zeros(3, dtype=torch.long))  # (C, h, w) of a stored row
        self.register_buffer("anomalies", torch.zeros(0, 0))  # (M, D) labelled anomalies, at bank resolution
        for name in ("global", "map", "local", "contrast"):
            self.register_buffer(f"{name}_mean", torch.zeros(()))
            self.register_buffer(f"{name}_std", torch.ones(()))

    @property
    def ready(self) -> bool:
        return self.active and self.bank.shape[0] > 1

    @property
    def has_anomalies(self) -> bool:
        return self.ready and self.anomalies.shape[0] > 0 and self.anomalies.shape[1] == self.bank.shape[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images as flat pixel vectors at bank resolution (bilinear down-sampling)."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if max(h, w) > self.side:
            f = self.side / max(h, w)
            x = F.interpolate(x.float(), size=(max(1, round(h * f)), max(1, round(w * f))), mode="bilinear",
                              align_corners=False)
        return x.float().flatten(1)

    def _sigma_px(self) -> float:
        return self.sigma * float(min(int(self.grid[1]), int(self.grid[2])))

    def signals(self, feats: torch.Tensor, self_rows: torch.Tensor | None = None) -> PixelSignals:
        """Unstandardised (global distance (B,), smoothed local map (B, h, w)).

        ``self_rows`` (B,) names, for a query that is itself stored, its bank row, which
        is then not its own neighbour (leave-one-out statistics).
        """
        d = euclidean_distances(feats, self.bank)  # (B, N)
        if self_rows is not None:
            d = d.index_put((torch.arange(d.shape[0], device=d.device), self_rows), torch.tensor(float("inf")))
        k = min(max(self.k, self.local_k), self.bank.shape[0] - int(self_rows is not None))
        dist, idx = d.topk(k, dim=1, largest=False)
        glob = dist[:, : self.k].mean(1)
        c, h, w = (int(v) for v in self.grid)
        kl = min(self.local_k, k)
        near = self.bank[idx[:, :kl]].view(-1, kl, c, h, w)  # (B, k, C, h, w)
        diff = (feats.view(-1, 1, c, h, w) - near).abs().mean(2).min(1).values  # (B, h, w)
        return PixelSignals(glob, smooth_maps(diff[:, None], self._sigma_px())[:, 0])

    @torch.no_grad()
    def fit(self, images: torch.Tensor, stats_rows: int | None = None) -> None:
        """Store normals (N, C, H, W) in [0, 1]; leave-one-out statistics from all of them
        (or the first ``stats_rows``), in chunks of 256."""
        feats = self.features(images)
        c, h = int(images.shape[1]), int(images.shape[-2])
        if max(images.shape[-2:]) > self.side:
            h = max(1, round(h * self.side / max(images.shape[-2:])))
        self.grid = torch.tensor([c, h, feats.shape[1] // (c * h)], dtype=torch.long, device=feats.device)
        self.bank = feats.contiguous()
        if not self.ready:
            return
        rows = torch.arange(feats.shape[0] if stats_rows is None else min(stats_rows, feats.shape[0]), device=feats.device)
        parts = [self.signals(feats[r], r) for r in rows.split(256)]
        glob, maps = torch.cat([g for g, _ in parts]), torch.cat([m for _, m in parts])
        for name, v in (("global", glob), ("map", maps), ("local", maps.flatten(1).amax(1))):
            getattr(self, f"{name}_mean").copy_(v.mean())
            getattr(self, f"{name}_std").copy_(v.std(unbiased=False).clamp_min(1e-8))

    def anomaly_distance(self, feats: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance (B,) to the k nearest stored anomalies."""
        return _knn_mean(euclidean_distances(feats, self.anomalies), self.k)

    @torch.no_grad()
    def set_anomalies(self, feats: torch.Tensor) -> None:
        """Store labelled anomalies (M, D) (from :meth:`features`), and the contrast's
        statistics over the stored normals (leave-one-out distance to the normals minus
        distance to the anomalies), in chunks of 256. M = 0 removes them."""
        if feats.shape[0] and feats.shape[1] != self.bank.shape[1]:
            raise ValueError(f"anomaly pixel vectors have {feats.shape[1]} values, the bank {self.bank.shape[1]}")
        self.anomalies = feats.float().contiguous()
        if not self.has_anomalies:
            return
        parts = []
        for r in torch.arange(self.bank.shape[0], device=self.bank.device).split(256):
            d = euclidean_distances(self.bank[r], self.bank)  # the global distance alone, leave-one-out
            d[torch.arange(r.numel(), device=d.device), r] = float("inf")
            parts.append(_knn_mean(d, self.k) - self.anomaly_distance(self.bank[r]))
        c = torch.cat(parts)
        self.contrast_mean.copy_(c.mean())
        self.contrast_std.copy_(c.std(unbiased=False).clamp_min(1e-8))

    def scores(self, feats: torch.Tensor) -> PixelScores:
        """Standardised (global score (B,), local score (B,), local map (B, h, w), contrast (B,))."""
        glob, maps = self.signals(feats)
        z_map = (maps - self.map_mean) / self.map_std
        z_local = (maps.flatten(1).amax(1) - self.local_mean) / self.local_std
        if self.has_anomalies:
            contrast = (glob - self.anomaly_distance(feats) - self.contrast_mean) / self.contrast_std
        else:
            contrast = torch.zeros_like(glob)
        return PixelScores((glob - self.global_mean) / self.global_std, z_local, z_map, contrast)


__all__ = ["PixelBank", "PixelScores", "PixelSignals", "euclidean_distances"]
