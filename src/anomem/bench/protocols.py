"""Evaluation protocols (paper §4.1) as seeded, recorded splits.

One-vs-all: one class is normal; the training set is that class's training images plus,
for an anomaly ratio γ > 0, labelled anomalies drawn from the other classes' training
images so that they make up a fraction γ of the training set; the test set is the whole
test split with every other class anomalous.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from anomem.errors import DataError
from anomem.imageset import ImageSet


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


def _check_class(train: ImageSet, c: int, what: str) -> None:
    n_classes = len(train.class_names)
    if not 0 <= c < n_classes:
        raise DataError(f"{what} {c} does not exist; this dataset has classes 0..{n_classes - 1}")


def _check_ratio(ratio: float, name: str) -> None:
    if math.isnan(ratio) or not 0.0 <= ratio < 1.0:
        raise DataError(f"{name} must lie in [0, 1), got {ratio}")


def _normals(train: ImageSet, normal_class: int, max_normals: int | None, gen: torch.Generator) -> torch.Tensor:
    idx = (train.targets == normal_class).nonzero().flatten()
    if idx.numel() == 0:
        raise DataError(f"class {normal_class} has no training images")
    if max_normals is not None and max_normals < idx.numel():
        idx = idx[torch.randperm(idx.numel(), generator=gen)[:max_normals].sort().values]
    return idx


def _draw(pool: torch.Tensor, m: int, gen: torch.Generator, what: str) -> torch.Tensor:
    if m > pool.numel():
        raise DataError(f"{what} needs {m} images but only {pool.numel()} are available")
    return pool[torch.randperm(pool.numel(), generator=gen)[:m]].sort().values


def one_vs_all(
    train: ImageSet, test: ImageSet, normal_class: int, ratio: float = 0.0, seed: int = 0,
    max_normals: int | None = None, exclude_classes: tuple[int, ...] = (),
) -> OneVsAllSplit:
    """Build the one-vs-all split for ``normal_class`` with anomaly ratio γ = ``ratio``.

    With n normals, m = round(γ n / (1 - γ)) anomalies make them a fraction γ of the
    training set; they are drawn uniformly without replacement from all other classes
    (but ``exclude_classes``: the cross-type protocol holds a type out of training) with
    a generator seeded by ``seed``. ``max_normals`` first subsamples the normal class
    (seeded) for CPU budgets; m follows the kept n.
    """
    _check_class(train, normal_class, "normal class")
    _check_ratio(ratio, "anomaly ratio γ")
    gen = torch.Generator().manual_seed(seed)
    normals = _normals(train, normal_class, max_normals, gen)
    other = train.targets != normal_class
    for c in exclude_classes:
        other &= train.targets != c
    m = round(ratio * normals.numel() / (1.0 - ratio))
    pick = _draw(other.nonzero().flatten(), m, gen, f"γ={ratio}")
    return OneVsAllSplit(train.images[normals], train.images[pick], test.images, test.targets != normal_class, pick)


def deep_sad_split(
    train: ImageSet, test: ImageSet, normal_class: int, known_class: int, labelled_ratio: float,
    pollution: float = 0.0, seed: int = 0, max_normals: int | None = None,
) -> OneVsAllSplit:
    """The Deep SAD protocol (Ruff et al. 2020, §4.1; their Table 1 setting).

    One class is normal; labelled anomalies all come from ONE known anomaly class
    (``known_class``) and make up a fraction γ_l = ``labelled_ratio`` of the training
    set; the unlabelled part may be polluted: a fraction γ_p = ``pollution`` of it is
    drawn from the other anomaly classes (known one included) but passed as normal,
    since it is unlabelled. The test set is the whole test split, every class but the
    normal one anomalous (so most test anomalies are of classes never labelled).

    Returns the split with ``normals`` = the unlabelled (possibly polluted) training images.
    """
    _check_class(train, normal_class, "normal class")
    _check_class(train, known_class, "known anomaly class")
    if known_class == normal_class:
        raise DataError(f"the known anomaly class must differ from the normal class ({normal_class})")
    _check_ratio(labelled_ratio, "labelled ratio γ_l")
    _check_ratio(pollution, "pollution ratio γ_p")
    gen = torch.Generator().manual_seed(seed)
    normals = _normals(train, normal_class, max_normals, gen)
    n_pollute = round(pollution * normals.numel() / (1.0 - pollution))
    polluted = _draw((train.targets != normal_class).nonzero().flatten(), n_pollute, gen, f"γ_p={pollution}")
    unlabelled = torch.cat([normals, polluted]).sort().values
    m = round(labelled_ratio * unlabelled.numel() / (1.0 - labelled_ratio))
    pool = (train.targets == known_class).nonzero().flatten()
    pool = pool[~torch.isin(pool, polluted)]
    pick = _draw(pool, m, gen, f"γ_l={labelled_ratio} of class {known_class}")
    return OneVsAllSplit(train.images[unlabelled], train.images[pick], test.images, test.targets != normal_class, pick)


class FitValidation(NamedTuple):
    """A training split cut in two: ``fit`` (to train on) and ``validation`` (to choose with)."""

    fit: ImageSet
    validation: ImageSet


def validation_split(train: ImageSet, max_train: int | None = None, seed: int = 0) -> FitValidation:
    """(fit, validation) parts of a training split, for choosing settings without the test split.

    ``max_train`` first subsamples the split; a third of what remains becomes the
    validation part. One NumPy generator seeded by ``seed`` draws both, so a benchmark
    script's split is reproduced exactly by its seed.
    """
    rng = np.random.default_rng(seed)
    if max_train is not None and max_train < len(train):
        train = train.subset(torch.from_numpy(np.sort(rng.permutation(len(train))[:max_train])))
    n = len(train)
    fit = np.ones(n, bool)
    fit[rng.permutation(n)[: n // 3]] = False
    return FitValidation(train.subset(torch.from_numpy(fit)), train.subset(torch.from_numpy(~fit)))
