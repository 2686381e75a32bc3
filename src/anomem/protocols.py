"""Evaluation protocols (paper §4.1) as seeded, recorded splits.

One-vs-all: one class is normal; the training set is that class's training images plus,
for an anomaly ratio γ > 0, labelled anomalies drawn from the other classes' training
images so that they make up a fraction γ of the training set; the test set is the whole
test split with every other class anomalous.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from anomem.data import ImageSet
from anomem.errors import DataError


class OneVsAllSplit(NamedTuple):
    """Training normals, labelled training anomalies, and the test set.

    Attributes:
        normals: (N, C, H, W) training images of the normal class.
        anomalies: (M, C, H, W) labelled training anomalies (M = 0 when γ = 0).
        test_images: (T, C, H, W) the whole test split.
        test_is_anomaly: (T,) bool, True for every class but the normal one.
        anomaly_index: indices of the drawn anomalies in the training split (recorded).
    """

    normals: torch.Tensor
    anomalies: torch.Tensor
    test_images: torch.Tensor
    test_is_anomaly: torch.Tensor
    anomaly_index: torch.Tensor


def one_vs_all(train: ImageSet, test: ImageSet, normal_class: int, ratio: float = 0.0, seed: int = 0) -> OneVsAllSplit:
    """Build the one-vs-all split for ``normal_class`` with anomaly ratio γ = ``ratio``.

    With n normals, m = round(γ n / (1 - γ)) anomalies make them a fraction γ of the
    training set; they are drawn uniformly without replacement from all other classes
    with a generator seeded by ``seed``.
    """
    n_classes = len(train.class_names)
    if not 0 <= normal_class < n_classes:
        raise DataError(f"normal class {normal_class} does not exist; this dataset has classes 0..{n_classes - 1}")
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise DataError(f"anomaly ratio γ must lie in [0, 1), got {ratio}")
    is_normal = train.targets == normal_class
    normals = train.images[is_normal]
    if normals.shape[0] == 0:
        raise DataError(f"class {normal_class} has no training images")
    pool = (~is_normal).nonzero().flatten()
    m = round(ratio * normals.shape[0] / (1.0 - ratio))
    if m > pool.numel():
        raise DataError(f"γ={ratio} needs {m} anomalies but only {pool.numel()} other-class images exist")
    gen = torch.Generator().manual_seed(seed)
    pick = pool[torch.randperm(pool.numel(), generator=gen)[:m]].sort().values
    return OneVsAllSplit(normals, train.images[pick], test.images, test.targets != normal_class, pick)
