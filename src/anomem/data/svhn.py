"""SVHN cropped digits (format 2) in MATLAB ``.mat`` files.

Layout (Netzer et al. 2011, http://ufldl.stanford.edu/housenumbers/)::

    train_32x32.mat, test_32x32.mat, extra_32x32.mat (optional)

Each file (MATLAB v5) holds ``X``, uint8 (32, 32, 3, N), and ``y``, (N, 1) with values
1..10 where 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = ["SVHN_CLASSES", "SVHN_SPLITS", "load_svhn", "locate_svhn", "svhn_file_name"]

SVHN_CLASSES = tuple(str(d) for d in range(10))
SVHN_SPLITS = ("train", "test", "extra")


def svhn_file_name(split: str) -> str:
    """``<split>_32x32.mat`` for split "train", "test" or "extra"."""
    if split not in SVHN_SPLITS:
        raise DataError(f"SVHN has splits {', '.join(SVHN_SPLITS)}, got split={split!r}")
    return f"{split}_32x32.mat"


def locate_svhn(base: str | Path, split: str) -> Path | None:
    """``base`` (or ``base/svhn``) if it holds ``<split>_32x32.mat``, else None."""
    base = Path(base)
    name = svhn_file_name(split)
    for directory in (base, base / "svhn"):
        if (directory / name).is_file():
            return directory
    return None


def load_svhn(root: str | Path, split: str) -> ImageSet:
    """Load SVHN ``split`` ("train", "test" or "extra") from ``root``.

    Label 10 (the digit 0) becomes class 0, so class k is the digit k.

    Shape:
        images (N, 3, 32, 32) uint8; targets (N,) int64 in 0..9.
    """
    from scipy.io import loadmat  # scipy.io is slow to import; only SVHN needs it

    directory = locate_svhn(root, split)
    if directory is None:
        raise DataError(
            f"{root}: no SVHN file {svhn_file_name(split)} (looked in {root} and {root}/svhn)"
        )
    path = directory / svhn_file_name(split)
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(
            f"{path}: MATLAB v7.3 files are not supported; SVHN ships v5 files ({e})"
        ) from e
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is bad data
        raise DataError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from e
    for var in ("X", "y"):
        if var not in mat:
            raise DataError(f"{path}: missing variable {var!r} (SVHN files hold 'X' and 'y')")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    n = x.shape[3]
    if n == 0:
        raise DataError(f"{path}: holds no images")
    if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise DataError(f"{path}: 'y' must have shape ({n}, 1), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.floating):
        raise DataError(f"{path}: 'y' must be numeric, got {y.dtype}")
    labels = y.reshape(n)
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 10:
        raise DataError(
            f"{path}: 'y' values must be integers in 1..10, found {labels.min()}..{labels.max()}"
        )
    labels = labels.astype(np.int64) % 10  # 10 means the digit 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
    return ImageSet(
        images=torch.from_numpy(images),
        targets=torch.from_numpy(labels),
        class_names=SVHN_CLASSES,
        meta={"dataset": "svhn", "split": split, "root": str(directory)},
    )
