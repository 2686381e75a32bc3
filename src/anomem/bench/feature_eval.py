"""Scores and probes on frozen features: kNN / k-means distances and linear evaluation.

Used by the benchmark's SimCLR baselines (paper's "contrastive + k-means" ablation) and
by ``anomem linear-eval``. The kNN distance is the normal bank's
(:func:`anomem.stage2.feature_bank.bank_distances`), so baseline and detector measure alike.
"""

from __future__ import annotations

import numpy as np
import torch

from anomem.errors import DataError
from anomem.stage2.feature_bank import bank_distances

__all__ = ["feature_kmeans_scores", "feature_knn_scores", "linear_evaluation", "linear_probe"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def feature_knn_scores(train_feats: np.ndarray, test_feats: np.ndarray, k: int = 2) -> np.ndarray:
    """Mean cosine distance of each test feature to its k nearest training features
    (the normal bank's distance, in chunks of 4096 test rows)."""
    bank = torch.nn.functional.normalize(torch.as_tensor(np.asarray(train_feats, np.float64)), dim=1)
    test = torch.as_tensor(np.asarray(test_feats, np.float64))
    return torch.cat([bank_distances(t, bank, k) for t in test.split(4096)]).double().numpy()


def feature_kmeans_scores(train_feats: np.ndarray, test_feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cosine distance of each test feature to the nearest of k centroids of the training features."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=min(k, len(train_feats)), n_init=3, random_state=seed).fit(_unit(train_feats))
    cent = _unit(km.cluster_centers_)
    return 1.0 - (_unit(test_feats) @ cent.T).max(1)


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_labels)) < 2:
        raise DataError("linear evaluation needs at least two classes in the training labels")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(train_feats, train_labels)
    return float((clf.predict(test_feats) == np.asarray(test_labels)).mean())


def linear_evaluation(det, train, test, max_train: int | None = None, seed: int = 0) -> dict[str, float]:
    """Linear evaluation of ``det``'s frozen encoder on a labelled dataset, beside raw pixels.

    ``train``/``test`` are :class:`anomem.data.ImageSet`; ``max_train`` subsamples the
    probe's training images (seeded). Returns ``{"encoder": acc, "raw_pixels": acc}``.
    """
    from anomem.inputs import match_geometry

    idx = np.arange(len(train))
    if max_train is not None and max_train < idx.size:
        idx = np.sort(np.random.default_rng(seed).permutation(idx.size)[:max_train])
    xtr, ytr = train.images[torch.from_numpy(idx)], train.targets.numpy()[idx]
    xte, yte = test.images, test.targets.numpy()
    flat = lambda x: match_geometry(x, det.in_channels_, det.image_size_, "images").flatten(1).numpy()  # noqa: E731
    return {"encoder": linear_probe(det.embed(xtr), ytr, det.embed(xte), yte, seed),
            "raw_pixels": linear_probe(flat(xtr), ytr, flat(xte), yte, seed)}
