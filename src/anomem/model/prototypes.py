"""Prototype patches: the training-image patch each stored pattern stands for.

A stored pattern x_k is a learned vector, not an image. To show it, a
:class:`PrototypeCache` keeps, for every pattern, the training-image patch whose feature
(in the memory's space) is most similar to x_k (largest ξ·x_k). :class:`~anomem.AnoMem`
builds the cache at fit time from the first ``scorer.prototype_cache`` training normals
(0 = off) and saves it in the checkpoint; it costs K·C·P² bytes per scale (about 20 KB
for ``cpu-small`` on 28 px images). :mod:`anomem.explain` reads it.

A position (i, j) of an h × w feature map covers the input pixels around
((i + ½)·H/h, (j + ½)·W/w); its patch is the square of side P = ⌈2·H/h⌉ centred there
(shifted to stay inside the image), a rough picture of the receptive field's centre.

Symbols: B batch, C channels, H W input size, h w feature size, K stored patterns,
S scales.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from anomem.inputs import to_float
from anomem.model.net import AnoMemNet


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



__all__ = ["PrototypeCache", "build_prototype_cache", "patch_box"]
