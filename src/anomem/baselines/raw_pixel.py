"""Shallow detectors on raw pixels: one-class SVM, Isolation Forest, k-nearest neighbours.

These are the classic baselines of the one-class image benchmarks (e.g. Ruff et al.,
"Deep One-Class Classification", ICML 2018; Ruff et al., "Deep Semi-Supervised Anomaly
Detection", ICLR 2020; Golan & El-Yaniv, "Deep Anomaly Detection Using Geometric
Transformations", NeurIPS 2018). Every image is scaled to [0, 1] and flattened to one
vector of C*H*W pixels; no other preprocessing.

None of them can use labelled anomalies: ``fit(X, y)`` keeps only the rows with
``y == 1`` (normal) and ignores the rows with ``y == 0``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM

from anomem.baselines.base import BaseDetector, _check_number, check_images, check_random_state_seed
from anomem.errors import ConfigError, DataError

__all__ = ["RawPixelIsolationForest", "RawPixelKNN", "RawPixelOCSVM", "RawPixelPatchKNN", "aggregate_patch_distances",
           "greedy_k_centre"]


def _flatten(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float tensor in [0, 1] -> (N, C*H*W) float32 array."""
    return images.reshape(images.shape[0], -1).numpy()


class RawPixelOCSVM(BaseDetector):
    """One-class SVM on raw pixels (Schölkopf et al., "Estimating the Support of a
    High-Dimensional Distribution", Neural Computation 2001).

    scikit-learn's :class:`~sklearn.svm.OneClassSVM` with an RBF kernel. The score is
    ``-decision_function``: the signed distance to the learned boundary, negated so that
    higher = more anomalous.

    Labelled anomalies (``y == 0``) are ignored: the SVM is fitted on the normal rows.

    Args:
        nu: upper bound on the fraction of training errors / lower bound on the fraction
            of support vectors, in (0, 1]. Default 0.1, the usual one-class setting.
        gamma: RBF kernel width: ``"scale"`` (1 / (n_pixels * pixel variance)),
            ``"auto"`` (1 / n_pixels) or a positive float.
        random_state: unused (the SVM is deterministic); accepted so that every baseline
            takes the same arguments.

    Attributes:
        svm_: the fitted :class:`~sklearn.svm.OneClassSVM`.
        input_shape_: (C, H, W) of the training images.
    """

    def __init__(
        self, nu: float = 0.1, gamma: str | float = "scale", random_state: int | None = None
    ):
        self.nu = nu
        self.gamma = gamma
        self.random_state = random_state

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_number(name, "nu", self.nu, low=0.0, high=1.0, low_open=True)
        if isinstance(self.gamma, str):
            if self.gamma not in ("scale", "auto"):
                raise ConfigError(
                    f"{name}: gamma must be 'scale', 'auto' or a positive float, got {self.gamma!r}"
                )
        else:
            _check_number(name, "gamma", self.gamma, low=0.0, low_open=True)
        if self.random_state is not None:
            check_random_state_seed(self.random_state)

    def _fit(self, images: torch.Tensor, normal: np.ndarray) -> None:
        self.svm_ = OneClassSVM(kernel="rbf", nu=float(self.nu), gamma=self.gamma).fit(
            _flatten(images[torch.from_numpy(normal)])
        )

    def _score(self, images: torch.Tensor) -> np.ndarray:
        return -self.svm_.decision_function(_flatten(images))


