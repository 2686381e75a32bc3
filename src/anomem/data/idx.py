"""MNIST and Fashion-MNIST in the IDX file format.

An IDX file (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header
followed by the raw array in row-major order::

    bytes 0-1   0x00 0x00                  (magic, part 1)
    byte  2     element type, 0x08 = uint8 (magic, part 2)
    byte  3     number of dimensions d     (magic, part 3)
    4 * d       uint32 size of each dimension
    ...         prod(sizes) elements

Images are ``idx3`` (N, H, W), labels ``idx1`` (N,). Files may be gzipped (detected by
content, not by name). This module parses and validates the files and downloads the
official ones on request; where the files live is :mod:`anomem.data.registry`'s job.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
import zlib
from math import prod
from pathlib import Path

import numpy as np
import torch

from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "decode_idx_pair",
    "download_idx",
    "idx_file_names",
    "load_idx",
    "locate_idx",
    "parse_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
_CLASSES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_TYPE_NAMES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_PREFIX = {"train": "train", "test": "t10k"}

# Official download locations and the MD5 of each published .gz file. The MNIST mirror
# is the one torchvision uses (LeCun's server often refuses anonymous downloads); the
# checksums guarantee it serves the identical files.
_URLS = {
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "mnist": (
        "http://yann.lecun.com/exdb/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
}
_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}
# torchvision stores the files in <root>/<FashionMNIST|MNIST>/raw; accept that layout too.
_TORCHVISION_DIRS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


def idx_file_names(split: str) -> tuple[str, str]:
    """The (images, labels) file names of ``split`` ("train" or "test"), without ``.gz``."""
    if split not in _PREFIX:
        raise DataError(f"IDX datasets have splits 'train' and 'test', got split={split!r}")
    p = _PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def _find(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, uncompressed first."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_idx(base: str | Path, split: str, dataset: str = "fashion-mnist") -> Path | None:
    """The directory under ``base`` holding ``split``'s two IDX files, or None.

    Looks in ``base``, ``base/raw`` and torchvision's ``base/<FashionMNIST|MNIST>/raw``.
    """
    base = Path(base)
    candidates = [base, base / "raw"]
    if dataset in _TORCHVISION_DIRS:
        candidates.append(base / _TORCHVISION_DIRS[dataset] / "raw")
    for directory in candidates:
        if all(_find(directory, n) is not None for n in idx_file_names(split)):
            return directory
    return None


def parse_idx(data: bytes, source: str, ndim: int | None = None) -> np.ndarray:
    """Decode the bytes of one IDX file (gzipped or not) into a uint8 array.

    Args:
        data: the file's content.
        source: the file name, used in error messages.
        ndim: the number of dimensions the caller expects (3 images, 1 labels).

    Returns:
        A writable uint8 array with the header's shape.

    Raises:
        DataError: bad gzip stream, wrong magic number, unsupported element type,
            unexpected number of dimensions, truncated data or trailing bytes.
    """
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{source}: corrupt gzip stream ({e})") from e
    if len(data) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(data)} bytes, the header needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{source}: not an IDX file (magic number {data[:4].hex()}; an IDX file starts "
            "with 0000 then the element type and the number of dimensions)"
        )
    if data[2] != _UBYTE:
        kind = _TYPE_NAMES.get(data[2], "unknown")
        raise DataError(
            f"{source}: IDX element type 0x{data[2]:02x} ({kind}) is not supported; "
            "image and label files use 0x08 (uint8)"
        )
    dims_n = data[3]
    if ndim is not None and dims_n != ndim:
        raise DataError(
            f"{source}: expected an IDX file with {ndim} dimension(s), the header says {dims_n} "
            "(images are idx3, labels idx1: are the files swapped?)"
        )
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{dims_n}I", data[4:header])
    expected = prod(dims)
    body = len(data) - header
    if body < expected:
        raise DataError(
            f"{source}: truncated IDX file: header promises shape {dims} = {expected} bytes, "
            f"the file holds {body}"
        )
    if body > expected:
        raise DataError(
            f"{source}: {body - expected} unexpected trailing bytes after the IDX data of shape {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def decode_idx_pair(
    image_bytes: bytes,
    label_bytes: bytes,
    class_names: tuple[str, ...],
    image_source: str = "images",
    label_source: str = "labels",
) -> ImageSet:
    """Decode an images/labels pair of IDX files into an :class:`ImageSet`.

    Raises:
        DataError: either file is malformed, the counts differ, or a label has no class.

    Shape:
        images (N, 1, H, W) uint8; targets (N,) int64.
    """
    images = parse_idx(image_bytes, image_source, ndim=3)  # (N, H, W)
    labels = parse_idx(label_bytes, label_source, ndim=1)  # (N,)
    n, h, w = images.shape
    if n == 0 or h == 0 or w == 0:
        raise DataError(f"{image_source}: holds no images (shape {images.shape})")
    if labels.shape[0] != n:
        raise DataError(
            f"{image_source} holds {n} images but {label_source} holds {labels.shape[0]} labels"
        )
    if int(labels.max()) >= len(class_names):
        raise DataError(
            f"{label_source}: label {int(labels.max())} out of range for {len(class_names)} classes"
        )
    return ImageSet(
        images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, H, W)
        targets=torch.from_numpy(labels.astype(np.int64)),
        class_names=tuple(class_names),
    )


def load_idx(directory: str | Path, split: str, dataset: str = "fashion-mnist") -> ImageSet:
    """Load one split of Fashion-MNIST (``dataset="fashion-mnist"``) or MNIST (``"mnist"``).

    ``directory`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each possibly ``.gz``
    (``directory/raw`` and torchvision's layout are accepted too).

    Shape:
        images (N, 1, 28, 28) uint8; targets (N,) int64.
    """
    if dataset not in _CLASSES:
        raise DataError(f"unknown IDX dataset {dataset!r}; known: {', '.join(sorted(_CLASSES))}")
    directory = Path(directory)
    found = locate_idx(directory, split, dataset)
    if found is None:
        names = ", ".join(f"{n}[.gz]" for n in idx_file_names(split))
        raise DataError(
            f"{directory}: missing {dataset} files for split {split!r}: expected {names}"
        )
    image_path, label_path = (_find(found, n) for n in idx_file_names(split))
    assert image_path is not None and label_path is not None
    try:
        image_bytes, label_bytes = image_path.read_bytes(), label_path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file: {e}") from e
    ds = decode_idx_pair(
        image_bytes, label_bytes, _CLASSES[dataset], str(image_path), str(label_path)
    )
    return ImageSet(
        images=ds.images,
        targets=ds.targets,
        class_names=ds.class_names,
        meta={"dataset": dataset, "split": split, "root": str(found)},
    )


def download_idx(dataset: str, directory: str | Path, timeout: float = 10.0) -> Path:
    """Download the four official ``.gz`` files of ``dataset`` into ``directory``.

    Files already present are kept. Each download is checked against the published
    MD5 and written atomically.

    Raises:
        DataError: the server is unreachable or a file is corrupt; the message says
            which files to put in which directory by hand.
    """
    if dataset not in _URLS:
        raise DataError(f"no download for {dataset!r}; downloadable: {', '.join(sorted(_URLS))}")
    directory = Path(directory)
    files = _MD5[dataset]

    def manual_instructions() -> str:
        return (
            f"Download {', '.join(files)} from {_URLS[dataset][0]} by hand and put them in "
            f"{directory}"
        )

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create {directory} for {dataset}: {e}. {manual_instructions()}"
        ) from e
    for name, md5 in files.items():
        target = directory / name
        if target.is_file() or (directory / name.removesuffix(".gz")).is_file():
            continue
        errors = []
        for base in _URLS[dataset]:
            url = base + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                    content = response.read()
            except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
                errors.append(f"{url}: {e}")
                continue
            digest = hashlib.md5(content, usedforsecurity=False).hexdigest()
            if digest != md5:
                errors.append(f"{url}: MD5 {digest} != published {md5}")
                continue
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(content)
            partial.replace(target)
            break
        else:
            raise DataError(
                f"could not download {dataset} ({'; '.join(errors)}). {manual_instructions()}"
            )
    return directory
