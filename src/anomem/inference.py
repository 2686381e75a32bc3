"""The whole path from image to score and heat-map, as one pure-torch ``nn.Module``.

:class:`AnoMemModel` holds the trained network (encoder taps + Hopfield memories) and
the stage-2 scorer, and reads them in one straight line:

    images in [0, 1]
      -> feature maps z^(s)                    (AnoMemNet.features)
      -> Δ^(s) = z^(s) - HF^(s)(z^(s))         (Eq. 8, AnoMemNet.evidence)
      -> input-level signals                   (pixel and patch banks, Scorer.signals)
      -> named parts, each a z-score           (Eq. 9 or the heads' Eq. 10, the banks;
                                               Scorer.parts)
      -> image score                           (the fusion: Eq. 13, then the banks;
                                               anomem.stage2.fusion.fuse)
      -> fused heat-map                        (the same, position by position;
                                               anomem.stage2.fusion.fuse_maps)

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
from torch import nn

from anomem.inputs import to_float
from anomem.maps import smooth_maps
from anomem.model.net import AnoMemNet, Evidence
from anomem.stage2.fusion import Weights, fuse_maps, map_components, per_scale
from anomem.stage2.scorer import Scorer

MODES = ("auto", "one-class", "supervised")


class Heatmaps(NamedTuple):
    """Heat-maps of a batch at input resolution.

    Attributes:
        per_scale: (B, S, H, W) ‖Δ^(s)_ij‖₂ upsampled (bilinear), then smoothed.
        fused: (B, H, W) the fused map (:func:`anomem.stage2.fusion.fuse_maps`).
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
        return bool(self.scorer.heads.trained) and self.mode != "one-class"

    # -- the straight line -------------------------------------------------------------
    def evidence(self, x: torch.Tensor, associations: bool = False, every: bool = False,
                 signals: bool = True) -> Evidence:
        """Δ^(s) (Eq. 8) and pooled tap features of a batch (see :meth:`AnoMemNet.evidence`),
        with the input-level signals the scorer reads (every ready patch bank with
        ``every``, as fitting the fusion needs; none without ``signals``). The encoder's
        patch descriptors are computed only when the feature patch bank is read."""
        s = self.scorer
        read = s.patch_banks_read(every) if signals else {}
        ev = self.net.evidence(x, associations, local=read.get("feature", False))
        if signals and (s.pixels.ready or any(read.values())):
            ev = ev._replace(signals=s.signals(x, ev.local_features, every))
        return ev

    def weights(self, weights: Weights | None = None) -> Weights:
        return self.scorer.weights.get() if weights is None else weights

    def scale_scores(self, evidence: Evidence, weights: Weights | None = None) -> torch.Tensor:
        """Per-scale scores (B, S): Eq. 9 or 10, standardised and mixed with the bank."""
        return per_scale(self.scorer.parts(evidence, self.use_heads), self.weights(weights))

    def merged_score(self, evidence: Evidence, weights: Weights | None = None) -> torch.Tensor:
        """Image anomaly score s_a (B,), higher = more anomalous (:func:`anomem.stage2.fusion.fuse`)."""
        return self.scorer(evidence, self.use_heads, weights)

    def heatmaps(self, evidence: Evidence, sigma: float | None = None, weights: Weights | None = None) -> Heatmaps:
        """Per-scale and fused maps at input size; ``sigma`` pixels (None = ``map_sigma``),
        fused with the fitted or the given weights."""
        maps, parts = self.scorer.map_parts(evidence, self.image_size, self.map_sigma if sigma is None else sigma)
        return Heatmaps(maps, fuse_maps(parts, self.weights(weights)))

    def heatmap_parts(self, evidence: Evidence, sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scale maps (B, S, H, W) and the three maps the ``map`` weights mix (B, 3, H, W)
        (:func:`anomem.stage2.fusion.map_components`)."""
        maps, parts = self.scorer.map_parts(evidence, self.image_size, self.map_sigma if sigma is None else sigma)
        return maps, map_components(parts, self.weights())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), fused map (B, H, W)) — a plain tuple, as tracing and ONNX need."""
        ev = self.evidence(x)
        return self.merged_score(ev), self.heatmaps(ev).fused

    # -- batching ------------------------------------------------------------------------
    @torch.inference_mode()
    def evidence_batches(self, images: torch.Tensor, batch_size: int = 256,
                         associations: bool = False, every: bool = False, signals: bool = True) -> Iterator[Evidence]:
        """Evidence of many images (uint8 or float), ``batch_size`` at a time, on the
        model's device in eval mode; bfloat16 autocast on CUDA, float32 out. With
        ``every`` every ready patch bank is read, weighted or not (to fit the fusion);
        without ``signals`` none of the input-level signals is (:meth:`evidence`)."""
        self.eval()
        device = self.net.pixel_mean.device
        amp = device.type == "cuda"
        for i in range(0, images.shape[0], batch_size):
            x = to_float(images[i : i + batch_size].to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                ev = self.evidence(x, associations, every, signals)
            f = lambda t: None if t is None else t.float()  # noqa: E731
            yield Evidence([d.float() for d in ev.deviations], [e.float() for e in ev.embeddings], ev.recalled,
                           f(ev.local_features), None if ev.signals is None else ev.signals.float())


__all__ = ["AnoMemModel", "Heatmaps", "MODES", "smooth_maps"]
