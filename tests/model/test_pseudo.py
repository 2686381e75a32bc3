"""Pseudo-anomalies (anomem.model.pseudo), the normal bank and how both enter the detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem, load_config
from anomem.calibration import calibration_count
from anomem.errors import ConfigError
from anomem.metrics import inverted_warning
from anomem.model.pseudo import (
    DEFECTS,
    SHIFTS,
    cutpaste,
    gain,
    graft,
    make_pseudo_anomalies,
    noise_patch,
    scar,
    shift,
    smooth,
    twin_defects,
)
from anomem.stage2.feature_bank import FeatureBank, bank_distances


def eq13(scores: torch.Tensor, lam: list[float]) -> torch.Tensor:
    """Eq. 13 written out, the reference: Σ_s λ_s s_s / Σ_s λ_s over dimension 1."""
    lam_t = torch.tensor(lam, dtype=scores.dtype)
    return (scores * lam_t).sum(1) / lam_t.sum()


def _images(n=32, c=1, h=16, w=16, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_shifts_match_numpy():
    x = _images(4, 2, 8, 8)
    a = x.numpy()
    assert np.array_equal(shift(x, "rot90").numpy(), np.rot90(a, 1, axes=(2, 3)))
    assert np.array_equal(shift(x, "rot270").numpy(), np.rot90(a, 3, axes=(2, 3)))
    assert np.array_equal(shift(x, "vflip").numpy(), a[:, :, ::-1])
    assert np.array_equal(shift(x, "hflip").numpy(), a[:, :, :, ::-1])
    p = shift(x, "permute").numpy()
    assert np.array_equal(p[..., :4, :4], a[..., 4:, 4:]) and np.array_equal(p[..., :4, 4:], a[..., 4:, :4])
    with pytest.raises(ValueError, match="square"):
        shift(torch.zeros(1, 1, 4, 6), "rot90")


# the blob kinds fade in over a soft ~2-px edge, which the mean over their mask counts
@pytest.mark.parametrize(("fn", "floor"), [(cutpaste, 0.15), (scar, 0.15), (noise_patch, 0.15), (smooth, 0.08),
                                          (gain, 0.08), (graft, 0.08)])
def test_defects_change_pixels_only_inside_their_mask(fn, floor):
    x = _images(64)
    out, mask = fn(x, (0.15, 0.3), torch.Generator().manual_seed(3))
    assert out.shape == x.shape and mask.shape == (64, 1, 16, 16) and mask.dtype == torch.bool
    assert torch.equal(out[~mask.expand_as(x)], x[~mask.expand_as(x)])
    area = mask.float().mean((1, 2, 3))
    assert (area > 0).all() and (area < 0.5).all()
    changed = ((out - x).abs() * mask).sum() / mask.sum()
    assert changed > floor  # a visible change on average over the defect pixels


def test_twin_defects_draw_the_same_defect_on_both_views():
    a = _images(24)
    b = (a * 0.8 + 0.1).flip(3)  # another "view": other pixels, same images
    out_a, out_b, mask = twin_defects(a, b, ("cutpaste", "noise", "scar"), (0.15, 0.3), torch.Generator().manual_seed(5))
    assert mask.shape == (24, 1, 16, 16) and bool(mask.flatten(1).any(1).all())
    outside = ~mask.expand_as(a)
    assert torch.equal(out_a[outside], a[outside]) and torch.equal(out_b[outside], b[outside])
    assert ((out_b - b).abs() * mask).flatten(1).sum(1).gt(0).all()  # b changed where a's mask says
    # on identical views the twins are identical: same kind, place, shape and draws
    same_a, same_b, same_mask = twin_defects(a, a.clone(), ("cutpaste", "noise", "scar"), (0.15, 0.3),
                                             torch.Generator().manual_seed(5))
    assert torch.equal(same_a, same_b) and torch.equal(same_mask, mask)
    every = twin_defects(a, a.clone(), DEFECTS, (0.15, 0.3), torch.Generator().manual_seed(6))
    assert torch.equal(every[0], every[1]) and bool(every[2].flatten(1).any(1).all())
    with pytest.raises(ValueError, match="unknown defect"):
        twin_defects(a, b, ("blot",), (0.1, 0.2), torch.Generator())


def test_cutpaste_pastes_a_region_of_another_image():
    x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 1, 12, 12) / 4  # flat images 0, .25, .5, .75
    out, mask = cutpaste(x, (0.2, 0.4), torch.Generator().manual_seed(0))
    for i in range(4):
        inside = out[i][mask[i]]
        assert inside.unique().numel() == 1 and inside[0] != x[i, 0, 0, 0]  # one other flat image's value


def test_blobs_are_irregular_discs_of_the_asked_size():
    from anomem.model.pseudo import _blob

    soft, mask = _blob(400, 64, 64, (0.2, 0.2), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert soft.shape == mask.shape == (400, 1, 64, 64) and torch.equal(mask, soft > 0)
    assert float(soft.min()) == 0.0 and float(soft.max()) == 1.0
    area = (soft > 0.5).float().sum((1, 2, 3))
    box = (0.2 * 64) ** 2  # a box of side 0.2 x 64: the blob's area on average, give or take its wobble
    assert 0.7 * box < float(area.mean()) < 1.3 * box and float(area.std()) > 0.05 * box  # not all one disc
    ys, xs = mask[:, 0].nonzero(as_tuple=True)[1:]
    assert ys.min() >= 0 and xs.max() <= 63


def test_smooth_keeps_the_mean_and_removes_the_detail():
    x = torch.rand(16, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    out, mask = smooth(x, (0.3, 0.4), torch.Generator().manual_seed(0))
    m = mask.expand_as(x)
    assert abs(float(out[m].mean() - x[m].mean())) < 0.02  # the colours stay
    assert float(out[m].std()) < 0.6 * float(x[m].std())  # the detail does not


def test_gain_rescales_the_contrast_about_the_blob_mean():
    from anomem.model.pseudo import _blob

    x = 0.4 + 0.2 * torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    out, _ = gain(x, (0.3, 0.4), torch.Generator().manual_seed(1))
    soft, _ = _blob(64, 32, 32, (0.3, 0.4), torch.Generator().manual_seed(1), x.device)  # gain's first draw
    core = soft == 1  # fully changed, inside the soft edge
    ratio = torch.stack([(out[i][core[i]] - out[i][core[i]].mean()).std() / (x[i][core[i]] - x[i][core[i]].mean()).std()
                         for i in range(64)])
    assert bool(((ratio < 0.8) | (ratio > 1.2)).all())  # every blob's texture fainter or stronger


def test_graft_blends_in_another_image_turned():
    x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 1, 24, 24) / 4  # flat images 0, .25, .5, .75
    out, mask = graft(x, (0.3, 0.4), torch.Generator().manual_seed(0))
    for i in range(4):  # inside, between the image's own level and another image's: never beyond both
        inside = out[i][mask[i]]
        assert bool((inside != x[i, 0, 0, 0]).any())
        others = x[torch.arange(4) != i, 0, 0, 0]
        assert float(inside.min()) >= min(float(others.min()), float(x[i, 0, 0, 0])) - 1e-6
    ramp = torch.linspace(0, 1, 24)[None, None, None, :].expand(2, 1, 24, 24).contiguous()  # one image: a turn shows
    ramp[1] = ramp[1].flip(-1)
    turned, m = graft(ramp, (0.4, 0.45), torch.Generator().manual_seed(1))
    assert ((turned - ramp).abs() * m).sum() > 0


def test_scar_contrasts_with_its_ground():
    dark, bright = torch.zeros(8, 1, 16, 16), torch.ones(8, 1, 16, 16)
    g = torch.Generator().manual_seed(1)
    assert (scar(dark, (0.2, 0.3), g)[0][scar(dark, (0.2, 0.3), torch.Generator().manual_seed(1))[1]] >= 0.75).all()
    out, mask = scar(bright, (0.2, 0.3), g)
    assert (out[mask] <= 0.25).all()


def test_make_pseudo_anomalies_is_seeded_and_mixes_families():
    x = _images(40)
    a = make_pseudo_anomalies(x, 100, defect_fraction=0.3, generator=torch.Generator().manual_seed(5))
    b = make_pseudo_anomalies(x, 100, defect_fraction=0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.images, b.images) and torch.equal(a.kinds, b.kinds)
    is_defect = a.kinds >= len(SHIFTS)
    assert int(is_defect.sum()) == 30
    assert a.masks[~is_defect].all() and not a.masks[is_defect].all()
    assert set(a.kinds[is_defect].tolist()) <= {len(SHIFTS) + i for i in range(len(DEFECTS))}
    only_shifts = make_pseudo_anomalies(x, 20, defects=(), generator=torch.Generator().manual_seed(0))
    assert (only_shifts.kinds < len(SHIFTS)).all()
    for bad in ({"shifts": ("spin",)}, {"defects": ("stain",)}, {"shifts": (), "defects": ()},
                {"defect_fraction": 1.5}, {"defect_size": (0.3, 0.1)}):
        with pytest.raises(ValueError):
            make_pseudo_anomalies(x, 4, **bad)


def test_pseudo_config_is_validated():
    for bad in ("pseudo.shifts=[spin]", "pseudo.defects=[stain]", "pseudo.fusion_defects=[blot]", "loss.local_cover=1", "pseudo.ratio=0", "pseudo.defect_fraction=2",
                "pseudo.defect_size=[0.5,0.2]", "bank.size=-1", "weights.bank=1.5"):
        with pytest.raises(ConfigError):
            load_config("tiny", overrides=[bad])


def test_bank_distances_match_sklearn_knn():
    from anomem.bench.runner import feature_knn_scores

    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(50, 8)), rng.normal(size=(20, 8))
    ours = bank_distances(torch.tensor(q), torch.nn.functional.normalize(torch.tensor(bank).float(), dim=1), k=3)
    assert np.allclose(ours.numpy(), feature_knn_scores(bank, q, k=3), atol=1e-5)


def test_bank_statistics_are_leave_one_out():
    bank = FeatureBank((4,), k=1)
    pts = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.1, 0, 0], [0, 1.0, 0, 0]])
    bank.fit([pts])
    # with itself excluded, each point's nearest neighbour is another point, so the mean distance is > 0
    unit = torch.nn.functional.normalize(pts, dim=1)
    d = 1 - (unit @ unit.T - 4 * torch.eye(3)).max(1).values
    assert torch.allclose(bank.z.mean, d.mean()[None]) and bank.z.mean.item() > 0


def test_inverted_auroc_warning():
    assert inverted_warning(0.7) is None and inverted_warning(None) is None
    msg = inverted_warning(0.31, "test AUROC")
    assert "0.310" in msg and "below 0.5" in msg and "swapped" in msg


def _fit_tiny(x, *overrides):
    cfg = load_config("tiny", overrides=["train.epochs=1", "train.batch_size=16", "heads.steps=5",
                                         "scorer.prototype_cache=0", *overrides])
    return AnoMem(cfg, progress=False).fit(x)


def test_pseudo_anomalies_enter_stage_one_as_negatives(monkeypatch):
    from anomem import detector

    seen = {}
    real = detector.Stage1Trainer.__init__

    def spy(self, net, cfg, images, normal, device):
        seen["n"], seen["normals"] = images.shape[0], int(normal.sum())
        real(self, net, cfg, images, normal, device)

    monkeypatch.setattr(detector.Stage1Trainer, "__init__", spy)
    x = (_images(40) * 255).to(torch.uint8)
    # random images are invariant to rotations: keep the shifts anyway (min_separability=0)
    det = _fit_tiny(x, "pseudo.ratio=0.5", "threshold.calibration_fraction=0", "pseudo.min_separability=0")
    assert seen == {"n": 60, "normals": 40}
    assert not det.is_supervised and det.scorer_.bank.ready  # one-class: Eq. 9 + bank, no heads on pseudo alone
    _fit_tiny(x, "pseudo.enabled=false", "threshold.calibration_fraction=0")
    assert seen == {"n": 40, "normals": 40}


def test_paper_switch_gives_the_paper_score_exactly():
    """pseudo.enabled=false, no banks: the score is Eq. 9 merged by Eq. 13, nothing else."""
    from anomem.config import paper_literal
    from anomem.stage2.memory import one_class_scores

    x = (_images(40) * 255).to(torch.uint8)
    cfg = paper_literal(load_config("tiny", overrides=["train.epochs=1", "train.batch_size=16", "scorer.prototype_cache=0"]))
    det = AnoMem(cfg, progress=False).fit(x)
    s = det.scorer_
    assert not s.bank.ready and not s.pixels.ready and not s.feature_patches.ready and not s.pixel_patches.ready
    with torch.inference_mode():
        devs = det.net_.eval().deviation_maps(x.float() / 255)
        raw = one_class_scores(devs)
        ref = eq13((raw - s.memory.score.mean) / s.memory.score.std, [1.0, 2.0])
    assert np.allclose(det.anomaly_score(x), ref.numpy(), atol=1e-5)


def test_bank_survives_save_load_and_threshold(tmp_path):
    x = (_images(60) * 255).to(torch.uint8)
    det = _fit_tiny(x)
    held_out = calibration_count(60, det.config_.threshold)  # 6, grown to 15 to come nearer a 1 % FPR
    assert det.scorer_.bank.ready and det.calibration_bank_.bank.shape == (held_out, 2) == (15, 2)
    det.save(tmp_path / "m.ckpt")
    back = AnoMem.load(tmp_path / "m.ckpt")
    assert torch.equal(back.scorer_.bank.rows0, det.scorer_.bank.rows0)
    assert np.array_equal(back.anomaly_score(x), det.anomaly_score(x))
    # the stored threshold is reproduced from the saved held-out bank
    assert back.calibrate_threshold().threshold_.value == pytest.approx(det.threshold_.value)


def test_refit_uses_the_pseudo_anomalies_beside_the_new_ones(monkeypatch):
    from anomem.fit import stage2

    x = (_images(40) * 255).to(torch.uint8)
    det = _fit_tiny(x, "pseudo.ratio=0.5", "threshold.calibration_fraction=0", "pseudo.min_separability=0")
    assert not det.is_supervised and det.pseudo_bank_[0].shape[0] == 20
    seen = {}
    real = stage2.fit_heads

    def spy(heads, normal_feats, anomaly_feats, **kw):
        seen["m"] = anomaly_feats[0].shape[0]
        return real(heads, normal_feats, anomaly_feats, **kw)

    monkeypatch.setattr(stage2, "fit_heads", spy)
    det.refit_scorer((_images(3, seed=9) * 255).to(torch.uint8))
    assert det.is_supervised and seen["m"] == 3 + 20


def test_shift_separability_tells_invariant_shifts_from_real_ones():
    from anomem.model.pseudo import shift_separability

    from synthetic import stripes

    x = stripes(64, vertical=False, seed=0).float() / 255  # horizontal stripes: mirror-symmetric left-right
    x = x if x.ndim == 4 else x[:, None]
    sep = shift_separability(x, ("hflip", "rot90"), generator=torch.Generator().manual_seed(0))
    assert sep["rot90"] > 0.9  # vertical stripes are far from every horizontal one
    assert sep["hflip"] < 0.7


def test_fit_drops_shifts_the_class_is_invariant_to(monkeypatch):
    from anomem import detector

    from synthetic import stripes

    seen = {}
    real = detector.Stage1Trainer.__init__

    def spy(self, net, cfg, images, normal, device):
        seen["n"] = images.shape[0]
        real(self, net, cfg, images, normal, device)

    monkeypatch.setattr(detector.Stage1Trainer, "__init__", spy)
    x = stripes(40, vertical=False, seed=0)
    _fit_tiny(x, "pseudo.shifts=[hflip]", "pseudo.defect_fraction=0", "threshold.calibration_fraction=0")
    assert seen["n"] == 40  # the mirror images look normal: none is made
    _fit_tiny(x, "pseudo.shifts=[hflip,rot90]", "threshold.calibration_fraction=0")
    assert seen["n"] == 80
    _fit_tiny(x, "pseudo.shifts=[hflip]", "pseudo.min_separability=0", "threshold.calibration_fraction=0")
    assert seen["n"] == 80


def test_euclidean_bank_distance_matches_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(4)
    bank, q = torch.rand(50, 12, generator=g), torch.rand(9, 12, generator=g)
    ref, _ = NearestNeighbors(n_neighbors=3).fit(bank.numpy()).kneighbors(q.numpy())
    got = bank_distances(q, bank, 3, metric="euclidean")
    np.testing.assert_allclose(got.numpy(), ref.mean(1), rtol=1e-4, atol=1e-5)
    # leave-one-out: each bank row's distance to its 3 nearest OTHER rows
    ref_loo, _ = NearestNeighbors(n_neighbors=4).fit(bank.numpy()).kneighbors(bank.numpy())
    loo = bank_distances(bank, bank, 3, exclude_self=True, metric="euclidean")
    np.testing.assert_allclose(loo.numpy(), ref_loo[:, 1:].mean(1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="metric"):
        bank_distances(q, bank, 3, metric="manhattan")


def test_pixel_bank_mixes_into_the_image_score_and_survives_save_load(tmp_path):
    """score = (1 - w) · Eq. 13 + w · z_pixel, z standardised by the bank's leave-one-out stats."""
    x = (_images(60) * 255).to(torch.uint8)
    det = _fit_tiny(x, "weights.pixel_global=0.25", "patches.fit_fusion=false")  # the global score alone
    s = det.scorer_
    assert s.pixels.ready and s.pixels.bank.shape[1] == 16 * 16
    y = (_images(7, seed=8) * 255).to(torch.uint8)
    merged = eq13(torch.from_numpy(det.score_per_scale(y)), det.settings_["scales"])
    p = s.pixels
    z = (bank_distances(y.flatten(1).float() / 255, p.bank, s.bank.k, metric="euclidean") - p.global_z.mean) / p.global_z.std
    np.testing.assert_allclose(det.anomaly_score(y), (0.75 * merged + 0.25 * z).numpy(), atol=1e-5)
    det.save(tmp_path / "m.ckpt")
    back = AnoMem.load(tmp_path / "m.ckpt")
    assert np.array_equal(back.anomaly_score(y), det.anomaly_score(y))
    assert back.calibrate_threshold().threshold_.value == pytest.approx(det.threshold_.value)
    # the same score with the pixel bank's weight set to 0 for one call: Eq. 13 alone
    np.testing.assert_allclose(det.anomaly_score(y, weights={"pixel_global": 0.0}), merged.numpy(), atol=1e-5)


