"""The pixel bank's contrast score: kNN distance to the normals minus kNN distance to the
labelled anomalies, on raw pixels (docs/decisions.md, Decision 9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from anomem import AnoMem, load_config
from anomem.fit.stage2 import cached_scores, calibration_bank
from anomem.stage2.pixel_bank import Contrast, PixelBank

from synthetic import stripes


def eq13(scores: torch.Tensor, lam: list[float]) -> torch.Tensor:
    """Eq. 13 written out, the reference: Σ_s λ_s s_s / Σ_s λ_s over dimension 1."""
    lam_t = torch.tensor(lam, dtype=scores.dtype)
    return (scores * lam_t).sum(1) / lam_t.sum()


def _knn(q: np.ndarray, ref: np.ndarray, k: int, loo: bool = False) -> np.ndarray:
    d, _ = NearestNeighbors(n_neighbors=k + int(loo)).fit(ref).kneighbors(q)
    return d[:, int(loo):].mean(1)


def test_contrast_is_the_standardised_knn_difference():
    g = torch.Generator().manual_seed(0)
    normals, anomalies = torch.rand(30, 1, 8, 8, generator=g), torch.rand(7, 1, 8, 8, generator=g) * 0.5
    q = torch.rand(5, 1, 8, 8, generator=g)
    p, c = PixelBank(side=32, k=2, local_k=4, sigma=0.0), Contrast(k=2)
    p.fit(normals)
    assert not c.ready_for(p)
    c.fit(p, p.features(anomalies))
    n, a, x = (t.flatten(1).numpy() for t in (normals, anomalies, q))
    on_normals = _knn(n, n, 2, loo=True) - _knn(n, a, 2)
    want = (_knn(x, n, 2) - _knn(x, a, 2) - on_normals.mean()) / on_normals.std()
    feats = p.features(q)
    np.testing.assert_allclose(c(p.signals(feats).global_distance, feats).numpy(), want, atol=1e-4)
    assert float(c.z.mean) == pytest.approx(on_normals.mean(), abs=1e-4)
    with pytest.raises(ValueError, match="anomaly pixel vectors have 16 values"):
        c.fit(p, torch.rand(3, 16))
    c.fit(p, torch.zeros(0, 64))
    assert not c.ready_for(p)


@pytest.fixture(scope="module")
def semi():
    # the global score alone (no fitted fusion with the patch banks): the formula under test
    cfg = load_config("tiny", overrides=["train.epochs=1", "train.batch_size=32", "heads.steps=10",
                                         "scorer.prototype_cache=0", "patches.fit_fusion=false"])
    det = AnoMem(cfg, progress=False).fit(stripes(80, False, seed=0), anomalies=stripes(8, True, seed=1))
    return det


def test_heads_score_uses_the_contrast_in_place_of_the_global_pixel_score(semi):
    s = semi.scorer_
    assert bool(s.heads.trained) and s.contrast.anomalies.shape == (8, 16 * 16) and semi.settings_["contrast"] == 0.5
    x = torch.cat([stripes(6, False, seed=2), stripes(6, True, seed=3)])
    merged = eq13(torch.from_numpy(semi.score_per_scale(x)), semi.settings_["scales"])
    feats = s.pixels.features(x.float() / 255)
    raw, glob, _ = s.pixels.scores(feats)
    contrast = s.contrast(raw.global_distance, feats)
    np.testing.assert_allclose(semi.anomaly_score(x), (0.5 * merged + 0.5 * contrast).numpy(), atol=1e-5)
    # contrast off: the distance to the normals, with the pixel weight, as without anomalies
    w = semi.settings_["pixel_global"]
    np.testing.assert_allclose(semi.anomaly_score(x, weights={"contrast": 0.0}), ((1 - w) * merged + w * glob).numpy(),
                               atol=1e-5)
    # no global pixel evidence: no contrast either
    np.testing.assert_allclose(semi.anomaly_score(x, weights={"pixel_global": 0.0}), merged.numpy(), atol=1e-5)
    load_config("tiny", overrides=["weights.pixel_global=0", "weights.pixel_local=0.8"])  # the defects setting
    with pytest.raises(Exception, match="weights.contrast must lie in"):
        load_config("tiny", overrides=["weights.pixel_local=0.6"])


def test_refit_adds_anomalies_to_the_pixel_bank_and_the_threshold_follows(semi, tmp_path):
    semi.save(tmp_path / "m.ckpt")
    det = AnoMem.load(tmp_path / "m.ckpt")
    assert torch.equal(det.scorer_.contrast.anomalies, semi.scorer_.contrast.anomalies)
    probe = stripes(10, False, seed=4)
    det.refit_scorer(stripes(4, True, seed=5))
    assert det.scorer_.contrast.anomalies.shape[0] == 12  # 8 kept + 4 new
    # held-out scores come from stored pixel vectors, so they follow the new anomaly bank
    bank = calibration_bank(det.model_, probe, cap=100, seed=0)
    np.testing.assert_allclose(np.sort(cached_scores(det.model_, bank)), np.sort(det.anomaly_score(probe)), atol=1e-5)
    cal = det.calibration_bank_
    assert cal.pixel_features is not None and cal.pixel_features.shape == (cal.raw.shape[0], 16 * 16)
    held_out = cached_scores(det.model_, cal)
    assert det.threshold_.fpr == pytest.approx(float((held_out > det.threshold_.value).mean()))
    det.refit_scorer(stripes(3, True, seed=6), keep_previous=False)
    assert det.scorer_.contrast.anomalies.shape[0] == 3
