"""Thresholds: the rules on scores, and the detector's calibration split, predict,
normalised scores, persistence, refit and the `anomem threshold` command."""

import csv
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anomem import AnoMem, load_config
from anomem.calibration import calibration_count
from anomem.cli import main
from anomem.errors import ConfigError, DataError, NotFittedError
from anomem.fit.stage2 import cached_scores
from anomem.thresholds import (
    Threshold,
    threshold_at_fpr,
    threshold_at_recall,
    threshold_max_f1,
)

from synthetic import stripes

CFG = load_config("tiny", None, ["train.epochs=3", "train.batch_size=64", "heads.steps=40", "threshold.calibration_fraction=0.2"])
N_TRAIN = 160


# -- rules on scores ------------------------------------------------------------------
def test_fpr_threshold_exact_count():
    s = np.random.default_rng(0).normal(size=1000)
    t = threshold_at_fpr(s, 0.01)
    assert (s > t.value).sum() == 10 and t.fpr == 0.01 and t.method == "fpr" and t.n_normal == 1000
    assert threshold_at_fpr(s, 0.0).value == s.max()
    with pytest.raises(ConfigError, match="FPR"):
        threshold_at_fpr(s, 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=40), st.floats(0, 0.99))
def test_fpr_threshold_never_exceeds_target(values, fpr):
    s = np.array(values, float)  # many ties
    t = threshold_at_fpr(s, fpr)
    assert (s > t.value).mean() <= fpr + 1e-12
    assert t.value in s  # a normal score: any lower would flag more of them


def test_f1_threshold_hand_case_and_brute_force():
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    y = np.array([0, 0, 1, 1, 1])
    t = threshold_max_f1(s, y)
    assert t.value == 0.2 and t.recall == 1.0 and t.fpr == 0.0
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + 1.2 * y, 1)
    t = threshold_max_f1(s, y)

    def f1(th):
        p = s > th
        return 2 * (p & y).sum() / (p.sum() + y.sum())

    best = max(f1(c) for c in np.r_[np.unique(s), s.min() - 1])
    assert f1(t.value) == pytest.approx(best)


def test_recall_threshold():
    s = np.array([0.0, 0.55, 0.7, 0.5, 0.6, 0.9, 1.0])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    t = threshold_at_recall(s, y, 0.75)  # 3 of 4 anomalies: just below 0.6
    assert t.recall == 0.75 and 0.55 < t.value < 0.6 and t.fpr == pytest.approx(1 / 3)
    assert threshold_at_recall(s, y, 1.0).recall == 1.0
    with pytest.raises(DataError, match="both normal and anomalous"):
        threshold_at_recall(s, np.ones(7), 0.9)


def test_normalize_is_logistic_centred_on_threshold():
    t = Threshold(value=2.0, method="manual", scale=0.5)
    raw = np.array([-1e6, 1.0, 2.0, 2.5, 1e6])
    p = t.normalize(raw)
    assert p[2] == 0.5 and np.all(np.diff(p) > 0) or np.all(np.diff(p) >= 0)
    assert p[3] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert np.all((p >= 0) & (p <= 1)) and np.isfinite(p).all()
    assert np.array_equal(t.predict(raw), (p > 0.5).astype(int))
    assert Threshold.from_json(t.to_json()) == t
    with pytest.raises(ConfigError, match="method"):
        Threshold(value=1.0, method="guess", scale=1.0)
    with pytest.raises(ConfigError, match="scale"):
        Threshold(value=1.0, method="manual", scale=0.0)


# -- the detector ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    normals = stripes(N_TRAIN, vertical=False, seed=0)
    seen = {}

    def grab(det, trainer, log):
        seen["train_images"] = trainer.images[trainer.normal].clone()  # the normals (pseudo-anomalies join them)

    det = AnoMem(CFG, progress=False).fit(normals, on_epoch_end=grab)
    return det, normals, seen["train_images"]


def test_held_out_normals_not_used_for_training(fitted):
    det, normals, train_images = fitted
    # 0.2 x 160 = 32 normals cannot resolve 1 % (500 needed): the share grows to threshold.calibration_max_fraction
    m = calibration_count(N_TRAIN, CFG.threshold)
    assert m == int(CFG.threshold.calibration_max_fraction * N_TRAIN) == 40
    assert train_images.shape[0] == N_TRAIN - m
    in_train = (normals[:, None] == train_images[None]).flatten(2).all(2).any(1)  # (N,)
    held_out = normals[~in_train]
    assert held_out.shape[0] == m
    # the calibration bank holds exactly the held-out images' scores
    bank = np.sort(cached_scores(det.model_, det.calibration_bank_))
    np.testing.assert_allclose(bank, np.sort(det.anomaly_score(held_out)), rtol=1e-5)
    t = det.threshold_
    # the default 1 % needs 500: raised to the smallest FPR 40 held-out normals estimate, 5 / 40
    assert t.method == "fpr" and t.target == 0.125 and t.n_normal == m and t.note == ""
    assert (det.anomaly_score(held_out) > t.value).mean() <= t.target


