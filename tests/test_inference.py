"""The inference module (anomem.inference.AnoMemModel): one straight line from pixels to a
reading, named parts and the fused score and heat-map, the same for the estimator and the
export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomem import AnoMem

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def semi():
    """A small semi-supervised detector keeping every signal, both patch banks weighted
    (a committed format-2 file, migrated at load)."""
    return AnoMem.load(FIXTURES / "v2-semi.ckpt")


@pytest.fixture(scope="module")
def probe():
    return torch.from_numpy(np.load(FIXTURES / "v1-probe.npy")).float() / 255


def test_forward_is_what_the_estimator_gives(semi, probe):
    model = semi.inference_model
    with torch.inference_mode():
        score, fused = model(probe[:8])
    np.testing.assert_allclose(score.numpy(), semi.anomaly_score(probe[:8]), atol=1e-6)
    np.testing.assert_allclose(fused.numpy(), semi.anomaly_maps(probe[:8]).fused, atol=1e-6)


def test_a_reading_computes_only_the_input_signals_the_weights_read(semi, probe):
    model = semi.inference_model
    with torch.inference_mode():
        r = model.read(probe[:5])
        none = model.read(probe[:5], need=set())
        only = model.read(probe[:5], need={"pixel_patches"})
    assert set(r.inputs) == {"pixel_global", "pixel_local", "contrast", "feature_patches", "pixel_patches"}
    assert none.inputs == {} and none.maps == {} and none.net.local_features is None
    assert set(only.inputs) == {"pixel_patches"} and only.net.local_features is None  # no encoder descriptors read
    torch.testing.assert_close(only.inputs["pixel_patches"], r.inputs["pixel_patches"])


def test_the_score_is_the_weighted_sum_of_the_named_parts(semi, probe):
    """Each part's contribution computed on its own, by hand, adds up to the score and map."""
    model = semi.inference_model
    assert model.use_heads
    w = semi.weights_
    with torch.inference_mode():
        r = model.read(probe[:6])
        parts = model.scorer.parts(r)
        score = model.score(r)
        _, maps = model.scorer.map_parts(r, model.image_size, model.map_sigma)
        fused = model.heatmaps(r).fused
    by_hand = torch.zeros(6)
    for name, value in parts.items():
        by_hand += w[name] * value
    torch.testing.assert_close(score, by_hand)
    # the heads read each scale, the memory's weight is 0, the contrast took pixel_global's place
    assert w["heads.0"] > 0 and w["memory.0"] == 0 and w["contrast"] > 0 and w["pixel_global"] == 0
    map_by_hand = sum(w[name] * value for name, value in maps.items())
    torch.testing.assert_close(fused, map_by_hand)
    assert set(maps) == {"map.memory.0", "map.memory.1", "map.pixel_local", "map.feature_patches", "map.pixel_patches"}


def test_one_class_mode_reads_the_memory(semi, probe):
    """Mode one-class on a detector with trained heads: the same parts, the memory weighted."""
    det = AnoMem.load(FIXTURES / "v2-semi.ckpt")
    det.config_ = det.config_.__class__.from_dict({**det.config_.to_dict(), "scorer": {
        **det.config_.to_dict()["scorer"], "mode": "one-class"}})
    det.model_ = det.new_model(det.net_, det.scorer_)
    assert not det.model_.use_heads
    one = det.fusion_weights({"image": det.settings_["image"]})  # recomposed for what one-class reads
    assert one["heads.0"] == 0 and one["memory.0"] > 0 and one["contrast"] == 0 and one["pixel_global"] > 0
    with torch.inference_mode():
        r = det.model_.read(probe[:4], need=det.model_.need(one))
        parts = det.scorer_.parts(r)
    want = sum(one[k] * v for k, v in parts.items())
    np.testing.assert_allclose(det.anomaly_score(probe[:4], weights={"image": det.settings_["image"]}), want.numpy(),
                               atol=1e-6)
