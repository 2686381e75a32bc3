"""A local-defect benchmark cut from real photographs (MVTec AD's folder layout).

:func:`make_photo_benchmark` writes, for each category (one real photograph bundled with
scikit-image), a folder that ``anomem train/evaluate --normal-dir good --abnormal-dir '*'
--mask-dir ground_truth`` reads as it reads MVTec AD::

    ROOT/<category>/train/good/*.png                  training normals
    ROOT/<category>/test/good/*.png                   test normals
    ROOT/<category>/test/<kind>/*.png                 test images with one defect
    ROOT/<category>/ground_truth/<kind>/<stem>_mask.png

Training and test crops come from disjoint regions of the photograph (the top rows train,
the bottom rows test), so no test pixel was seen in training. Each defect is drawn on a
test crop and its mask marks every pixel it changed.

Two families of defect kinds, reported apart (:data:`OBVIOUS`, :data:`SUBTLE`):

* obvious — ``scratch`` (a thin line of the opposite brightness), ``stain`` (a dark or
  bright blob with a soft edge), ``patch`` (a square of another photograph pasted in),
  ``colour`` (a tinted, half-transparent blob);
* subtle — the pixel values stay those of the photograph, only its local structure
  changes: ``blur`` (a defocused disc), ``warp`` (a swirled disc), ``rotate`` (a square
  of the texture turned by a quarter). Raw-pixel patch matching barely sees them.

All randomness comes from ``seed``; the same arguments write the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from anomem.errors import DataError

__all__ = ["CATEGORIES", "DEFECT_FAMILIES", "NEAR_COPIES", "OBVIOUS", "PSEUDO_DEFECTS", "SUBTLE", "PhotoSplit",
           "leave_kind_out", "make_photo_benchmark", "photo_category"]

#: category name -> scikit-image loader name (all bundled with the wheel, none downloaded)
CATEGORIES: dict[str, str] = {
    "grass": "grass",
    "gravel": "gravel",
    "brick": "brick",
    "tissue": "immunohistochemistry",
    "stars": "hubble_deep_field",
}
VALIDATION_COLUMN = 0.7  # with validation crops: training crops left of this column fraction, validation right of it
OBVIOUS = ("scratch", "stain", "patch", "colour")
SUBTLE = ("blur", "warp", "rotate")
DEFECT_FAMILIES = {"obvious": OBVIOUS, "subtle": SUBTLE}

#: the pseudo-defect kinds the library's default config fits against (``pseudo.defects``, drawn by
#: :mod:`anomem.model.pseudo`), spelled out here so that the data module does not import the model
PSEUDO_DEFECTS = ("cutpaste", "scar", "noise")

#: test kind -> the pseudo-defect kinds that are near copies of it. A detector that has
#: fitted (stage 1, heads or fusion) against a near copy of a kind has, in effect, seen
#: that kind, so a benchmark that wants "defects the fit never saw" must leave them out.
#: Read from the two generators (here and in ``anomem/model/pseudo.py``):
NEAR_COPIES: dict[str, tuple[str, ...]] = {
    # a 1-2 px line, 0.15-0.45 x side long, any angle, set to near-white on dark ground and
    # near-black on bright; ``scar`` is a 1.5-3 px bar 0.2-0.5 x side long, any angle, with
    # the same brightness rule: the same defect.
    "scratch": ("scar",),
    # a soft disc set to the far end of the brightness range from the ground it covers:
    # ``scar``'s level rule on a blob instead of a bar. Shape differs, the cue (a region of
    # extreme, uniform intensity opposite to its ground) does not, so it counts as seen.
    # ``gain`` darkens or brightens a soft blob and flattens its texture: a faint stain.
    "stain": ("scar", "gain"),
    # a 0.1-0.22 x side square of foreign texture with sharp, axis-aligned edges;
    # ``cutpaste`` pastes a 0.1-0.25 x side box of texture from another image, and ``noise``
    # fills a box of the same sizes with content foreign to the photograph; ``graft`` blends
    # in a blob of another image's texture.
    "patch": ("cutpaste", "noise", "graft"),
    # a half-transparent blob of a saturated colour (grey photographs: a level 0.4 away);
    # ``noise`` is the only pseudo-defect that puts colours the photograph lacks into a
    # region (``scar`` is grey: equal levels in every channel; ``cutpaste`` copies the
    # category's own colours). ``gain`` moves a soft blob's level (and tints it slightly):
    # on a grey photograph, the colour kind's flat level 0.4 away is that.
    "colour": ("noise", "gain"),
    # a defocused disc: ``smooth`` defocuses a blob (of the others, ``noise`` adds detail,
    # ``cutpaste`` moves it, ``scar`` paints over it, ``gain`` scales it but keeps its shape).
    "blur": ("smooth",),
    # a smooth swirl of the photograph's own pixels, no seam and no foreign values: no
    # pseudo-defect deforms the texture.
    "warp": (),
    # a 0.14-0.24 x side square of the photograph's own texture, turned by a quarter: a box
    # of the category's texture, out of place, with straight seams, which is what
    # ``cutpaste`` (0.1-0.25 x side, from another image of the same category) makes, and
    # ``graft`` blends in a blob of the category's texture turned by a quarter or more.
    "rotate": ("cutpaste", "graft"),
}


def leave_kind_out(kinds: Sequence[str] = OBVIOUS + SUBTLE, near: dict[str, tuple[str, ...]] | None = None,
                   in_use: Sequence[str] = PSEUDO_DEFECTS) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Which detectors to fit so that no kind is scored by a fit that saw its near copy.

    Returns ``{excluded pseudo-kinds: test kinds it scores}``, ordered by excluded set.
    The detector with nothing excluded (the library default, key ``()``) is always there.
    An excluded set contained in a larger one is merged into it: excluding more than a
    kind's near copies keeps the guarantee and saves a fit. Each kind is scored by the
    smallest fitted set that holds all its near copies, so the kinds with none are scored
    by the default detector. Each kept set leaves at least one pseudo-defect in use.
    ``in_use``: the pseudo-defect kinds the default detector fits against; a near copy it
    does not draw needs no exclusion.
    """
    near = NEAR_COPIES if near is None else near
    unknown = [k for k in kinds if k not in near]
    if unknown:
        raise DataError(f"no near-copy entry for test kinds {unknown}")
    near = {k: tuple(d for d in v if d in in_use) for k, v in near.items()}
    wanted = {tuple(sorted(near[k])) for k in kinds}
    keep = {()} | {s for s in wanted if s and not any(set(s) < set(t) for t in wanted)}
    for s in keep:
        if set(s) >= set(in_use):
            raise DataError(f"excluding {list(s)} leaves no pseudo-defect to fit against")
    plan: dict[tuple[str, ...], list[str]] = {s: [] for s in sorted(keep, key=lambda s: (len(s), s))}
    for k in kinds:
        home = min((s for s in plan if set(near[k]) <= set(s)), key=lambda s: (len(s), s))
        plan[home].append(k)
    return {s: tuple(v) for s, v in plan.items()}