class RawPixelIsolationForest(BaseDetector):
    """Isolation Forest on raw pixels (Liu, Ting & Zhou, "Isolation Forest", ICDM 2008).

    scikit-learn's :class:`~sklearn.ensemble.IsolationForest`. The score is
    ``-score_samples``, i.e. the paper's anomaly score 2^(-E[h(x)] / c(n)): shorter
    average path length = higher score = more anomalous.

    Labelled anomalies (``y == 0``) are ignored: the forest is grown on the normal rows.

    Args:
        n_estimators: number of trees (default 100, as in the paper).
        max_samples: sub-sample size per tree: ``"auto"`` (min(256, n)), an int, or a
            float fraction in (0, 1].
        random_state: seed for the sub-sampling and the random splits.
        n_jobs: parallel jobs for fitting and scoring (scikit-learn meaning).

    Attributes:
        forest_: the fitted :class:`~sklearn.ensemble.IsolationForest`.
        input_shape_: (C, H, W) of the training images.
    """

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: str | int | float = "auto",
        random_state: int | None = None,
        n_jobs: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_number(name, "n_estimators", self.n_estimators, kind=int, low=1)
        if isinstance(self.max_samples, str):
            if self.max_samples != "auto":
                raise ConfigError(
                    f"{name}: max_samples must be 'auto', an int or a float, got {self.max_samples!r}"
                )
        elif isinstance(self.max_samples, (int, np.integer)) and not isinstance(
            self.max_samples, bool
        ):
            _check_number(name, "max_samples", self.max_samples, kind=int, low=1)
        else:
            _check_number(name, "max_samples", self.max_samples, low=0.0, high=1.0, low_open=True)
        if self.random_state is not None:
            check_random_state_seed(self.random_state)

    def _fit(self, images: torch.Tensor, normal: np.ndarray) -> None:
        self.forest_ = IsolationForest(
            n_estimators=int(self.n_estimators),
            max_samples=self.max_samples,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        ).fit(_flatten(images[torch.from_numpy(normal)]))

    def _score(self, images: torch.Tensor) -> np.ndarray:
        return -self.forest_.score_samples(_flatten(images))


class RawPixelKNN(BaseDetector):
    """k-nearest-neighbour distance on raw pixels (Ramaswamy, Rastogi & Shim, "Efficient
    Algorithms for Mining Outliers from Large Data Sets", SIGMOD 2000; the mean-distance
    variant of Angiulli & Pizzuti, PKDD 2002).

    The score of an image is the mean Euclidean distance from its pixel vector to its
    ``n_neighbors`` nearest training normals. An image that is itself in the training set
    counts itself as its nearest neighbour (distance 0): training images are not left
    out. Queries are processed in chunks of ``batch_size`` rows to bound memory.

    Labelled anomalies (``y == 0``) are ignored: only normal rows are stored.

    Args:
        n_neighbors: k, the number of neighbours averaged (default 2).
        batch_size: query rows per chunk when scoring.
        random_state: unused (exact search is deterministic); accepted so that every
            baseline takes the same arguments.
        n_jobs: parallel jobs for the neighbour search (scikit-learn meaning).

    Attributes:
        nn_: the fitted :class:`~sklearn.neighbors.NearestNeighbors` (brute force).
        input_shape_: (C, H, W) of the training images.
    """

    def __init__(
        self,
        n_neighbors: int = 2,
        batch_size: int = 1024,
        random_state: int | None = None,
        n_jobs: int | None = None,
    ):
        self.n_neighbors = n_neighbors
        self.batch_size = batch_size
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_number(name, "n_neighbors", self.n_neighbors, kind=int, low=1)
        _check_number(name, "batch_size", self.batch_size, kind=int, low=1)
        if self.random_state is not None:
            check_random_state_seed(self.random_state)

    def _fit(self, images: torch.Tensor, normal: np.ndarray) -> None:
        n_normal = int(normal.sum())
        if n_normal < self.n_neighbors:
            raise DataError(
                f"RawPixelKNN needs at least n_neighbors={self.n_neighbors} normal training "
                f"images, got {n_normal}"
            )
        self.nn_ = NearestNeighbors(
            n_neighbors=int(self.n_neighbors),
            algorithm="brute",
            metric="euclidean",
            n_jobs=self.n_jobs,
        ).fit(_flatten(images[torch.from_numpy(normal)]))

    def _score(self, images: torch.Tensor) -> np.ndarray:
        flat = _flatten(images)
        out = np.empty(flat.shape[0], dtype=np.float64)
        step = int(self.batch_size)
        for start in range(0, flat.shape[0], step):
            dist, _ = self.nn_.kneighbors(flat[start : start + step], return_distance=True)
            out[start : start + step] = dist.mean(axis=1)
        return out


