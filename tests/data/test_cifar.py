"""CIFAR-10 / CIFAR-100 loading from Python-2-style pickles, and refusal of hostile pickles."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from anomem.data.cifar import load_cifar10, load_cifar100, safe_unpickle
from anomem.errors import DataError

from fakes import py2_pickle, write_fake_cifar10, write_fake_cifar100


def test_cifar10_train_and_test(tmp_path):
    written = write_fake_cifar10(tmp_path, per_batch=6)
    train = load_cifar10(tmp_path, "train")  # the parent of cifar-10-batches-py
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test")  # the folder itself
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert torch.equal(train.images, torch.from_numpy(written["train"].images))
    assert torch.equal(train.targets, torch.from_numpy(written["train"].labels))
    assert torch.equal(test.targets, torch.from_numpy(written["test"].labels))
    assert train.class_names[0] == "airplane" and len(train.class_names) == 10


def test_cifar10_pixel_layout_is_rgb_planes(tmp_path):
    write_fake_cifar10(tmp_path, per_batch=2)
    raw = safe_unpickle(tmp_path / "cifar-10-batches-py" / "data_batch_1")[b"data"]
    ds = load_cifar10(tmp_path, "train")
    c, y, x = 2, 5, 7
    assert int(ds.images[1, c, y, x]) == int(raw[1, c * 1024 + y * 32 + x])


def test_cifar100_fine_and_coarse(tmp_path):
    written = write_fake_cifar100(tmp_path)
    fine = load_cifar100(tmp_path, "train")
    coarse = load_cifar100(tmp_path, "train", label_mode="coarse")
    assert len(fine.class_names) == 100 and len(coarse.class_names) == 20
    assert coarse.class_names[3] == "coarse3"
    assert torch.equal(fine.targets, torch.from_numpy(written["train"]["fine"]))
    assert torch.equal(coarse.targets, torch.from_numpy(written["train"]["coarse"]))
    assert torch.equal(coarse.targets, fine.targets // 5)
    assert torch.equal(fine.images, coarse.images)
    assert load_cifar100(tmp_path, "test").images.shape == (20, 3, 32, 32)
    with pytest.raises(DataError, match="label_mode"):
        load_cifar100(tmp_path, "train", label_mode="super")


class _RunsShellOnLoad:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["batch", "meta"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, where):
    write_fake_cifar10(tmp_path, per_batch=2)
    marker = tmp_path / "pwned"
    payload = _RunsShellOnLoad(f"touch {marker}")
    target = "batches.meta" if where == "meta" else "data_batch_3"
    evil = {b"data": payload, b"labels": [0]} if where == "batch" else payload
    (tmp_path / "cifar-10-batches-py" / target).write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(DataError, match=rf"{target}.*refusing global (posix|nt)\.system"):
        load_cifar10(tmp_path, "train")
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.")
    with pytest.raises(DataError, match="refusing global builtins.eval"):
        safe_unpickle(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (
            py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:-9],
            "not a valid CIFAR pickle",
        ),
        (py2_pickle([1, 2]), "expected a pickled dict"),
        (py2_pickle({b"labels": [0]}), "missing key 'data'"),
        (
            py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
            r"uint8 array \(N, 3072\)",
        ),
        (
            py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
            "2 images but 'labels'",
        ),
        (py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"0\.\.9"),
    ],
)
def test_malformed_batches(tmp_path, content, message):
    write_fake_cifar10(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_cifar10(tmp_path, "test")
    assert "test_batch" in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_cifar100(tmp_path, "val")
