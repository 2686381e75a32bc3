"""Patch kNN's variants (random or coreset bank; max or top-k mean) against reference
implementations: scikit-learn's NearestNeighbors on explicitly cut patches, and a
brute-force k-centre on sets small enough to enumerate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from anomem.baselines import RawPixelPatchKNN, aggregate_patch_distances, greedy_k_centre
from anomem.errors import ConfigError


def cut_patches(images: np.ndarray, p: int, s: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, L, p*p) float in [0, 1], row-major positions, by loops."""
    x = images.astype(np.float64) / 255
    out = []
    for img in x:
        rows = [img[i : i + p, j : j + p].reshape(-1) for i in range(0, img.shape[0] - p + 1, s)
                for j in range(0, img.shape[1] - p + 1, s)]
        out.append(np.stack(rows))
    return np.stack(out)


def reference_scores(bank: np.ndarray, query: np.ndarray, how: str, fraction: float) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=1).fit(bank)
    d = nn.kneighbors(query.reshape(-1, query.shape[-1]))[0][:, 0].reshape(query.shape[:2])
    if how == "max":
        return d.max(1)
    k = max(1, math.ceil(fraction * d.shape[1]))
    return np.sort(d, axis=1)[:, ::-1][:, :k].mean(1)


@pytest.fixture
def images():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (6, 12, 12), dtype=np.uint8), rng.integers(0, 256, (4, 12, 12), dtype=np.uint8)


@pytest.mark.parametrize("how,fraction", [("max", 0.01), ("topk", 0.01), ("topk", 0.2), ("topk", 1.0)])
def test_full_bank_matches_sklearn(images, how, fraction) -> None:
    train, query = images
    # 6 images x 4 x 4 positions = 96 candidate patches; a bank of 1000 keeps them all
    det = RawPixelPatchKNN(patch=4, stride=3, max_patches=1000, aggregate=how, top_fraction=fraction).fit(train)
    bank = cut_patches(train, 4, 3).reshape(-1, 16)
    assert det.bank_.shape == bank.shape
    want = reference_scores(bank, cut_patches(query, 4, 3), how, fraction)
    np.testing.assert_allclose(det.anomaly_score(query), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bank", ["random", "coreset"])
def test_partial_bank_scores_against_its_own_rows(images, bank) -> None:
    train, query = images
    det = RawPixelPatchKNN(patch=4, stride=3, max_patches=20, bank=bank, aggregate="topk", top_fraction=0.25,
                           random_state=3).fit(train)
    candidates = cut_patches(train, 4, 3).reshape(-1, 16)
    stored = det.bank_.double().numpy()
    assert stored.shape == (20, 16)
    # every stored row is a candidate patch, none twice
    match = np.abs(stored[:, None, :] - candidates[None]).max(-1) < 1e-6
    assert match.any(1).all() and len({tuple(np.flatnonzero(r)) for r in match}) == 20
    want = reference_scores(stored, cut_patches(query, 4, 3), "topk", 0.25)
    np.testing.assert_allclose(det.anomaly_score(query), want, rtol=1e-5, atol=1e-6)
    near = det.nearest_patch_distances(query)
    assert near.shape == (4, 3, 3)
    np.testing.assert_allclose(aggregate_patch_distances(torch.from_numpy(near.reshape(4, -1)), "topk", 0.25).numpy(),
                               want, rtol=1e-5, atol=1e-6)


def test_top_fraction_one_patch_is_the_max_and_all_patches_the_mean() -> None:
    d = torch.tensor([[1.0, 5.0, 3.0, 2.0]])
    assert float(aggregate_patch_distances(d, "topk", 0.01)) == 5.0  # ceil(0.04) = 1 patch
    assert float(aggregate_patch_distances(d, "topk", 0.5)) == 4.0  # the top 2: (5 + 3) / 2
    assert float(aggregate_patch_distances(d, "topk", 1.0)) == pytest.approx(2.75)
    assert float(aggregate_patch_distances(d, "max", 0.5)) == 5.0


@pytest.mark.parametrize("seed", range(6))
def test_coreset_covers_every_row_within_its_radius_and_is_within_twice_the_best(seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(11, 3))
    k = 3
    idx, radius = greedy_k_centre(torch.from_numpy(x), k, torch.Generator().manual_seed(seed), dim=None)
    assert len(set(idx.tolist())) == k
    to_chosen = NearestNeighbors(n_neighbors=1).fit(x[idx.numpy()]).kneighbors(x)[0][:, 0]
    assert to_chosen.max() <= radius + 1e-5  # every row within the covering radius ...
    assert to_chosen.max() == pytest.approx(radius, abs=1e-5)  # ... which is attained
    best = min(NearestNeighbors(n_neighbors=1).fit(x[list(c)]).kneighbors(x)[0].max()
               for c in itertools.combinations(range(len(x)), k))
    assert radius <= 2 * best + 1e-5  # Gonzalez's bound for the greedy choice


def test_coreset_keeps_an_outlier_a_random_draw_of_the_same_size_usually_misses() -> None:
    x = torch.zeros(200, 4)
    x[:199] = torch.randn(199, 4, generator=torch.Generator().manual_seed(0)) * 0.01
    x[199] = 10.0  # one far row
    idx, radius = greedy_k_centre(x, 5, torch.Generator().manual_seed(1), dim=None)
    assert 199 in idx.tolist()
    assert radius < 0.1


def test_all_rows_when_k_exceeds_n_and_bad_parameters_are_refused(images) -> None:
    idx, radius = greedy_k_centre(torch.ones(4, 2), 10, torch.Generator())
    assert idx.tolist() == [0, 1, 2, 3] and radius == 0.0
    train, _ = images
    for bad in ({"bank": "kmeans"}, {"aggregate": "mean"}, {"top_fraction": 0.0}):
        with pytest.raises(ConfigError):
            RawPixelPatchKNN(patch=4, **bad).fit(train)
