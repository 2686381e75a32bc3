"""Pseudo-anomalies: anomalies made from normal images, for one-class training.

Two families, both batched tensor ops on whatever device the images are on, with every
random draw taken from one ``torch.Generator`` (same seed, same output):

* **Distribution shifts** (semantic anomalies): a whole-image transform that keeps the
  pixels' statistics but moves the image off the normal distribution — rotation by
  90/180/270°, a vertical flip, or a permutation of the four quadrants. Treating such
  "shifted instances" as negatives is what makes contrastive features useful for
  novelty detection in CSI (Tack et al., NeurIPS 2020) and DROC (Sohn et al., ICLR
  2021); predicting them is GEOM's signal (Golan & El-Yaniv, NeurIPS 2018). A shift is
  an anomaly only where the class is not invariant to it (a horizontal flip of a shirt
  is still a shirt), which is why ``hflip`` exists but is not a default.
* **Local defects** (local anomalies): a small region replaced by something that does
  not belong there — a patch of another normal image (CutPaste, Li et al., CVPR 2021),
  a thin scar of foreign intensity, or a patch of noise (DRAEM's synthetic anomalies,
  Zavrtanik et al., ICCV 2021, use textures the same way); or, in an irregular soft blob
  (DRAEM's noise-shaped masks), the image defocused, its contrast and brightness changed,
  or another image's texture turned and blended in. Each comes with its mask.

In AnoMem they enter stage 1 as y = 0 samples (Eq. 3: no memory, so they are pushed
away from the normal prototypes as hard negatives) and stage 2 as the anomalies the
heads learn from (Eq. 10-12), beside any real labelled anomalies.

Symbols: N images, C channels, H W spatial size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from kornia.filters import gaussian_blur2d

from anomem.choices import DEFECTS, SHIFTS


class PseudoAnomalies(NamedTuple):
    """Pseudo-anomalous copies of normal images.

    Attributes:
        images: (N, C, H, W) float in [0, 1].
        masks: (N, 1, H, W) bool, True where the image was changed (all True for a shift).
        kinds: (N,) int64, index into ``SHIFTS + DEFECTS`` of what was done to each image.
    """

    images: torch.Tensor
    masks: torch.Tensor
    kinds: torch.Tensor


class Defected(NamedTuple):
    """Images with one local defect each and the defect's mask.

    Attributes:
        images: (N, C, H, W) float in [0, 1].
        masks: (N, 1, H, W) bool, True inside the defect.
    """

    images: torch.Tensor
    masks: torch.Tensor


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def shift(x: torch.Tensor, kind: str) -> torch.Tensor:
    """One distribution-shifting transform applied to every image of ``x``.

    Shape:
        (N, C, H, W) -> (N, C, H, W) (``rot90``/``rot270`` need H == W)
    """
    if kind in ("rot90", "rot180", "rot270"):
        k = {"rot90": 1, "rot180": 2, "rot270": 3}[kind]
        if k % 2 and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{kind} needs square images, got {tuple(x.shape[-2:])}")
        return torch.rot90(x, k, dims=(-2, -1))
    if kind == "vflip":
        return torch.flip(x, dims=(-2,))
    if kind == "hflip":
        return torch.flip(x, dims=(-1,))
    if kind == "permute":  # quadrants swapped diagonally: the parts are normal, their layout is not
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        y = x.clone()
        y[..., :h, :w], y[..., h : 2 * h, w : 2 * w] = x[..., h : 2 * h, w : 2 * w], x[..., :h, :w]
        y[..., :h, w : 2 * w], y[..., h : 2 * h, :w] = x[..., h : 2 * h, :w], x[..., :h, w : 2 * w]
        return y
    raise ValueError(f"unknown shift {kind!r}; expected one of {SHIFTS}")


def _boxes(n: int, h: int, w: int, size: tuple[float, float], gen, device) -> tuple[torch.Tensor, ...]:
    """Random axis-aligned boxes: top, left, height, width (N,) int64 each, inside the image."""
    side = min(h, w)
    bh = (_uniform(n, *size, gen, device) * side).round().clamp(2, h - 1).long()
    bw = (_uniform(n, *size, gen, device) * side).round().clamp(2, w - 1).long()
    top = (torch.rand(n, generator=gen, device=device) * (h - bh + 1)).long()
    left = (torch.rand(n, generator=gen, device=device) * (w - bw + 1)).long()
    return top, left, bh, bw


def _box_mask(top, left, bh, bw, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) bool mask of the boxes."""
    yy = torch.arange(h, device=top.device)[None, :, None]
    xx = torch.arange(w, device=top.device)[None, None, :]
    inside = (yy >= top[:, None, None]) & (yy < (top + bh)[:, None, None])
    inside = inside & (xx >= left[:, None, None]) & (xx < (left + bw)[:, None, None])
    return inside[:, None]


