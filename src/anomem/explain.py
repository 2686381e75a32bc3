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

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from anomem.engine import to_float
from anomem.errors import DataError
from anomem.memory import hopfield_retrieve
from anomem.model import AnoMemNet

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


class PrototypeCache(NamedTuple):
    """Per stored pattern, the closest training patch.

    Attributes:
        patches: S tensors (K_s, C, P_s, P_s) uint8, the patch of each pattern.
        similarity: S tensors (K_s,) float, ξ·x_k of that patch's feature and pattern k.
        source: S tensors (K_s, 3) int64, (image index among the scanned normals, i, j).
    """

    patches: list[torch.Tensor]
    similarity: list[torch.Tensor]
    source: list[torch.Tensor]

    def to_state(self) -> dict[str, list[torch.Tensor]]:
        """Plain tensors for a checkpoint."""
        return {"patches": list(self.patches), "similarity": list(self.similarity), "source": list(self.source)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PrototypeCache:
        return cls(list(state["patches"]), list(state["similarity"]), list(state["source"]))


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


def patch_box(i: int, j: int, feat_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the square patch of feature position (i, j) (module docstring)."""
    (h, w), (hh, ww) = feat_hw, image_hw
    side = min(hh, ww, math.ceil(2 * max(hh / h, ww / w)))
    cy, cx = (i + 0.5) * hh / h, (j + 0.5) * ww / w
    y0 = int(min(max(round(cy - side / 2), 0), hh - side))
    x0 = int(min(max(round(cx - side / 2), 0), ww - side))
    return y0, x0, y0 + side, x0 + side


def _flat(fmap: torch.Tensor) -> torch.Tensor:
    b, c, h, w = fmap.shape
    return fmap.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (B·h·w, C)


@torch.inference_mode()
def build_prototype_cache(net: AnoMemNet, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> PrototypeCache:
    """Find, for every stored pattern of every scale, the closest patch in ``images``.

    Args:
        net: a trained network (put in eval mode).
        images: (N, C, H, W) uint8 or float in [0, 1], normal training images.
        device: where to run the network.

    Returns:
        a :class:`PrototypeCache` on the CPU.
    """
    net.eval()
    n_scales = net.num_scales
    best_val: list[torch.Tensor | None] = [None] * n_scales
    best_idx: list[torch.Tensor | None] = [None] * n_scales
    grids: list[tuple[int, int]] = [(0, 0)] * n_scales
    for start in range(0, images.shape[0], batch_size):
        x = to_float(images[start : start + batch_size].to(device))
        for s, (fmap, mem) in enumerate(zip(net.features(x), net.memories)):
            b, _, h, w = fmap.shape
            grids[s] = (h, w)
            sim = mem.project(_flat(fmap)) @ mem.stored_patterns().T  # ξ·x_k: (B·h·w, K)
            val, idx = sim.max(0)  # (K,) best position of this batch for each pattern
            idx = idx + start * h * w  # flat index over all scanned images
            if best_val[s] is None:
                best_val[s], best_idx[s] = val, idx
            else:
                better = val > best_val[s]
                best_val[s] = torch.where(better, val, best_val[s])
                best_idx[s] = torch.where(better, idx, best_idx[s])
    image_hw = (int(images.shape[2]), int(images.shape[3]))
    patches, sims, sources = [], [], []
    for s in range(n_scales):
        h, w = grids[s]
        flat = best_idx[s].cpu()
        img, rem = flat // (h * w), flat % (h * w)
        src = torch.stack([img, rem // w, rem % w], 1)  # (K, 3)
        boxes = [patch_box(int(i), int(j), (h, w), image_hw) for _, i, j in src.tolist()]
        side = boxes[0][2] - boxes[0][0]
        crops = torch.empty((src.shape[0], images.shape[1], side, side), dtype=torch.uint8)
        for k, ((n, _, _), (y0, x0, y1, x1)) in enumerate(zip(src.tolist(), boxes)):
            crop = images[n, :, y0:y1, x0:x1]
            crops[k] = crop if crop.dtype == torch.uint8 else (crop.float() * 255).round().to(torch.uint8)
        patches.append(crops)
        sims.append(best_val[s].float().cpu())
        sources.append(src)
    return PrototypeCache(patches, sims, sources)


@torch.inference_mode()
def _retrieve(det: AnoMem, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per scale: recalled pattern (B, h, w), its weight (B, h, w), ‖Δ‖ (B, h, w)."""
    det.net_.eval()
    out = []
    for fmap, mem in zip(det.net_.features(to_float(x.to(det.device_))), det.net_.memories):
        b, _, h, w = fmap.shape
        query = mem.project(_flat(fmap))
        r = hopfield_retrieve(query, mem.stored_patterns(), mem.beta, mem.max_steps, mem.tol)
        weight, pattern = r.weights.max(1)  # (B·h·w,)
        dev = (query - r.recollection).norm(dim=1)  # ‖Δ_ij‖ (Eq. 8)
        out.append(tuple(t.reshape(b, h, w) for t in (pattern, weight, dev)))
    return out


def nearest_prototypes(det: AnoMem, X: Any, batch_size: int = 256) -> PrototypeMaps:
    """argmax_k of the association weights at every position of every scale.

    Shape:
        X (N, C, H, W) -> S arrays (N, h_s, w_s)
    """
    det._check_fitted()
    x = det._prepare(X)
    pats, weights = None, None
    for start in range(0, x.shape[0], batch_size):
        res = _retrieve(det, x[start : start + batch_size])
        p = [r[0].cpu().numpy() for r in res]
        w = [r[1].float().cpu().numpy() for r in res]
        pats = p if pats is None else [np.concatenate([a, b]) for a, b in zip(pats, p)]
        weights = w if weights is None else [np.concatenate([a, b]) for a, b in zip(weights, w)]
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
    det._check_fitted()
    img = image
    if isinstance(img, np.ndarray | torch.Tensor) and (img.ndim == 2 or (img.ndim == 3 and img.shape[0] in (1, 3))):
        img = img[None]
    xb = det._prepare(img, "image")
    if xb.shape[0] != 1:
        raise DataError(f"explain_position takes one image, got {xb.shape[0]}")
    hh, ww = det.image_size_
    if not (0 <= y < hh and 0 <= x < ww):
        raise DataError(f"pixel ({y}, {x}) is outside the {hh}x{ww} input")
    cache: PrototypeCache | None = getattr(det, "prototype_cache_", None)
    out = []
    for s, (pattern, weight, dev) in enumerate(_retrieve(det, xb)):
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
