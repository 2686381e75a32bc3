"""Input checks shared by every baseline: images, labels, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem.baselines.base import check_images, check_labels, check_random_state_seed
from anomem.errors import ConfigError, DataError


def test_uint8_is_scaled_and_channel_axis_added() -> None:
    x = np.array([[[0, 51], [255, 102]]], dtype=np.uint8)  # (1, 2, 2)
    t = check_images(x)
    assert t.dtype == torch.float32 and t.shape == (1, 1, 2, 2)
    torch.testing.assert_close(t[0, 0], torch.tensor([[0.0, 0.2], [1.0, 0.4]]))


def test_other_accepted_inputs() -> None:
    ints = np.full((2, 3, 4, 4), 255, dtype=np.int64)
    assert check_images(ints).max() == 1.0
    half = torch.full((2, 4, 4), 0.5, dtype=torch.float16)
    assert check_images(half).dtype == torch.float32
    nested = [[[0, 255], [255, 0]]]
    assert check_images(nested).shape == (1, 1, 2, 2)
    ro = np.zeros((2, 4, 4), dtype=np.uint8)
    ro.flags.writeable = False
    assert check_images(ro).shape == (2, 1, 4, 4)
    grad = torch.rand(2, 1, 3, 3, requires_grad=True)
    assert not check_images(grad).requires_grad


@pytest.mark.parametrize(
    "x, match",
    [
        (np.array([["a", "b"]]), "dtype <U1"),
        (np.zeros((2, 2, 4, 4), dtype=np.uint8), "1 or 3 channels"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "channels-last"),
        (np.full((2, 4, 4), -0.1), r"\[-0.1, -0.1\]"),
        (np.zeros((2, 4, 4), dtype=np.complex64), "complex"),
        (np.zeros((2, 0, 4), dtype=np.uint8), "no images"),
    ],
)
def test_rejected_inputs(x, match: str) -> None:
    with pytest.raises(DataError, match=match):
        check_images(x)


def test_nan_message_counts_images() -> None:
    x = np.zeros((5, 4, 4))
    x[1, 0, 0] = x[3, 2, 2] = np.nan
    with pytest.raises(DataError, match="in 2 of 5 images"):
        check_images(x)


def test_labels() -> None:
    np.testing.assert_array_equal(check_labels(None, 3), [True, True, True])
    np.testing.assert_array_equal(check_labels([1, 0, 1], 3), [True, False, True])
    np.testing.assert_array_equal(check_labels(np.array([1.0, 0.0]), 2), [True, False])
    np.testing.assert_array_equal(check_labels(torch.tensor([True, False]), 2), [True, False])
    with pytest.raises(DataError, match=r"got \[nan\]"):
        check_labels(np.array([1.0, np.nan]), 2)
    with pytest.raises(DataError, match="numeric"):
        check_labels(np.array(["1", "0"]), 2)


def test_random_state_seed() -> None:
    assert check_random_state_seed(7) == 7
    assert check_random_state_seed(np.int64(7)) == 7
    np.random.seed(0)
    a = check_random_state_seed(None)
    np.random.seed(0)
    assert check_random_state_seed(None) == a
    for bad in (True, 1.0, "1", -1):
        with pytest.raises(ConfigError):
            check_random_state_seed(bad)


def test_one_label_check_serves_every_caller() -> None:
    """Training labels, metrics and thresholds refuse the same bad labels with the same rule."""
    from anomem.inputs import as_labels, binary_values
    from anomem.metrics import image_auroc
    from anomem.thresholds import threshold_max_f1

    np.testing.assert_array_equal(binary_values([0, 1, 1.0, True], 4, "y", "0 or 1"), [False, True, True, True])
    for bad in ([0, 2, 1], [0, np.nan, 1], ["0", "1", "1"]):
        for call in (lambda v: as_labels(v, 3), lambda v: check_labels(v, 3), lambda v: image_auroc(v, [0.1, 0.2, 0.3]),
                     lambda v: threshold_max_f1([0.1, 0.2, 0.3], v)):
            with pytest.raises(DataError, match="values must be|labels must be numbers"):
                call(bad)
