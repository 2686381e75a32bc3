"""The inference module (anomem.inference.AnoMemModel): one straight line from pixels to
named parts to the fused score and heat-map, the same for the estimator and the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.stage2.fusion import fuse, map_components, per_scale
from anomem.stage2.parts import Local, Signals

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def semi():
    """A small semi-supervised detector keeping every signal (a committed file)."""
    return AnoMem.load(FIXTURES / "v1-semi.ckpt")


@pytest.fixture(scope="module")
def probe():
    return torch.from_numpy(np.load(FIXTURES / "v1-probe.npy")).float() / 255


def test_forward_is_what_the_estimator_gives(semi, probe):
    model = semi.inference_model
    with torch.inference_mode():
        score, fused = model(probe[:8])
    np.testing.assert_allclose(score.numpy(), semi.anomaly_score(probe[:8]), atol=1e-6)
    np.testing.assert_allclose(fused.numpy(), semi.anomaly_maps(probe[:8]).fused, atol=1e-6)


def test_evidence_carries_named_signals_only_for_the_banks_read(semi, probe):
    model = semi.inference_model
    w = semi.weights_
    assert w["image"][1] == 0 and w["map"][1] == 0  # the feature patches are not weighed in this file
    with torch.inference_mode():
        ev = model.evidence(probe[:5])
        every = model.evidence(probe[:5], every=True)
    sig = ev.signals
    assert isinstance(sig, Signals) and isinstance(sig.pixel_local, Local) and sig.pixel_global.shape == (5,)
    assert sig.contrast is not None and sig.feature_patches is None and sig.pixel_patches.score.shape == (5,)
    assert every.signals.feature_patches is not None  # read when asked for (fitting the fusion)
    torch.testing.assert_close(every.signals.pixel_patches.score, sig.pixel_patches.score)


def test_parts_fuse_to_the_score_and_the_heads_take_the_memorys_place(semi, probe):
    model = semi.inference_model
    assert model.use_heads
    with torch.inference_mode():
        ev = model.evidence(probe[:6])
        parts = model.scorer.parts(ev, use_heads=True)
        memory_only = model.scorer.parts(ev, use_heads=False)
        w = model.scorer.weights.get()
        torch.testing.assert_close(model.merged_score(ev), fuse(parts, w))
        torch.testing.assert_close(model.scale_scores(ev), per_scale(parts, w))
        assert parts.heads is not None and memory_only.heads is None and memory_only.contrast is None
        torch.testing.assert_close(parts.memory, memory_only.memory)
        maps, comp = model.heatmap_parts(ev)
        fused = model.heatmaps(ev).fused
    assert comp.shape == (6, 3, *probe.shape[-2:]) and maps.shape[1] == 2
    torch.testing.assert_close(fused, (comp * w.map[None, :, None, None]).sum(1))
    torch.testing.assert_close(comp, map_components(model.scorer.map_parts(ev, model.image_size, model.map_sigma)[1], w))


def test_one_class_mode_reads_the_memory(semi, probe):
    from anomem.inference import AnoMemModel

    model = semi.inference_model
    one = AnoMemModel(model.net, model.scorer, model.image_size, model.map_sigma, "one-class").eval()
    assert not one.use_heads
    with torch.inference_mode():
        ev = one.evidence(probe[:4])
        torch.testing.assert_close(one.merged_score(ev), fuse(one.scorer.parts(ev, False), one.scorer.weights.get()))
