"""The name -> baseline registry and the scikit-learn style parameter API."""

from __future__ import annotations

import pytest

from anomem.baselines import (
    BASELINES,
    DeepSAD,
    RawPixelIsolationForest,
    RawPixelKNN,
    RawPixelOCSVM,
    RawPixelPatchKNN,
    make_baseline,
)
from anomem.errors import ConfigError


def test_names_and_classes() -> None:
    assert BASELINES == ("ocsvm", "iforest", "knn", "patch-knn", "deepsad")
    classes = [RawPixelOCSVM, RawPixelIsolationForest, RawPixelKNN, RawPixelPatchKNN, DeepSAD]
    for name, cls in zip(BASELINES, classes, strict=True):
        assert type(make_baseline(name)) is cls
    assert type(make_baseline(" KNN ")) is RawPixelKNN


def test_defaults() -> None:
    assert make_baseline("ocsvm").get_params() == {
        "nu": 0.1,
        "gamma": "scale",
        "random_state": None,
    }
    assert make_baseline("iforest").n_estimators == 100
    assert make_baseline("knn").n_neighbors == 2
    d = make_baseline("deepsad")
    assert (d.eta, d.lr, d.weight_decay, d.pretrain_epochs) == (1.0, 1e-4, 5e-7, 0)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown baseline 'svdd'.*ocsvm, iforest, knn, patch-knn, deepsad"):
        make_baseline("svdd")
    with pytest.raises(ConfigError, match="unknown baseline"):
        make_baseline(None)  # type: ignore[arg-type]


def test_kwargs_are_forwarded_and_checked() -> None:
    assert make_baseline("knn", n_neighbors=5, random_state=3).get_params()["n_neighbors"] == 5
    with pytest.raises(ConfigError, match="takes no argument 'k'.*n_neighbors"):
        make_baseline("knn", k=5)


def test_set_params() -> None:
    est = make_baseline("iforest")
    assert est.set_params(n_estimators=7) is est and est.n_estimators == 7
    with pytest.raises(ConfigError, match="no parameter 'trees'"):
        est.set_params(trees=3)
    assert repr(est).startswith("RawPixelIsolationForest(n_estimators=7")
