"""Nearest-prototype explanations against an independent computation."""

import numpy as np
import pytest
import torch

from anomem import AnoMem, load_config
from anomem.errors import DataError
from anomem.explain import build_prototype_cache, explain_position, nearest_prototypes, patch_box

from synthetic import stripes

# No held-out split, so the cache scans exactly the first 48 training normals.
CFG = load_config("tiny", None, ["train.epochs=2", "train.batch_size=64", "heads.steps=20",
                                 "scorer.prototype_cache=48", "threshold.calibration_fraction=0"])


@pytest.fixture(scope="module")
def fitted():
    normals = stripes(80, vertical=False, seed=0)
    return AnoMem(CFG, progress=False).fit(normals), normals


def _recalled(det, x):
    """argmax of the association weights through the memory module's own forward."""
    out = []
    with torch.no_grad():
        for fmap, mem in zip(det.net_.eval().features(x.float() / 255), det.net_.memories):
            b, c, h, w = fmap.shape
            r = mem(fmap.permute(0, 2, 3, 1).reshape(-1, c))  # (B·h·w, K) weights
            out.append(r.weights.argmax(1).reshape(b, h, w).numpy())
    return out


def test_nearest_prototypes_are_the_recalled_patterns(fitted):
    det, _ = fitted
    x = torch.cat([stripes(3, False, seed=1), stripes(3, True, seed=2)])
    maps = nearest_prototypes(det, x, batch_size=4)
    expected = _recalled(det, x)
    assert len(maps.pattern) == 2
    for s, k in enumerate(CFG.memory.sizes):
        assert maps.pattern[s].shape == expected[s].shape
        np.testing.assert_array_equal(maps.pattern[s], expected[s])
        assert maps.pattern[s].min() >= 0 and maps.pattern[s].max() < k
        assert np.all((maps.weight[s] >= 1.0 / k - 1e-6) & (maps.weight[s] <= 1.0))


def test_cache_holds_the_closest_training_patch(fitted):
    det, normals = fitted
    cache = det.prototype_cache_
    scanned = normals[:48]
    assert len(cache.patches) == 2
    # An independent search over every position of the scanned training images.
    with torch.no_grad():
        for s, (fmap, mem) in enumerate(zip(det.net_.eval().features(scanned.float() / 255), det.net_.memories)):
            n, c, h, w = fmap.shape
            sim = mem.project(fmap.permute(0, 2, 3, 1).reshape(-1, c)) @ mem.stored_patterns().T  # (n·h·w, K)
            np.testing.assert_allclose(cache.similarity[s].numpy(), sim.max(0).values.numpy(), rtol=1e-5, atol=1e-6)
            for k in range(0, sim.shape[1], 5):
                img, i, j = cache.source[s][k].tolist()
                y0, x0, y1, x1 = patch_box(i, j, (h, w), (16, 16))
                assert torch.equal(cache.patches[s][k], scanned[img, :, y0:y1, x0:x1])
    # the same function, called directly, gives the same cache
    again = build_prototype_cache(det.net_, scanned, det.device_, batch_size=16)
    for a, b in zip(again.patches, cache.patches):
        assert torch.equal(a, b)


def test_explain_position_and_persistence(fitted, tmp_path):
    det, _ = fitted
    img = stripes(1, True, seed=3)[0]  # (1, 16, 16)
    out = explain_position(det, img, 9, 4)
    assert [e.scale for e in out] == [0, 1]
    recalled = _recalled(det, img[None])
    for e in out:
        i, j = e.position
        assert e.pattern == recalled[e.scale][0, i, j]
        y0, x0, y1, x1 = e.box
        assert y0 <= 9 < y1 and x0 <= 4 < x1  # the patch covers the asked pixel
        assert e.deviation > 0 and e.patch.shape == (1, y1 - y0, x1 - x0)
        assert np.array_equal(e.patch, det.prototype_cache_.patches[e.scale][e.pattern].numpy())
    det.save(tmp_path / "m.ckpt")
    loaded = AnoMem.load(tmp_path / "m.ckpt")
    assert [e.pattern for e in explain_position(loaded, img, 9, 4)] == [e.pattern for e in out]
    assert explain_position(loaded, img, 9, 4)[1].patch is not None
    with pytest.raises(DataError, match="outside"):
        explain_position(det, img, 16, 0)


def test_cache_can_be_turned_off():
    cfg = load_config("tiny", None, ["train.epochs=1", "train.batch_size=32", "scorer.prototype_cache=0"])
    det = AnoMem(cfg, progress=False).fit(stripes(40, False, seed=0))
    assert det.prototype_cache_ is None
    e = explain_position(det, stripes(1, False, seed=1)[0], 0, 0)[0]
    assert e.patch is None and e.patch_similarity is None and e.pattern >= 0
