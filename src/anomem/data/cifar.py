"""CIFAR-10 and CIFAR-100 in their "python version" pickle format.

Layouts (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each batch is a pickled dict with bytes keys: ``b"data"`` a (N, 3072) uint8 array (1024
red, 1024 green, 1024 blue values, each a 32x32 image in row-major order) and
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100). The
meta files hold ``b"label_names"`` or ``b"fine_label_names"`` / ``b"coarse_label_names"``.

The files are unpickled with a restricted unpickler that resolves only the numpy
globals an array needs, so a hostile file raises :class:`DataError` instead of running
code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = [
    "CIFAR10_DIR",
    "CIFAR100_DIR",
    "load_cifar10",
    "load_cifar100",
    "locate_cifar10",
    "locate_cifar100",
    "safe_unpickle",
]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
_CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_FILES = {"train": ("train",), "test": ("test",)}


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may reference: numpy array reconstruction."""
    try:  # numpy >= 2 moved numpy.core to numpy._core; old files name numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "ndarray")] = np.ndarray
        allowed[(module, "dtype")] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :func:`_numpy_globals`."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: a CIFAR file only references numpy arrays"
            ) from None


def safe_unpickle(path: str | Path) -> object:
    """Unpickle ``path`` with ``encoding="bytes"``, allowing only numpy array globals.

    Raises:
        DataError: the file is missing, empty, corrupt, or references any other global
            (the object is refused before anything is called).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if not data:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is bad data
        raise DataError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e


def _get(record: dict, key: str, path: Path) -> object:
    """``record[key]`` under a bytes key (original files) or a str key (re-pickled ones)."""
    for k in (key.encode(), key):
        if k in record:
            return record[k]
    raise DataError(f"{path}: missing key {key!r} (has {sorted(map(str, record))})")


def _read_dict(path: Path) -> dict:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_names(path: Path, key: str) -> tuple[str, ...]:
    names = _get(_read_dict(path), key, path)
    if not isinstance(names, list | tuple) or not names:
        raise DataError(f"{path}: {key!r} must be a non-empty list of names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", errors="replace")
        if not isinstance(n, str):
            raise DataError(f"{path}: {key!r} holds a {type(n).__name__}, expected names")
        out.append(n)
    return tuple(out)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, 3072) uint8, labels (N,) int64) of one batch file, validated."""
    record = _read_dict(path)
    data = _get(record, "data", path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072), got {desc}")
    try:
        labels = np.asarray(_get(record, label_key, path), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {label_key!r} is not a list of integers ({e})") from e
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: {label_key!r} values must lie in 0..{num_classes - 1}, "
            f"found {labels.min()}..{labels.max()}"
        )
    return data, labels


def _locate(base: str | Path, native: str, needed: tuple[str, ...]) -> Path | None:
    base = Path(base)
    for directory in (base / native, base):
        if all((directory / name).is_file() for name in needed):
            return directory
    return None


def _check_split(split: str, files: dict) -> None:
    if split not in files:
        raise DataError(f"CIFAR has splits 'train' and 'test', got split={split!r}")


def locate_cifar10(base: str | Path, split: str) -> Path | None:
    """The directory (``base/cifar-10-batches-py`` or ``base``) with ``split``'s files."""
    _check_split(split, _CIFAR10_FILES)
    return _locate(base, CIFAR10_DIR, ("batches.meta", *_CIFAR10_FILES[split]))


def locate_cifar100(base: str | Path, split: str) -> Path | None:
    """The directory (``base/cifar-100-python`` or ``base``) with ``split``'s files."""
    _check_split(split, _CIFAR100_FILES)
    return _locate(base, CIFAR100_DIR, ("meta", *_CIFAR100_FILES[split]))


def _image_set(
    batches: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...], meta: dict
) -> ImageSet:
    data = np.concatenate([d for d, _ in batches])  # (N, 3072)
    labels = np.concatenate([lab for _, lab in batches])  # (N,)
    return ImageSet(
        images=torch.from_numpy(data).reshape(-1, 3, 32, 32),  # (N, 3, 32, 32): RGB planes
        targets=torch.from_numpy(labels),
        class_names=names,
        meta=meta,
    )


def load_cifar10(root: str | Path, split: str) -> ImageSet:
    """Load CIFAR-10 ``split`` from ``root`` (the batches folder or its parent).

    Shape:
        images (N, 3, 32, 32) uint8 (N = 50000 train, 10000 test); targets (N,) int64.
    """
    directory = locate_cifar10(root, split)
    if directory is None:
        needed = ", ".join(("batches.meta", *_CIFAR10_FILES[split]))
        raise DataError(
            f"{root}: no CIFAR-10 files for split {split!r}: expected {needed} in {root}/{CIFAR10_DIR}"
        )
    names = _read_names(directory / "batches.meta", "label_names")
    batches = [_read_batch(directory / f, "labels", len(names)) for f in _CIFAR10_FILES[split]]
    return _image_set(
        batches, names, {"dataset": "cifar10", "split": split, "root": str(directory)}
    )


def load_cifar100(root: str | Path, split: str, label_mode: str = "fine") -> ImageSet:
    """Load CIFAR-100 ``split`` from ``root`` (the ``cifar-100-python`` folder or its parent).

    Args:
        label_mode: ``"fine"`` for the 100 classes, ``"coarse"`` for the 20 super-classes
            that one-vs-all anomaly detection papers use.

    Shape:
        images (N, 3, 32, 32) uint8 (N = 50000 train, 10000 test); targets (N,) int64.
    """
    if label_mode not in ("fine", "coarse"):
        raise DataError(f"CIFAR-100 label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    directory = locate_cifar100(root, split)
    if directory is None:
        needed = ", ".join(("meta", *_CIFAR100_FILES[split]))
        raise DataError(
            f"{root}: no CIFAR-100 files for split {split!r}: expected {needed} in {root}/{CIFAR100_DIR}"
        )
    names = _read_names(directory / "meta", f"{label_mode}_label_names")
    batches = [
        _read_batch(directory / f, f"{label_mode}_labels", len(names))
        for f in _CIFAR100_FILES[split]
    ]
    meta = {"dataset": "cifar100", "split": split, "root": str(directory), "label_mode": label_mode}
    return _image_set(batches, names, meta)
