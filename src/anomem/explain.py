"""Nearest-prototype explanations: which stored normal pattern a position was recalled from.

Each position z_ij of scale s is replaced by the memory's recollection
HF(z_ij) = Σ_k w_k x_k (Eq. 1), with association weights w = softmax(β ξ Xᵀ) of the last
retrieval step. The *recalled pattern* of a position is argmax_k w_k, and its weight
tells how one-hot the recall was (near 1: one prototype; near 1/K: a blend).

A stored pattern x_k is a learned vector, not an image. To show it, a
:class:`PrototypeCache` keeps, for every pattern, the training-image patch whose feature
(in the memory's space) is most similar to x_k (largest ξ·x_k): the normal example the
pattern stands for. :class:`~anomem.AnoMem` builds the cache at fit time from the first
``scorer.prototype_cache`` training normals (0 = off) and saves it in the checkpoint;
it costs K·C·P² bytes per scale (about 20 KB for ``cpu-small`` on 28 px images).

A position (i, j) of an h × w feature map covers the input pixels around
((i + ½)·H/h, (j + ½)·W/w); its patch is the square of side P = ⌈2·H/h⌉ centred there
(shifted to stay inside the image), a rough picture of the receptive field's centre.

Symbols: B batch, C channels, H W input size, h w feature size, K stored patterns,
S scales.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from anomem.errors import DataError
from anomem.model.prototypes import PrototypeCache, build_prototype_cache, patch_box

if TYPE_CHECKING:  # pragma: no cover
    from anomem.detector import AnoMem

__all__ = [
    "Explanation",
    "PrototypeCache",
    "PrototypeMaps",
    "build_prototype_cache",
    "explain_position",
    "nearest_prototypes",
    "patch_box",
]


class PrototypeMaps(NamedTuple):
    """Recalled pattern per position, per scale.

    Attributes:
        pattern: S arrays (N, h_s, w_s) int64, argmax_k of the association weights.
        weight: S arrays (N, h_s, w_s) float32, that largest weight (in (0, 1]).
    """

    pattern: list[np.ndarray]
    weight: list[np.ndarray]


class Explanation(NamedTuple):
    """Why one position of one scale looks the way it does.

    Attributes:
        scale: scale index s (0 = shallowest tap).
        position: (i, j) on the scale's feature grid.
        box: (y0, x0, y1, x1) input pixels the position's patch covers (end exclusive).
        pattern: index k of the recalled stored pattern.
        weight: its association weight.
        deviation: ‖Δ_ij‖₂ at this position (Eq. 8), higher = less like the memory.
        patch: (C, P, P) uint8 training patch closest to pattern k, or None without a cache.
        patch_similarity: ξ·x_k of that patch, or None.
    """

    scale: int
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    pattern: int
    weight: float
    deviation: float
    patch: np.ndarray | None
    patch_similarity: float | None


class _ScaleRecall(NamedTuple):
    pattern: torch.Tensor  # (B, h, w) recalled pattern index
    weight: torch.Tensor  # (B, h, w) its association weight
    deviation: torch.Tensor  # (B, h, w) ‖Δ_ij‖ (Eq. 8)


@torch.inference_mode()
def _recalls(det: AnoMem, x: torch.Tensor, batch_size: int) -> list[list[_ScaleRecall]]:
    """Per batch, per scale: what each position recalled, through the inference module."""
    out = []
    for reading in det.inference_model.readings(x, batch_size, associations=True, need=set()):
        ev = reading.net
        out.append([_ScaleRecall(r.pattern, r.weight, d.norm(dim=1)) for r, d in zip(ev.recalled, ev.deviations)])
    return out


def nearest_prototypes(det: AnoMem, X: Any, batch_size: int = 256) -> PrototypeMaps:
    """argmax_k of the association weights at every position of every scale.

    Shape:
        X (N, C, H, W) -> S arrays (N, h_s, w_s)
    """
    batches = _recalls(det, det.prepare_images(X), batch_size)
    pats = [np.concatenate([b[s].pattern.cpu().numpy() for b in batches]) for s in range(len(batches[0]))]
    weights = [np.concatenate([b[s].weight.float().cpu().numpy() for b in batches]) for s in range(len(batches[0]))]
    return PrototypeMaps(pats, weights)


def explain_position(det: AnoMem, image: Any, y: int, x: int) -> list[Explanation]:
    """Explain input pixel (y, x) of one image at every scale.

    Args:
        det: a fitted detector.
        image: one image (C, H, W) / (H, W), or a batch of one.
        y, x: pixel coordinates in the detector's input size.

    Returns:
        one :class:`Explanation` per scale, shallow to deep.
    """
    img = image
    if isinstance(img, np.ndarray | torch.Tensor) and (img.ndim == 2 or (img.ndim == 3 and img.shape[0] in (1, 3))):
        img = img[None]
    xb = det.prepare_images(img, "image")
    if xb.shape[0] != 1:
        raise DataError(f"explain_position takes one image, got {xb.shape[0]}")
    hh, ww = det.image_size_
    if not (0 <= y < hh and 0 <= x < ww):
        raise DataError(f"pixel ({y}, {x}) is outside the {hh}x{ww} input")
    cache: PrototypeCache | None = getattr(det, "prototype_cache_", None)
    out = []
    for s, (pattern, weight, dev) in enumerate(_recalls(det, xb, 1)[0]):
        h, w = pattern.shape[1:]
        i, j = min(int(y * h / hh), h - 1), min(int(x * w / ww), w - 1)
        k = int(pattern[0, i, j])
        out.append(
            Explanation(
                scale=s,
                position=(i, j),
                box=patch_box(i, j, (h, w), (hh, ww)),
                pattern=k,
                weight=float(weight[0, i, j]),
                deviation=float(dev[0, i, j]),
                patch=None if cache is None else cache.patches[s][k].numpy(),
                patch_similarity=None if cache is None else float(cache.similarity[s][k]),
            )
        )
    return out
