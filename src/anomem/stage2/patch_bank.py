"""Patch-level evidence: banks of local descriptors of the training normals.

A local defect changes a few positions of an image and leaves its global statistics
almost untouched, so image-level signals (Eq. 9, the pooled feature bank, the raw-pixel
kNN) barely move. Here every position of an image is a descriptor, and its anomaly is
its distance to the nearest descriptor of any training normal (the nearest-neighbour
idea of PatchCore, Roth et al. 2022, with our own contrastively trained encoder):

* **feature patches**: the encoder's two finest stages (``layer1``, ``layer2``), each
  averaged over its 3x3 neighbourhood (so a descriptor sees a little context), brought
  to the grid of ``layer2`` and concatenated (:func:`anomem.model.net.feature_descriptors`);
* **pixel patches**: raw p x p pixel patches at stride p/2 of the image brought to at
  most ``PIXEL_SIDE`` px (:func:`pixel_descriptors`), the input as the finest scale.

Each bank keeps a greedy k-centre coreset (:func:`greedy_coreset`) of the training
descriptors, so memory and scoring cost stay bounded whatever the number of images.
Distances are standardised by their statistics on training normals that were left out
of the bank: the map per position, and the image score, the mean of the ``top_k``
largest positions of the map (so the image score is read off the map, and they agree).

Symbols: B batch, D descriptor size, h w descriptor grid, K bank rows, N descriptors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomem.stage2.feature_bank import euclidean_distances
from anomem.stage2.standard import Local, Standard
from anomem.stage2.state import entry, statistic

PIXEL_SIDE = 128  # pixel patches are cut from the image brought down to this side
PIXEL_PATCH = 8  # side of a raw-pixel patch, at stride PIXEL_PATCH // 2


def pixel_descriptors(x: torch.Tensor, side: int = PIXEL_SIDE, patch: int = PIXEL_PATCH) -> torch.Tensor:
    """Raw-pixel patches as descriptors, one convolution with one-hot kernels (exportable).

    Shape:
        x (B, C, H, W) in [0, 1] -> (B, C·p·p, h, w), p = ``patch``, stride p/2
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if max(h, w) > side:
        f = side / max(h, w)
        x = F.interpolate(x, size=(max(patch, round(h * f)), max(patch, round(w * f))), mode="bilinear",
                          align_corners=False, antialias=True)
    c = int(x.shape[1])
    p = min(patch, int(x.shape[-2]), int(x.shape[-1]))
    eye = torch.eye(c * p * p, device=x.device, dtype=x.dtype).view(c * p * p, c, p, p)  # one-hot kernels
    return F.conv2d(x, eye, stride=max(1, p // 2))


def greedy_coreset(x: torch.Tensor, k: int, generator: torch.Generator, dim: int = 64) -> torch.Tensor:
    """Indices (k,) of a greedy k-centre subset of the rows of ``x`` (N, D): each step adds
    the row farthest from those chosen (on a random projection to ``dim`` dimensions, as
    PatchCore does to make the search cheap). All rows when N <= k."""
    n = x.shape[0]
    if n <= k:
        return torch.arange(n)
    x = x.float()
    if x.shape[1] > dim:
        proj = torch.randn(x.shape[1], dim, generator=generator) / math.sqrt(dim)
        x = x @ proj.to(x.device)  # (N, dim)
    chosen = torch.empty(k, dtype=torch.long)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen[0] = first
    nearest = (x - x[first]).pow(2).sum(1)  # squared distance to the chosen set
    for i in range(1, k):
        j = int(nearest.argmax())
        chosen[i] = j
        nearest = torch.minimum(nearest, (x - x[j]).pow(2).sum(1))
    return chosen


def reads_encoder(source):
    """Mark a descriptor source that reads the encoder's patch descriptors
    (``ev.local_features``), so that the encoder pass computes them."""
    source.reads_encoder = True
    return source


@reads_encoder
def encoder_descriptors(x: torch.Tensor, ev) -> torch.Tensor:
    """The encoder's patch descriptors of a batch (:func:`anomem.model.net.feature_descriptors`,
    computed with the encoder pass when a local signal asks for them)."""
    return ev.local_features


def raw_descriptors(x: torch.Tensor, ev) -> torch.Tensor:
    """Raw-pixel patches of a batch (:func:`pixel_descriptors`)."""
    return pixel_descriptors(x)


# The registry of local signals: name -> where a batch's descriptors come from. Each is a
# PatchBank of that name whose image score and map are the parts ``name`` and ``map.name``,
# weighed by the ``image`` and ``map`` splits in this order. Adding a local signal is one
# function of descriptors and one line here (docs/architecture.md).
LOCAL = {"feature_patches": encoder_descriptors, "pixel_patches": raw_descriptors}


class PatchBank(nn.Module):
    """Nearest-neighbour distances of local descriptors to a coreset of normal ones.

    Args:
        size: rows kept (the coreset size K); 0 turns the bank off.
        top_k: share of the map's positions whose mean is the image score (at least one).
        source: the batch's descriptors, ``source(x, encoder_evidence)`` (:data:`LOCAL`).

    Attributes:
        reads_encoder: whether the source needs the encoder's patch descriptors.

    Shape:
        descriptors (B, D, h, w) -> score (B,), map (B, h, w)
    """

    def __init__(self, size: int, top_k: float = 0.01, source=raw_descriptors) -> None:
        super().__init__()
        self.size, self.top_k, self.source = int(size), float(top_k), source
        self.reads_encoder = bool(getattr(source, "reads_encoder", False))
        self.register_buffer("bank", torch.zeros(0, 0))
        self.map_z, self.score_z = Standard(), Standard()

    @property
    def ready(self) -> bool:
        return self.bank.shape[0] > 0

    def distance_map(self, desc: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Distance of every position to its nearest bank row. (B, D, h, w) -> (B, h, w)"""
        b, d, h, w = desc.shape
        q = desc.permute(0, 2, 3, 1).reshape(-1, d).to(self.bank.dtype)  # (B·h·w, D)
        if q.shape[0] <= chunk:
            near = euclidean_distances(q, self.bank).min(1).values
        else:  # bounded memory: (chunk, K) distances at a time
            near = torch.cat([euclidean_distances(r, self.bank).min(1).values for r in q.split(chunk)])
        return near.view(b, h, w)

    def image_score(self, dist_map: torch.Tensor) -> torch.Tensor:
        """Mean of the ``top_k`` share of largest positions: (B, h, w) -> (B,)."""
        flat = dist_map.flatten(1)
        k = max(1, round(self.top_k * int(flat.shape[1])))  # a constant in traced graphs (fixed input size)
        return flat.topk(k, dim=1).values.mean(1)

    @torch.no_grad()
    def fit(self, train: torch.Tensor, held_out: torch.Tensor, generator: torch.Generator) -> None:
        """Keep a coreset of the descriptors of ``train`` (N, D, h, w) and standardise by
        the distances of ``held_out`` normals (M, D, h, w), which the bank never saw."""
        rows = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1]).float()  # (N·h·w, D)
        pool = rows[torch.randperm(rows.shape[0], generator=generator)[: 16 * self.size].to(rows.device)]
        self.bank = pool[greedy_coreset(pool, self.size, generator).to(pool.device)].contiguous()
        maps = torch.cat([self.distance_map(h) for h in held_out.split(64)])
        self.map_z.fit(maps)
        self.score_z.fit(self.image_score(maps))

    def read(self, x: torch.Tensor, ev) -> Local:
        """The standardised image score and map of a batch x and its encoder evidence."""
        return self(self.source(x, ev))

    def forward(self, desc: torch.Tensor) -> Local:
        """Standardised image score (B,) and map (B, h, w) of descriptors (B, D, h, w)."""
        dist = self.distance_map(desc)
        return Local(self.score_z(self.image_score(dist)), self.map_z(dist))

    @staticmethod
    def check_state(state, prefix: str) -> None:
        """Refuse (StateError) a saved coreset that is not a matrix, or bad statistics."""
        entry(state, f"{prefix}bank", ndim=2, floating=True)
        statistic(state, f"{prefix}map_z.", None)
        statistic(state, f"{prefix}score_z.", None)

    def resize_like(self, state: dict, prefix: str) -> None:
        """Give ``bank`` the shape a saved state holds, before load_state_dict."""
        if f"{prefix}bank" in state:
            self.bank = torch.zeros_like(state[f"{prefix}bank"])


__all__ = ["LOCAL", "PIXEL_PATCH", "PIXEL_SIDE", "PatchBank", "encoder_descriptors", "greedy_coreset",
           "pixel_descriptors", "raw_descriptors", "reads_encoder"]
