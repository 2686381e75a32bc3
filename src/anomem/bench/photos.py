"""Metrics of the photo benchmark (:mod:`anomem.data.photos`), shared by ``anomem demo``
and ``benchmarks/photos.py``.

Per test defect kind, each kind against all the test normals: image AUROC, and with maps
pixel AUROC and AUPRO over the normals and that kind's images (a normal image's pixels
are all normal, so a hot spot on a normal counts as a false positive, as in the MVTec AD
protocol). A family's number (obvious, subtle) is the mean over its kinds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anomem.baselines import aggregate_patch_distances
from anomem.data.photos import DEFECT_FAMILIES, PhotoSplit
from anomem.metrics import aupro, image_auroc, pixel_auroc


def uint8_images(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (a :class:`PhotoSplit`'s arrays) as uint8, as a user's files hold them."""
    return (torch.as_tensor(a, dtype=torch.float64).clamp(0, 1) * 255).round().to(torch.uint8)


def patch_maps(near: np.ndarray, side: tuple[int, int]) -> np.ndarray:
    """Patch kNN's nearest-patch distances on the patch grid (N, h, w) -> bilinear maps at
    image size (N, H, W), its heat-maps."""
    return F.interpolate(torch.from_numpy(near)[:, None], size=side, mode="bilinear", align_corners=False)[:, 0].numpy()


def patch_scores(near: np.ndarray, how: str, share: float) -> np.ndarray:
    """Patch kNN's image scores (N,) from its nearest-patch distances (N, h, w): ``how``
    ``max`` or ``topk`` (the mean of the ``share`` of largest)."""
    return aggregate_patch_distances(torch.from_numpy(near.reshape(len(near), -1)), how, share).numpy()


def per_kind(sp: PhotoSplit, s_normal: np.ndarray, s_defect: np.ndarray,
             m_normal: np.ndarray | None = None, m_defect: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """{kind: {"image_auroc", and with maps "pixel_auroc", "aupro"}}, each kind against all test normals."""
    kinds = np.asarray(sp.kinds)
    empty = np.zeros((len(s_normal), *sp.masks.shape[1:]), bool)
    out = {}
    for k in dict.fromkeys(sp.kinds):
        sel = kinds == k
        rec = {"image_auroc": image_auroc(np.r_[np.zeros(len(s_normal)), np.ones(sel.sum())], np.r_[s_normal, s_defect[sel]])}
        if m_normal is not None:
            masks = np.concatenate([empty, sp.masks[sel]])
            maps = np.concatenate([m_normal, m_defect[sel]])
            rec.update(pixel_auroc=pixel_auroc(masks, maps), aupro=aupro(masks, maps))
        out[k] = rec
    return out


def all_images(sp: PhotoSplit, m_normal: np.ndarray, m_defect: np.ndarray) -> dict[str, float]:
    """Pixel AUROC and AUPRO over every test image (normals included), and AUPRO over the
    defective images only (the protocol of the earlier photo benchmark, for comparison)."""
    masks = np.concatenate([np.zeros((len(m_normal), *sp.masks.shape[1:]), bool), sp.masks])
    maps = np.concatenate([m_normal, m_defect])
    return {"pixel_auroc_all": pixel_auroc(masks, maps), "aupro_all": aupro(masks, maps),
            "aupro_defective_only": aupro(sp.masks, m_defect)}


def family_means(kinds: dict[str, dict[str, float]], metric: str = "image_auroc") -> dict[str, float]:
    """{family: mean of ``metric`` over its kinds present in ``kinds``} (families with none left out)."""
    out = {}
    for fam, members in DEFECT_FAMILIES.items():
        v = [kinds[k][metric] for k in members if k in kinds and metric in kinds[k]]
        if v:
            out[fam] = float(np.mean(v))
    return out


__all__ = ["all_images", "family_means", "patch_maps", "patch_scores", "per_kind", "uint8_images"]
