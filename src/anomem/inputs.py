"""Turn what users pass (arrays, tensors, Datasets, ImageSets) into one image tensor.

Accepted: uint8 or float arrays/tensors shaped (N, H, W) or (N, C, H, W) with C in
{1, 3}; floats must lie in [0, 1]; a torch Dataset yielding images (or (image, label)
tuples) of such shapes; an :class:`anomem.data.ImageSet`. Anything else is a
:class:`DataError` naming what was wrong.

Shape:
    -> (N, C, H, W), dtype uint8 or float32
"""

from __future__ import annotations

import hashlib
import warnings
from os import PathLike
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomem.errors import DataError
from anomem.imageset import ImageSet


def as_images(x: Any, name: str = "images") -> torch.Tensor:
    """Validate and convert ``x`` to an (N, C, H, W) uint8 or float32 tensor.

    Integer pixels must lie in 0..255 (returned as uint8), floating-point pixels in
    [0, 1] (returned as float32); nested lists and read-only arrays are accepted.
    Every failure is a :class:`DataError` that names ``name`` and what was wrong.
    """
    if isinstance(x, ImageSet):
        return x.images
    if isinstance(x, (str, bytes, PathLike)):
        raise DataError(f"{name}: expected an array, tensor, Dataset or ImageSet, got {type(x).__name__} {str(x)!r} "
                        "(load files with anomem.data.load_images)")
    if isinstance(x, torch.utils.data.Dataset) and not isinstance(x, torch.Tensor):
        x = _from_dataset(x, name)
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError as e:  # ragged nesting
            raise DataError(f"{name}: a nested list of images must be rectangular ({e})") from None
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise DataError(f"{name}: object arrays are not images; pass a numeric array")
        if x.dtype.kind not in "buifc":
            raise DataError(f"{name}: unsupported dtype {x.dtype}; use uint8 or float in [0, 1]")
        x = _native(x)
        with warnings.catch_warnings():  # read-only arrays are fine: they are never written to
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected an array, tensor, Dataset or ImageSet, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise DataError(f"{name}: sparse or other non-dense tensors (layout {x.layout}) are not images; "
                        "pass x.to_dense()")
    if x.device.type == "meta":
        raise DataError(f"{name}: a tensor on the 'meta' device holds no data; pass real images")
    x = x.detach()
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    if x.ndim != 4:
        raise DataError(f"{name}: expected shape (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        if x.shape[3] in (1, 3):
            raise DataError(f"{name}: got channels-last shape {tuple(x.shape)}; transpose to (N, C, H, W), "
                            "e.g. x.permute(0, 3, 1, 2)")
        raise DataError(f"{name}: expected 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise DataError(f"{name}: no images (shape {tuple(x.shape)})")
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"{name}: unsupported dtype {str(x.dtype).removeprefix('torch.')}; use uint8 or float in [0, 1]")
    if x.dtype in _WIDE_UNSIGNED:  # 16/32/64-bit images (16-bit PNG, TIFF)
        return torch.from_numpy(wide_to_uint8(x.cpu().numpy(), _WIDE_UNSIGNED[x.dtype]))
    if not x.is_floating_point():  # other integer types: pixel values 0..255
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: integer images must hold pixel values 0..255, got values in [{lo}, {hi}]")
        return x.to(torch.uint8)
    x = x.float()
    finite = torch.isfinite(x).flatten(1).all(1)
    if not finite.all():
        bad = (~finite).nonzero().flatten()
        raise DataError(f"{name}: contains NaN or infinite values (in {bad.numel()} of {x.shape[0]} images; "
                        f"first: {bad[:5].tolist()})")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{name}: float images must be scaled to [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                        "pass uint8 images or divide by 255")
    return x


# Unsigned integer images wider than 8 bits: their bits per sample (see wide_to_uint8).
_WIDE_UNSIGNED = {getattr(torch, name): bits for name, bits in (("uint16", 16), ("uint32", 32), ("uint64", 64))
                  if hasattr(torch, name)}


def wide_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned samples of ``bits`` > 8 bits as 0..255 uint8, for arrays and files alike.

    16-bit samples are scaled by their range (65535 -> 255): 16-bit images mean that.
    Wider integers have no usual range, so they are read at the smallest depth that
    holds their values: 0..255 as they are, else 0..65535 as 16-bit, else 0..2^32-1 as
    32-bit (2^32-1 -> 255), else 64-bit; a 32-bit TIFF holding 0..255 stays 0..255.
    """
    a = np.asarray(arr).astype(np.uint64)
    hi = int(a.max()) if a.size else 0
    top = 65535 if bits <= 16 else next(t for t in (255, 65535, 2**32 - 1, 2**64 - 1) if hi <= t)
    if top == 255:
        return a.astype(np.uint8)
    return np.round(a.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (torch reads no big-endian arrays), values unchanged."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _from_dataset(ds: torch.utils.data.Dataset, name: str) -> torch.Tensor:
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"{name}: the Dataset must define __len__") from None
    if n == 0:
        raise DataError(f"{name}: the Dataset is empty")
    items = []
    for i in range(n):
        item = ds[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            if isinstance(item, (str, bytes, PathLike)):
                raise DataError(f"{name}: the Dataset yields {type(item).__name__} {str(item)[:60]!r} at index {i}, "
                                "not an image (load files with anomem.data.load_images)")
            arr = np.asarray(item)
            if arr.dtype.kind not in "buif":
                raise DataError(f"{name}: the Dataset yields {arr.dtype} values at index {i}, not image pixels")
            item = torch.from_numpy(np.ascontiguousarray(_native(arr)))
        items.append(item)
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) != 1:
        raise DataError(f"{name}: the Dataset yields images of different shapes {sorted(shapes)[:3]}")
    return torch.stack(items)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1]."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch.float()


def match_geometry(x: torch.Tensor, channels: int, size: tuple[int, int], name: str = "images") -> torch.Tensor:
    """``x`` at the detector's channels and input size, converted as the CLI's image reader does.

    Colour to grey uses ITU-R 601 luma (uint8 images with Pillow's own integer rounding, so a
    file and its decoded array give the same pixels), grey to colour repeats the channel;
    then the images are resized (bilinear, antialiased). :func:`geometry_conversions`
    counts what changed, as ``anomem score`` reports it.

    Shape:
        (N, C', H', W') -> (N, ``channels``, *``size``); uint8 stays uint8 when not resized.
    """
    if x.shape[1] != channels:
        x = _convert_channels(x, channels)
    if tuple(x.shape[2:]) == tuple(size):
        return x
    was_uint8 = x.dtype == torch.uint8
    y = F.interpolate(x.float() / (255.0 if was_uint8 else 1.0), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.clamp_(0, 1)


# ITU-R 601 luma in Pillow's fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
_LUMA_FIXED = (19595, 38470, 7471)


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey (N, 1, H, W) -> RGB by repetition; RGB (N, 3, H, W) -> grey by ITU-R 601 luma."""
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()  # (N, 1, H, W) -> (N, 3, H, W)
    if x.dtype == torch.uint8:
        r, g, b = (x[:, i : i + 1].to(torch.int32) * w for i, w in enumerate(_LUMA_FIXED))
        return ((r + g + b + 32768) >> 16).to(torch.uint8)  # (N, 1, H, W), as PIL .convert("L")
    weights = torch.tensor([w / 65536 for w in _LUMA_FIXED], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).clamp_(0, 1)  # (N, 3, H, W) -> (N, 1, H, W)


def geometry_conversions(x: torch.Tensor, channels: int, size: tuple[int, int]) -> dict[str, int]:
    """What :func:`match_geometry` changes in ``x``, counted as
    :func:`anomem.data.image_io.count_conversions` does ({"images": n, kind: n})."""
    n = int(x.shape[0])
    kinds = []
    if tuple(x.shape[2:]) != tuple(size):
        h, w = x.shape[2:]
        kinds.append(f"resized {w}x{h}->{size[1]}x{size[0]}")
    if x.shape[1] != channels:
        kinds.append("RGB->grey" if channels == 1 else "grey->RGB")
    counts: dict[str, int] = {"images": n if kinds else 0}
    counts.update({kind: n for kind in kinds})
    return counts


def binary_values(values: Any, n: int | None, name: str, meaning: str) -> np.ndarray:
    """0/1 values (ints, floats or booleans) of length ``n`` as a bool array: the one
    label check of the library (training labels, truth for metrics and thresholds).

    ``meaning`` says what 0 and 1 stand for, e.g. ``"0 (anomaly) or 1 (normal)"``; it
    is part of every message. ``n=None`` accepts any length.
    """
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.dtype.kind not in "buif":
        shown = arr.ravel()[:3].tolist() if arr.dtype.kind in "USO" else arr.dtype
        raise DataError(f"{name}: labels must be numbers {meaning} (numeric), got {arr.dtype} values such as {shown}")
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise DataError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    bad = ~np.isin(arr, (0, 1))  # NaN is not 0 or 1
    if bad.any():
        vals = sorted({float(v) if arr.dtype.kind == "f" else int(v) for v in arr[bad].tolist()}, key=str)[:5]
        raise DataError(f"{name}: values must be {meaning}, got {vals}")
    return arr == 1


def as_labels(y: Any, n: int, name: str = "labels") -> torch.Tensor:
    """Labels in {0, 1} (1 = normal, the paper's convention) as a bool tensor (N,)."""
    return torch.from_numpy(binary_values(y, n, name, "0 (anomaly) or 1 (normal)"))


MAX_BATCH_SIZE = 65536


def check_int_range(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; bools, floats and strings are refused (DataError)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise DataError(f"{name} must lie in [{lo}, {hi}], got {int(value)}")
    return int(value)


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """A batch size: an integer in [1, 65536]."""
    return check_int_range(name, value, 1, MAX_BATCH_SIZE)


MIN_TRAIN_SIDE = 2  # the blur augmentation's smallest kernel (3) with reflect padding needs 2 pixels


def check_trainable_size(hw: Any, name: str = "training images") -> None:
    """Refuse images smaller than the augmentations can handle, naming the minimum."""
    h, w = (int(v) for v in hw)
    if min(h, w) < MIN_TRAIN_SIDE:
        raise DataError(f"{name} are {h}x{w} pixels; training needs at least {MIN_TRAIN_SIDE}x{MIN_TRAIN_SIDE} "
                        "(the Gaussian-blur augmentation's 3x3 kernel with reflect padding); use larger images")


def training_set(X: Any, anomalies: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images (normals, then labelled anomalies) and their normal mask.

    Degenerate sets are refused: fewer than 2 normals, images too small to train on
    (:func:`check_trainable_size`), normals that are all one image
    (all black, all white: nothing normal varies), an image labelled both ways.
    """
    x = as_images(X, "X")
    normal = torch.ones(x.shape[0], dtype=torch.bool) if y is None else as_labels(y, x.shape[0], "y")
    if anomalies is not None:
        a = as_images(anomalies, "anomalies")
        if a.shape[1:] != x.shape[1:]:
            raise DataError(f"anomalies have shape {tuple(a.shape[1:])} per image but X has {tuple(x.shape[1:])}")
        if a.dtype != x.dtype:
            a, x = to_float(a), to_float(x)
        x = torch.cat([x, a])
        normal = torch.cat([normal, torch.zeros(a.shape[0], dtype=torch.bool)])
    n = int(normal.sum())
    if n < 2:
        raise DataError(f"fit needs at least 2 normal images, got {n}")
    check_trainable_size(x.shape[2:])
    normals = image_digests(x[normal])
    if bool((normals == normals[0]).all()):
        first = to_float(x[normal][:1]).mul(255)
        lo, hi = float(first.min()), float(first.max())
        what = f"constant images of pixel value {lo:.0f} of 255" if lo == hi else "copies of one image"
        raise DataError(f"the {n} training normals are all the same image ({what}): there is no normal variation "
                        "to learn from; give varied normal images")
    check_disjoint(image_digests(x[~normal]), normals, "anomalies", "also given as normal images")
    return x, normal


def validation_set(V: Any, x: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Validation normals for :meth:`anomem.AnoMem.fit` (``validation=``), checked against the
    training images ``x``: the same channels and size, at least 2, none of them a training image
    (``known``: the training images' :func:`image_digests`, when already computed)."""
    v = as_images(V, "validation")
    if v.shape[1:] != x.shape[1:]:
        raise DataError(f"validation images have shape {tuple(v.shape[1:])} per image but X has {tuple(x.shape[1:])}")
    if v.shape[0] < 2:
        raise DataError(f"validation needs at least 2 normal images, got {v.shape[0]}")
    check_disjoint(image_digests(v), image_digests(x) if known is None else known, "validation", "also training images",
                   "validation normals must be images the detector does not train on")
    return v


def image_digests(x: torch.Tensor) -> torch.Tensor:
    """(N,) int64: the first 8 bytes of each image's blake2b over its shape and pixels,
    float images quantised to 0..255 first, so an image has one digest whether it is
    passed as uint8 or as float in [0, 1]."""
    q = x if x.dtype == torch.uint8 else (x.float() * 255).round_().clamp_(0, 255).to(torch.uint8)
    q = q.detach().cpu().contiguous().numpy()
    out = [int.from_bytes(hashlib.blake2b(f"{im.shape}".encode() + im.tobytes(), digest_size=8).digest(), "little",
                          signed=True) for im in q]
    return torch.tensor(out, dtype=torch.int64)


def check_disjoint(digests: torch.Tensor, known: torch.Tensor | None, name: str, what: str,
                   why: str = "an image cannot be both normal and anomalous") -> None:
    """Refuse when images (by :func:`image_digests`) are among ``known`` ones: ``name`` says
    which images, ``what`` what the known ones are, ``why`` why that is refused."""
    if known is None or not digests.numel() or not known.numel():
        return
    hit = torch.isin(digests, known.to(digests.device)).nonzero().flatten()
    if hit.numel():
        raise DataError(f"{name}: {hit.numel()} of {digests.numel()} images are {what} (first: index "
                        f"{hit[:5].tolist()}); {why}")
