"""Smoke tests of the benchmark scripts: they run end to end on the ``tiny`` preset at
minimal sizes (a few seconds on CPU) and print the expected rows with finite, positive
numbers. They check that the scripts work, not how fast anything is."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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
    assert len(aucs) == 3 and all(0.0 <= a <= 1.0 for a in aucs)  # merged + the tiny preset's 2 scales
    assert 0.0 < float(entropy) <= 1.0


def test_score_ablation_scores_one_model_six_ways(monkeypatch, capsys):
    lines = _run_script(monkeypatch, capsys, "score_ablation", "--classes", "0", "--epochs", "1",
                        "--max-train", "300", "--set", "backbone.width=8")
    assert lines[0].split()[:3] == ["class", "eq9", "merged"] and lines[-1].startswith(" mean")
    aucs = [float(v) for v in lines[1].split()[1:7]]
    assert all(0.0 <= a <= 1.0 for a in aucs)
    assert aucs[5] > 0.95  # raw-pixel kNN on digit 0: the reference column is computed, not copied


def test_journey_walks_every_step(monkeypatch, tmp_path, capsys):
    """benchmarks/journey.py on generated Fashion-MNIST files: every CLI step runs, the
    export and the Python API agree with `anomem score`."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "data"))
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
    for name in ("score", "threshold 5%", "refit"):
        assert 0 <= steps[name]["fpr"] <= 1 and 0 <= steps[name]["recall"] <= 1
    assert steps["export onnx"]["max_abs_diff"] < 1e-3 and steps["export onnx"]["same_decisions"]
    assert steps["python api"]["max_abs_diff"] < 1e-6 and steps["python api"]["same_decisions"]
    assert len(steps["evaluate"]["per_type"]) == 9  # the nine other classes, one folder each
    assert "| refit |" in capsys.readouterr().out
