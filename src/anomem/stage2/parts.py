"""The named evidence stage 2 adds up: one field per signal, never a column number.

* :class:`Local` — a local signal of a batch: the image score read off its map, and
  the map.
* :class:`Signals` — what the input-level signals (raw-pixel bank, contrast, patch
  banks) say of a batch; computed once per batch with the encoder pass
  (:meth:`anomem.stage2.scorer.Scorer.signals`) and carried in the evidence.
* :class:`ScoreParts` — every standardised image-level part of a batch, what
  :func:`anomem.stage2.fusion.fuse` combines into the image score.
* :class:`MapParts` — the same for heat-maps, at input size.

A field is None when the detector does not keep that signal (or the fusion gives it no
weight and it was not asked for). Symbols: B batch, S scales, H W input size, h w the
grid of a local signal.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Local(NamedTuple):
    """A local signal of a batch: ``score`` (B,) and ``map`` (B, h, w), standardised."""

    score: torch.Tensor
    map: torch.Tensor


class Signals(NamedTuple):
    """Standardised input-level evidence of a batch.

    Attributes:
        pixel_global: (B,) kNN distance of the raw pixels to the stored normals.
        pixel_local: :class:`Local`, the per-position difference to the nearest normals.
        contrast: (B,) distance to the normals minus distance to the stored labelled
            anomalies (raw pixels), once anomalies are stored.
        feature_patches: :class:`Local`, the encoder's patch descriptors against their bank.
        pixel_patches: :class:`Local`, raw-pixel patches against their bank.
    """

    pixel_global: torch.Tensor | None = None
    pixel_local: Local | None = None
    contrast: torch.Tensor | None = None
    feature_patches: Local | None = None
    pixel_patches: Local | None = None

    def image_scores(self) -> tuple[torch.Tensor | None, ...]:
        """The image-level scores (B,) of pixel_global, pixel_local, feature_patches and
        pixel_patches, in that order (the local signals' ``score``; None where absent)."""
        score = lambda v: None if v is None else v.score  # noqa: E731
        return self.pixel_global, score(self.pixel_local), score(self.feature_patches), score(self.pixel_patches)

    def float(self) -> Signals:
        """The same evidence in float32 (bfloat16 under autocast on CUDA)."""
        def f(v):
            if v is None:
                return None
            return Local(v.score.float(), v.map.float()) if isinstance(v, Local) else v.float()
        return Signals(*(f(v) for v in self))


class ScoreParts(NamedTuple):
    """Standardised image-level parts of a batch, one per signal.

    Attributes:
        memory: (B, S) ‖Δ^(s)‖₂ (Eq. 9), each scale standardised.
        heads: (B, S) the heads' distances g^(s)(φ(Δ^(s))) (Eq. 10), standardised, when
            the detector scores with its heads; they then take the memory's place.
        bank: (B, S) the pooled tap features' kNN distance to the stored normals.
        pixel_global, pixel_local, contrast, feature_patches, pixel_patches: (B,) the
            image scores of the input-level signals (:class:`Signals`).
    """

    memory: torch.Tensor
    heads: torch.Tensor | None = None
    bank: torch.Tensor | None = None
    pixel_global: torch.Tensor | None = None
    pixel_local: torch.Tensor | None = None
    contrast: torch.Tensor | None = None
    feature_patches: torch.Tensor | None = None
    pixel_patches: torch.Tensor | None = None


class MapParts(NamedTuple):
    """Standardised heat-map parts of a batch at input size (B, H, W) each.

    Attributes:
        memory: (B, S, H, W) per-position ‖Δ^(s)_ij‖₂, smoothed, each scale standardised.
        pixel_local, feature_patches, pixel_patches: the local signals' maps, brought
            to input size (the patch maps smoothed like the memory's).
    """

    memory: torch.Tensor
    pixel_local: torch.Tensor | None = None
    feature_patches: torch.Tensor | None = None
    pixel_patches: torch.Tensor | None = None


__all__ = ["Local", "MapParts", "ScoreParts", "Signals"]
