"""The fit of the image split (anomem.fit.fusion) on folders where one part dominates:
the fit must pick that part (issue 26: the fusion picked the wrong signal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.data.photos import photo_category

SINGLE = {"global": (1.0, 0.0, 0.0), "feature_patches": (0.0, 1.0, 0.0), "pixel_patches": (0.0, 0.0, 1.0)}


def _u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def texture():
    """A texture (48-px crops of a brick wall): rotations and flips leave it a texture, so
    the shifts are dropped and the local pseudo-defects decide; raw-pixel patches see them."""
    sp = photo_category("brick", size=48, n_train=80, n_test_normal=4, per_kind=2, kinds=("stain",), seed=0)
    return AnoMem("tiny", progress=False, epochs=2, heads__steps=10, prototype_cache=0,
                  calibration_fraction=0.15).fit(_u8(sp.train))


def test_on_a_texture_the_fit_picks_the_pixel_patches(texture):
    fit = texture.fusion_
    assert fit is not None and "defects" in fit.families
    d = fit.families.index("defects")
    single = {name: fit.table[w][d] for name, w in SINGLE.items() if w in fit.table}
    # the folder is one where a part dominates: the pixel patches, by a margin on the defects
    others = max(v for k, v in single.items() if k != "pixel_patches")
    assert single["pixel_patches"] >= others + 0.05, single
    split = texture.settings_["image"]
    assert split[2] == max(split) and split[2] >= 0.5, split  # the fit picks that part
    assert texture.weights_["pixel_patches"] == pytest.approx(split[2])


def test_no_family_ranks_the_image_split_once_stage_1_learned_the_defects_locally():
    from dataclasses import replace

    from anomem import load_config
    from anomem.config import resolve_local_recipe
    from anomem.fit.fusion import FusionFit, choose, learned_locally, unranked

    table = {(1.0, 0.0, 0.0): (0.70, 0.999), (0.5, 0.5, 0.0): (0.98, 0.999), (0.0, 0.0, 1.0): (0.99, 0.999)}
    # every candidate ties on the shifts: the defects decide (0.99) unless they are left out,
    # and then the tie goes to the larger global weight
    assert choose(table, ("defects", "shifts")) == (0.0, 0.0, 1.0)
    assert choose(table, ("defects", "shifts"), ("shifts",)) == (1.0, 0.0, 0.0)
    # no family left: even over the signals the candidates use (a missing bank gets nothing)
    assert choose(table, ("defects",), ()) == unranked(table) == (1 / 3, 1 / 3, 1 / 3)
    assert unranked({(1.0, 0.0, 0.0): (0.5,), (0.5, 0.0, 0.5): (0.6,), (0.0, 0.0, 1.0): (0.7,)}) == (0.5, 0.0, 0.5)
    # even in units of each signal's spread: a signal spread ten times wider weighs a tenth
    assert unranked(table, (10.0, 1.0, 1.0)) == pytest.approx((1 / 21, 10 / 21, 10 / 21))
    assert choose(table, ("defects",), (), (2.0, 1.0, 1.0)) == pytest.approx((0.2, 0.4, 0.4))
    assert unranked({(1.0, 0.0, 0.0): (0.5,), (0.0, 0.0, 1.0): (0.7,)}, (4.0, 1e-6, 1.0)) == pytest.approx((0.2, 0.0, 0.8))

    cfg = load_config("cpu-small")
    kinds = cfg.pseudo.defects
    assert not learned_locally(cfg, kinds)  # the defaults: no local negatives, no local hinge
    recipe = resolve_local_recipe(replace(cfg, pseudo=replace(cfg.pseudo, local_recipe="always")), (128, 128))
    assert learned_locally(recipe, kinds)
    assert not learned_locally(recipe, ("smooth",))  # a fusion kind stage 1 never drew still ranks
    hinge_only = replace(cfg, loss=replace(cfg.loss, local_weight=1.0))
    assert not learned_locally(hinge_only, kinds)  # no local negatives: nothing local was learned
    # the record says which families ranked; files written before it read as "all of them"
    fit = FusionFit((1 / 3, 1 / 3, 1 / 3), ("defects",), {(1.0, 0.0, 0.0): (0.9,)}, 40, ranked=())
    assert FusionFit.from_json(fit.to_json()).ranked == ()
    old = fit.to_json().replace(', "ranked": []', "")
    assert '"ranked"' not in old and FusionFit.from_json(old).ranked is None


def test_with_local_negatives_and_the_hinge_the_fit_splits_evenly_in_held_out_units():
    from anomem.fit.fusion import FusionFit

    sp = photo_category("brick", size=48, n_train=60, n_test_normal=2, per_kind=1, kinds=("stain",), seed=0, n_val=12)
    det = AnoMem("tiny", progress=False, epochs=1, heads__steps=5, prototype_cache=0,
                 pseudo__local=0.5, loss__local_weight=1.0).fit(_u8(sp.train), validation=_u8(sp.validation))
    fit = det.fusion_
    assert fit.ranked == () and "defects" in fit.families and fit.normals == 12
    # each term's spread: its population standard deviation on the validation normals
    val = _u8(sp.validation)
    terms = [det.anomaly_score(val, weights={"image": w}) for w in SINGLE.values()]
    assert fit.spreads == pytest.approx([float(np.std(t)) for t in terms], rel=1e-3)
    # the patch banks' statistics were set on these normals (spread 1); the global score's on
    # the training normals, which stage 1 and the banks have seen: other units
    assert fit.spreads[1:] == pytest.approx([1.0, 1.0], abs=1e-4) and abs(fit.spreads[0] - 1) > 0.1
    # even in those units: weight ∝ 1 / spread, so every weighted term moves those normals' scores alike
    split = det.settings_["image"]
    inv = [1 / s for s in fit.spreads]
    assert split == pytest.approx([v / sum(inv) for v in inv])
    assert np.std(split[0] * terms[0]) == pytest.approx(np.std(split[1] * terms[1]), rel=1e-3) \
        == pytest.approx(np.std(split[2] * terms[2]), rel=1e-3)
    np.testing.assert_allclose(det.anomaly_score(val), sum(w * t for w, t in zip(split, terms)), atol=1e-4)
    assert FusionFit.from_json(fit.to_json()).spreads == pytest.approx(fit.spreads)
    assert det.fusion_.map_table is not None  # the heat-map split is still fitted on the defects' masks
