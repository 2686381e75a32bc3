"""Thresholds that hold: the resolution check, PyOD's contamination rule, the warning when
most normals are flagged, the calibration share, and the provenance a threshold keeps."""

import json
import warnings

import numpy as np
import pytest
import torch

from anomem import AnoMem, load_config
from anomem.calibration import calibration_count, calibration_fraction_for, fit_target_fpr
from anomem.config import ThresholdConfig
from anomem.errors import ConfigError
from anomem.fit.stage2 import cached_scores
from anomem.splits import calibration_split
from anomem.thresholds import (
    Threshold,
    ThresholdWarning,
    normals_needed,
    threshold_at_contamination,
    threshold_at_fpr,
    threshold_max_f1,
)

from synthetic import stripes

FAST = ["train.epochs=1", "train.batch_size=32", "heads.steps=5", "scorer.prototype_cache=0"]


def _no_threshold_warning(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThresholdWarning)
        return fn(*args, **kw)


# -- rules ------------------------------------------------------------------------------
def test_normals_needed_for_five_false_positives():
    assert normals_needed(0.01) == 500 and normals_needed(0.1) == 50 and normals_needed(0.0) == 0
    assert normals_needed(0.99) == 500  # symmetric: 5 normals must stay below the threshold
    assert normals_needed(1e-300) == 10**15  # capped, no overflow


def test_fpr_threshold_on_too_few_normals_warns_with_the_resolution():
    s = np.random.default_rng(0).normal(size=80)
    with pytest.warns(ThresholdWarning, match=r"not estimable from 80 normals.*1/80 = 0\.0125.*\(500 normals\)"):
        t = threshold_at_fpr(s, 0.01, source="held-out normals")
    assert t.value == s.max() and t.fpr == 0.0 and t.resolution == pytest.approx(0.0125)
    assert "not estimable" in t.note and t.source == "held-out normals"
    t = _no_threshold_warning(threshold_at_fpr, np.random.default_rng(1).normal(size=500), 0.01)
    assert t.note == "" and (t.fpr or 0) <= 0.01
    _no_threshold_warning(threshold_at_fpr, s, 0.0)  # the largest score: nothing to estimate


def test_contamination_is_pyod_quantile():
    s = np.random.default_rng(2).normal(size=1000)
    t = _no_threshold_warning(threshold_at_contamination, s, 0.05, source="training normals")
    assert t.value == pytest.approx(np.percentile(s, 95)) and t.method == "contamination" and t.target == 0.05
    assert t.fpr == pytest.approx(0.05, abs=0.002) and t.n_normal == 1000
    assert np.array_equal(t.predict(s), (s > np.percentile(s, 95)).astype(int))
    with pytest.warns(ThresholdWarning, match="not estimable from 20 normals"):
        threshold_at_contamination(s[:20], 0.05)
    for bad in (0.0, 0.6, -0.1, True, "0.1"):
        with pytest.raises(ConfigError, match="contamination must lie in"):
            threshold_at_contamination(s, bad)


def test_f1_threshold_flagging_most_normals_warns():
    rng = np.random.default_rng(3)
    s = rng.normal(size=300)  # the same distribution for both classes: F1 flags everything
    y = np.r_[np.zeros(100), np.ones(200)]
    with pytest.warns(ThresholdWarning, match=r"F1 threshold flags 9\d\.\d% of the 100 normals \(FPR 0\.9"):
        t = threshold_max_f1(s, y)
    assert t.fpr > 0.5 and "consider method='fpr'" in t.note and "WARNING" in str(t)
    s_sep = np.r_[rng.normal(size=100), rng.normal(5, 1, size=200)]
    assert _no_threshold_warning(threshold_max_f1, s_sep, y).fpr < 0.1


def test_provenance_in_str_json_and_old_files():
    s = np.random.default_rng(4).normal(size=600)
    t = threshold_at_fpr(s, 0.01, source="held-out normals")
    text = str(t)
    for part in ("target FPR 0.01 on 600 held-out normals", "FPR 0.0100", "resolution 0.00167"):
        assert part in text, text
    assert "source='held-out normals'" in repr(t)
    assert Threshold.from_json(t.to_json()) == t
    # a checkpoint from before provenance: no source / note keys
    old = {k: v for k, v in json.loads(t.to_json()).items() if k not in ("source", "note")}
    back = Threshold.from_json(json.dumps(old))
    assert back.source == "" and back.note == "" and back.value == t.value
    assert "on 600 normals" in str(back)


# -- how many normals are held out -----------------------------------------------------
@pytest.mark.parametrize("n, overrides, expected", [
    (800, {}, 200),  # 80 would resolve 1 % in steps of 1/80: grown to 25 %
    (6000, {}, 600),  # 10 % is already 500+: unchanged
    (3000, {}, 500),  # grown just to 500
    (800, {"calibration_max_fraction": 0.0}, 80),  # growth off
    (800, {"contamination": 0.1}, 80),  # 50 normals resolve 10 %
    (800, {"calibration_fraction": 0.0}, 0),  # hold-out off
    (5, {}, 1),
    (3, {"calibration_fraction": 0.9}, 1),  # 2 always stay for training
])
def test_calibration_count(n, overrides, expected):
    threshold = ThresholdConfig(**overrides)
    assert calibration_count(n, threshold) == expected
    got = calibration_split(torch.ones(n, dtype=torch.bool), calibration_fraction_for(n, threshold), 0)
    assert got.numel() == expected


