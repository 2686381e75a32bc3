"""Tiny fake datasets written in exactly the real on-disk formats.

Each writer returns what it wrote (the expected images and labels) so tests can compare
the loader's output with the source. Images use the loaders' layout (N, C, H, W).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image


class Written(NamedTuple):
    """What a fake writer put on disk: images (N, C, H, W) uint8 and labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


# --------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding of ``array``: 0x0000, type, ndim, big-endian uint32 dims, data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fake_idx(
    directory: Path,
    n_train: int = 30,
    n_test: int = 20,
    size: int = 28,
    compress: bool = True,
    seed: int = 0,
) -> dict[str, Written]:
    """MNIST-style files (``train-images-idx3-ubyte[.gz]`` ...) with every class present."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        out[split] = Written(images[:, None], labels.astype(np.int64))
    return out


# ------------------------------------------------------------------------- CIFAR


def py2_pickle(obj: object) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) wrote the CIFAR files.

    Python 3 cannot produce this itself (it encodes bytes via ``_codecs.encode``); the
    real files store str as BINSTRING and arrays via ``numpy.core.multiarray._reconstruct``.
    Supports None, bool, int, bytes, tuple, list, dict and uint8 numpy arrays.
    """
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


def _emit(obj: object, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj)
    elif isinstance(obj, bytes):
        out += (
            b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<I", len(obj))
        ) + obj
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _emit(item, out)
        out += b"t"
    elif isinstance(obj, list):
        out += b"]("
        for item in obj:
            _emit(item, out)
        out += b"e"
    elif isinstance(obj, dict):
        out += b"}("
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
        out += b"u"
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        # _reconstruct(ndarray, (0,), 'b') then __setstate__((1, shape, dtype, False, raw))
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _emit((0,), out)
        _emit(b"b", out)
        out += b"\x87R"  # TUPLE3, REDUCE
        out += b"(K\x01"
        _emit(tuple(int(d) for d in obj.shape), out)
        out += b"cnumpy\ndtype\nU\x02u1\x89\x88\x87R"  # dtype('u1', False, True)
        out += b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype state
        out += b"\x89"  # not Fortran order
        _emit(np.ascontiguousarray(obj).tobytes(), out)
        out += b"tb"  # state tuple, BUILD
    else:
        raise TypeError(f"py2_pickle cannot encode {type(obj).__name__}")


def _cifar_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return data, data.reshape(n, 3, 32, 32)


def write_fake_cifar10(root: Path, per_batch: int = 10, seed: int = 0) -> dict[str, Written]:
    """``root/cifar-10-batches-py`` with 5 train batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(py2_pickle(meta))
    out: dict[str, list] = {"train": [], "test": []}
    files = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for name, split in files:
        data, images = _cifar_images(rng, per_batch)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        (directory / name).write_bytes(py2_pickle(batch))
        out[split].append(Written(images, np.array(labels)))
    return {
        split: Written(
            np.concatenate([w.images for w in ws]), np.concatenate([w.labels for w in ws])
        )
        for split, ws in out.items()
    }


def write_fake_cifar100(
    root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0
) -> dict[str, dict]:
    """``root/cifar-100-python`` with train, test, meta; fine class f has coarse class f // 5."""
    rng = np.random.default_rng(seed)
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (directory / "meta").write_bytes(py2_pickle(meta))
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data, images = _cifar_images(rng, n)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        record = {
            b"filenames": [f"{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": data,
        }
        (directory / split).write_bytes(py2_pickle(record))
        out[split] = {"images": images, "fine": np.array(fine), "coarse": np.array(coarse)}
    return out


# -------------------------------------------------------------------------- SVHN


def write_fake_svhn(
    directory: Path, sizes: dict[str, int] | None = None, seed: int = 0
) -> dict[str, Written]:
    """``<split>_32x32.mat`` (MATLAB v5) with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10.

    Returned labels are the raw ``y`` values (10 = digit 0).
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (sizes or {"train": 12, "test": 11}).items():
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, includes 10
        savemat(directory / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = Written(x.transpose(3, 2, 0, 1), y.reshape(n).astype(np.int64))
    return out


# --------------------------------------------------------------------------- CUB

CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")


def write_fake_cub(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    """``root/CUB_200_2011`` with its four text files and JPEGs of varying sizes.

    Image ids are numbered class by class; within each class the first image is a test
    image, the rest train. The last image is greyscale (a few real CUB images are).
    """
    rng = np.random.default_rng(seed)
    directory = root / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    image_id = 0
    for class_id, name in enumerate(CUB_CLASSES, 1):
        classes.append(f"{class_id} {name}")
        (directory / "images" / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{image_id:04d}.jpg"
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            pixels = np.full((h, w, 3), (40 * class_id, 10, 200 - 40 * class_id), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(directory / "images" / rel, quality=95)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {0 if k == 0 else 1}")
    last = directory / "images" / images[-1].split()[1]
    Image.open(last).convert("L").save(last)
    for fname, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        (directory / fname).write_text("\n".join(lines) + "\n")
    return directory


# ------------------------------------------------------------------ image files


def write_image(path: Path, pixels: np.ndarray, **save: object) -> Path:
    """Save (H, W) or (H, W, 3) uint8 ``pixels`` with PIL (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def solid(value: int | tuple[int, int, int], size: tuple[int, int] = (12, 16)) -> np.ndarray:
    """A constant image: grey (H, W) for an int, colour (H, W, 3) for a triple."""
    if isinstance(value, int):
        return np.full(size, value, dtype=np.uint8)
    return np.broadcast_to(np.array(value, dtype=np.uint8), (*size, 3)).copy()


def write_fake_folder(root: Path, colour: bool = False, masks: bool = True) -> Path:
    """A user anomaly folder (see anomem.data.folder) of 12x16 PNGs.

    train: normal/n0..n2, anomaly/a0 (type "anomaly"), anomaly/scratch/s0.
    test: normal/t0, t1; anomaly/crack/c0, c1; anomaly/hole/h0; masks for the three,
    written as ``crack/c0.png``, ``crack/c1_mask.bmp``, ``hole/h0.png``.
    """

    def pix(v: int) -> np.ndarray:
        return solid((v, v // 2, 255 - v) if colour else v)

    for i in range(3):
        write_image(root / "train/normal" / f"n{i}.png", pix(10 + i))
    write_image(root / "train/anomaly/a0.png", pix(200))
    write_image(root / "train/anomaly/scratch/s0.png", pix(210))
    for i in range(2):
        write_image(root / "test/normal" / f"t{i}.png", pix(20 + i))
    write_image(root / "test/anomaly/crack/c0.png", pix(220))
    write_image(root / "test/anomaly/crack/c1.png", pix(221))
    write_image(root / "test/anomaly/hole/h0.png", pix(230))
    if masks:
        m = np.zeros((12, 16), dtype=np.uint8)
        m[:6] = 255
        write_image(root / "test/masks/crack/c0.png", m)
        write_image(root / "test/masks/crack/c1_mask.bmp", (m > 0).astype(np.uint8))  # 0/1 mask
        write_image(root / "test/masks/hole/h0.png", m[::-1].copy())
    return root
