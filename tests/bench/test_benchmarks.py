"""Smoke tests of the benchmark scripts: they run end to end on the ``tiny`` preset at
minimal sizes (a few seconds on CPU) and print the expected rows with finite, positive
numbers. They check that the scripts work, not how fast anything is."""

from __future__ import annotations

import ast
import csv
import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    throughput = importlib.import_module("throughput")
    scaling = importlib.import_module("scaling")
    # One thread: these tensors are tiny, and busy-waiting OpenMP threads on a loaded
    # shared runner can make a multi-threaded step many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield throughput, scaling
    torch.set_num_threads(threads)
    for name in ("throughput", "scaling"):
        sys.modules.pop(name, None)


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_throughput_runs_and_reports_every_table(scripts, capsys):
    throughput, _ = scripts
    report = throughput.main(
        [
            "--presets",
            "tiny",
            "--device",
            "cpu",
            "--batch",
            "8",
            "--reps",
            "2",
            "--score-images",
            "16",
            "--score-batch",
            "8",
            "--matmul-size",
            "128",
        ]
    )
    out = capsys.readouterr().out
    (r,) = report.results
    assert r.preset == "tiny" and r.batch == 8 and r.reps == 2
    assert _finite_positive(
        r.train_img_s,
        r.simclr_img_s,
        r.overhead,
        r.score_img_s,
        r.encode_img_s,
        r.train_abs_mib,
        report.peak_flops,
    )
    assert r.flops_step > r.flops_step_simclr > 0  # the memories add matmuls, nothing removes any
    assert r.overhead_range[0] <= r.overhead <= r.overhead_range[1]
    assert all(
        math.isfinite(v) and v >= 0 for v in (r.train_peak_mib, r.simclr_peak_mib, r.score_peak_mib)
    )
    assert r.syncs == "n/a"  # the sync check is CUDA-only
    rows = [line for line in out.splitlines() if line.startswith("tiny ")]
    assert len(rows) == 4, out  # throughput, peak memory, MFU and projection tables
    assert "overhead" in out and "MFU" in out and "target" in out


def test_scaling_shows_constant_anomem_state_and_a_growing_knn_bank(scripts, capsys):
    _, scaling = scripts
    report = scaling.main(
        [
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--sizes",
            "64",
            "256",
            "--queries",
            "16",
            "--batch",
            "16",
            "--reps",
            "1",
            "--fit-sizes",
            "40",
            "80",
        ]
    )
    out = capsys.readouterr().out
    small, large = report.rows
    assert small.anomem_model_bytes == large.anomem_model_bytes
    assert large.knn_bank_bytes == 4 * small.knn_bank_bytes
    for s in report.rows:
        assert _finite_positive(
            s.anomem_score_s, s.knn_encode_s, s.knn_search_s, s.anomem_checkpoint_bytes
        )
    # The shape model of the checkpoint reproduces a real fitted checkpoint it was not built from.
    assert report.checkpoint.total(80) == pytest.approx(report.fits[80], rel=0.01)
    assert sum(line.lstrip().startswith(("64 |", "256 |")) for line in out.splitlines()) == 4, out


