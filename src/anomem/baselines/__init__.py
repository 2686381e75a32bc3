"""Baseline anomaly detectors with one scikit-learn/PyOD-style estimator contract.

Every detector: ``__init__`` stores its arguments; ``fit(X, y=None)`` returns ``self``
(X: images (N, H, W) or (N, C, H, W), uint8 or float in [0, 1]; y: 1 = normal,
0 = labelled anomaly); ``anomaly_score(X)`` returns a float64 array (N,), higher = more
anomalous. See :mod:`anomem.baselines.base` for the full contract.

* :class:`RawPixelOCSVM` — one-class SVM (RBF) on raw pixels.
* :class:`RawPixelIsolationForest` — Isolation Forest on raw pixels.
* :class:`RawPixelKNN` — mean distance to the k nearest training normals.
* :class:`RawPixelPatchKNN` — nearest-neighbour distance of raw-pixel patches (local defects; random or coreset bank, max or top-k mean).
* :class:`DeepSAD` — Deep SAD (Ruff et al., ICLR 2020), uses labelled anomalies.

:func:`make_baseline` builds one by name (:data:`BASELINES`).
"""

from anomem.baselines.base import BaseDetector
from anomem.baselines.deep_sad import DeepSAD
from anomem.baselines.raw_pixel import (
    RawPixelIsolationForest,
    RawPixelKNN,
    RawPixelOCSVM,
    RawPixelPatchKNN,
    aggregate_patch_distances,
    greedy_k_centre,
)
from anomem.baselines.registry import BASELINES, make_baseline

__all__ = [
    "BASELINES",
    "BaseDetector",
    "DeepSAD",
    "RawPixelIsolationForest",
    "RawPixelKNN",
    "RawPixelOCSVM",
    "RawPixelPatchKNN",
    "aggregate_patch_distances",
    "greedy_k_centre",
    "make_baseline",
]