def test_predict_and_normalized_scores(fitted):
    det, _, _ = fitted
    test = torch.cat([stripes(40, False, seed=1), stripes(40, True, seed=2)])
    raw = det.anomaly_score(test)
    norm = det.anomaly_score(test, normalized=True)
    pred = det.predict(test)
    assert pred.dtype == np.int64 and set(np.unique(pred)) <= {0, 1}
    assert np.array_equal(pred, (raw > det.threshold_.value).astype(int))
    assert np.array_equal(pred, (norm > 0.5).astype(int))
    assert np.all((norm > 0) & (norm < 1))
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(norm, kind="stable"))


def test_calibrate_on_given_normals_hits_target(fitted):
    det, _, _ = fitted
    before = det.threshold_
    fresh = stripes(100, False, seed=7)
    det.calibrate_threshold(fresh, fpr=0.1)
    try:
        assert det.predict(fresh).mean() == pytest.approx(0.1, abs=0.011)  # exact unless ties
        assert det.threshold_.target == 0.1 and det.threshold_.n_normal == 100
        det.calibrate_threshold(fresh, stripes(30, True, seed=8), method="recall", recall=0.9)
        assert det.predict(stripes(30, True, seed=8)).mean() >= 0.9
        det.calibrate_threshold(fresh, stripes(30, True, seed=8))  # labels -> F1 by default
        assert det.threshold_.method == "f1"
        det.set_threshold(1.25)
        assert det.threshold_.value == 1.25 and det.threshold_.method == "manual" and det.threshold_.scale > 0
        with pytest.raises(ConfigError, match="normals only"):
            det.calibrate_threshold(fresh, stripes(3, True), method="fpr")
        with pytest.raises(ConfigError, match="needs labelled anomalies"):
            det.calibrate_threshold(fresh, method="f1")
    finally:
        det.threshold_ = before


def test_threshold_saved_and_refit_recalibrates(fitted, tmp_path):
    det, normals, _ = fitted
    det.save(tmp_path / "m.ckpt")
    loaded = AnoMem.load(tmp_path / "m.ckpt")
    assert loaded.threshold_ == det.threshold_
    test = stripes(20, True, seed=3)
    np.testing.assert_array_equal(loaded.predict(test), det.predict(test))
    loaded.calibrate_threshold(fpr=0.05)  # from the stored held-out normals, no data needed
    assert loaded.threshold_.target == 0.05
    old = loaded.threshold_
    loaded.refit_scorer(stripes(12, True, seed=4))
    new = loaded.threshold_
    assert loaded.is_supervised and new.method == "fpr" and new.target == 0.05 and new.value != old.value
    assert new.value == threshold_at_fpr(cached_scores(loaded.model_, loaded.calibration_bank_), 0.05).value


def test_no_calibration_split(tmp_path):
    cfg = load_config("tiny", None, ["train.epochs=1", "train.batch_size=32", "threshold.calibration_fraction=0"])
    det = AnoMem(cfg, progress=False).fit(stripes(40, False, seed=0))
    assert det.threshold_ is None and det.calibration_bank_ is None
    with pytest.raises(NotFittedError, match="threshold"):
        det.predict(stripes(2, False))
    with pytest.raises(NotFittedError, match="threshold"):
        det.anomaly_score(stripes(2, False), normalized=True)
    with pytest.raises(DataError, match="held-out"):
        det.calibrate_threshold()
    det.set_threshold(0.0)  # no held-out normals: the largest spread of the weighted unit-spread parts
    image_weights = sum(v for k, v in det.weights_.items() if not k.startswith("map."))
    assert det.threshold_.scale == pytest.approx(image_weights) and det.predict(stripes(3, False)).shape == (3,)


# -- the command ----------------------------------------------------------------------
def _write(dirpath, imgs, prefix):
    dirpath.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im[0].numpy(), mode="L").save(dirpath / f"{prefix}{i:03d}.png")


def test_threshold_command(fitted, tmp_path, capsys):
    det, _, _ = fitted
    ckpt = tmp_path / "m.ckpt"
    det.save(ckpt)
    out = tmp_path / "t.ckpt"
    assert main(["threshold", str(ckpt), "--fpr", "0.2", "--out", str(out)]) == 0
    assert AnoMem.load(out).threshold_.target == 0.2
    _write(tmp_path / "lab" / "normal", stripes(20, False, seed=11), "n")
    _write(tmp_path / "lab" / "anomaly", stripes(10, True, seed=12), "a")
    assert main(["threshold", str(ckpt), "--labelled", str(tmp_path / "lab"), "--out", str(out)]) == 0
    assert AnoMem.load(out).threshold_.method == "f1"
    assert main(["threshold", str(ckpt), "--value", "0.5", "--out", str(out)]) == 0
    assert AnoMem.load(out).threshold_.value == 0.5
    # score reports the prediction with the score
    capsys.readouterr()
    assert main(["score", str(out), str(tmp_path / "lab" / "anomaly")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 10 and all(r["is_anomaly"] == str(int(float(r["score"]) > 0.5)) for r in rows)
    assert all(float(r["threshold"]) == 0.5 for r in rows)
    # mistakes: one line, exit 2
    assert main(["threshold", str(ckpt), "--value", "1", "--normals", str(tmp_path)]) == 2
    assert main(["threshold", str(ckpt), "--labelled", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("anomem: error:") for e in err)