def test_pixel_bank_downsamples_large_images():
    from anomem.stage2.pixel_bank import PixelBank

    p = PixelBank(side=8)
    assert p.features(torch.rand(2, 3, 32, 16)).shape == (2, 3 * 8 * 4)
    assert p.features(torch.rand(2, 1, 6, 6)).shape == (2, 36)  # small images stay as they are
    p.fit(torch.rand(10, 3, 32, 16))
    assert p.grid.tolist() == [3, 8, 4] and p.scores(p.features(torch.rand(4, 3, 32, 16)))[2].map.shape == (4, 8, 4)


def test_local_map_is_the_per_position_minimum_over_the_nearest_normals_and_finds_a_defect():
    from anomem.stage2.pixel_bank import PixelBank

    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 12, 12, generator=g)
    normals = (base + 0.02 * torch.randn(40, 1, 12, 12, generator=g)).clamp(0, 1)
    p = PixelBank(side=32, k=2, local_k=5, sigma=0.0)
    p.fit(normals)
    q = normals[:3].clone() + 0.01
    q[2, :, 3:6, 7:10] = 1.0 - q[2, :, 3:6, 7:10]  # a local defect
    glob, maps = p.signals(p.features(q))
    d = torch.cdist(q.flatten(1), normals.flatten(1))
    idx = d.topk(5, largest=False).indices
    ref = torch.stack([(q[i, 0][None] - normals[idx[i], 0]).abs().amin(0) for i in range(3)])
    torch.testing.assert_close(maps, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(glob, d.topk(2, largest=False).values.mean(1), atol=1e-4, rtol=0)  # |q|²+|b|²-2q·b in float32
    _, z_glob, (z_local, z_map) = p.scores(p.features(q))
    assert z_local[2] > 5 * z_local[:2].abs().max() and z_map[2, 3:6, 7:10].min() > z_map[2].median()
