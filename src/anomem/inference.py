"""The whole path from image to score and heat-map, as one pure-torch ``nn.Module``.

:class:`AnoMemModel` holds the trained network (encoder taps + Hopfield memories) and
the stage-2 scorer, and reads them in one straight line:

    images in [0, 1]
      -> feature maps z^(s)                    (AnoMemNet.features)
      -> Δ^(s) = z^(s) - HF^(s)(z^(s))         (Eq. 8, AnoMemNet.evidence)
      -> per-scale scores                      (Eq. 9 or the heads' Eq. 10, Scorer.per_scale)
      -> merged score s_a                      (Eq. 13, scoring.merge_scales; then the
                                               raw-pixel bank, Scorer.image_score)
      -> fused heat-map                        (Eq. 13 position by position)

Every equation is computed by exactly one function; the estimator
(:class:`anomem.AnoMem`), the export (:mod:`anomem.io.export` traces this module) and the
explanations (:mod:`anomem.explain`) all go through it. Nothing here knows about
configs, files, thresholds or training.

Symbols: B batch, C channels, H W input size, S scales.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anomem.inputs import to_float
from anomem.maps import smooth_maps
from anomem.model.net import AnoMemNet, Evidence
from anomem.stage2.patch_bank import pixel_descriptors
from anomem.stage2.scorer import Scorer

MODES = ("auto", "one-class", "supervised")


class Heatmaps(NamedTuple):
    """Heat-maps of a batch at input resolution.

    Attributes:
        per_scale: (B, S, H, W) ‖Δ^(s)_ij‖₂ upsampled (bilinear), then smoothed.
        fused: (B, H, W) λ-weighted mean of the per-scale maps, each standardised by
            its training-normal statistics.
    """

    per_scale: torch.Tensor
    fused: torch.Tensor


class AnoMemModel(nn.Module):
    """Images -> (score, fused heat-map) for one trained detector (anomalib's
    ``torch_model`` pattern: the estimator around it fits, calibrates and saves).

    Args:
        net: the trained encoder and memories.
        scorer: the fitted stage 2 (statistics, banks, heads).
        image_size: (H, W) the detector was trained on; maps come out at this size.
        map_sigma: heat-map smoothing σ in pixels (0 = none).
        mode: ``auto`` (heads when trained, else Eq. 9), ``one-class`` or
            ``supervised`` (heads; the estimator checks they exist).

    Shape:
        x (B, C, H, W) float in [0, 1] -> score (B,), fused map (B, H, W)
    """

    def __init__(self, net: AnoMemNet, scorer: Scorer, image_size: tuple[int, int], map_sigma: float,
                 mode: str = "auto") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (math.isfinite(map_sigma) and map_sigma >= 0):
            raise ValueError(f"map_sigma must be a finite number >= 0 (pixels), got {map_sigma!r}")
        self.net = net
        self.scorer = scorer
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.map_sigma = float(map_sigma)
        self.mode = mode

    @property
    def use_heads(self) -> bool:
        """Whether per-scale scores come from the heads (Eq. 10) rather than Eq. 9."""
        return bool(self.scorer.supervised) and self.mode != "one-class"

    # -- the straight line -------------------------------------------------------------
    def evidence(self, x: torch.Tensor, associations: bool = False) -> Evidence:
        """Δ^(s) (Eq. 8) and pooled tap features of a batch (see :meth:`AnoMemNet.evidence`),
        and the input's pixel vectors when the scorer keeps a pixel bank."""
        ev = self.net.evidence(x, associations)
        s = self.scorer
        if s.pixels.ready:
            scores, z_map = s.pixel_scores(s.pixels.features(x))
            ev = ev._replace(pixel_scores=scores, pixel_map=z_map)
        if s.has_patches:
            ev = self.with_patches(ev, x)
        return ev

    def with_patches(self, ev: Evidence, x: torch.Tensor, every: bool = False) -> Evidence:
        """``ev`` with the patch banks' standardised scores (B, 2) and maps; a bank the
        fusion gives no weight is skipped (its score is 0) unless ``every``."""
        s = self.scorer
        descriptors = (lambda: ev.local_features, lambda: pixel_descriptors(x))
        weight = torch.maximum(s.fusion[1:], s.map_fusion[1:])
        parts = []
        for bank, w, make in zip(s.patches.values(), weight, descriptors):
            d = make() if bank.ready and (every or float(w) > 0) else None  # computed once, only when used
            parts.append(None if d is None else bank.scores(d))
        zero = x.new_zeros(x.shape[0])
        scores = torch.stack([zero if p is None else p.score for p in parts], 1)  # (B, 2)
        return ev._replace(patch_scores=scores, patch_maps=[None if p is None else p.map for p in parts])

    def scale_scores(self, evidence: Evidence) -> torch.Tensor:
        """Per-scale scores (B, S): Eq. 9 or 10, standardised and mixed with the bank."""
        return self.scorer.per_scale(evidence, self.use_heads)

    def merged_score(self, evidence: Evidence, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Image anomaly score s_a (B,), higher = more anomalous: Eq. 13, mixed with the
        pixel bank's score when one is kept (:meth:`Scorer.image_score`)."""
        return self.scorer(evidence, self.use_heads, weights)

    def heatmaps(self, evidence: Evidence, sigma: float | None = None, weights: torch.Tensor | None = None) -> Heatmaps:
        """Per-scale and fused maps at input size; ``sigma`` pixels (None = ``map_sigma``).

        The fused map is w · (memory map, feature-patch map, pixel-patch map) with the
        fitted ``scorer.map_fusion`` weights, or ``weights`` (3,)."""
        maps, parts = self.heatmap_parts(evidence, sigma)
        w = self.scorer.map_fusion if weights is None else weights.to(parts)
        return Heatmaps(maps, (parts * w[None, :, None, None]).sum(1))

    def heatmap_parts(self, evidence: Evidence, sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scale maps (B, S, H, W) and the three standardised maps the fused one mixes
        (B, 3, H, W): the memory's (Eq. 13 per position, with the pixel bank's local map),
        the feature patches' and the pixel patches' (zeros where a bank is not used)."""
        sigma = self.map_sigma if sigma is None else sigma
        norms = torch.stack(
            [F.interpolate(d.norm(dim=1, keepdim=True), size=self.image_size, mode="bilinear",
                           align_corners=False)[:, 0] for d in evidence.deviations],
            dim=1,
        )  # (B, S, H, W)
        maps = smooth_maps(norms, sigma)
        memory = self.scorer.merge(self.scorer.map_scores(maps))  # (B, H, W)
        w = self.scorer.map_pixel_weight
        if w > 0 and evidence.pixel_map is not None:  # the pixel bank's local map, at input size
            local = F.interpolate(evidence.pixel_map[:, None], size=self.image_size, mode="bilinear",
                                  align_corners=False)[:, 0]
            memory = (1 - w) * memory + w * local
        parts = [memory, torch.zeros_like(memory), torch.zeros_like(memory)]
        for i, m in enumerate(evidence.patch_maps or ()):
            if m is not None:
                up = F.interpolate(m[:, None], size=self.image_size, mode="bilinear", align_corners=False)
                parts[i + 1] = (smooth_maps(up, sigma) if sigma > 0 else up)[:, 0]
        return maps, torch.stack(parts, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), fused map (B, H, W)) — a plain tuple, as tracing and ONNX need."""
        ev = self.evidence(x)
        return self.merged_score(ev), self.heatmaps(ev).fused

    # -- batching ------------------------------------------------------------------------
    @torch.inference_mode()
    def evidence_batches(self, images: torch.Tensor, batch_size: int = 256,
                         associations: bool = False, patches: bool = False) -> Iterator[Evidence]:
        """Evidence of many images (uint8 or float), ``batch_size`` at a time, on the
        model's device in eval mode; bfloat16 autocast on CUDA, float32 out. With
        ``patches`` every patch bank scores, weighted or not (to fit the fusion)."""
        self.eval()
        device = self.net.pixel_mean.device
        amp = device.type == "cuda"
        for i in range(0, images.shape[0], batch_size):
            x = to_float(images[i : i + batch_size].to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                ev = self.evidence(x, associations)
                if patches and not self.scorer.has_patches:
                    ev = self.with_patches(ev, x, every=True)
            f = lambda t: None if t is None else t.float()  # noqa: E731
            yield Evidence([d.float() for d in ev.deviations], [e.float() for e in ev.embeddings], ev.recalled,
                           f(ev.pixel_scores), f(ev.pixel_map), f(ev.local_features), f(ev.patch_scores),
                           None if ev.patch_maps is None else [f(m) for m in ev.patch_maps])


__all__ = ["AnoMemModel", "Heatmaps", "MODES", "smooth_maps"]
