"""The input itself as the finest scale: a bank of training-normal pixels.

Up to ``bank.size`` training normals are kept as pixel vectors (the longer side brought
to at most ``pixels.side``). Two signals come from the bank, each standardised by the
bank's leave-one-out statistics (each stored normal scored against the others):

* ``pixel_global``: the mean Euclidean distance to the k nearest stored normals (kNN on
  raw pixels): evidence for an image unlike any normal as a whole;
* ``pixel_local``: a map of, position by position, the smallest absolute difference
  between the image and any of its ``local_k`` nearest normals (mean over channels),
  smoothed by a Gaussian of σ = ``sigma`` × the shorter side; a normal position is
  matched by one of the neighbours, a local defect by none. The image score is the
  map's maximum.

docs/decisions.md (Decisions 6 and 7) measures them on validation splits.

Symbols: B batch, N stored normals, C channels, h w bank resolution, D = C·h·w.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anomem.maps import smooth_maps
from anomem.stage2.feature_bank import euclidean_distances, knn_mean
from anomem.stage2.standard import Local, Standard
from anomem.stage2.state import StateError, entry, statistic


class PixelSignals(NamedTuple):
    """Unstandardised signals of a batch: ``global_distance`` (B,), ``local_map`` (B, h, w)."""

    global_distance: torch.Tensor
    local_map: torch.Tensor


class PixelBank(nn.Module):
    """Raw-pixel normal bank: the global kNN score and the local min-difference map.

    Args:
        side: the longer side, in pixels, images are brought down to (never up).
        k: neighbours of the global distance.
        local_k: neighbours the local map takes its per-position minimum over.
        sigma: smoothing of the local map, as a fraction of the shorter side.

    Shape:
        x (B, C, H, W) in [0, 1] -> features (B, D); scores (B,), map (B, h, w)
    """

    def __init__(self, side: int = 32, k: int = 2, local_k: int = 20, sigma: float = 0.04) -> None:
        super().__init__()
        self.side, self.k, self.local_k, self.sigma = side, k, local_k, sigma
        self.register_buffer("bank", torch.zeros(0, 0))
        self.register_buffer("grid", torch.zeros(3, dtype=torch.long))  # (C, h, w) of a stored row
        self.global_z, self.map_z, self.local_z = Standard(), Standard(), Standard()

    @property
    def ready(self) -> bool:
        return self.bank.shape[0] > 1

    @staticmethod
    def grid_for(channels: int, size: tuple[int, int], side: int) -> list[int]:
        """(C, h, w) of a stored row for images of ``size`` (H, W): the longer side brought
        down to ``side`` (never up)."""
        h, w = (int(v) for v in size)
        if max(h, w) > side:
            f = side / max(h, w)
            h, w = max(1, round(h * f)), max(1, round(w * f))
        return [int(channels), h, w]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images as flat pixel vectors at bank resolution (bilinear down-sampling)."""
        _, h, w = self.grid_for(x.shape[1], x.shape[-2:], self.side)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False)
        return x.float().flatten(1)

    def signals(self, feats: torch.Tensor, self_rows: torch.Tensor | None = None) -> PixelSignals:
        """Unstandardised global distance (B,) and smoothed local map (B, h, w).

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
        sigma = self.sigma * float(min(h, w))
        return PixelSignals(glob, smooth_maps(diff[:, None], sigma)[:, 0])

    def leave_one_out_global(self, rows: torch.Tensor) -> torch.Tensor:
        """Global distance (R,) of stored rows ``rows`` to the other stored normals."""
        d = euclidean_distances(self.bank[rows], self.bank)
        d[torch.arange(rows.numel(), device=d.device), rows] = float("inf")
        return knn_mean(d, self.k)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Store normals (N, C, H, W) in [0, 1], and the leave-one-out statistics of all
        of them, in chunks of 256."""
        feats = self.features(images)
        grid = self.grid_for(images.shape[1], images.shape[-2:], self.side)
        self.grid = torch.tensor(grid, dtype=torch.long, device=feats.device)
        self.bank = feats.contiguous()
        if not self.ready:
            return
        rows = torch.arange(feats.shape[0], device=feats.device)
        parts = [self.signals(feats[r], r) for r in rows.split(256)]
        glob, maps = torch.cat([g for g, _ in parts]), torch.cat([m for _, m in parts])
        self.global_z.fit(glob)
        self.map_z.fit(maps)
        self.local_z.fit(maps.flatten(1).amax(1))

    def scores(self, feats: torch.Tensor) -> tuple[PixelSignals, torch.Tensor, Local]:
        """The raw signals, and the standardised global score (B,) and local signal."""
        raw = self.signals(feats)
        local = Local(self.local_z(raw.local_map.flatten(1).amax(1)), self.map_z(raw.local_map))
        return raw, self.global_z(raw.global_distance), local

    def resize_like(self, state: dict, prefix: str) -> None:
        if f"{prefix}bank" in state:
            self.bank = torch.zeros_like(state[f"{prefix}bank"])

    @staticmethod
    def check_state(state, prefix: str, grid: list[int]) -> int:
        """Refuse (StateError) a saved pixel bank whose rows do not fit ``grid`` (C, h, w),
        what the detector's input size gives; return the row width."""
        bank = entry(state, f"{prefix}bank", ndim=2, floating=True)
        got = entry(state, f"{prefix}grid", ndim=1, floating=False)
        if bank.shape[0] > 0:
            if got.shape != (3,) or bool((got < 1).any()) or int(got.prod()) != bank.shape[1]:
                raise StateError(f"scorer['{prefix}grid'] must be (C, h, w) with C·h·w = {bank.shape[1]}, "
                                 f"got {got.tolist()}")
            if got.tolist() != list(grid):
                raise StateError(f"scorer['{prefix}grid'] is {got.tolist()} but the input size gives {list(grid)}")
        for name in ("global_z", "map_z", "local_z"):
            statistic(state, f"{prefix}{name}.", None)
        return int(bank.shape[1])


