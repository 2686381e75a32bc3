"""Turn what users pass (arrays, tensors, Datasets, ImageSets) into one image tensor.

Accepted: uint8 or float arrays/tensors shaped (N, H, W) or (N, C, H, W) with C in
{1, 3}; floats must lie in [0, 1]; a torch Dataset yielding images (or (image, label)
tuples) of such shapes; an :class:`anomem.data.ImageSet`. Anything else is a
:class:`DataError` naming what was wrong.

Shape:
    -> (N, C, H, W), dtype uint8 or float32
"""

from __future__ import annotations

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
    if x.dtype in _WIDE_UNSIGNED:  # 16/32-bit images (16-bit PNG, TIFF): the full range maps to 0..255
        top = _WIDE_UNSIGNED[x.dtype]
        wide = x.to(torch.int64)
        return ((wide * 255 + top // 2) // top).to(torch.uint8)
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


# Unsigned integer images wider than 8 bits, scaled by their full range (max value).
_WIDE_UNSIGNED = {getattr(torch, name): 2**bits - 1 for name, bits in (("uint16", 16), ("uint32", 32))
                  if hasattr(torch, name)}


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
            item = torch.from_numpy(np.ascontiguousarray(arr))
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