def cutpaste(x: torch.Tensor, size: tuple[float, float], gen: torch.Generator | None) -> Defected:
    """Paste a box cut from another image of the batch (at another place) onto each image.

    Shape:
        (N, C, H, W) -> images (N, C, H, W), masks (N, 1, H, W) bool
    """
    n, _, h, w = x.shape
    dev = x.device
    top, left, bh, bw = _boxes(n, h, w, size, gen, dev)
    # another image of the batch, never the image itself (a batch of one cuts from itself)
    offset = torch.randint(1, n, (n,), generator=gen, device=dev) if n > 1 else torch.zeros(1, dtype=torch.long, device=dev)
    src = (torch.arange(n, device=dev) + offset) % max(n, 1)
    # source box origin, independent of the destination one
    sy = (torch.rand(n, generator=gen, device=dev) * (h - bh + 1)).long()
    sx = (torch.rand(n, generator=gen, device=dev) * (w - bw + 1)).long()
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    ry = (yy - top[:, None, None] + sy[:, None, None]).clamp(0, h - 1)  # (N, H, 1)
    rx = (xx - left[:, None, None] + sx[:, None, None]).clamp(0, w - 1)  # (N, 1, W)
    moved = x[src[:, None, None], :, ry, rx].permute(0, 3, 1, 2)  # (N, C, H, W)
    mask = _box_mask(top, left, bh, bw, h, w)
    return Defected(torch.where(mask, moved, x), mask)


def scar(x: torch.Tensor, size: tuple[float, float], gen: torch.Generator | None) -> Defected:
    """A thin rotated bar (1.5-3 px wide) of one foreign intensity on each image.

    The bar's intensity is far from the mean of what it covers: bright on dark, dark on
    bright ground.

    Shape:
        (N, C, H, W) -> images (N, C, H, W), masks (N, 1, H, W) bool
    """
    n, c, h, w = x.shape
    dev = x.device
    side = min(h, w)
    length = _uniform(n, 2 * size[0], 2 * size[1], gen, dev).clamp(max=1.0) * side
    width = _uniform(n, 1.5, 3.0, gen, dev)
    ang = _uniform(n, 0.0, math.pi, gen, dev)
    cy = _uniform(n, 0.2 * h, 0.8 * h, gen, dev)
    cx = _uniform(n, 0.2 * w, 0.8 * w, gen, dev)
    yy = torch.arange(h, device=dev, dtype=x.dtype)[None, :, None] - cy[:, None, None]
    xx = torch.arange(w, device=dev, dtype=x.dtype)[None, None, :] - cx[:, None, None]
    along = xx * torch.cos(ang)[:, None, None] + yy * torch.sin(ang)[:, None, None]
    across = -xx * torch.sin(ang)[:, None, None] + yy * torch.cos(ang)[:, None, None]
    mask = ((along.abs() <= length[:, None, None] / 2) & (across.abs() <= width[:, None, None] / 2))[:, None]
    covered = (x * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1)  # (N, C)
    level = torch.where(covered.mean(1, keepdim=True) < 0.5, _uniform(n, 0.75, 1.0, gen, dev)[:, None],
                        _uniform(n, 0.0, 0.25, gen, dev)[:, None])  # (N, 1)
    return Defected(torch.where(mask, level[:, :, None, None].expand(n, c, 1, 1), x), mask)


