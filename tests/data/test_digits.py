"""scikit-learn digits: scaling, upscaling and the seeded stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from anomem.data.digits import DIGITS_CLASSES, load_digits_splits
from anomem.errors import DataError


@pytest.fixture(scope="module")
def splits():
    return load_digits_splits()


def test_sizes_dtypes_and_classes(splits):
    train, test = splits
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.uint8
    assert train.targets.dtype == torch.int64 and train.class_names == DIGITS_CLASSES
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_split_is_stratified(splits):
    counts = np.bincount(load_digits().target, minlength=10)
    test_counts = torch.bincount(splits.test.targets, minlength=10).numpy()
    np.testing.assert_array_equal(test_counts, np.round(counts * 0.4).astype(int))
    train_counts = torch.bincount(splits.train.targets, minlength=10).numpy()
    np.testing.assert_array_equal(train_counts + test_counts, counts)


def test_split_is_seeded(splits):
    again = load_digits_splits(seed=0)
    other = load_digits_splits(seed=1)
    assert torch.equal(again.test.images, splits.test.images)
    assert not torch.equal(other.test.images, splits.test.images)
    assert torch.equal(torch.bincount(other.test.targets), torch.bincount(splits.test.targets))


def test_native_resolution_scaling():
    ds = load_digits_splits(image_size=8, test_fraction=0.5)
    raw = torch.from_numpy(load_digits().images)
    train_and_test = torch.cat([ds.train.images, ds.test.images]).flatten(1)
    expected = (raw * 255 / 16).round().to(torch.uint8).flatten(1)
    # Same multiset of images: compare sorted rows.
    assert torch.equal(torch.unique(train_and_test, dim=0), torch.unique(expected, dim=0))


@pytest.mark.parametrize(
    "kwargs", [{"test_fraction": 0.0}, {"test_fraction": 1.0}, {"image_size": 0}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(DataError):
        load_digits_splits(**kwargs)