class Contrast(nn.Module):
    """With labelled anomalies: raw-pixel distance to the normals minus distance to the
    stored anomalies (``anomalies`` (M, D), at the pixel bank's resolution), a kNN
    likelihood ratio, standardised over the stored normals (their leave-one-out
    distance to the other normals minus their distance to the anomalies). When the
    heads score, it takes the place of the pixel bank's global score (Decision 9).
    """

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.k = int(k)
        self.register_buffer("anomalies", torch.zeros(0, 0))
        self.z = Standard()

    def ready_for(self, pixels: PixelBank) -> bool:
        return pixels.ready and self.anomalies.shape[0] > 0 and self.anomalies.shape[1] == pixels.bank.shape[1]

    def anomaly_distance(self, feats: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance (B,) to the k nearest stored anomalies."""
        return knn_mean(euclidean_distances(feats, self.anomalies), self.k)

    @torch.no_grad()
    def fit(self, pixels: PixelBank, feats: torch.Tensor) -> None:
        """Store anomalies (M, D) (from :meth:`PixelBank.features`) and the statistics over
        the normals of ``pixels``, in chunks of 256. M = 0 removes them."""
        if feats.shape[0] and feats.shape[1] != pixels.bank.shape[1]:
            raise ValueError(f"anomaly pixel vectors have {feats.shape[1]} values, the bank {pixels.bank.shape[1]}")
        self.anomalies = feats.float().contiguous()
        if not self.ready_for(pixels):
            return
        rows = torch.arange(pixels.bank.shape[0], device=pixels.bank.device).split(256)
        self.z.fit(torch.cat([pixels.leave_one_out_global(r) - self.anomaly_distance(pixels.bank[r]) for r in rows]))

    def forward(self, global_distance: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Standardised contrast (B,) from the raw global distance and the pixel vectors."""
        return self.z(global_distance - self.anomaly_distance(feats))

    @staticmethod
    def check_state(state, prefix: str, width: int) -> None:
        """Refuse (StateError) stored anomalies of another width than the pixel bank's rows."""
        a = entry(state, f"{prefix}anomalies", ndim=2, floating=True)
        if a.shape[0] and a.shape[1] != width:
            raise StateError(f"scorer['{prefix}anomalies'] must have the pixel bank's {width} columns, "
                             f"got shape {tuple(a.shape)}")
        statistic(state, f"{prefix}z.", None)

    def resize_like(self, state: dict, prefix: str) -> None:
        if f"{prefix}anomalies" in state:
            self.anomalies = torch.zeros_like(state[f"{prefix}anomalies"])


__all__ = ["Contrast", "PixelBank", "PixelSignals"]