def _photo(name: str) -> np.ndarray:
    """The bundled photograph as float (C, H, W) in [0, 1]."""
    try:
        from skimage import data
    except ImportError as e:  # a declared dependency; say what to install if it is missing
        raise DataError("the photo benchmark needs scikit-image (pip install scikit-image)") from e
    im = np.asarray(getattr(data, name)(), dtype=np.float64) / 255.0
    return im[None] if im.ndim == 2 else im.transpose(2, 0, 1)


def _crops(photo: np.ndarray, rows: tuple[int, int], n: int, size: int, rng: np.random.Generator,
           cols: tuple[int, int] | None = None) -> np.ndarray:
    """``n`` random size x size crops whose rows lie in ``rows`` (and columns in ``cols``,
    default all) (N, C, size, size)."""
    _, h, w = photo.shape
    lo, hi = rows
    left, right = cols or (0, w)
    if hi - lo < size or right - left < size:
        raise DataError(f"a {size}-px crop does not fit rows {lo}..{hi}, columns {left}..{right} of a {h}x{w} photograph")
    ys = rng.integers(lo, hi - size + 1, n)
    xs = rng.integers(left, right - size + 1, n)
    return np.stack([photo[:, y : y + size, x : x + size] for y, x in zip(ys, xs)])


class PhotoSplit(NamedTuple):
    """One category in memory: float images (N, C, H, W) in [0, 1] and bool masks (N, H, W)."""

    train: np.ndarray
    test_normal: np.ndarray
    test_defect: np.ndarray
    masks: np.ndarray
    kinds: tuple[str, ...]
    validation: np.ndarray | None = None  # normals of the training rows no training crop touches (n_val > 0)


