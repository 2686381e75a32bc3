"""Stage 2's score is linear: one standardisation, named parts, flat weights composed from
settings, one fuse (closed forms written out by hand)."""

from __future__ import annotations

import pytest
import torch

from anomem.stage2.scorer import fuse
from anomem.stage2.standard import EPS, Standard
from anomem.stage2.weights import Weights, check_setting, compose, part_names, split_of


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
    torch.testing.assert_close(one.mean, maps.mean())
    torch.testing.assert_close(one.std, maps.std(unbiased=False))
    assert float(Standard().fit(torch.full((7,), 3.0)).std) == pytest.approx(EPS)  # a constant signal: the floor, never 0
    assert float(Standard().fit(torch.tensor([2.0])).std) == 1.0  # one value: no spread to estimate
    m = Standard(2).fit_moments(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 8.0]))
    torch.testing.assert_close(m.std, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(Standard(2).identity()(v[:, :2]), v[:, :2])


SETTINGS = {"scales": [1.0, 2.0], "bank": 0.5, "pixel_global": 0.3, "pixel_local": 0.1, "contrast": 0.4,
            "map_pixel": 0.25, "image": [0.5, 0.2, 0.3], "map": [0.6, 0.1, 0.3]}
EVERY = {"memory.0", "memory.1", "bank.0", "bank.1", "pixel_global", "pixel_local", "feature_patches", "pixel_patches"}


def _parts(names, b: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, generator=g) for k in sorted(names)}


def test_fuse_is_a_weighted_sum_of_named_parts():
    p = _parts(["a", "b", "c"])
    torch.testing.assert_close(fuse(p, {"a": 2.0, "c": -1.0, "z": 5.0}), 2 * p["a"] - p["c"])  # b: weight 0; z: no part
    maps = {"map.x": torch.ones(2, 4, 4), "map.y": torch.full((2, 4, 4), 3.0)}
    torch.testing.assert_close(fuse(maps, {"map.x": 0.5, "map.y": 0.5}), torch.full((2, 4, 4), 2.0))


def test_composed_weights_are_the_nested_formula_multiplied_out():
    """The format-2 formula, written out: each scale (1 - w_b) m_s + w_b bank_s; Eq. 13;
    then (1 - w_pg - w_pl) g + w_pg pixel_global + w_pl pixel_local; then the image split."""
    p = _parts(EVERY)
    w = compose(SETTINGS, EVERY, 2, heads=False)
    per = [0.5 * p[f"memory.{s}"] + 0.5 * p[f"bank.{s}"] for s in range(2)]
    g = (per[0] + 2 * per[1]) / 3
    g = (1 - 0.3 - 0.1) * g + 0.3 * p["pixel_global"] + 0.1 * p["pixel_local"]
    torch.testing.assert_close(fuse(p, w), 0.5 * g + 0.2 * p["feature_patches"] + 0.3 * p["pixel_patches"])
    assert split_of(w) == pytest.approx([0.5, 0.2, 0.3])
    assert set(w) == set(part_names(2)) and w["heads.0"] == w["contrast"] == 0.0  # the switched-off terms: weight 0
    # the global terms add up to the image split's global weight (every part is a z-score)
    assert sum(v for k, v in w.items() if not k.startswith("map.") and "patches" not in k) == pytest.approx(0.5)