def greedy_k_centre(x: torch.Tensor, k: int, generator: torch.Generator, dim: int | None = 128) -> tuple[torch.Tensor, float]:
    """Greedy k-centre subset of the rows of ``x`` (N, D) (Gonzalez 1985; PatchCore's coreset).

    Starts from a random row and adds, at each step, the row farthest from those chosen.
    Distances are taken on a seeded Gaussian random projection to ``dim`` dimensions when
    D > ``dim`` (as PatchCore does, to make the search cheap), on the rows themselves
    otherwise (``dim=None``: never project). The covering radius returned is the largest
    distance, in the space searched, from any row to its nearest chosen row: the greedy
    choice is within a factor 2 of the best radius k centres can reach.

    Returns:
        indices (min(k, N),) int64 and the covering radius (0.0 when every row is chosen).
    """
    n = x.shape[0]
    if n <= k:
        return torch.arange(n), 0.0
    x = x.float()
    if dim is not None and x.shape[1] > dim:
        x = x @ (torch.randn(x.shape[1], dim, generator=generator) / math.sqrt(dim))
    sq = x.pow(2).sum(1)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    # squared distance of every row to the chosen set, ||x||^2 - 2 x.c + ||c||^2 (clamped at 0)
    nearest = (sq - 2 * (x @ x[chosen[0]]) + sq[chosen[0]]).clamp_min(0)
    for i in range(1, k):
        j = int(nearest.argmax())
        chosen[i] = j
        nearest = torch.minimum(nearest, (sq - 2 * (x @ x[j]) + sq[j]).clamp_min(0))
    return chosen, float(nearest.max().sqrt())


def aggregate_patch_distances(near: torch.Tensor, aggregate: str, top_fraction: float) -> torch.Tensor:
    """Image scores (N,) from nearest-patch distances (N, L): their maximum, or the mean of
    the largest ceil(``top_fraction`` · L) of them (at least one)."""
    if aggregate == "max":
        return near.max(1).values
    k = max(1, math.ceil(top_fraction * near.shape[1] - 1e-9))
    return near.topk(min(k, near.shape[1]), dim=1).values.mean(1)


