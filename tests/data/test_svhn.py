"""SVHN .mat loading: layout, label 10 -> 0, and malformed files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import savemat

from anomem.data.svhn import SVHN_CLASSES, load_svhn
from anomem.errors import DataError

from fakes import write_fake_svhn


def test_svhn_layout_and_labels(tmp_path):
    written = write_fake_svhn(tmp_path, {"train": 12, "test": 11, "extra": 3})
    for split, n in (("train", 12), ("test", 11), ("extra", 3)):
        ds = load_svhn(tmp_path, split)
        assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert torch.equal(ds.images, torch.from_numpy(written[split].images))
        assert ds.targets.dtype == torch.int64
        assert torch.equal(ds.targets, torch.from_numpy(written[split].labels % 10))
    train = load_svhn(tmp_path, "train")
    raw = written["train"].labels
    assert (raw == 10).any() and not (train.targets == 10).any()
    assert torch.equal(
        train.targets[torch.from_numpy(raw == 10)],
        torch.zeros(int((raw == 10).sum()), dtype=torch.int64),
    )
    assert sorted(set(train.targets.tolist())) == list(range(10))
    assert train.class_names == SVHN_CLASSES


def test_svhn_pixel_transpose(tmp_path):
    x = np.zeros((32, 32, 3, 2), np.uint8)
    x[4, 9, 1, 1] = 77  # row 4, column 9, green channel, image 1
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[1], [10]], np.uint8)})
    ds = load_svhn(tmp_path, "test")
    assert int(ds.images[1, 1, 4, 9]) == 77 and int(ds.images.sum()) == 77
    assert ds.targets.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "missing variable 'y'"),
        ({"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))}, r"\(32, 32, 3, N\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, r"shape \(2, 1\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])}, r"1\.\.10"),
    ],
)
def test_malformed_mat(tmp_path, variables, message):
    savemat(tmp_path / "train_32x32.mat", variables)
    with pytest.raises(DataError, match=message) as info:
        load_svhn(tmp_path, "train")
    assert "train_32x32.mat" in str(info.value)


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match="train_32x32.mat: not a readable .mat file"):
        load_svhn(tmp_path, "train")
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_svhn(tmp_path, "test")
    with pytest.raises(DataError, match="extra"):
        load_svhn(tmp_path, "validation")