def test_chunked_knn_score_matches_the_brute_force_one(scripts):
    _, scaling = scripts
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(7, 5, generator=gen), torch.randn(50, 5, generator=gen)
    expected = torch.cdist(queries, bank).topk(3, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(scaling.knn_scores(queries, bank, k=3, chunk=8), expected)
    torch.testing.assert_close(
        scaling.knn_scores(queries, bank, k=3, chunk=2), expected
    )  # chunk < k


def _run_script(monkeypatch, capsys, name: str, *argv: str) -> list[str]:
    """Run ``benchmarks/<name>.py``'s main() with ``argv``; its printed lines."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    try:
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
        module.main()
    finally:
        sys.modules.pop(name, None)
    return capsys.readouterr().out.splitlines()


def test_validation_sweep_reports_merged_and_per_scale_auroc(monkeypatch, capsys):
    lines = _run_script(monkeypatch, capsys, "validation_sweep", "--classes", "0", "--epochs", "1",
                        "--max-train", "300", "--variants", "memory.beta=8")
    assert lines[0].startswith("raw-pixel kNN") and "per scale" in lines[1]
    merged, per_scale, entropy = lines[2].split()[:3]
    aucs = [float(merged), *map(float, per_scale.split("/"))]
    assert len(aucs) == 3  # merged + the tiny preset's 2 scales
    # digit 0 against the rest, one epoch; over --seed 0-5 the merged score gave 0.988-1.0 and
    # each scale alone 0.779-0.998: floors well above chance, with a margin
    assert aucs[0] >= 0.9 and min(aucs[1:]) >= 0.65
    # retrieval entropy as a fraction of log K: 1 is uniform recall (collapse), 0 one-hot;
    # seeds 0-5 gave 0.594-0.815
    assert 0.3 < float(entropy) < 0.95


def test_score_ablation_scores_one_model_six_ways(monkeypatch, capsys):
    lines = _run_script(monkeypatch, capsys, "score_ablation", "--classes", "0", "--epochs", "1",
                        "--max-train", "300", "--set", "backbone.width=8")
    assert lines[0].split()[:3] == ["class", "eq9", "merged"] and lines[-1].startswith(" mean")
    aucs = [float(v) for v in lines[1].split()[1:7]]
    assert len(aucs) == 6 and all(math.isfinite(a) for a in aucs)
    # over --seed 0-5: eq9 merged 0.988-1.0, eq9 deep 0.908-0.962, enc kNN 0.921-1.0; the two
    # diagnostics (nearest pattern 0.486-0.813, feature norm 0.584-0.957) may sit at chance
    assert aucs[0] >= 0.9 and aucs[1] >= 0.8 and aucs[4] >= 0.8
    assert aucs[5] > 0.95  # raw-pixel kNN on digit 0: the reference column is computed, not copied


def test_journey_walks_every_step(monkeypatch, tmp_path, capsys):
    """benchmarks/journey.py on generated Fashion-MNIST files: every CLI step runs, the
    export and the Python API agree with `anomem score`."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "data"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from fakes import write_fake_idx

    write_fake_idx(tmp_path / "fm", n_train=120, n_test=60)
    journey = importlib.import_module("journey")
    try:
        result = journey.main(["--data-root", str(tmp_path / "fm"), "--train-size", "12", "--per-class", "2",
                               "--labelled", "4", "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "j")])
    finally:
        sys.modules.pop("journey", None)
    steps = result["steps"]
    assert set(steps) == {"train", "score", "evaluate", "threshold 5%", "refit", "export onnx", "python api"}
    assert steps["score"]["n_normal"] == 6 and steps["score"]["n_anomaly"] == 18 and steps["score"]["maps"] == 24
    # each operating point again, from its score file: the share of the test normals (the
    # test/normal folder) and of the anomalies whose score is above the file's threshold
    for name, file in (("score", "scores.csv"), ("threshold 5%", "scores-5pc.csv"), ("refit", "scores-ss.csv")):
        with (tmp_path / "j" / file).open(newline="") as f:
            rows = list(csv.DictReader(f))
        normal = [Path(r["path"]).parent.name == "normal" for r in rows]
        above = [float(r["score"]) > float(r["threshold"]) for r in rows]
        assert sum(normal) == 6 and len(rows) == 24
        assert steps[name]["fpr"] == pytest.approx(sum(a for a, n in zip(above, normal) if n) / 6, abs=1e-12)
        assert steps[name]["recall"] == pytest.approx(sum(a for a, n in zip(above, normal) if not n) / 18, abs=1e-12)
    assert steps["export onnx"]["max_abs_diff"] < 1e-3 and steps["export onnx"]["same_decisions"]
    assert steps["python api"]["max_abs_diff"] < 1e-6 and steps["python api"]["same_decisions"]
    assert len(steps["evaluate"]["per_type"]) == 9  # the nine other classes, one folder each
    assert "| refit |" in capsys.readouterr().out


def _state(scorer) -> dict:
    """The whole fitted stage 2 (every weight, statistic and bank), copied."""
    return {k: v.clone() for k, v in scorer.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_score_with_reads_other_weights_and_leaves_the_detector_as_fitted(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from anomem import AnoMem, load_config

    from synthetic import stripes

    validation = importlib.import_module("validation")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config("tiny", None, ["train.epochs=1", "train.batch_size=32", "heads.steps=20"])
        det = AnoMem(cfg, progress=False).fit(stripes(48, False))
        x = torch.cat([stripes(6, False, seed=1), stripes(6, True, seed=2)])
        s = det.scorer_
        fitted, score, maps = _state(s), det.anomaly_score(x), det.anomaly_maps(x)
        n = s.num_scales

        # λ = (1, 0, ...) with the pixel bank and the patches off: scale 0's score alone
        first = validation.score_with(det, x, scales=[1.0] + [0.0] * (n - 1), pixel_global=0.0, pixel_local=0.0,
                                      image=(1, 0, 0))
        np.testing.assert_allclose(first, det.score_per_scale(x)[:, 0], rtol=1e-5, atol=1e-5)
        assert _same_state(_state(s), fitted)
        np.testing.assert_array_equal(validation.score_with(det, x), score)  # no weights: the fitted score
        np.testing.assert_array_equal(validation.score_with(det, x, image=(0.5, 0.5, 0)),
                                      det.anomaly_score(x, fusion=(0.5, 0.5, 0)))

        mem = validation.maps_with(det, x, map=(1, 0, 0), map_pixel=0.0, bank=1.0, contrast=0.0, heads=False)
        z = (torch.from_numpy(mem.per_scale) - s.memory.map.mean[:, None, None]) / s.memory.map.std[:, None, None]
        lam = torch.tensor(det.settings_["scales"])
        np.testing.assert_allclose(mem.fused, ((z * lam[:, None, None]).sum(1) / lam.sum()).numpy(), atol=1e-4)  # Eq. 13 per pixel
        assert _same_state(_state(s), fitted)
        np.testing.assert_array_equal(det.anomaly_maps(x).fused, maps.fused)

        with pytest.raises(TypeError, match="pixel"):
            validation.score_with(det, x, pixel=0.5)  # not a weight's name
        with pytest.raises(ValueError, match="scales must be"):
            validation.score_with(det, x, bank=0.0, scales=[1.0] * (n + 1))
        assert _same_state(_state(s), fitted)  # restored after a failure half-way, too
    finally:
        torch.set_num_threads(threads)


def test_validation_split_is_seeded_and_keeps_a_third(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    validation = importlib.import_module("validation")
    fit, val = validation.split("digits", 300, seed=0)
    again, _ = validation.split("digits", 300, seed=0)
    assert len(fit) + len(val) == 300 and len(val) == 100
    assert torch.equal(fit.images, again.images) and torch.equal(fit.targets, again.targets)
    rng = np.random.default_rng(0)
    x, y = validation.draw(val, 40, rng)
    assert x.shape[0] == y.shape[0] == 40
    assert validation.cells([0.5, None, "name"], 6) == " 0.500      -   name"
    assert validation.variant_overrides("a=1;;b=2") == ["a=1", "b=2"]


def _scorer_writes(source: str) -> list[int]:
    """Lines that assign to an attribute of a fitted scorer (``det.scorer_`` or a name
    bound to it), or change one of its tensors in place (``copy_``, ``fill_``, ...)."""
    tree = ast.parse(source)
    aliases = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and "scorer_" in ast.unparse(node.value)
               for t in node.targets if isinstance(t, ast.Name)}

    def scorer(expr: ast.expr) -> bool:
        root = expr
        while isinstance(root, (ast.Attribute, ast.Subscript)):
            root = root.value
        return "scorer_" in ast.unparse(expr) or (isinstance(root, ast.Name) and root.id in aliases)

    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in targets:
            for e in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(e, (ast.Attribute, ast.Subscript)) and scorer(e.value):
                    lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.endswith("_") \
                and not node.func.attr.startswith("_") and scorer(node.func.value):
            lines.append(node.lineno)  # an in-place tensor op: copy_, fill_, zero_, ...
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and node.args and scorer(node.args[0]):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_benchmark_changes_a_fitted_scorer():
    """Re-scoring under other weights goes through the public API (``weights=``), in
    validation.score_with / maps_with; no script edits a fitted scorer."""
    assert _scorer_writes("det.scorer_.pixel_weight = w\ns = det.scorer_\ns.a, s.b = 1, 2\ns.w.copy_(x)\n") == [1, 3, 4]
    found = {p.name: _scorer_writes(p.read_text(encoding="utf-8")) for p in sorted(BENCHMARKS.glob("*.py"))}
    assert not {name: lines for name, lines in found.items() if lines}


def test_demo_validation_reads_one_fit_under_each_pixel_weight(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    demo = importlib.import_module("demo_validation")
    try:
        monkeypatch.setattr(demo, "EXTRA", ("train.epochs=1",))
        monkeypatch.setattr(sys, "argv", ["demo_validation.py", "--classes", "0", "--weights", "0", "0.9"])
        demo.main()
    finally:
        sys.modules.pop("demo_validation", None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "pixel_weight class 0  mean"
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["0.000", "0.900", "kNN"]
    # class 0 then the mean over the one class: the same number twice
    assert all(len(r) == 3 and r[1] == r[2] for r in rows)
    # over --seed 0-5: pixel weight 0 gave 0.892-1.0, weight 0.9 0.9999-1.0, kNN 1.0
    zero, high, knn = (float(r[1]) for r in rows)
    assert zero >= 0.75 and high >= 0.9 and knn >= 0.95


def test_oneclass_sweep_prints_every_reading_of_one_fit(monkeypatch, capsys):
    lines = _run_script(monkeypatch, capsys, "oneclass_sweep", "--data", "digits", "--preset", "tiny",
                        "--max-train", "600", "--normals", "60", "--max-val", "120", "--classes", "0",
                        "--epochs", "1", "--batch-size", "32", "--variants", "pseudo.heads=true")
    header, row, mean = lines
    assert header.split()[:3] == ["variant", "class", "eq9"] and mean.split()[1] == "mean"
    cells = row.split()[2:-1]  # the readings and pixel kNN, without the seconds
    assert len(cells) == 11  # every reading measured, heads too
    # digit 0 against the rest: over --seed 0-5 the lowest reading was 0.946 (heads, seed 3)
    assert all(float(v) >= 0.85 for v in cells)
