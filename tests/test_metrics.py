"""Image and pixel metrics: AUPRO against hand-computed cases and a brute-force reference."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anomem.errors import DataError
from anomem.metrics import (
    aupro,
    average_precision,
    image_auroc,
    localisation_metrics,
    pixel_auroc,
    pro_curve,
)

# Two 2x3 images. Image A has one region of 2 pixels, image B one region of 1 pixel;
# 9 normal pixels. Sorted by map value the pixels are
#   0.9 r1, 0.8 n, 0.7 r2, 0.5 n, 0.4 r1, 0.3 n, ... (all normal below)
# A pixel of r1 adds 1/(2 regions * 2 px) = 0.25 to PRO, of r2 1/(2 * 1) = 0.5; a normal
# pixel adds 1/9 to FPR. Curve: (0,0) (0,.25) (1/9,.25) (1/9,.75) (2/9,.75) (2/9,1) ... (1,1).
MASKS = np.array([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]]])
MAPS = np.array([[[0.9, 0.4, 0.8], [0.1, 0.2, 0.3]], [[0.5, 0.0, 0.05], [0.15, 0.25, 0.7]]])


def test_pro_curve_hand_computed():
    c = pro_curve(MASKS, MAPS)
    assert c.n_regions == 2
    np.testing.assert_allclose(c.fpr[:7], [0, 0, 1 / 9, 1 / 9, 2 / 9, 2 / 9, 3 / 9])
    np.testing.assert_allclose(c.pro[:7], [0, 0.25, 0.25, 0.75, 0.75, 1.0, 1.0])
    assert c.fpr[-1] == 1.0 and c.pro[-1] == 1.0
    assert np.all(np.diff(c.fpr) >= 0) and np.all(np.diff(c.pro) >= 0)


def test_aupro_hand_computed():
    # Area up to FPR 0.3: 1/9 * 0.25 + 1/9 * 0.75 + (0.3 - 2/9) * 1 = 0.3 - 1/9.
    assert aupro(MASKS, MAPS) == pytest.approx((0.3 - 1 / 9) / 0.3, abs=1e-12)
    # Whole curve: 1/36 + 3/36 + 7/9 = 8/9.
    assert aupro(MASKS, MAPS, max_fpr=1.0) == pytest.approx(8 / 9, abs=1e-12)


def test_ties_are_passed_together():
    # One anomalous and one normal pixel with the same value: the curve goes straight
    # from (0, 0) to (1, 1), never through (0, 1), whatever the pixel order.
    masks, maps = np.array([[[1, 0]]]), np.array([[[0.5, 0.5]]])
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.5)
    assert aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.15)  # PRO = FPR on the diagonal
    assert aupro(masks[:, :, ::-1], maps, max_fpr=1.0) == pytest.approx(0.5)


def test_regions_use_8_connectivity():
    mask = np.zeros((1, 3, 4), int)
    mask[0, 0, 0] = mask[0, 1, 1] = 1  # diagonal neighbours: one region of 2 pixels
    mask[0, 2, 3] = 1  # a second region
    maps = np.zeros((1, 3, 4))
    maps[0, 0, 0] = 1.0  # only this pixel above everything else
    c = pro_curve(mask, maps)
    assert c.n_regions == 2
    assert c.pro[1] == pytest.approx(0.25)  # 1 / (2 px * 2 regions); 4-connectivity would give 1/3


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Reference: threshold at every distinct value, per-region overlap by loops."""
    regions = []
    for i in range(masks.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, k + 1)]
    normal = masks == 0
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([pred[i][r].mean() for i, r in regions]))
    xs, ys = np.array(xs), np.array(ys)
    grid = np.linspace(0, max_fpr, 20001)
    # the curve is piecewise linear between its points (vertical jumps included)
    order = np.lexsort((ys, xs))
    y_grid = np.interp(grid, xs[order], ys[order])
    return float(np.trapezoid(y_grid, grid) / max_fpr)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), int)
    for i in range(3):  # the last image stays defect-free
        for _ in range(2):
            y, x = rng.integers(0, 9, 2)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = 1
    maps = rng.random(masks.shape) + 0.8 * masks  # informative but noisy
    maps = np.round(maps, 2)  # plenty of ties
    expected = _brute_force_aupro(masks, maps, 0.3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=2e-3)


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 10, 10)) > 0.9).astype(np.uint8) * 255  # uint8 255 masks as loaders give
    perfect = masks / 255.0 + 0.01 * rng.random(masks.shape)
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_auroc(masks, perfect) == 1.0
    assert aupro(masks, -perfect) == pytest.approx(0.0)
    lm = localisation_metrics(masks[:, None], perfect)  # (N, 1, H, W) masks accepted
    assert lm.pixel_auroc == 1.0 and lm.aupro == pytest.approx(1.0)


def test_pixel_auroc_pools_all_pixels():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 8, 8)) > 0.8
    maps = rng.random((5, 8, 8)) + masks * 0.3
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_image_metrics_and_errors():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert image_auroc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(DataError, match="both normal and anomalous"):
        image_auroc([0, 0], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        image_auroc(y, [0.1, np.nan, 0.2, 0.3])
    with pytest.raises(DataError, match="no anomalous pixel"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="same shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(DataError, match="max_fpr"):
        aupro(MASKS, MAPS, max_fpr=0.0)


def test_confusion_metrics_match_hand_counts_and_handle_empty_denominators():
    from anomem.metrics import confusion_metrics

    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    m = confusion_metrics(y, p)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 3, 1)
    assert m["accuracy"] == 6 / 8 and m["precision"] == 3 / 4 and m["recall"] == 3 / 4
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1)) and m["fpr"] == 1 / 4
    none = confusion_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]))  # nothing flagged
    assert none["precision"] is None and none["recall"] == 0.0 and none["fpr"] == 0.0
    only_normals = confusion_metrics(np.zeros(4, int), np.zeros(4, int))
    assert only_normals["recall"] is None and only_normals["f1"] is None and only_normals["accuracy"] == 1.0
    with pytest.raises(DataError, match="expected shape"):
        confusion_metrics(y, p[:3])
    with pytest.raises(DataError, match=r"must be 0 \(normal\) or 1 \(anomaly\)"):
        confusion_metrics(y, p * 2)
