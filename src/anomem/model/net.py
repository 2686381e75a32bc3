"""The AnoMem network: encoder taps + one Hopfield memory per scale (pure torch).

Stage 1 uses :meth:`AnoMemNet.contrast_pairs` (Eq. 3 and the sampling Ω of Eq. 7);
stage 2 uses :meth:`AnoMemNet.deviation_maps` (Eq. 8). Nothing here knows about
optimisers, devices or files.

Symbols: B batch, C channels, H W spatial, P sampled positions, K stored patterns,
S scales.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anomem.model.backbone import TappedResNet
from anomem.model.losses import ScalePairs
from anomem.model.memory import HopfieldMemory, retrieve_map


def feature_descriptors(stages: dict[str, torch.Tensor]) -> torch.Tensor:
    """Patch descriptors of the encoder: ``layer1`` and ``layer2`` each averaged over its
    3x3 neighbourhood (a little context per position), brought to ``layer2``'s grid and
    concatenated (read by the feature patch bank, :mod:`anomem.stage2.patch_bank`).

    Shape:
        stages {'layer1': (B, C1, H1, W1), 'layer2': (B, C2, H2, W2), ...} -> (B, C1 + C2, H2, W2)
    """
    fine, coarse = F.avg_pool2d(stages["layer1"], 3, 1, 1), F.avg_pool2d(stages["layer2"], 3, 1, 1)
    if fine.shape[-2:] != coarse.shape[-2:]:
        fine = F.interpolate(fine, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([fine, coarse], 1)


class AnoMemNet(nn.Module):
    """Encoder f with taps and memories HF^(1..S).

    Inputs are float images in [0, 1]; the per-channel mean and std of the training
    normals (buffers, saved with the weights) standardise them.

    Shape:
        x (B, C_in, H, W) -> S maps (B, C_s, H_s, W_s)
    """

    def __init__(
        self, backbone: TappedResNet, memories: list[HopfieldMemory], in_channels: int, use_memory: bool = True
    ) -> None:
        super().__init__()
        self.use_memory = use_memory  # False: stage 1 is plain SimCLR on the taps (ablation)
        if len(memories) != len(backbone.taps):
            raise ValueError(f"{len(memories)} memories for {len(backbone.taps)} taps")
        self.backbone = backbone
        self.memories = nn.ModuleList(memories)
        self.register_buffer("pixel_mean", torch.full((in_channels,), 0.5))
        self.register_buffer("pixel_std", torch.full((in_channels,), 0.25))

    @property
    def num_scales(self) -> int:
        return len(self.memories)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """z^(s) for every scale from images in [0, 1]."""
        x = (x - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
        return self.backbone(x)

    def contrast_pairs(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        normal: torch.Tensor,
        ratios: tuple[float, ...],
        generator: torch.Generator | None = None,
        altered: torch.Tensor | None = None,
        cover: float = 0.0,
    ) -> list[ScalePairs]:
        """Both branches of Eq. 4 at the positions Ω^(s) sampled for this batch.

        Ω^(s) holds ⌊H_s W_s r^(s)⌋ positions drawn without replacement, the same for
        every image and both views (paper Eq. 7). The first branch is Mem(z, y) (Eq. 3):
        the memory's recollection for normals, the (projected) feature for anomalies.
        Both views are encoded in one pass so BatchNorm sees the whole 2B batch.
        ``generator`` draws Ω (all ranks of a distributed run pass equal ones).

        ``altered`` (B, 1, H, W) bool marks pixels a local defect changed in both views:
        every position of a scale whose cell holds one is y = 0 there (Eq. 3 read per
        position), the rest of the image keeps its label; the pairs then carry their
        per-position labels. A position whose cell the defect covers less than ``cover`` of
        (a share in [0, 1)) is marked ``partial``: y = 0 still, but out of the local hinge.
        """
        bsz = x1.shape[0]
        maps = self.features(torch.cat([x1, x2]))  # S x (2B, C, H, W)
        out = []
        for fmap, mem, r in zip(maps, self.memories, ratios):
            _, c, h, w = fmap.shape
            n_keep = max(1, math.floor(h * w * r))
            pos = torch.randperm(h * w, generator=generator, device=fmap.device)[:n_keep]  # Ω^(s): (P,)
            vec = fmap.flatten(2)[:, :, pos].permute(2, 0, 1)  # (P, 2B, C)
            z, z2 = vec[:, :bsz], vec[:, bsz:]  # (P, B, C) each
            y = normal[None, :].expand(n_keep, bsz)  # (P, B)
            partial = None
            if altered is not None:
                touched = F.adaptive_max_pool2d(altered.float(), (h, w)).flatten(1)[:, pos].T > 0  # (P, B)
                y = y & ~touched
                if cover > 0:
                    share = F.adaptive_avg_pool2d(altered.float(), (h, w)).flatten(1)[:, pos].T  # (P, B)
                    partial = touched & (share < cover)
            q = mem.project(z)
            dev = None
            if self.use_memory:
                rec = mem.recall(q.reshape(-1, c)).recollection.view_as(q)  # HF(z): (P, B, C)
                if altered is not None:  # how far each position is from its recollection, for the local hinge
                    dev = (q - rec).norm(dim=-1) / q.norm(dim=-1).clamp_min(1e-6)  # (P, B)
                q = torch.where(y[..., None], rec, q)  # Mem(z, y), Eq. 3
            out.append(ScalePairs(q, mem.project(z2), None if altered is None else y, dev, partial))
        return out

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, normal: torch.Tensor, ratios: tuple[float, ...],
                generator: torch.Generator | None = None, altered: torch.Tensor | None = None,
                cover: float = 0.0) -> list[ScalePairs]:
        """Stage-1 forward, :meth:`contrast_pairs` (so DDP can wrap the network)."""
        return self.contrast_pairs(x1, x2, normal, ratios, generator, altered, cover)

    @torch.no_grad()
    def init_memories_from(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set each memory's patterns X to features of random positions of ``x``.

        With random patterns in C dimensions every query has cosine ~ ±1/sqrt(C) to
        every pattern, so the softmax of Eq. 1 is flat, all patterns receive the same
        gradient and collapse together. Starting from real features (as k-means++
        seeding does) makes retrieval peaked from the first step.

        Shape:
            x (B, C_in, H, W) images in [0, 1], normals only.
        """
        was_training = self.training
        self.eval()
        for fmap, mem in zip(self.features(x), self.memories):
            vec = fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1]).float()  # (B·H·W, C)
            k = mem.patterns.shape[0]
            idx = torch.randperm(vec.shape[0], generator=generator, device=vec.device)[:k]
            if idx.numel() < k:  # fewer positions than patterns: repeat some
                extra = torch.randint(vec.shape[0], (k - idx.numel(),), generator=generator, device=vec.device)
                idx = torch.cat([idx, extra])
            picked = mem.project(vec[idx])  # (K, C)
            noise = torch.randn(picked.shape, generator=generator, device=picked.device)
            mem.patterns.copy_(picked + 0.01 * picked.std() * noise)  # distinct even when repeated
        self.train(was_training)

    def deviation_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Δ^(s) = z^(s) - HF^(s)(z^(s)) at every position (Eq. 8), in memory space.

        Shape:
            x (B, C_in, H, W) -> S maps (B, C_s, H_s, W_s)
        """
        return self.evidence(x).deviations

    def evidence(self, x: torch.Tensor, associations: bool = False, local: bool = False) -> Evidence:
        """Everything stage 2 reads, from one encoder pass: Δ^(s) (Eq. 8, the only place
        it is computed), the average-pooled tap features z^(s) (for the normal bank),
        with ``associations`` which stored pattern each position recalled, and with
        ``local`` the patch descriptors (for the feature patch bank).

        Shape:
            x (B, C_in, H, W) -> deviations S x (B, C_s, H_s, W_s), embeddings S x (B, C_s),
            recalled S x Recall of (B, H_s, W_s) tensors (or None)
        """
        devs, embs, recalled = [], [], []
        x = (x - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
        stages = self.backbone.stage_maps(x)
        local = feature_descriptors(stages) if local and "layer2" in stages else None
        for fmap, mem in zip([stages[t] for t in self.backbone.taps], self.memories):
            r = retrieve_map(mem, fmap)
            devs.append(r.query - r.recollection)  # Eq. 8
            embs.append(fmap.mean((2, 3)))
            if associations:
                weight, pattern = r.weights.max(-1)  # argmax_k of softmax(β ξ Xᵀ)
                recalled.append(Recall(pattern, weight))
        return Evidence(devs, embs, recalled if associations else None, local_features=local)


class Recall(NamedTuple):
    """Which stored pattern each position of one scale recalled.

    Attributes:
        pattern: (B, H, W) int64, argmax_k of the association weights of the last step.
        weight: (B, H, W), that weight (near 1: one prototype; near 1/K: a blend).
    """

    pattern: torch.Tensor
    weight: torch.Tensor


class Evidence(NamedTuple):
    """Stage-2 inputs of a batch of images (:meth:`AnoMemNet.evidence`).

    Attributes:
        deviations: S maps Δ^(s) (B, C_s, H_s, W_s), Eq. 8.
        embeddings: S tensors (B, C_s), tap features z^(s) averaged over positions.
        recalled: S :class:`Recall`, only when asked for (explanations).
        local_features: (B, D, h, w) the encoder's patch descriptors
            (:func:`feature_descriptors`), or None.
    """

    deviations: list[torch.Tensor]
    embeddings: list[torch.Tensor]
    recalled: list[Recall] | None = None
    local_features: torch.Tensor | None = None
