"""benchmarks/local_evidence.py's offline pieces: the image-split rules replayed on a fit's
stored table, their standard error, and the kinds each fit may draw (no fitting here)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomem.fit.fusion import candidates, choose

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def le(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("local_evidence")


def test_standard_error_at_chance_is_the_mann_whitney_null(le) -> None:
    # at AUROC 0.5, Hanley & McNeil's variance is exactly (n1 + n2 + 1) / (12 n1 n2)
    for n1, n2 in ((16, 32), (40, 80), (7, 3)):
        assert le._se(0.5, n1, n2) == pytest.approx(np.sqrt((n1 + n2 + 1) / (12 * n1 * n2)))
    assert le._se(1.0, 40, 80) == 0.0
    assert le._se(0.9, 100, 200) < le._se(0.9, 10, 20)


def _table(values: dict) -> dict:
    """Every candidate of the 3-signal grid at 0.5 unless ``values`` says otherwise (one family)."""
    return {w: (values.get(w, 0.5),) for w in candidates((True, True, True))}


def test_rules_pick_among_ties_as_named(le) -> None:
    rules = le.RULES
    tied = {(1.0, 0.0, 0.0): 0.9, (0.5, 0.25, 0.25): 0.9, (0.0, 0.0, 1.0): 0.9, (0.25, 0.5, 0.25): 0.7}
    t, fam = _table(tied), ("defects",)
    assert rules["today"](t, fam, 0) == choose(t, fam) == (1.0, 0.0, 0.0)  # the larger global weight
    assert rules["ties-balanced"](t, fam, 0) == (0.5, 0.25, 0.25)
    assert rules["ties-pixels"](t, fam, 0) == (0.0, 0.0, 1.0)
    assert rules["equal"](t, fam, 0) == pytest.approx((1 / 3,) * 3)
    # within one standard error of the best (0.9 at 2 normals against 4: about 0.14) the 0.8 candidate is
    # tied too, and it is the most even split of the grid's ties
    near = _table({(1.0, 0.0, 0.0): 0.9, (0.25, 0.25, 0.5): 0.8})
    assert rules["ties-balanced"](near, fam, 0) == (1.0, 0.0, 0.0)
    assert rules["noise-balanced"](near, fam, 2) == (0.25, 0.25, 0.5)
    assert rules["noise-balanced"](near, fam, 10_000) == (1.0, 0.0, 0.0)


def test_shifts_filter_comes_before_the_ties(le) -> None:
    t = {w: (0.9, 0.9) for w in candidates((True, True, True))}
    t[(0.0, 0.0, 1.0)] = (0.99, 0.8)  # best on defects, worse on shifts: filtered out first
    fam = ("defects", "shifts")
    assert le.RULES["ties-pixels"](t, fam, 0) == (0.25, 0.0, 0.75)
    assert le.RULES["today"](t, fam, 0) == (1.0, 0.0, 0.0)


def test_replay_scores_each_rule_on_the_stored_terms(le, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 30
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    terms = {"global": rng.normal(size=2 * n) + 0.2 * y, "feature_patches": rng.normal(size=2 * n),
             "pixel_patches": rng.normal(size=2 * n) + 1.5 * y}
    stack = np.array([terms["global"], terms["feature_patches"], terms["pixel_patches"]])
    table = {w: (0.6 + 0.3 * w[2],) for w in candidates((True, True, True))}  # ranks the splits as validation does
    scores = {"label": y.tolist(), **{k: v.tolist() for k, v in terms.items()}}
    row = {"fit": {"weights": [0.0, 0.0, 1.0], "families": ["defects"], "normals": 40,
                   "table": [[list(w), list(v)] for w, v in table.items()]},
           "scores": {"unseen": scores, "structure": scores}}
    path = tmp_path / "variant.json"
    path.write_text(json.dumps([row]))
    line = next(ln for ln in le.replay([path]).splitlines() if "| unseen |" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = [c.strip() for c in le.replay([path]).splitlines()[0].strip("|").split("|")]
    got = dict(zip(header, cells))
    today = roc_auc_score(y, stack[2])  # the table's best split is the pixel patches alone
    assert float(got["today"]) == pytest.approx(today, abs=6e-4)
    assert float(got["equal"]) == pytest.approx(roc_auc_score(y, stack.mean(0)), abs=6e-4)
    grid = max(roc_auc_score(y, np.asarray(w) @ stack) for w in table)
    assert float(got["best on the grid"]) == pytest.approx(grid, abs=6e-4)
    assert got["ties"] == "0" and float(got["table vs validation (Spearman)"].split()[0]) > 0.5


def test_split_kinds_leave_the_validated_kind_out_of_both(le) -> None:
    for kind in le.KINDS:
        kw = le.kinds_for(kind, [], [], split=True)
        learned, fusion = set(kw["pseudo__defects"]), set(kw["pseudo__fusion_defects"])
        assert len(learned) == 1 and fusion and not learned & fusion
        assert kind not in learned | fusion and not set(le.NEAR.get(kind, ())) & (learned | fusion)
    assert "pseudo__fusion_defects" not in le.kinds_for("scar", [], [])


def test_paired_differences_match_the_shared_fits_only(le, tmp_path: Path) -> None:
    def row(cat, kind, seed, fused, even):
        return {"category": cat, "kind": kind, "seed": seed, **{f: {"fused": fused, "equal_split": even} for f in le.FAMILIES}}

    base = [row("grass", "scar", 0, 0.70, 0.0), row("grass", "noise", 0, 0.80, 0.0), row("gravel", "scar", 0, 0.5, 0.0)]
    variant = [row("grass", "scar", 0, 0.0, 0.75), row("grass", "noise", 0, 0.0, 0.90)]  # gravel is not shared
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(variant))
    text = le.paired(tmp_path / "a.json", tmp_path / "b.json")
    d = np.array([0.05, 0.10])  # the variant's even split less the base's fitted score, per shared fit
    assert "(2 fits)" in text and f"+{d.mean():.3f} ± {d.std(ddof=1) / np.sqrt(2):.3f}  (higher in 2 of 2)" in text