# -- defect painters: (img (C, H, W) modified in place, rng, donor) -> mask (H, W) -------------

def _disc(h: int, w: int, rng: np.random.Generator, radius: tuple[float, float]) -> tuple[np.ndarray, float, float, float]:
    r = rng.uniform(*radius)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    yy, xx = np.mgrid[0:h, 0:w]
    theta = np.arctan2(yy - cy, xx - cx)
    wave = 1.0 + 0.15 * np.cos(3 * theta + rng.uniform(0, 2 * math.pi))  # an irregular border
    return np.hypot(yy - cy, xx - cx) <= r * wave, cy, cx, r


def _scratch(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    _, h, w = img.shape
    length, angle = rng.uniform(0.15, 0.45) * min(h, w), rng.uniform(0, math.pi)
    cy, cx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    dy, dx = math.sin(angle) * length / 2, math.cos(angle) * length / 2
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(1, 3)))
    mask = np.asarray(canvas) > 0
    lum = img.mean(0)
    img[:, mask] = np.where(lum[mask] < 0.5, rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.15))
    return mask


def _stain(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    mask, *_ = _disc(*img.shape[1:], rng, (0.04 * img.shape[1], 0.1 * img.shape[1]))
    soft = ndimage.gaussian_filter(mask.astype(np.float64), 1.0)
    level = 0.05 if img[:, mask].mean() > 0.45 else 0.95  # the far end from the ground it covers
    img[:] = img * (1 - 0.9 * soft) + level * 0.9 * soft
    return mask


def _patch(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    _, h, w = img.shape
    s = int(rng.uniform(0.1, 0.22) * min(h, w))
    ty, tx = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    sy, sx = int(rng.integers(0, donor.shape[1] - s + 1)), int(rng.integers(0, donor.shape[2] - s + 1))
    img[:, ty : ty + s, tx : tx + s] = donor[:, sy : sy + s, sx : sx + s]
    mask = np.zeros((h, w), dtype=bool)
    mask[ty : ty + s, tx : tx + s] = True
    return mask


def _colour(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    mask, *_ = _disc(*img.shape[1:], rng, (0.05 * img.shape[1], 0.11 * img.shape[1]))
    if img.shape[0] == 3:  # a saturated colour far from the photograph's own
        tint = np.eye(3)[int(rng.integers(3))] * 0.9 + 0.05
    else:  # grey: a flat level 0.4 away from the mean it covers
        under = img[:, mask].mean()
        tint = np.array([under + 0.4 if under < 0.5 else under - 0.4])
    img[:, mask] = 0.3 * img[:, mask] + 0.7 * tint[:, None]
    return mask


def _blur(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    mask, *_ = _disc(*img.shape[1:], rng, (0.07 * img.shape[1], 0.13 * img.shape[1]))
    blurred = np.stack([ndimage.gaussian_filter(c, rng.uniform(1.5, 2.5)) for c in img])
    img[:, mask] = blurred[:, mask]
    return mask


def _warp(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    _, h, w = img.shape
    mask, cy, cx, r = _disc(h, w, rng, (0.08 * h, 0.14 * h))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rho = np.hypot(yy - cy, xx - cx)
    turn = rng.choice([-1, 1]) * rng.uniform(2.0, 3.5) * np.exp(-rho / (0.5 * r)) * (rho <= r)
    theta = np.arctan2(yy - cy, xx - cx) + turn  # a swirl: each ring turns, the centre most
    src = np.stack([cy + rho * np.sin(theta), cx + rho * np.cos(theta)])
    img[:] = np.stack([ndimage.map_coordinates(c, src, order=1, mode="reflect") for c in img])
    return mask


def _rotate(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    _, h, w = img.shape
    s = int(rng.uniform(0.14, 0.24) * min(h, w))
    ty, tx = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    img[:, ty : ty + s, tx : tx + s] = np.rot90(img[:, ty : ty + s, tx : tx + s], 1, axes=(1, 2))
    mask = np.zeros((h, w), dtype=bool)
    mask[ty : ty + s, tx : tx + s] = True
    return mask


_PAINT: dict[str, Callable[[np.ndarray, np.random.Generator, np.ndarray], np.ndarray]] = {
    "scratch": _scratch, "stain": _stain, "patch": _patch, "colour": _colour,
    "blur": _blur, "warp": _warp, "rotate": _rotate,
}


def photo_category(category: str, size: int = 128, n_train: int = 240, n_test_normal: int = 60,
                   per_kind: int = 15, kinds: Sequence[str] = OBVIOUS + SUBTLE, seed: int = 0,
                   test_fraction: float = 0.35, n_val: int = 0) -> PhotoSplit:
    """One category in memory (see :func:`make_photo_benchmark`). With ``n_val`` > 0 the
    training crops keep to the training rows' left :data:`VALIDATION_COLUMN` of the columns
    and ``n_val`` validation normals are cut from the columns right of them (no pixel shared
    with a training crop: ``AnoMem.fit(validation=...)``); with 0 the split is as before."""
    if category not in CATEGORIES:
        raise DataError(f"unknown photo category {category!r}; choose from {sorted(CATEGORIES)}")
    unknown = [k for k in kinds if k not in _PAINT]
    if unknown:
        raise DataError(f"unknown defect kinds {unknown}; choose from {sorted(_PAINT)}")
    photo = _photo(CATEGORIES[category])
    rng = np.random.default_rng([seed, sorted(CATEGORIES).index(category)])
    h = photo.shape[1]
    cut = int(round(h * (1 - test_fraction)))
    w = photo.shape[2]
    left = int(round(w * VALIDATION_COLUMN)) if n_val > 0 else w
    train = _crops(photo, (0, cut), n_train, size, rng, cols=(0, left))
    val = _crops(photo, (0, cut), n_val, size, rng, cols=(left, w)) if n_val > 0 else None
    test_normal = _crops(photo, (cut, h), n_test_normal, size, rng)
    other = [c for c in sorted(CATEGORIES) if c != category]
    defects, masks, names = [], [], []
    for kind in kinds:
        for img in _crops(photo, (cut, h), per_kind, size, rng):
            donor = _photo(CATEGORIES[other[int(rng.integers(len(other)))]])
            if donor.shape[0] != img.shape[0]:  # the pasted square keeps this category's channels
                donor = np.repeat(donor.mean(0, keepdims=True), img.shape[0], 0)
            img = img.copy()
            masks.append(_PAINT[kind](img, rng, donor))
            defects.append(np.clip(img, 0, 1))
            names.append(kind)
    return PhotoSplit(train, test_normal, np.stack(defects), np.stack(masks), tuple(names), val)


def _save(path: Path, img: np.ndarray) -> None:
    arr = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)


def make_photo_benchmark(root: str | Path, categories: Sequence[str] = tuple(CATEGORIES), size: int = 128,
                         n_train: int = 240, n_test_normal: int = 60, per_kind: int = 15,
                         kinds: Sequence[str] = OBVIOUS + SUBTLE, seed: int = 0) -> list[Path]:
    """Write one MVTec-layout folder per category under ``root``; returns their paths.

    Args:
        categories: names from :data:`CATEGORIES`.
        size: crop side in pixels.
        n_train, n_test_normal: normal crops for training and for the test split.
        per_kind: defective test images per defect kind.
        kinds: defect kinds, from :data:`OBVIOUS` and :data:`SUBTLE`.
        seed: seeds every choice.
    """
    root = Path(root)
    out = []
    for cat in categories:
        split = photo_category(cat, size, n_train, n_test_normal, per_kind, kinds, seed)
        base = root / cat
        for sub in ("train/good", "test/good", *(f"test/{k}" for k in kinds), *(f"ground_truth/{k}" for k in kinds)):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(split.train):
            _save(base / "train" / "good" / f"{i:03d}.png", img)
        for i, img in enumerate(split.test_normal):
            _save(base / "test" / "good" / f"{i:03d}.png", img)
        for i, (img, mask, kind) in enumerate(zip(split.test_defect, split.masks, split.kinds)):
            _save(base / "test" / kind / f"{i:03d}.png", img)
            _save(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask[None].astype(np.float64))
        out.append(base)
    return out