def noise_patch(x: torch.Tensor, size: tuple[float, float], gen: torch.Generator | None) -> Defected:
    """A box of uniform noise on each image.

    Shape:
        (N, C, H, W) -> images (N, C, H, W), masks (N, 1, H, W) bool
    """
    n, c, h, w = x.shape
    mask = _box_mask(*_boxes(n, h, w, size, gen, x.device), h, w)
    noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return Defected(torch.where(mask, noise, x), mask)


def _blob(n: int, h: int, w: int, size: tuple[float, float], gen: torch.Generator | None,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Irregular blobs: a disc of the area of a box of side ``size`` x the shorter side whose border is
    pushed in and out by low-frequency noise (a 6 x 6 grid upsampled), softened over ~2 px.

    Returns:
        soft (N, 1, H, W) float in [0, 1], the blend weight; mask (N, 1, H, W) bool, soft > 0.
    """
    side = min(h, w)
    r = _uniform(n, *size, gen, device) * side * 0.56  # pi r^2 ~ (size x side)^2: a box's area
    cy = _uniform(n, 0.0, 1.0, gen, device) * (h - 2 * r).clamp_min(0) + r
    cx = _uniform(n, 0.0, 1.0, gen, device) * (w - 2 * r).clamp_min(0) + r
    coarse = torch.rand(n, 1, 6, 6, generator=gen, device=device) * 2 - 1
    wobble = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    yy = torch.arange(h, device=device, dtype=torch.float32)[None, None, :, None] - cy[:, None, None, None]
    xx = torch.arange(w, device=device, dtype=torch.float32)[None, None, None, :] - cx[:, None, None, None]
    rho = (yy.square() + xx.square()).sqrt() / r[:, None, None, None]  # 1 on the plain disc's border
    edge = (1 + 0.45 * wobble - rho) * r[:, None, None, None] / 2  # about +-1 within 2 px of the border
    soft = (edge + 0.5).clamp(0.0, 1.0)
    return soft, soft > 0


def _blend(x: torch.Tensor, other: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return x * (1 - soft) + other * soft


def smooth(x: torch.Tensor, size: tuple[float, float], gen: torch.Generator | None) -> Defected:
    """An irregular blob defocused by a Gaussian of sigma 1-3 px: the detail is gone, the
    colours and mean brightness stay.

    Shape:
        (N, C, H, W) -> images (N, C, H, W), masks (N, 1, H, W) bool
    """
    n, _, h, w = x.shape
    soft, mask = _blob(n, h, w, size, gen, x.device)
    sigma = _uniform(n, 1.0, 3.0, gen, x.device)
    blurred = gaussian_blur2d(x, 13, torch.stack([sigma, sigma], 1).to(x.dtype), border_type="reflect")
    return Defected(_blend(x, blurred, soft.to(x.dtype)), mask)


def gain(x: torch.Tensor, size: tuple[float, float], gen: torch.Generator | None) -> Defected:
    """An irregular blob whose contrast about its own mean is scaled (x 0.2-0.6 or x 1.6-2.5)
    and whose brightness moves by 0.08-0.25 up or down, with a slight tint on colour images.

    Shape:
        (N, C, H, W) -> images (N, C, H, W), masks (N, 1, H, W) bool
    """
    n, c, h, w = x.shape
    dev = x.device
    soft, mask = _blob(n, h, w, size, gen, dev)
    soft = soft.to(x.dtype)
    mean = (x * soft).sum((2, 3), keepdim=True) / soft.sum((2, 3), keepdim=True).clamp_min(1e-6)
    up = torch.rand(n, generator=gen, device=dev) < 0.5
    scale = torch.where(up, _uniform(n, 1.6, 2.5, gen, dev), _uniform(n, 0.2, 0.6, gen, dev)).to(x.dtype)
    sign = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    shift_ = (sign * _uniform(n, 0.08, 0.25, gen, dev)).to(x.dtype)[:, None, None, None]
    tint = ((torch.rand(n, c, 1, 1, generator=gen, device=dev) - 0.5) * 0.1).to(x.dtype) if c > 1 else 0.0
    changed = (mean + scale[:, None, None, None] * (x - mean) + shift_ + tint).clamp(0.0, 1.0)
    return Defected(_blend(x, changed, soft), mask)


def graft(x: torch.Tensor, size: tuple[float, float], gen: torch.Generator | None) -> Defected:
    """An irregular blob of another image of the batch, turned by a quarter, a half or three
    quarters (non-square images: a half), blended in at opacity 0.5-1: the category's own texture, out of its
    orientation and place, with no straight seam (DRAEM's blended texture blobs, with the
    category's own texture in place of an outside one).

    Shape:
        (N, C, H, W) -> images (N, C, H, W), masks (N, 1, H, W) bool
    """
    n, _, h, w = x.shape
    dev = x.device
    soft, mask = _blob(n, h, w, size, gen, dev)
    offset = torch.randint(1, n, (n,), generator=gen, device=dev) if n > 1 else torch.zeros(1, dtype=torch.long, device=dev)
    src = x[(torch.arange(n, device=dev) + offset) % max(n, 1)]
    turns = torch.randint(1, 4, (n,), generator=gen, device=dev)
    turned = src.clone()
    for k in (1, 2, 3):  # one batched turn per angle
        sel = turns == k
        if h == w:
            turned[sel] = torch.rot90(src[sel], k, dims=(-2, -1))
        else:
            turned[sel] = torch.flip(src[sel], dims=(-2, -1))
    alpha = _uniform(n, 0.5, 1.0, gen, dev).to(x.dtype)[:, None, None, None]
    return Defected(_blend(x, turned, soft.to(x.dtype) * alpha), mask)


_DEFECT_FNS = {"cutpaste": cutpaste, "scar": scar, "noise": noise_patch, "smooth": smooth, "gain": gain,
               "graft": graft}


def twin_defects(
    a: torch.Tensor, b: torch.Tensor, kinds: Sequence[str], size: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One local defect per image, drawn identically on two views of the same images.

    Image i of ``a`` and image i of ``b`` get the same kind (uniform over ``kinds``), at the
    same place, with the same shape and draws: the generator is rewound before ``b``, so a
    cut-paste takes the same box from the same other image (of its own view), a noise
    patch holds the same noise. Stage 1 reads the two as a positive pair whose defect sits
    at the same positions of both feature maps (:class:`anomem.engine.Stage1Trainer`).

    Shape:
        a, b (N, C, H, W) in [0, 1] -> a', b' (N, C, H, W), mask (N, 1, H, W) bool
    """
    for k in kinds:
        if k not in DEFECTS:
            raise ValueError(f"unknown defect {k!r}; expected names from {DEFECTS}")
    if not kinds or a.shape != b.shape:
        raise ValueError(f"twin_defects needs kinds and two views of one shape, got {list(kinds)}, "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    kind_of = torch.randint(len(kinds), (a.shape[0],), generator=generator, device=a.device)
    out_a, out_b = a.clone(), b.clone()
    mask = torch.zeros(a.shape[0], 1, *a.shape[2:], dtype=torch.bool, device=a.device)
    for i, name in enumerate(kinds):
        sel = (kind_of == i).nonzero().flatten()
        if sel.numel():
            state = generator.get_state()
            out_a[sel], mask[sel] = _DEFECT_FNS[name](a[sel], size, generator)
            generator.set_state(state)
            out_b[sel] = _DEFECT_FNS[name](b[sel], size, generator).images
    return out_a, out_b, mask


def shift_separability(
    normals: torch.Tensor, shifts: Sequence[str], sample: int = 256, generator: torch.Generator | None = None
) -> dict[str, float]:
    """How far each shift moves the normals off their own distribution, as an AUROC.

    A shift is a useful pseudo-anomaly only where the class is not invariant to it (a
    "0" turned by 180° is still a "0"). Label-free test: half of a random sample of the
    normals is a reference bank; the other half, as it is and shifted, is scored by the
    mean Euclidean pixel distance to its 2 nearest bank images. The AUROC of shifted
    against unshifted is ~0.5 for a shift the class is invariant to and ~1 for one that
    makes clear outliers.

    Shape:
        normals (N, C, H, W) float in [0, 1], N >= 4
    """
    n = normals.shape[0]
    if n < 4:
        raise ValueError(f"shift_separability needs at least 4 normals, got {n}")
    pick = torch.randperm(n, generator=generator, device=normals.device)[: min(sample, n)]
    half = pick.numel() // 2
    bank, probe = normals[pick[:half]].flatten(1), normals[pick[half:]]

    def knn(x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.flatten(1), bank).topk(min(2, half), dim=1, largest=False).values.mean(1)

    base = knn(probe)
    out = {}
    for k in shifts:
        moved = knn(shift(probe, k))
        # AUROC = P(shifted scores above unshifted), ties counting half (Mann-Whitney U)
        diff = moved[:, None] - base[None, :]
        out[k] = float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())
    return out


def make_pseudo_anomalies(
    normals: torch.Tensor,
    count: int,
    shifts: Sequence[str] = ("rot90", "rot180", "rot270"),
    defects: Sequence[str] = DEFECTS,
    defect_fraction: float = 0.5,
    defect_size: tuple[float, float] = (0.1, 0.25),
    generator: torch.Generator | None = None,
) -> PseudoAnomalies:
    """``count`` pseudo-anomalies from random normal images (drawn with replacement).

    A fraction ``defect_fraction`` of them get a local defect (kind drawn uniformly from
    ``defects``), the others a distribution shift (uniformly from ``shifts``). With one
    family empty, all come from the other.

    Args:
        normals: (N, C, H, W) float in [0, 1].
        count: how many to make.
        defect_size: (min, max) box side (scar: half-length) as a fraction of the shorter
            image side.
        generator: seeds every draw (on the images' device).

    Returns:
        :class:`PseudoAnomalies`.
    """
    if normals.ndim != 4 or normals.shape[0] == 0:
        raise ValueError(f"normals must be a non-empty (N, C, H, W) batch, got shape {tuple(normals.shape)}")
    for k in shifts:
        if k not in SHIFTS:
            raise ValueError(f"unknown shift {k!r}; expected names from {SHIFTS}")
    for k in defects:
        if k not in DEFECTS:
            raise ValueError(f"unknown defect {k!r}; expected names from {DEFECTS}")
    if not shifts and not defects:
        raise ValueError("pseudo-anomalies need at least one shift or one defect kind")
    if not 0.0 <= defect_fraction <= 1.0:
        raise ValueError(f"defect_fraction must lie in [0, 1], got {defect_fraction}")
    if not 0.0 < defect_size[0] <= defect_size[1] < 1.0:
        raise ValueError(f"defect_size must satisfy 0 < lo <= hi < 1, got {defect_size}")
    dev = normals.device
    n, c, h, w = normals.shape
    frac = 0.0 if not defects else 1.0 if not shifts else defect_fraction
    src = torch.randint(n, (count,), generator=generator, device=dev)
    base = normals[src]
    n_def = int(round(frac * count))
    is_def = torch.zeros(count, dtype=torch.bool, device=dev)
    is_def[torch.randperm(count, generator=generator, device=dev)[:n_def]] = True
    kind_of = torch.empty(count, dtype=torch.long, device=dev)
    if shifts:
        kind_of[~is_def] = torch.randint(len(shifts), (int((~is_def).sum()),), generator=generator, device=dev)
    if defects:
        kind_of[is_def] = torch.randint(len(defects), (n_def,), generator=generator, device=dev)
    out = base.clone()
    masks = torch.ones(count, 1, h, w, dtype=torch.bool, device=dev)
    kinds = torch.empty(count, dtype=torch.long, device=dev)
    for i, name in enumerate(shifts):
        sel = (~is_def & (kind_of == i)).nonzero().flatten()
        if sel.numel():
            out[sel] = shift(base[sel], name)
            kinds[sel] = SHIFTS.index(name)
    for i, name in enumerate(defects):
        sel = (is_def & (kind_of == i)).nonzero().flatten()
        if sel.numel():
            out[sel], masks[sel] = _DEFECT_FNS[name](base[sel], defect_size, generator)
            kinds[sel] = len(SHIFTS) + DEFECTS.index(name)
    return PseudoAnomalies(out.clamp_(0.0, 1.0), masks, kinds)


__all__ = [
    "DEFECTS",
    "PseudoAnomalies",
    "SHIFTS",
    "cutpaste",
    "Defected",
    "gain",
    "graft",
    "make_pseudo_anomalies",
    "noise_patch",
    "scar",
    "shift",
    "shift_separability",
    "smooth",
    "twin_defects",
]
