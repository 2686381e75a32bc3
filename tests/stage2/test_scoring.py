"""Stage 2 as named signals: one standardisation, named parts, one fusion (closed forms)."""

from __future__ import annotations

import pytest
import torch

from anomem.stage2.fusion import (
    FusionWeights,
    Weights,
    check_weight,
    fuse,
    fuse_maps,
    image_components,
    merge_scales,
    per_scale,
)
from anomem.stage2.parts import MapParts, ScoreParts
from anomem.stage2.standard import EPS, Standard


def test_standard_per_scale_and_per_signal():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, 3, generator=g) * torch.tensor([1.0, 10.0, 100.0]) + 5
    s = Standard(3).fit(v)
    torch.testing.assert_close(s.mean, v.mean(0))
    torch.testing.assert_close(s.std, v.std(0, unbiased=False))
    z = s(v)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    maps = torch.randn(4, 3, 5, 5, generator=g)
    torch.testing.assert_close(s(maps), (maps - s.mean[:, None, None]) / s.std[:, None, None])  # per scale, per position
    one = Standard().fit(maps)
    torch.testing.assert_close(one.mean, maps.mean()) and torch.testing.assert_close(one.std, maps.std(unbiased=False))
    assert float(Standard().fit(torch.full((7,), 3.0)).std) == pytest.approx(EPS)  # a constant signal: the floor, never 0
    assert float(Standard().fit(torch.tensor([2.0])).std) == 1.0  # one value: no spread to estimate
    m = Standard(2).fit_moments(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 8.0]))
    torch.testing.assert_close(m.std, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(Standard(2).identity()(v[:, :2]), v[:, :2])


def _weights(**kw) -> Weights:
    w = FusionWeights(2)
    w.set(scales=[1.0, 2.0], bank=0.5, pixel_global=0.3, pixel_local=0.1, contrast=0.4, map_pixel=0.25,
          image=[0.5, 0.2, 0.3], map=[0.6, 0.1, 0.3])
    return w.merged_with(kw)


def _parts(b: int = 6, **kw) -> ScoreParts:
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return ScoreParts(memory=r(b, 2), heads=None, bank=r(b, 2), pixel_global=r(b), pixel_local=r(b), contrast=None,
                      feature_patches=r(b), pixel_patches=r(b))._replace(**kw)


def test_fuse_is_the_documented_formula():
    p, w = _parts(), _weights()
    per = 0.5 * p.memory + 0.5 * p.bank
    g = (per[:, 0] + 2 * per[:, 1]) / 3
    g = (1 - 0.3 - 0.1) * g + 0.3 * p.pixel_global + 0.1 * p.pixel_local
    want = 0.5 * g + 0.2 * p.feature_patches + 0.3 * p.pixel_patches
    torch.testing.assert_close(fuse(p, w), want)
    torch.testing.assert_close(per_scale(p, w), per)
    torch.testing.assert_close(image_components(p, w), torch.stack([g, p.feature_patches, p.pixel_patches], 1))


def test_heads_replace_the_memory_and_the_contrast_the_global_pixel_score():
    p = _parts()
    heads, contrast = torch.randn(6, 2), torch.randn(6)
    sup = p._replace(heads=heads, contrast=contrast)
    w = _weights(image=[1, 0, 0])
    per = 0.5 * heads + 0.5 * p.bank
    g = (per[:, 0] + 2 * per[:, 1]) / 3
    torch.testing.assert_close(fuse(sup, w), (1 - 0.4 - 0.1) * g + 0.4 * contrast + 0.1 * p.pixel_local)
    # either weight 0: the global pixel score as without anomalies (none at all with pixel_global 0)
    torch.testing.assert_close(fuse(sup, _weights(image=[1, 0, 0], contrast=0.0)),
                               (1 - 0.3 - 0.1) * g + 0.3 * p.pixel_global + 0.1 * p.pixel_local)
    torch.testing.assert_close(fuse(sup, _weights(image=[1, 0, 0], pixel_global=0.0)), 0.9 * g + 0.1 * p.pixel_local)


def test_missing_parts_drop_out():
    p = _parts(bank=None, pixel_global=None, pixel_local=None, feature_patches=None, pixel_patches=None)
    w = _weights()
    torch.testing.assert_close(fuse(p, w), merge_scales(p.memory, w.scales))  # Eq. 13 alone, whatever w.image says
    only_pixel = _parts(feature_patches=None)
    comp = image_components(only_pixel, w)
    assert torch.equal(comp[:, 1], torch.zeros(6))


def test_fuse_maps_is_the_documented_formula():
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    m = MapParts(memory=r(3, 2, 8, 8), pixel_local=r(3, 8, 8), feature_patches=None, pixel_patches=r(3, 8, 8))
    w = _weights()
    memory = (m.memory[:, 0] + 2 * m.memory[:, 1]) / 3
    memory = 0.75 * memory + 0.25 * m.pixel_local
    torch.testing.assert_close(fuse_maps(m, w), 0.6 * memory + 0.3 * m.pixel_patches)


@pytest.mark.parametrize("name, value, message", [
    ("bank", 1.5, "one number in \\[0, 1\\]"),
    ("image", [0.5, 0.5, 0.5], "summing to 1"),
    ("map", [1, 0], "3 numbers"),
    ("scales", [1.0], "2 numbers"),
    ("scales", [0.0, 0.0], "positive sum"),
    ("contrast", float("nan"), "finite"),
    ("gamma", 1.0, "unknown fusion weight"),
    ("image", "abc", "numbers"),
])
def test_bad_weights_are_refused_by_name(name, value, message):
    with pytest.raises(ValueError, match=message):
        check_weight(name, value, 2)


def test_weights_for_one_call_leave_the_fitted_ones_unchanged():
    w = FusionWeights(2)
    w.set(image=[0, 0, 1])
    other = w.merged_with({"image": [1, 0, 0], "bank": 0.2})
    assert other.image.tolist() == [1, 0, 0] and float(other.bank) == pytest.approx(0.2)
    assert w.image.tolist() == [0, 0, 1] and float(w.bank) == 0.0
    assert w.describe()["image"] == [0, 0, 1] and w.describe()["scales"] == [1.0, 2.0]
