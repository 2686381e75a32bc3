"""IDX (MNIST / Fashion-MNIST) parsing, validation, download and the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomem.data import ImageSet
from anomem.data import idx as idx_module
from anomem.data.idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    decode_idx_pair,
    download_idx,
    load_idx,
    parse_idx,
)
from anomem.errors import DataError

from fakes import idx_bytes, write_fake_idx, write_idx

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_matches_written_files(tmp_path, compress):
    written = write_fake_idx(tmp_path, compress=compress)
    for split in ("train", "test"):
        ds = load_idx(tmp_path, split)
        assert ds.images.dtype == torch.uint8
        assert ds.images.shape == (len(written[split].labels), 1, 28, 28)
        assert torch.equal(ds.images, torch.from_numpy(written[split].images))
        assert torch.equal(ds.targets, torch.from_numpy(written[split].labels))
        assert ds.targets.dtype == torch.int64
        assert ds.class_names == FASHION_MNIST_CLASSES
        assert ds.meta["split"] == split


def test_mnist_class_names_and_torchvision_layout(tmp_path):
    write_fake_idx(tmp_path / "MNIST" / "raw")
    ds = load_idx(tmp_path, "train", dataset="mnist")
    assert ds.class_names == MNIST_CLASSES == tuple("0123456789")
    assert len(ds) == 30


def test_fashion_mnist_class_names():
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top"
    assert FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert len(FASHION_MNIST_CLASSES) == 10


def _write_pair(tmp_path, images, labels):
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)


def test_wrong_magic_names_the_file(tmp_path):
    write_fake_idx(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0] = 0x12
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*magic"):
        load_idx(tmp_path, "train")


def test_truncated_file_names_the_file(tmp_path):
    write_fake_idx(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_idx(tmp_path, "test")


def test_count_mismatch_names_both_files(tmp_path):
    _write_pair(tmp_path, np.zeros((5, 4, 4), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"5 images.*labels-idx1-ubyte holds 4 labels"):
        load_idx(tmp_path, "train")


def test_swapped_files_are_detected(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(4, np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(DataError, match="expected an IDX file with 3 dimension"):
        load_idx(tmp_path, "train")


def test_label_out_of_range(tmp_path):
    _write_pair(tmp_path, np.zeros((2, 4, 4), np.uint8), np.array([1, 10], np.uint8))
    with pytest.raises(DataError, match="label 10 out of range"):
        load_idx(tmp_path, "train")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "only 2 bytes"),
        (
            b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4,
            "0x0d .float32. is not supported",
        ),
        (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
        (idx_bytes(np.zeros(3, np.uint8)) + b"\x00", "1 unexpected trailing bytes"),
        (b"\x1f\x8b" + b"garbage", "corrupt gzip stream"),
        (gzip.compress(idx_bytes(np.zeros(3, np.uint8)))[:-5], "corrupt gzip stream"),
    ],
)
def test_parse_idx_rejects(data, message):
    with pytest.raises(DataError, match=message):
        parse_idx(data, "some-file")


def test_missing_files_error_lists_them(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[\.gz\]"):
        load_idx(tmp_path, "test")
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_idx(tmp_path, "validation")


_header = st.builds(
    lambda t, nd, dims: bytes([0, 0, t, nd]) + b"".join(struct.pack(">I", d) for d in dims[:nd]),
    st.sampled_from([0x08, 0x08, 0x0C]),
    st.integers(0, 4),
    st.lists(st.integers(0, 6), min_size=4, max_size=4),
)
_idx_like = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda h, body: h + body, _header, st.binary(max_size=200)),
    st.builds(lambda b: gzip.compress(b), st.binary(max_size=64)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=_idx_like, labels=_idx_like)
def test_idx_fuzz_gives_imageset_or_data_error(images, labels):
    try:
        ds = decode_idx_pair(images, labels, MNIST_CLASSES)
    except DataError:
        return
    assert isinstance(ds, ImageSet)
    assert ds.images.dtype == torch.uint8 and ds.images.ndim == 4
    assert len(ds.targets) == len(ds)


def test_download_from_a_mirror_verifies_md5(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    write_fake_idx(source)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in source.iterdir()}
    monkeypatch.setitem(idx_module._URLS, "fashion-mnist", (source.as_uri() + "/",))
    monkeypatch.setitem(idx_module._MD5, "fashion-mnist", md5)
    target = tmp_path / "downloaded"
    download_idx("fashion-mnist", target)
    assert sorted(p.name for p in target.iterdir()) == sorted(md5)
    assert len(load_idx(target, "test")) == 20

    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    (target / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="MD5"):
        download_idx("fashion-mnist", target)
    assert not (target / "t10k-labels-idx1-ubyte.gz").exists()


def test_unreachable_download_says_which_files_go_where(tmp_path, monkeypatch):
    monkeypatch.setitem(idx_module._URLS, "mnist", ("http://127.0.0.1:9/",))
    target = tmp_path / "mnist"
    with pytest.raises(DataError) as info:
        download_idx("mnist", target, timeout=2)
    message = str(info.value)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", str(target)):
        assert name in message


@pytest.mark.realdata
def test_real_fashion_mnist(require_realdata):
    root = require_realdata(
        FASHION_MNIST_SYSTEM_DIR, "Fashion-MNIST (Debian package dataset-fashion-mnist)"
    )
    train, test = load_idx(root, "train"), load_idx(root, "test")
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(train.targets), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.targets), torch.full((10,), 1000))
    assert train.class_names == FASHION_MNIST_CLASSES
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_realdata_guard_skips_locally_and_fails_in_ci(require_realdata, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_realdata(tmp_path / "absent", "data")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        require_realdata(tmp_path / "absent", "data")
    assert require_realdata(tmp_path, "data") == tmp_path