def test_split_of_large_data_sets_is_unchanged():
    threshold = ThresholdConfig()
    assert calibration_fraction_for(6000, threshold) == threshold.calibration_fraction


# -- the detector ----------------------------------------------------------------------
def test_fit_on_a_small_folder_raises_the_default_target_and_records_why(tmp_path):
    cfg = load_config("tiny", None, FAST)
    det = _no_threshold_warning(AnoMem(cfg, progress=False).fit, stripes(60, False, seed=0))
    t = det.threshold_
    assert t.method == "fpr" and t.source == "held-out normals" and t.n_normal == 15 and t.note == ""
    assert t.target == 0.334 and normals_needed(t.target) <= 15  # 5 / 15, rounded up: estimable
    assert "chosen: the smallest FPR 15 normals can estimate (the default 0.01 needs 500" in str(t)
    det.save(tmp_path / "m.ckpt")
    assert AnoMem.load(tmp_path / "m.ckpt").threshold_ == t
    det.refit_scorer(stripes(6, True, seed=1))  # re-derived at the same target, with its reason
    assert det.threshold_.target == 0.334 and det.threshold_.target_reason == t.target_reason
    with pytest.warns(ThresholdWarning, match=r"not estimable from 15 normals: their resolution is 1/15"):
        det.calibrate_threshold(fpr=0.01)  # asked for: kept, with the warning
    assert det.threshold_.target == 0.01 and det.threshold_.target_reason == ""


def test_an_asked_target_is_kept_and_warns_with_what_to_do():
    cfg = load_config("tiny", None, [*FAST, "threshold.target_fpr=0.05"])
    with pytest.warns(ThresholdWarning, match=r"not estimable from 15 normals.*give 100 normals, or a target of "
                                              r"at least 0\.334"):
        det = AnoMem(cfg, progress=False).fit(stripes(60, False, seed=0))
    assert det.threshold_.target == 0.05 and "not estimable" in det.threshold_.note


def test_fit_target_fpr_rule():
    assert fit_target_fpr(None, 0.01, 600) == (0.01, "")  # estimable: unchanged
    assert fit_target_fpr(None, 0.01, 50).fpr == 0.1 and fit_target_fpr(None, 0.01, 30).fpr == 0.167
    assert "the smallest FPR 30 normals can estimate" in fit_target_fpr(None, 0.01, 30).reason
    assert fit_target_fpr(0.01, 0.01, 50) == (0.01, "")  # asked
    assert fit_target_fpr(None, 0.02, 50) == (0.02, "")  # configured
    assert fit_target_fpr(None, 0.01, 9) == (0.01, "")  # nothing below 0.5 is estimable from 9
    for n in range(10, 600, 7):
        assert normals_needed(fit_target_fpr(None, 0.01, n).fpr) <= n


def test_contamination_from_held_out_and_from_training_normals():
    cfg = load_config("tiny", None, [*FAST, "threshold.contamination=0.2"])
    det = _no_threshold_warning(AnoMem(cfg, progress=False).fit, stripes(200, False, seed=0))
    t = det.threshold_
    held = cached_scores(det.model_, det.calibration_bank_)
    assert t.method == "contamination" and t.source == "held-out normals" and t.n_normal == held.size == 25  # 20 grown to 5 / 0.2
    assert t.value == pytest.approx(float(np.quantile(held, 0.8)))
    det.refit_scorer(stripes(8, True, seed=1))  # new heads: the same rule, re-derived
    assert det.threshold_.method == "contamination" and det.threshold_.target == 0.2
    det.calibrate_threshold(contamination=0.1)
    assert det.threshold_.method == "contamination" and det.threshold_.target == 0.1
    with pytest.raises(ConfigError, match="contamination applies"):
        det.calibrate_threshold(method="fpr", contamination=0.1)
    # no held-out normals: PyOD's habit, the training normals' scores, with a warning
    cfg = load_config("tiny", None, [*FAST, "threshold.contamination=0.1", "threshold.calibration_fraction=0"])
    train = stripes(40, False, seed=2)
    with pytest.warns(ThresholdWarning, match="training normals score lower"):
        det = AnoMem(cfg, progress=False).fit(train)
    t = det.threshold_
    assert t.source == "training normals" and t.n_normal == 40 and "score lower" in t.note
    assert t.value == pytest.approx(float(np.quantile(det.anomaly_score(train), 0.9)), rel=1e-5)
    assert det.predict(train).mean() == pytest.approx(0.1, abs=0.03)


def test_warnings_point_at_the_callers_line():
    cfg = load_config("tiny", None, [*FAST, "threshold.target_fpr=0.05"])
    with pytest.warns(ThresholdWarning) as record:
        AnoMem(cfg, progress=False).fit(stripes(60, False, seed=0))
    assert record[0].filename == __file__  # the user's fit() line, not the library's
    with pytest.warns(ThresholdWarning) as record:
        threshold_at_fpr(np.arange(10.0), 0.01)
    assert record[0].filename == __file__
