"""Python API habits from scikit-learn and PyOD: constructor overrides, get/set_params and
clone, repr, decision_function / predict / predict_proba."""

import numpy as np
import pytest
from sklearn.base import clone

from anomem import AnoMem, load_config
from anomem.errors import ConfigError, NotFittedError
from anomem.params import config_key

from synthetic import stripes

FAST = {"progress": False, "epochs": 1, "train__batch_size": 32, "heads__steps": 5, "prototype_cache": 0}


@pytest.fixture(scope="module")
def fitted():
    return AnoMem("tiny", contamination=0.2, **FAST).fit(stripes(200, False, seed=0))


def test_overrides_by_short_nested_and_dotted_keys():
    det = AnoMem("tiny", epochs=3, heads__steps=7, **{"memory.beta": 4.0})
    assert det.get_params() == {"config": "tiny", "progress": True, "epochs": 3, "heads__steps": 7, "memory.beta": 4.0}
    cfg = det._resolve_config()
    assert (cfg.train.epochs, cfg.heads.steps, cfg.memory.beta, cfg.preset) == (3, 7, 4.0, "tiny")
    assert cfg.train.batch_size == load_config("tiny").train.batch_size  # the rest is the preset's
    base = load_config("tiny", None, ["train.lr=0.1"])
    assert AnoMem(base, sizes=(8, 4))._resolve_config().memory.sizes == (8, 4)  # on top of a config object
    assert config_key("contamination") == "threshold.contamination" and config_key("train__seed") == "train.seed"


@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 8}, r"'batch_size' is ambiguous: write train__batch_size or heads__batch_size"),
    ({"epoch": 3}, r"unknown parameter 'epoch'.*did you mean 'epochs'"),
    ({"train__epoch": 3}, r"no config key 'train.epoch'.*did you mean 'train__epochs'"),
    ({"preset": "tiny"}, "unknown parameter 'preset'"),
    ({"epochs": 3, "train__epochs": 4}, "both set train.epochs"),
])
def test_bad_override_names_fail_at_once(kw, match):
    with pytest.raises(ConfigError, match=match):
        AnoMem("tiny", **kw)


def test_override_values_are_checked_at_fit():
    det = AnoMem("tiny", epochs=0)  # __init__ stores; fit validates
    with pytest.raises(ConfigError, match="train.epochs must be >= 1"):
        det.fit(stripes(8, False))
    with pytest.raises(ConfigError, match="config value must be"):
        AnoMem("tiny", epochs=object()).fit(stripes(8, False))
    assert AnoMem("tiny", epochs=np.int64(2))._resolve_config().train.epochs == 2


def test_set_params_and_sklearn_clone(fitted):
    det = AnoMem("tiny", epochs=2, progress=False)
    assert det.set_params(train__epochs=5, config="cpu-small") is det
    assert det.get_params() == {"config": "cpu-small", "progress": False, "train__epochs": 5}  # epochs replaced
    with pytest.raises(ConfigError, match="unknown parameter"):
        det.set_params(epoch=1)
    twin = clone(fitted)
    assert type(twin) is AnoMem and twin.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        twin.anomaly_score(stripes(2, False))
    assert twin._resolve_config() == fitted.config_


def test_repr(fitted):
    assert repr(AnoMem("tiny", epochs=3)) == "AnoMem(config='tiny', epochs=3)"
    assert repr(AnoMem(load_config("tiny"))) == "AnoMem(config=AnoMemConfig(preset='tiny', ...))"
    text = repr(fitted)
    assert text.startswith("AnoMem(config='tiny', progress=False, contamination=0.2, epochs=1, ")
    assert "fitted on 1x16x16 images, one-class scores, threshold" in text
    assert "contamination 0.2: the 0.8 quantile of 25 held-out normals" in text


def test_pyod_scoring_names(fitted):
    x = np.concatenate([stripes(30, False, seed=1), stripes(30, True, seed=2)])
    s = fitted.decision_function(x)
    assert s.dtype == np.float64 and s.shape == (60,)
    np.testing.assert_array_equal(s, fitted.anomaly_score(x))
    pred = fitted.predict(x)
    np.testing.assert_array_equal(pred, (s > fitted.threshold_.value).astype(np.int64))
    proba = fitted.predict_proba(x)
    assert proba.shape == (60, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(proba.argmax(1), pred)  # column 1 = anomaly, > 0.5 exactly when predicted
    assert pred[30:].mean() > pred[:30].mean()  # the vertical stripes are flagged more
    assert fitted.input_shape_ == (1, 16, 16)
