"""The whole path from image to score and heat-map, as one pure-torch ``nn.Module``.

:class:`AnoMemModel` holds the trained network (encoder taps + Hopfield memories) and
the stage-2 scorer, and reads them in one straight line:

    images in [0, 1]
      -> feature maps z^(s)                    (AnoMemNet.features)
      -> Δ^(s) = z^(s) - HF^(s)(z^(s))         (Eq. 8, AnoMemNet.evidence)
      -> a reading                             (Eq. 9 norms, the heads' inputs, the banks,
                                               the input-level signals; Scorer.read)
      -> named parts, each a z-score           (Scorer.parts, Scorer.map_parts)
      -> image score, fused heat-map           (Σ_k w[k] · part[k]; anomem.stage2.scorer.fuse)

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

from anomem.choices import MODES
from anomem.inputs import to_float
from anomem.model.net import AnoMemNet, Evidence
from anomem.stage2.scorer import Reading, Scorer, fuse
from anomem.stage2.weights import LOCAL


class Heatmaps(NamedTuple):
    """Heat-maps of a batch at input resolution.

    Attributes:
        per_scale: (B, S, H, W) ‖Δ^(s)_ij‖₂ upsampled (bilinear), then smoothed.
        fused: (B, H, W) the fused map (the ``map.*`` parts by :func:`anomem.stage2.scorer.fuse`).
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
    def weights(self, weights: dict[str, float] | None = None) -> dict[str, float]:
        """The flat fusion weights: the fitted ones, or ``weights`` for one call."""
        return self.scorer.weights.as_dict() if weights is None else weights

    def need(self, weights: dict[str, float] | None = None, every: bool = False) -> set[str]:
        """The parts to read: those the weights give any weight, or every readable one."""
        if every:
            return self.scorer.readable(True) | {f"map.{p}" for p in ("pixel_local", *LOCAL)}
        return {k for k, v in self.weights(weights).items() if v}

    def read(self, x: torch.Tensor, associations: bool = False, need: set[str] | None = None) -> Reading:
        """The stage-2 reading of a batch x (B, C, H, W) in [0, 1] (:meth:`Scorer.read`) from
        one encoder pass (Δ^(s), Eq. 8); the input-level signals ``need`` names (default:
        those the fitted weights read); the patch descriptors only when read."""
        need = self.need() if need is None else need
        ev = self.net.evidence(x, associations, local=self.scorer.reads_encoder_patches(need))
        return self.scorer.read(x, ev, need)

    def score(self, reading: Reading, weights: dict[str, float] | None = None) -> torch.Tensor:
        """Image anomaly score s_a (B,), higher = more anomalous (:func:`anomem.stage2.scorer.fuse`)."""
        return self.scorer(reading, self.weights(weights))

    def scale_scores(self, reading: Reading, weights: dict[str, float] | None = None) -> torch.Tensor:
        """Per-scale scores (B, S): each scale's own terms (memory or heads, feature bank),
        in the ratio the weights give them."""
        w, parts = self.weights(weights), self.scorer.parts(reading)
        out = []
        for s in range(self.scorer.num_scales):
            group = {k: w.get(k, 0.0) for k in (f"memory.{s}", f"heads.{s}", f"bank.{s}") if k in parts}
            total = sum(group.values())
            out.append(fuse(parts, {k: v / total for k, v in group.items()}) if total > 0 else parts[f"memory.{s}"])
        return torch.stack(out, 1)

    def heatmaps(self, reading: Reading, sigma: float | None = None, weights: dict[str, float] | None = None) -> Heatmaps:
        """Per-scale and fused maps at input size; ``sigma`` pixels (None = ``map_sigma``),
        fused with the fitted or the given weights."""
        maps, parts = self.scorer.map_parts(reading, self.image_size, self.map_sigma if sigma is None else sigma)
        return Heatmaps(maps, fuse(parts, self.weights(weights)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), fused map (B, H, W)) — a plain tuple, as tracing and ONNX need."""
        r = self.read(x)
        return self.score(r), self.heatmaps(r).fused

    # -- batching ------------------------------------------------------------------------
    @torch.inference_mode()
    def readings(self, images: torch.Tensor, batch_size: int = 256, associations: bool = False,
                 need: set[str] | None = None) -> Iterator[Reading]:
        """Readings of many images (uint8 or float), ``batch_size`` at a time, on the model's
        device in eval mode: the encoder under bfloat16 autocast on CUDA, stage 2 in float32;
        ``need`` as in :meth:`read`."""
        self.eval()
        device = self.net.pixel_mean.device
        need = self.need() if need is None else need
        local = self.scorer.reads_encoder_patches(need)
        for i in range(0, images.shape[0], batch_size):
            x = to_float(images[i : i + batch_size].to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                ev = self.net.evidence(x, associations, local=local)
            f = lambda t: None if t is None else t.float()  # noqa: E731
            ev = Evidence([d.float() for d in ev.deviations], [e.float() for e in ev.embeddings], ev.recalled,
                          f(ev.local_features))
            yield self.scorer.read(x, ev, need)


__all__ = ["AnoMemModel", "Heatmaps", "MODES"]
