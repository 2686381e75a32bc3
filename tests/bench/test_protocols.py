"""Protocol splits: one-vs-all (with caps and held-out types) and the Deep SAD protocol."""

import pytest
import torch

from anomem.bench.protocols import deep_sad_split, one_vs_all
from anomem.data import ImageSet
from anomem.errors import DataError


def _dataset(n_per_class=(40, 30, 30, 30), tag_pixels=True) -> ImageSet:
    # pixel [0, 0, 0] holds the image's class and pixel [0, 0, 1] its row, so the tests can
    # tell where every drawn image came from
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    imgs = torch.zeros(len(targets), 1, 4, 4, dtype=torch.uint8)
    imgs[:, 0, 0, 0] = targets.to(torch.uint8)
    imgs[:, 0, 0, 1] = torch.arange(len(targets), dtype=torch.uint8)
    return ImageSet(imgs, targets, tuple(str(c) for c in range(len(n_per_class))))


def _classes(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long()


def test_one_vs_all_ratio_cap_and_exclusion():
    train, test = _dataset(), _dataset((5, 5, 5, 5))
    sp = one_vs_all(train, test, 0, ratio=0.2, seed=1, max_normals=20, exclude_classes=(2,))
    assert sp.normals.shape[0] == 20 and (_classes(sp.normals) == 0).all()
    assert sp.anomalies.shape[0] == round(0.2 * 20 / 0.8)  # γ of the (capped) training set
    assert set(_classes(sp.anomalies).tolist()) <= {1, 3}  # the held-out type never appears
    assert sp.test_is_anomaly.sum() == 15
    again = one_vs_all(train, test, 0, ratio=0.2, seed=1, max_normals=20, exclude_classes=(2,))
    assert torch.equal(again.anomalies, sp.anomalies) and torch.equal(again.normals, sp.normals)
    # the normals do not depend on γ: label-free methods can share the γ = 0 result
    assert torch.equal(one_vs_all(train, test, 0, ratio=0.0, seed=1, max_normals=20).normals, sp.normals)


def test_deep_sad_split_known_class_and_pollution():
    train, test = _dataset((40, 40, 40, 40)), _dataset((5, 5, 5, 5))
    sp = deep_sad_split(train, test, normal_class=1, known_class=3, labelled_ratio=0.1, pollution=0.2, seed=0)
    unl = _classes(sp.normals)
    assert (unl == 1).sum() == 40
    assert (unl != 1).sum() == round(0.2 * 40 / 0.8)  # γ_p of the unlabelled set
    assert (_classes(sp.anomalies) == 3).all()  # labelled anomalies: the known class only
    assert sp.anomalies.shape[0] == round(0.1 * unl.numel() / 0.9)
    # an image is never both a polluting unlabelled sample and a labelled anomaly
    rows_unl, rows_lab = set(sp.normals[:, 0, 0, 1].tolist()), set(sp.anomalies[:, 0, 0, 1].tolist())
    assert not rows_unl & rows_lab
    assert torch.equal(sp.test_is_anomaly, test.targets != 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"known_class": 0}, "must differ"),
        ({"known_class": 9}, "known anomaly class 9"),
        ({"labelled_ratio": 1.0}, "γ_l"),
        ({"pollution": -0.1}, "γ_p"),
        ({"labelled_ratio": 0.9}, "of class 3"),  # asks for more class-3 images than exist
    ],
)
def test_deep_sad_split_rejects(kwargs, message):
    train = _dataset()
    args = {"normal_class": 0, "known_class": 3, "labelled_ratio": 0.05} | kwargs
    with pytest.raises(DataError, match=message):
        deep_sad_split(train, train, **args)