def test_the_heads_take_the_memorys_weight_and_the_contrast_the_global_pixel_weight():
    readable = EVERY | {"heads.0", "heads.1", "contrast"}
    p = _parts(readable)
    w = compose({**SETTINGS, "image": [1, 0, 0]}, readable, 2, heads=True)
    assert w["memory.0"] == w["memory.1"] == w["pixel_global"] == 0.0
    per = [0.5 * p[f"heads.{s}"] + 0.5 * p[f"bank.{s}"] for s in range(2)]
    g = (per[0] + 2 * per[1]) / 3
    torch.testing.assert_close(fuse(p, w), (1 - 0.4 - 0.1) * g + 0.4 * p["contrast"] + 0.1 * p["pixel_local"])
    # either weight 0: the global pixel score as without anomalies (none at all with pixel_global 0)
    w0 = compose({**SETTINGS, "image": [1, 0, 0], "contrast": 0.0}, readable, 2, heads=True)
    torch.testing.assert_close(fuse(p, w0), (1 - 0.3 - 0.1) * g + 0.3 * p["pixel_global"] + 0.1 * p["pixel_local"])
    w1 = compose({**SETTINGS, "image": [1, 0, 0], "pixel_global": 0.0}, readable, 2, heads=True)
    torch.testing.assert_close(fuse(p, w1), 0.9 * g + 0.1 * p["pixel_local"])


def test_parts_a_detector_cannot_read_get_weight_zero():
    p = _parts({"memory.0", "memory.1"})
    w = compose(SETTINGS, {"memory.0", "memory.1"}, 2, heads=False)
    torch.testing.assert_close(fuse(p, w), (p["memory.0"] + 2 * p["memory.1"]) / 3)  # Eq. 13 alone, whatever image says
    assert all(v == 0 for k, v in w.items() if not k.startswith(("memory.", "map.memory.")))
    only_pixel = compose(SETTINGS, EVERY - {"feature_patches"}, 2, heads=False)
    assert only_pixel["feature_patches"] == 0 and only_pixel["pixel_patches"] == pytest.approx(0.3)


def test_map_weights_are_the_documented_formula():
    g = torch.Generator().manual_seed(2)
    names = ["map.memory.0", "map.memory.1", "map.pixel_local", "map.pixel_patches"]
    m = {k: torch.randn(3, 8, 8, generator=g) for k in names}
    w = compose(SETTINGS, EVERY - {"feature_patches"}, 2, heads=False)
    memory = 0.75 * (m["map.memory.0"] + 2 * m["map.memory.1"]) / 3 + 0.25 * m["map.pixel_local"]
    torch.testing.assert_close(fuse(m, w), 0.6 * memory + 0.3 * m["map.pixel_patches"])
    assert split_of(w, "map.") == pytest.approx([0.7, 0.0, 0.3])  # no feature patches: their 0.1 is dropped


@pytest.mark.parametrize("name, value, message", [
    ("bank", 1.5, "one number in \\[0, 1\\]"),
    ("image", [0.5, 0.5, 0.5], "summing to 1"),
    ("map", [1, 0], "3 numbers"),
    ("scales", [1.0], "2 numbers"),
    ("scales", [0.0, 0.0], "positive sum"),
    ("scales", [float("inf"), 1.0], "finite"),
    ("contrast", float("nan"), "finite"),
    ("gamma", 1.0, "unknown weight"),
    ("image", "abc", "numbers"),
])
def test_bad_settings_are_refused_by_name(name, value, message):
    with pytest.raises(ValueError, match=message):
        check_setting(name, value, 2)


def test_huge_scale_weights_are_normalised_not_overflowed():
    """λ is normalised in float64 before it meets float32 parts: 3e38 twice is (0.5, 0.5)."""
    w = compose({**SETTINGS, "scales": [3e38, 3e38]}, {"memory.0", "memory.1"}, 2, heads=False)
    assert (w["memory.0"], w["memory.1"]) == (0.5, 0.5)


def test_the_weights_state_is_flat_and_checked():
    w = Weights(2)
    w.set({"memory.0": 0.25, "pixel_patches": 0.75})
    assert w.as_dict()["memory.0"] == 0.25 and w.as_dict()["pixel_patches"] == 0.75 and w.values.shape == (len(w.names),)
    for bad in ({"nope": 1.0}, {"memory.0": -1.0}, {"memory.0": float("inf")}, {"memory.0": True}):
        with pytest.raises(ValueError):
            w.set(bad)
    assert w.as_dict()["memory.0"] == 0.25  # a refused call changes nothing
