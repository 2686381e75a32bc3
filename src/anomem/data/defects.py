"""Synthetic local defects with pixel masks, for measuring anomaly localisation.

:func:`add_defects` copies normal images and puts one (or more) small local defect on
each, returning the defective images and their ground-truth masks (uint8, 255 = defect
pixel), in the layout :func:`anomem.data.folder.load_folder` gives for ``test/masks``.

Kinds (:data:`DEFECT_KINDS`):

* ``patch`` — a rectangle cut from another image of the set (or from a different place
  of the same image when there is only one) and pasted at a random place, as in
  CutPaste (Li et al., CVPR 2021). If no draw differs enough from what it covers, a
  flat patch of the opposite brightness is pasted instead.
* ``scratch`` — a thin line (1-2 px) of random direction and length whose pixels are
  bright where the image is dark and dark where it is bright.
* ``blob`` — an irregular rounded region (an ellipse with a wavy border) whose
  brightness is shifted up on dark ground and down on bright ground.

Every defect differs from the pixels it covers by at least ``min_contrast`` on average,
so no mask marks an invisible change. All randomness comes from ``seed``.

Symbols: N images, C channels, H W spatial size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from anomem.errors import DataError
from anomem.inputs import as_images

__all__ = ["DEFECT_KINDS", "Defects", "add_defects"]

DEFECT_KINDS = ("patch", "scratch", "blob")
_PATCH_TRIES = 20


class Defects(NamedTuple):
    """Defective copies of images and where the defects are.

    Attributes:
        images: (N, C, H, W) uint8, the images with defects.
        masks: (N, 1, H, W) uint8, 255 on defect pixels, 0 elsewhere.
        kinds: the kind of defect put on each image (the first one if several).
    """

    images: torch.Tensor
    masks: torch.Tensor
    kinds: tuple[str, ...]


def add_defects(
    images: Any,
    kinds: Sequence[str] = DEFECT_KINDS,
    seed: int = 0,
    size: tuple[float, float] = (0.15, 0.3),
    per_image: int = 1,
    min_contrast: float = 0.25,
) -> Defects:
    """Put ``per_image`` random local defects on a copy of every image.

    Args:
        images: (N, H, W) or (N, C, H, W), uint8 or float in [0, 1] (not modified).
        kinds: the defect kinds to draw from, uniformly, per defect.
        seed: seeds every random choice; the same arguments give the same output.
        size: (min, max) defect extent as a fraction of the shorter image side.
        per_image: defects per image (their masks are merged).
        min_contrast: smallest mean absolute change (in [0, 1] intensity) a defect must
            make over its mask.

    Returns:
        :class:`Defects` with uint8 images and masks.

    Raises:
        DataError: unknown kind, bad size range or count, or invalid images.
    """
    unknown = [k for k in kinds if k not in DEFECT_KINDS]
    if not kinds or unknown:
        raise DataError(f"defect kinds must be a non-empty subset of {DEFECT_KINDS}, got {tuple(kinds)}")
    lo, hi = size
    if not 0 < lo <= hi <= 1:
        raise DataError(f"defect size must satisfy 0 < min <= max <= 1 (fraction of the image side), got {size}")
    if per_image < 1:
        raise DataError(f"per_image must be >= 1, got {per_image}")
    if not 0 <= min_contrast <= 0.5:
        raise DataError(f"min_contrast must lie in [0, 0.5], got {min_contrast}")
    x = as_images(images, "images")
    src = (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).numpy()  # (N, C, H, W)
    rng = np.random.default_rng(seed)
    out = src.copy()
    masks = np.zeros((src.shape[0], src.shape[2], src.shape[3]), dtype=bool)
    chosen = []
    draw = {"patch": _patch, "scratch": _scratch, "blob": _blob}
    for i in range(src.shape[0]):
        for d in range(per_image):
            kind = str(kinds[int(rng.integers(len(kinds)))])
            if d == 0:
                chosen.append(kind)
            masks[i] |= draw[kind](out, i, src, rng, (lo, hi), min_contrast)
    imgs = torch.from_numpy(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
    mask_t = torch.from_numpy(masks.astype(np.uint8) * 255)[:, None]  # (N, 1, H, W)
    return Defects(imgs, mask_t, tuple(chosen))


def _extent(rng: np.random.Generator, side: int, frac: tuple[float, float]) -> int:
    return max(2, int(round(rng.uniform(*frac) * side)))


def _patch(out: np.ndarray, i: int, src: np.ndarray, rng: np.random.Generator, frac, min_contrast: float) -> np.ndarray:
    _, h, w = out.shape[1:]
    s = _extent(rng, min(h, w), frac)
    aspect = math.exp(rng.uniform(-math.log(2), math.log(2)))
    ph = int(np.clip(round(s * math.sqrt(aspect)), 2, h))
    pw = int(np.clip(round(s / math.sqrt(aspect)), 2, w))
    ty, tx = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
    target = out[i, :, ty : ty + ph, tx : tx + pw]
    n = src.shape[0]
    patch = None
    for _ in range(_PATCH_TRIES):
        j = int(rng.integers(n - 1)) if n > 1 else 0
        j = j + (j >= i) if n > 1 else 0  # another image, drawn uniformly
        sy, sx = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
        cand = src[j, :, sy : sy + ph, sx : sx + pw]
        if np.abs(cand - target).mean() >= min_contrast:
            patch = cand
            break
    if patch is None:  # nothing differs enough: a flat patch of the opposite brightness
        level = 0.9 if target.mean() < 0.5 else 0.1
        patch = np.clip(level + rng.uniform(-0.05, 0.05, target.shape), 0, 1)
    out[i, :, ty : ty + ph, tx : tx + pw] = patch
    mask = np.zeros((h, w), dtype=bool)
    mask[ty : ty + ph, tx : tx + pw] = True
    return mask


def _scratch(out: np.ndarray, i: int, src: np.ndarray, rng: np.random.Generator, frac, min_contrast: float) -> np.ndarray:
    _, h, w = out.shape[1:]
    side = min(h, w)
    length = max(3.0, rng.uniform(frac[0] * 2, frac[1] * 2) * side)  # lines are long but thin
    angle = rng.uniform(0, math.pi)
    cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
    dy, dx = math.sin(angle) * length / 2, math.cos(angle) * length / 2
    width = 1 if side < 48 else int(rng.integers(1, 3))
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width)
    mask = np.asarray(canvas) > 0
    if not mask.any():  # a line entirely off the image cannot happen (centre inside), but be safe
        mask[int(cy), int(cx)] = True
    bright = rng.uniform(0.85, 1.0)
    dark = rng.uniform(0.0, 0.15)
    cur = out[i]  # (C, H, W)
    lum = cur.mean(0)
    new = np.where(lum < 0.5, bright, dark)  # (H, W): opposite of what is under each pixel
    cur[:, mask] = new[mask]
    return mask


def _blob(out: np.ndarray, i: int, src: np.ndarray, rng: np.random.Generator, frac, min_contrast: float) -> np.ndarray:
    _, h, w = out.shape[1:]
    r0 = _extent(rng, min(h, w), frac) / 2.0
    cy, cx = rng.uniform(r0, h - r0), rng.uniform(r0, w - r0)
    ratio = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = yy - cy, xx - cx
    u = x * math.cos(rot) + y * math.sin(rot)  # ellipse axes
    v = (-x * math.sin(rot) + y * math.cos(rot)) / ratio
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    wave = 1.0 + sum(rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    mask = rho <= r0 * wave
    if not mask.any():
        mask[int(cy), int(cx)] = True
    cur = out[i]  # (C, H, W)
    under = cur[:, mask]
    shift = rng.uniform(max(0.35, 2 * min_contrast), 0.6)
    sign = 1.0 if under.mean() < 0.5 else -1.0
    changed = np.clip(under + sign * shift, 0, 1)
    if np.abs(changed - under).mean() < min_contrast:  # saturated ground: flip to the far end
        changed = np.full_like(under, 0.9 if under.mean() < 0.5 else 0.1)
    cur[:, mask] = changed
    return mask
