"""Raw-pixel baselines: agreement with closed forms and with scikit-learn used directly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

from anomem.baselines import RawPixelIsolationForest, RawPixelKNN, RawPixelOCSVM
from anomem.errors import ConfigError, DataError


def brute_force_knn_score(train: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance to the k nearest training rows, by explicit loops."""
    t = train.reshape(len(train), -1).astype(np.float64) / 255
    q = query.reshape(len(query), -1).astype(np.float64) / 255
    out = []
    for row in q:
        d = sorted(float(np.sqrt(np.sum((row - other) ** 2))) for other in t)
        out.append(sum(d[:k]) / k)
    return np.array(out)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_train=st.integers(3, 12),
    n_query=st.integers(1, 9),
    k=st.integers(1, 3),
    side=st.integers(1, 6),
    batch_size=st.integers(1, 4),
)
def test_knn_matches_brute_force(seed, n_train, n_query, k, side, batch_size) -> None:
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, side, side), dtype=np.uint8)
    query = rng.integers(0, 256, (n_query, side, side), dtype=np.uint8)
    got = RawPixelKNN(n_neighbors=k, batch_size=batch_size).fit(train).anomaly_score(query)
    np.testing.assert_allclose(got, brute_force_knn_score(train, query, k), rtol=1e-5, atol=1e-5)


def test_knn_hand_computed_example() -> None:
    # 1x2 images; train pixels (0,0), (255,0), (0,255): query (0,0) -> distances 0, 1, 1.
    train = np.array([[[0, 0]], [[255, 0]], [[0, 255]]], dtype=np.uint8)
    query = np.array([[[0, 0]], [[255, 255]]], dtype=np.uint8)
    s = RawPixelKNN(n_neighbors=2).fit(train).anomaly_score(query)
    np.testing.assert_allclose(s, [0.5, 1.0], rtol=1e-6)


def test_knn_ignores_labelled_anomalies(make_blobs, make_stripes) -> None:
    normals, anomalies = make_blobs(20), make_stripes(5)
    query = np.concatenate([make_blobs(4, seed=5), make_stripes(4, seed=6)])
    x = np.concatenate([normals, anomalies])
    y = np.r_[np.ones(20), np.zeros(5)]
    with_labels = RawPixelKNN().fit(x, y).anomaly_score(query)
    normals_only = RawPixelKNN().fit(normals).anomaly_score(query)
    np.testing.assert_array_equal(with_labels, normals_only)
    # and without the labels the anomalies would be neighbours: the result differs
    assert not np.array_equal(RawPixelKNN().fit(x).anomaly_score(query), normals_only)


def test_knn_needs_k_normals(make_blobs) -> None:
    with pytest.raises(DataError, match="at least n_neighbors=3"):
        RawPixelKNN(n_neighbors=3).fit(make_blobs(2))


def test_ocsvm_matches_sklearn(make_blobs, make_stripes) -> None:
    train, anomalies = make_blobs(30), make_stripes(6)
    query = np.concatenate([make_blobs(5, seed=7), make_stripes(5, seed=8)])
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255  # noqa: E731
    ref = (
        -OneClassSVM(kernel="rbf", gamma="scale", nu=0.1)
        .fit(flat(train))
        .decision_function(flat(query))
    )
    x, y = np.concatenate([train, anomalies]), np.r_[np.ones(30), np.zeros(6)]
    got = RawPixelOCSVM().fit(x, y).anomaly_score(query)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    assert got[5:].min() > got[:5].max()  # higher = more anomalous


def test_iforest_matches_sklearn(make_blobs, make_stripes) -> None:
    train, anomalies = make_blobs(30), make_stripes(6)
    query = np.concatenate([make_blobs(5, seed=7), make_stripes(5, seed=8)])
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255  # noqa: E731
    ref = (
        -IsolationForest(n_estimators=100, random_state=3)
        .fit(flat(train))
        .score_samples(flat(query))
    )
    x, y = np.concatenate([train, anomalies]), np.r_[np.ones(30), np.zeros(6)]
    got = RawPixelIsolationForest(random_state=3).fit(x, y).anomaly_score(query)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got[5:].mean() > got[:5].mean()


@pytest.mark.parametrize(
    "est, match",
    [
        (RawPixelOCSVM(nu=0), "nu must be > 0"),
        (RawPixelOCSVM(nu=1.5), "nu must be <= 1"),
        (RawPixelOCSVM(gamma="wide"), "gamma must be 'scale', 'auto'"),
        (RawPixelOCSVM(gamma=-1.0), "gamma must be > 0"),
        (RawPixelIsolationForest(n_estimators=0), "n_estimators must be >= 1"),
        (RawPixelIsolationForest(n_estimators=10.5), "n_estimators must be an int"),
        (RawPixelIsolationForest(max_samples="all"), "max_samples"),
        (RawPixelIsolationForest(max_samples=1.5), "max_samples must be <= 1"),
        (RawPixelIsolationForest(random_state="seed"), "random_state must be None or an int"),
        (RawPixelKNN(n_neighbors=0), "n_neighbors must be >= 1"),
        (RawPixelKNN(n_neighbors=True), "n_neighbors must be an int"),
        (RawPixelKNN(batch_size=0), "batch_size must be >= 1"),
        (RawPixelKNN(random_state=-2), "random_state must be non-negative"),
    ],
)
def test_bad_parameters_raise_config_error_at_fit(est, match: str, make_blobs) -> None:
    with pytest.raises(ConfigError, match=match):
        est.fit(make_blobs(8))