class RawPixelPatchKNN(BaseDetector):
    """Nearest-neighbour distance of raw-pixel patches: the simplest strong detector of
    small local defects (the patch-matching idea behind PatchCore, Roth et al. 2022, on
    pixels instead of pretrained features).

    Every ``patch`` x ``patch`` patch at stride ``stride`` of the training normals is a
    candidate. The memory bank keeps ``max_patches`` of them: a seeded uniform draw
    (``bank="random"``) or a greedy k-centre coreset (``bank="coreset"``,
    :func:`greedy_k_centre` on a random projection to ``coreset_dim`` dimensions, as in
    PatchCore). Each patch of a scored image gets the Euclidean distance to its nearest
    stored patch; the image's score is the largest of them (``aggregate="max"``) or the
    mean of the largest ``top_fraction`` of them (``aggregate="topk"``).
    Labelled anomalies (``y == 0``) are ignored.

    Args:
        patch: patch side in pixels.
        stride: step between patches.
        max_patches: stored patches at most.
        bank: ``"random"`` or ``"coreset"``.
        aggregate: ``"max"`` or ``"topk"``.
        top_fraction: share of the patches averaged by ``aggregate="topk"``, in (0, 1].
        coreset_dim: projection dimension of the coreset search (rows of at most that
            many values are searched as they are).
        random_state: seed of the draw (or of the coreset's start and projection).

    Attributes:
        bank_: (K, C·patch²) the stored patches.
        radius_: the coreset's covering radius in the space searched (``bank="coreset"``;
            0.0 when every candidate is kept), None for a random bank.
        input_shape_: (C, H, W) of the training images.
    """

    def __init__(self, patch: int = 8, stride: int = 4, max_patches: int = 40000, bank: str = "random",
                 aggregate: str = "max", top_fraction: float = 0.01, coreset_dim: int = 128,
                 random_state: int | None = None):
        self.patch = patch
        self.stride = stride
        self.max_patches = max_patches
        self.bank = bank
        self.aggregate = aggregate
        self.top_fraction = top_fraction
        self.coreset_dim = coreset_dim
        self.random_state = random_state

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_number(name, "patch", self.patch, kind=int, low=1)
        _check_number(name, "stride", self.stride, kind=int, low=1)
        _check_number(name, "max_patches", self.max_patches, kind=int, low=1)
        _check_number(name, "top_fraction", self.top_fraction, low=0.0, high=1.0, low_open=True)
        _check_number(name, "coreset_dim", self.coreset_dim, kind=int, low=1)
        if self.bank not in ("random", "coreset"):
            raise ConfigError(f"{name}: bank must be 'random' or 'coreset', got {self.bank!r}")
        if self.aggregate not in ("max", "topk"):
            raise ConfigError(f"{name}: aggregate must be 'max' or 'topk', got {self.aggregate!r}")
        if self.random_state is not None:
            check_random_state_seed(self.random_state)

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, C·p·p)."""
        if min(images.shape[-2:]) < self.patch:
            raise DataError(f"RawPixelPatchKNN: images of {tuple(images.shape[-2:])} px are smaller than patch={self.patch}")
        return torch.nn.functional.unfold(images.float(), int(self.patch), stride=int(self.stride)).transpose(1, 2)

    def _fit(self, images: torch.Tensor, normal: np.ndarray) -> None:
        rows = self._patches(images[torch.from_numpy(normal)]).reshape(-1, images.shape[1] * int(self.patch) ** 2)
        gen = torch.Generator().manual_seed(0 if self.random_state is None else int(self.random_state))
        if self.bank == "coreset":
            keep, self.radius_ = greedy_k_centre(rows, int(self.max_patches), gen, int(self.coreset_dim))
        else:
            keep, self.radius_ = torch.randperm(rows.shape[0], generator=gen)[: int(self.max_patches)], None
        self.bank_ = rows[keep].contiguous()

    def nearest_patch_distances(self, X) -> np.ndarray:
        """Distance of each patch of each image to its nearest stored patch, (N, L_h, L_w)
        float64 on the patch grid (``anomaly_score`` aggregates them; upsampled, they are a
        heat-map)."""
        self._check_is_fitted()
        images = check_images(X)
        if tuple(int(s) for s in images.shape[1:]) != self.input_shape_:
            raise DataError(f"RawPixelPatchKNN was fitted on images of (C, H, W) = {self.input_shape_}, "
                            f"got {tuple(images.shape[1:])}")
        return self._near(images).double().numpy()

    def _near(self, images: torch.Tensor) -> torch.Tensor:
        p, s = int(self.patch), int(self.stride)
        grid = ((images.shape[-2] - p) // s + 1, (images.shape[-1] - p) // s + 1)
        out = []
        for chunk in images.split(16):
            q = self._patches(chunk)  # (B, L, D)
            out.append(torch.cdist(q.reshape(-1, q.shape[-1]), self.bank_).min(1).values.view(q.shape[0], *grid))
        return torch.cat(out)

    def _score(self, images: torch.Tensor) -> np.ndarray:
        near = self._near(images).flatten(1)
        return aggregate_patch_distances(near, self.aggregate, float(self.top_fraction)).double().numpy()
