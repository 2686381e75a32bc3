"""Conformance battery: every baseline, and AnoMem itself, honours one estimator contract.

In the spirit of scikit-learn's ``check_estimator``: each check runs for every name in
``BASELINES`` (so a newly registered baseline is tested automatically) and for
``"anomem"`` (:class:`anomem.AnoMem` with a tiny, fast config). The contract:

* ``__init__`` only stores its arguments; ``get_params()`` returns them and
  ``type(est)(**est.get_params())`` rebuilds the same estimator (so
  ``sklearn.base.clone`` works); a seed parameter (``random_state``, AnoMem's ``seed``)
  makes fits reproducible.
* ``fit(X, y=None)`` returns ``self``; ``y`` is passed by keyword here because AnoMem's
  second positional argument is ``anomalies`` (labelled anomaly images).
* ``anomaly_score(X)`` returns a **float64** array (N,), finite, higher = more
  anomalous, per sample (a sub-batch scores the same) and never changes the estimator.
  AnoMem computes in float32 and returns float64, as the baselines and PyOD do.
* The same pixels in any accepted layout or dtype give the same scores, to float
  rounding (rtol 1e-5), whether they are scored by one fitted model or used to fit.
* Bad input raises :class:`~anomem.errors.DataError` naming the problem; the wording of
  the label and channel messages differs between AnoMem and the baselines, so those
  checks accept either (``MESSAGES``).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomem import AnoMem
from anomem.baselines import BASELINES, BaseDetector, make_baseline
from anomem.errors import AnoMemError, DataError, NotFittedError

NAMES = (*BASELINES, "anomem")

# Small, fast settings per baseline (only speed knobs; the algorithm is unchanged).
FAST: dict[str, dict[str, Any]] = {
    "ocsvm": {},
    "iforest": {"n_estimators": 25},
    "knn": {},
    "patch-knn": {"max_patches": 2000},
    "deepsad": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    # both spellings of a config override; no held-out normals (40 cannot resolve a 1 % FPR)
    "anomem": {"config": "tiny", "progress": False, "epochs": 1, "train__batch_size": 16, "heads__steps": 5,
               "prototype_cache": 0, "calibration_fraction": 0.0, "device": "cpu"},
}
# Settings for the AUROC floor: defaults, except short Deep SAD and AnoMem runs on CPU.
FLOOR: dict[str, dict[str, Any]] = {
    "ocsvm": {},
    "iforest": {},
    "knn": {},
    "patch-knn": {},
    "deepsad": {"epochs": 10, "batch_size": 16, "device": "cpu"},
    "anomem": {**FAST["anomem"], "epochs": 3},
}
SEED = {"anomem": "seed"}  # the seed parameter's name where it is not ``random_state``
MESSAGES = {  # (baselines | AnoMem) wording of the same error
    "channels": r"fitted on \(3, 32, 32\)",  # AnoMem converts instead
    "label values": r"only 1 .normal. and 0|must be 0 \(anomaly\) or 1 \(normal\)",
    "no normal": r"no image as normal|at least 2 normal images, got 0",
}

pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def make(name: str, **kw: Any) -> BaseDetector | AnoMem:
    if name == "anomem":
        return AnoMem(**{"seed": kw.pop("random_state", 0), **FAST[name], **kw})
    return make_baseline(name, **{"random_state": 0, **FAST[name], **kw})


@pytest.fixture
def train(make_blobs) -> np.ndarray:
    return make_blobs(40, seed=10)


@pytest.fixture
def test_x(make_blobs, make_stripes) -> np.ndarray:
    return np.concatenate([make_blobs(12, seed=11), make_stripes(12, seed=12)])


def test_every_registered_name_has_fast_settings() -> None:
    assert set(FAST) == set(NAMES) == set(FLOOR)


@pytest.mark.parametrize("name", NAMES)
def test_init_only_stores_arguments(name: str) -> None:
    est = make(name)
    fitted = [k for k in vars(est) if k.endswith("_") and not k.startswith("__")]
    assert fitted == [], f"{name}: __init__ set learned attributes {fitted}"
    params = est.get_params()
    assert set(vars(est)) == set(params), "every attribute set by __init__ is a parameter"
    assert params[SEED.get(name, "random_state")] == 0
    for key, value in FAST[name].items():
        assert params[key] == value
    assert type(est)(**params).get_params() == params


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_sets_learned_state(name: str, train: np.ndarray) -> None:
    est = make(name)
    assert est.fit(train) is est
    assert est.input_shape_ == (1, 28, 28)
    assert any(k.endswith("_") and k != "input_shape_" for k in vars(est))


@pytest.mark.parametrize("name", NAMES)
def test_scoring_before_fit_raises(name: str, train: np.ndarray) -> None:
    with pytest.raises(NotFittedError, match="not fitted.*fit"):
        make(name).anomaly_score(train)


@pytest.mark.parametrize("name", NAMES)
def test_scoring_does_not_mutate(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    est = make(name).fit(train)
    before = pickle.dumps(est)
    train_before, test_before = train.copy(), test_x.copy()
    s1 = est.anomaly_score(test_x)
    s2 = est.anomaly_score(test_x[:5])
    assert pickle.dumps(est) == before, f"{name}: anomaly_score changed the estimator"
    np.testing.assert_array_equal(train, train_before)
    np.testing.assert_array_equal(test_x, test_before)
    # scoring is per-sample: a sub-batch gets the same scores (no batch statistics). float32
    # convolutions pick their kernels by batch size, so the last digits may differ (1.8e-5
    # relative on one CPU); a batch statistic would move the scores by orders more.
    np.testing.assert_allclose(s2, s1[:5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_float_input_is_not_modified(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    xf = torch.from_numpy(train.astype(np.float32) / 255)
    kept = xf.clone()
    est = make(name).fit(xf)
    est.anomaly_score(xf)
    assert torch.equal(xf, kept)


@pytest.mark.parametrize("name", NAMES)
def test_same_random_state_same_scores(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    a = make(name).fit(train).anomaly_score(test_x)
    b = make(name).fit(train).anomaly_score(test_x)
    np.testing.assert_array_equal(a, b)


def test_random_state_matters_for_randomised_baselines(train, test_x) -> None:
    for name in ("iforest", "deepsad", "anomem"):
        a = make(name, random_state=0).fit(train).anomaly_score(test_x)
        b = make(name, random_state=1).fit(train).anomaly_score(test_x)
        assert not np.array_equal(a, b), name


@pytest.mark.parametrize("name", NAMES)
def test_input_layouts_and_dtypes_agree(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    ref = make(name).fit(train).anomaly_score(test_x)
    variants = {
        "uint8 (N,H,W)": (train[:, 0], test_x[:, 0]),
        "float32 (N,C,H,W)": (train.astype(np.float32) / 255, test_x.astype(np.float32) / 255),
        "float64 (N,H,W)": (train[:, 0] / 255.0, test_x[:, 0] / 255.0),
        "torch uint8": (torch.from_numpy(train), torch.from_numpy(test_x)),
        "torch float (N,H,W)": (
            torch.from_numpy(train[:, 0]).float() / 255,
            torch.from_numpy(test_x[:, 0]).float() / 255,
        ),
    }
    fitted = make(name).fit(train)
    for label, (tr, te) in variants.items():
        # one fitted model scores every layout of the same pixels alike
        np.testing.assert_allclose(fitted.anomaly_score(te), ref, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {label}")
        got = make(name).fit(tr).anomaly_score(te)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=f"{name}: fit on {label}")
    # a model fitted on (N,C,H,W) scores (N,H,W) input too, and vice versa
    np.testing.assert_allclose(
        make(name).fit(train[:, 0]).anomaly_score(test_x), ref, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_output_is_finite_float_vector(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    s = make(name).fit(train).anomaly_score(test_x)
    assert isinstance(s, np.ndarray)
    assert s.shape == (len(test_x),)
    assert s.dtype == np.float64
    assert np.isfinite(s).all()
    assert np.ptp(s) > 0, "scores must not be constant"


@pytest.mark.parametrize("name", NAMES)
def test_three_channel_images(name: str, make_blobs, make_stripes) -> None:
    tr = make_blobs(16, seed=3, size=32, channels=3)
    te = np.concatenate(
        [make_blobs(4, seed=4, size=32, channels=3), make_stripes(4, size=32, channels=3)]
    )
    est = make(name).fit(tr)
    assert est.input_shape_ == (3, 32, 32)
    s = est.anomaly_score(te)
    assert s.shape == (8,) and np.isfinite(s).all()
    if name == "anomem":  # converted grey -> RGB, as the README says (tests/test_conversions.py)
        np.testing.assert_array_equal(est.anomaly_score(te[:, :1]), est.anomaly_score(np.repeat(te[:, :1], 3, axis=1)))
        return
    with pytest.raises(DataError, match=MESSAGES["channels"]):
        est.anomaly_score(te[:, :1])


@pytest.mark.parametrize("name", NAMES)
def test_nan_input_raises(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    bad = train.astype(np.float32) / 255
    bad[3, 0, 5, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        make(name).fit(bad)
    est = make(name).fit(train)
    bad_test = test_x.astype(np.float64) / 255
    bad_test[0, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match="NaN or infinite"):
        est.anomaly_score(bad_test)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x: x.astype(np.float32), r"scaled to \[0, 1\].*divide by 255"),  # float 0..255
        (lambda x: x.transpose(0, 2, 3, 1).repeat(3, axis=3), "channels-last"),
        (lambda x: x[:, 0, 0], r"shape \(N, H, W\) or \(N, C, H, W\)"),
        (lambda x: x[:0], "no images"),
        (lambda x: x.astype(bool), "dtype bool"),
        (lambda x: x.astype(np.int32) + 300, r"0\.\.255"),
    ],
)
def test_bad_images_raise_data_error(name: str, train: np.ndarray, bad, match: str) -> None:
    with pytest.raises(DataError, match=match):
        make(name).fit(bad(train))


@pytest.mark.parametrize("name", NAMES)
def test_bad_labels_raise_data_error(name: str, train: np.ndarray) -> None:
    n = len(train)
    for y, match in [
        (np.ones(n - 1), r"shape \(40,\)"),
        (np.full(n, 2), MESSAGES["label values"]),
        (np.zeros(n), MESSAGES["no normal"]),
        (np.ones((n, 1)), r"shape \(40,\)"),
    ]:
        with pytest.raises(DataError, match=match):
            make(name).fit(train, y=y)
    # errors derive from the package base class (the CLI turns them into one line)
    with pytest.raises(AnoMemError):
        make(name).fit(train, y=np.full(n, -1))


@pytest.mark.parametrize("name", NAMES)
def test_all_ones_labels_equal_no_labels(name: str, train: np.ndarray, test_x: np.ndarray) -> None:
    a = make(name).fit(train).anomaly_score(test_x)
    b = make(name).fit(train, y=torch.ones(len(train), dtype=torch.int64)).anomaly_score(test_x)
    c = make(name).fit(train, y=np.ones(len(train), dtype=bool)).anomaly_score(test_x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_auroc_floor_on_generated_data(name: str, make_blobs, make_stripes, make_checkers) -> None:
    tr = make_blobs(64, seed=20)
    normal, anomalies = (
        make_blobs(32, seed=21),
        np.concatenate([make_stripes(16, seed=22), make_checkers(16, seed=23)]),
    )
    est = (AnoMem(seed=0, **FLOOR[name]) if name == "anomem" else make_baseline(name, random_state=0, **FLOOR[name])).fit(tr)
    scores = est.anomaly_score(np.concatenate([normal, anomalies]))
    auroc = roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalies))], scores)
    assert auroc > 0.9, f"{name}: AUROC {auroc:.3f}"
