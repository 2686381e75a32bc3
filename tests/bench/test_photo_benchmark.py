"""benchmarks/photos.py's protocol: leave-kind-out (no kind is scored by a fit that used
its near copy), AUPRO with the test normals counted, and the tables built from cells."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomem import AnoMem
from anomem.data.photos import (
    NEAR_COPIES,
    OBVIOUS,
    PSEUDO_DEFECTS,
    SUBTLE,
    leave_kind_out,
    photo_category,
)
from anomem.errors import DataError
from anomem.metrics import aupro
from anomem.model.pseudo import DEFECTS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("photos"), importlib.import_module("photo_cells")


def test_pseudo_defect_names_are_the_models() -> None:
    assert PSEUDO_DEFECTS == AnoMem()._resolve_config().pseudo.defects  # the default fit's kinds
    assert set(NEAR_COPIES) == set(OBVIOUS + SUBTLE)
    assert all(set(v) <= set(DEFECTS) for v in NEAR_COPIES.values())
    # the two near copies the audit named
    assert "scar" in NEAR_COPIES["scratch"] and "cutpaste" in NEAR_COPIES["patch"]


def test_every_kind_is_scored_once_by_a_config_without_its_near_copies(bench) -> None:
    photos, cells = bench
    plan = photos.plan()
    scored = [k for p in plan.values() for k in p["scores"]]
    assert sorted(scored) == sorted(OBVIOUS + SUBTLE)
    for p in plan.values():
        assert p["defects"] and set(p["defects"]) | set(p["excluded"]) == set(PSEUDO_DEFECTS)
        for kind in p["scores"]:
            assert not set(NEAR_COPIES[kind]) & set(p["defects"]), kind
        # the detector the cell fits reads exactly these pseudo-defects (stage 1, heads and fusion)
        over = cells.anomem_overrides(0, p["excluded"], p["defects"])
        assert AnoMem(**over)._resolve_config().pseudo.defects == tuple(p["defects"])
    assert plan["anomem-default"]["excluded"] == ()
    assert AnoMem(**cells.anomem_overrides(0, (), PSEUDO_DEFECTS))._resolve_config().pseudo.defects == PSEUDO_DEFECTS


def test_leave_kind_out_merges_contained_sets_and_keeps_the_smallest_home() -> None:
    near = {"a": ("x",), "b": ("x", "y"), "c": (), "d": ("y",), "e": ("z",)}
    with pytest.raises(DataError, match="no near-copy entry"):  # an unmapped kind is refused
        leave_kind_out(("a", "q"), near)
    plan = leave_kind_out(tuple(near), near, in_use=("x", "y", "z", "w"))
    assert plan == {(): ("c",), ("z",): ("e",), ("x", "y"): ("a", "b", "d")}
    # a set that would leave no pseudo-defect is refused
    with pytest.raises(DataError, match="leaves no pseudo-defect"):
        leave_kind_out(("k",), {"k": tuple(PSEUDO_DEFECTS)})
    # a near copy the default fit does not draw needs no fit of its own
    assert leave_kind_out(tuple(near), near, in_use=("x", "y", "q")) == {(): ("c", "e"), ("x", "y"): ("a", "b", "d")}
    with pytest.raises(DataError, match="leaves no pseudo-defect"):
        leave_kind_out(("b",), near, in_use=("x", "y"))


def test_aupro_counts_the_normals_pixels() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    for i in range(4):
        masks[i, 2 + i : 7 + i, 3:8] = True
    maps = rng.random((4, 16, 16)) + 0.8 * masks  # defects mostly above their background
    alone = aupro(masks, maps)
    empty = np.zeros((3, 16, 16), bool)
    cold = aupro(np.concatenate([empty, masks]), np.concatenate([np.zeros((3, 16, 16)), maps]))
    hot = aupro(np.concatenate([empty, masks]), np.concatenate([np.full((3, 16, 16), 2.0), maps]))
    assert hot < alone < cold  # hot normals are false positives first; cold ones only dilute the FPR
    assert hot < 0.05  # 3 of 7 images' pixels sit above every defect: FPR 0.3 has passed before any PRO


def test_cells_score_each_kind_against_all_normals_and_count_them_in_aupro(bench) -> None:
    photos, cells = bench
    sp = photo_category("brick", size=32, n_train=2, n_test_normal=5, per_kind=3, kinds=("stain", "blur"), seed=2)
    rng = np.random.default_rng(1)
    s_n, s_d = rng.random(5), rng.random(6)
    m_n, m_d = rng.random((5, 32, 32)), rng.random((6, 32, 32)) + sp.masks
    got = cells.per_kind(sp, s_n, s_d, m_n, m_d)
    blur = np.asarray(sp.kinds) == "blur"
    assert got["blur"]["image_auroc"] == pytest.approx(roc_auc_score(np.r_[np.zeros(5), np.ones(3)], np.r_[s_n, s_d[blur]]))
    empty = np.zeros((5, 32, 32), bool)
    assert got["blur"]["aupro"] == pytest.approx(aupro(np.concatenate([empty, sp.masks[blur]]),
                                                       np.concatenate([m_n, m_d[blur]])))
    whole = cells.all_images(sp, m_n, m_d)
    assert whole["aupro_defective_only"] == pytest.approx(aupro(sp.masks, m_d))
    assert whole["aupro_all"] != whole["aupro_defective_only"]


def test_tables_take_each_kind_from_the_fit_that_never_saw_it(bench) -> None:
    photos, _ = bench
    cells = {}
    for seed, level in ((0, 0.6), (1, 0.8)):
        for name, p in photos.plan().items():
            # each config scores its own kinds `level` and every other kind 1.0 (as if it had seen them)
            kinds = {k: {"image_auroc": level if k in p["scores"] else 1.0, "pixel_auroc": 0.5, "aupro": 0.3}
                     for k in OBVIOUS + SUBTLE}
            cells[("grass", seed, name)] = {"kinds": kinds}
        cells[("grass", seed, "baselines")] = {"methods": {}}
    unseen = photos.unseen_kinds(cells, "grass", 0)
    assert {v["image_auroc"] for v in unseen.values()} == {0.6}
    assert photos.ms(photos.over_seeds(cells, "grass", "anomem never saw", lambda k: photos.family(k, "obvious"))) \
        == "0.700 ± 0.141"  # sample std of 0.6 and 0.8
    del cells[("grass", 1, "anomem-minus-scar")]  # an unfinished seed is left out, not half-counted
    assert photos.done_seeds(cells, "grass", "anomem never saw") == [0]
    del cells[("grass", 0, "baselines")]  # and every method is compared on the same seeds
    assert photos.done_seeds(cells, "grass", "anomem default") == []
