"""The `anomem benchmark` runner on embedded digits: cells, resume, tables, protocols."""

import json
from pathlib import Path

import numpy as np
import pytest

from anomem.bench.runner import (
    BenchmarkSettings,
    Cell,
    feature_kmeans_scores,
    feature_knn_scores,
    plan_cells,
    run_benchmark,
)
from anomem.cli import main
from anomem.errors import ConfigError, DataError

FAST = ("train.epochs=1", "train.batch_size=32", "backbone.width=8", "memory.sizes=[16,8]")


def _settings(**kw) -> BenchmarkSettings:
    base = {"data": "digits", "classes": (0,), "ratios": (0.0,), "groups": ("knn",), "preset": "tiny",
            "overrides": FAST, "max_train": 60}
    return BenchmarkSettings(**(base | kw))


def test_plan_shares_label_free_cells_and_cycles_known_classes():
    s = _settings(classes=(0, 1), ratios=(0.0, 0.1), seeds=2, groups=("anomem", "knn"))
    cells = plan_cells(s, 10)
    assert len(cells) == 2 * 2 * 2 * 2
    knn = [c for c in cells if c.group == "knn" and c.ratio == 0.1]
    assert all(c.source == Cell("one-vs-all", c.normal_class, 0.0, c.seed, "knn") for c in knn)
    assert all(c.source == c for c in cells if c.group == "anomem")  # uses labels: never shared
    sad = plan_cells(_settings(protocol="deep-sad", classes=(2,), ratios=(0.05,), seeds=9), 10)
    assert sorted(c.other for c in sad) == [0, 1, 3, 4, 5, 6, 7, 8, 9]  # 9 seeds: every known class once
    assert all(c.source == c for c in sad)


@pytest.mark.parametrize(
    "kw, err, message",
    [
        ({"protocol": "nope"}, ConfigError, "unknown protocol"),
        ({"groups": ("anomem", "lof")}, ConfigError, "'lof'"),
        ({"classes": (10,)}, DataError, "class 10 does not exist"),
        ({"ratios": (1.0,)}, ConfigError, r"\[0, 1\)"),
        ({"protocol": "cross-type", "ratios": (0.0,)}, ConfigError, "must be > 0"),
        ({"protocol": "ood"}, ConfigError, "--ood"),
        ({"seeds": 0}, ConfigError, "--seeds"),
    ],
)
def test_bad_settings_are_named(kw, err, message):
    with pytest.raises(err, match=message):
        plan_cells(_settings(**kw), 10)


def test_feature_scores_closed_forms():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8))
    # a test point equal to a training point has cosine distance 0 to it; with k=1 that is its score
    s = feature_knn_scores(train, np.vstack([train[:3], -train[:1]]), k=1)
    np.testing.assert_allclose(s[:3], 0, atol=1e-9)
    u = train / np.linalg.norm(train, axis=1, keepdims=True)
    np.testing.assert_allclose(s[3], 1 - (-u[0] @ u.T).max())  # reference: 1 - best cosine
    # scale does not matter (cosine): features are compared as directions
    np.testing.assert_allclose(feature_knn_scores(3 * train, train[:5], k=2), feature_knn_scores(train, train[:5], k=2))
    two = np.array([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]])
    km = feature_kmeans_scores(two, np.array([[1.0, 0.005], [-1, -1]]), k=2, seed=0)
    assert km[0] < 1e-4  # on a centroid
    assert km[1] == pytest.approx(1 + np.sqrt(0.5), abs=0.01)  # 135° from both centroids


def test_run_resume_summary_and_refusal(tmp_path):
    out = tmp_path / "bench"
    s = _settings(ratios=(0.0, 0.2), groups=("knn", "anomem", "deepsad"))
    seen = []
    run_benchmark(s, out, progress=False, on_cell=lambda c, r: seen.append(c.key))
    assert len(seen) == 6  # knn at γ=0.2 copied from γ=0, not recomputed
    res = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["ratio"]): r for r in res["rows"]}
    assert set(rows) == {(m, g) for m in ("knn", "anomem", "deepsad") for g in (0.0, 0.2)}
    assert rows["knn", 0.0]["auroc"] == rows["knn", 0.2]["auroc"] > 0.95  # digits 0 is easy for raw kNN
    assert rows["deepsad", 0.2]["n_train_anomalies"] == round(0.2 * 60 / 0.8)
    # the labelled anomalies reach AnoMem's supervised heads (Eq. 10): far better than chance
    assert rows["anomem", 0.2]["auroc"] > 0.9
    md = (out / "results.md").read_text()
    assert "| class | anomem | deepsad | knn |" in md and "### γ = 0.2" in md
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6 and csv_lines[0].startswith("protocol,")
    for f in ("roc_gamma0.png", "hist_gamma0.2.png", "auroc_vs_ratio.png", "cost_quality.png"):
        assert (out / "plots" / f).stat().st_size > 1000 and not (out / f).exists()
    assert "[cost_quality](plots/cost_quality.png)" in md
    z = np.load(out / "cells" / "one-vs-all_c0_r0.2_s0_anomem.npz")
    assert z["score__anomem"].shape == z["is_anomaly"].shape == (719,)

    # interrupted: one finished cell lost -> only that cell runs again
    (out / "cells" / "one-vs-all_c0_r0_s0_deepsad.json").unlink()
    again = []
    run_benchmark(s, out, progress=False, on_cell=lambda c, r: again.append(c.key))
    assert again == ["one-vs-all_c0_r0_s0_deepsad"]
    # other settings into the same directory: refused, nothing touched
    before = (out / "results.json").read_bytes()
    with pytest.raises(ConfigError, match="max_train"):
        run_benchmark(_settings(ratios=(0.0, 0.2), groups=("knn", "anomem", "deepsad"), max_train=50), out,
                      progress=False)
    assert (out / "results.json").read_bytes() == before


def test_cross_type_and_deep_sad_protocols(tmp_path):
    s = _settings(protocol="cross-type", classes=(1,), ratios=(0.1,), seeds=2, groups=("knn", "deepsad"))
    run_benchmark(s, tmp_path / "ct", progress=False)
    rows = json.loads((tmp_path / "ct" / "results.json").read_text())["rows"]
    assert {r["other"] for r in rows} == {0, 2}
    for r in rows:  # test set: class-1 normals and the held-out type only (digits: ~72 each)
        assert 120 < r["n_test"] < 170
    s = _settings(protocol="deep-sad", classes=(1,), ratios=(0.05,), pollution=0.1, groups=("knn", "deepsad"))
    run_benchmark(s, tmp_path / "sad", progress=False)
    rows = {r["method"]: r for r in json.loads((tmp_path / "sad" / "results.json").read_text())["rows"]}
    for r in rows.values():
        assert r["n_train_normals"] == 60 + round(0.1 * 60 / 0.9)  # normals plus unlabelled pollution
        assert r["n_train_anomalies"] == round(0.05 * 67 / 0.95) and r["n_test"] == 719
    assert rows["knn"]["auroc"] > 0.8  # 10% pollution costs raw kNN little on digits


def test_ood_protocol_resizes_the_ood_set(tmp_path, require_realdata):
    require_realdata("/usr/share/datasets/fashion-mnist", "Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    s = _settings(protocol="ood", ood="fashion-mnist", classes=(0,), groups=("knn",), max_test=1000)
    run_benchmark(s, tmp_path / "ood", progress=False)
    (r,) = json.loads((tmp_path / "ood" / "results.json").read_text())["rows"]
    assert r["normal_class"] == -1 and r["n_train_normals"] == 60
    assert 990 <= r["n_test"] <= 1010
    assert r["auroc"] > 0.9  # clothes at 16x16 look nothing like handwritten digits


def test_cli_benchmark(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["benchmark", "--data", "digits", "--classes", "3", "--methods", "knn", "iforest", "--max-train", "50",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| class | knn | iforest |" in printed and "benchmark finished" in printed
    assert main([*args[:-3], "--max-train", "40", "--out", str(out), "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["benchmark", "--data", "digits", "--classes", "12", "--methods", "knn", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "class 12 does not exist" in capsys.readouterr().err
    assert main(["benchmark", "--data", "digits", "--set", "memory.beta=-1", "--out", str(tmp_path / "y")]) == 2
    (tmp_path / "a_file").write_text("x")
    assert main(["benchmark", "--data", "digits", "--methods", "knn", "--out", str(tmp_path / "a_file"),
                 "--no-progress"]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_linear_evaluation_of_a_trained_encoder(tmp_path, capsys):
    from anomem import AnoMem, load_config
    from anomem.data.registry import load_dataset

    train = load_dataset("digits", "train")
    cfg = load_config("tiny", None, ["train.epochs=3", "train.batch_size=64", "backbone.width=8", "train.seed=0"])
    det = AnoMem(cfg, progress=False).fit(train.images[train.targets == 0])
    ckpt = tmp_path / "m.ckpt"
    det.save(ckpt)
    out = tmp_path / "lin.json"
    assert main(["linear-eval", str(ckpt), "--data", "digits", "--max-train", "500", "--out", str(out)]) == 0
    assert "frozen encoder" in capsys.readouterr().out
    acc = json.loads(out.read_text())
    assert acc["raw_pixels"] > 0.9  # digits are linearly separable from pixels
    # an encoder trained on zeros alone still carries class information: far above chance (10%)
    assert 0.4 < acc["encoder"] <= 1.0
    assert main(["linear-eval", str(ckpt), "--data", "digits", "--max-train", "1"]) == 2  # one class only


def _png_dir(directory, images):
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy(), mode="L").save(directory / f"{i:03d}.png")


def test_user_folder_one_vs_all_and_cross_type(tmp_path):
    import torch

    from synthetic import stripes

    root = tmp_path / "ds"
    noise = lambda n, seed: torch.randint(0, 256, (n, 1, 16, 16), generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                          dtype=torch.uint8)
    _png_dir(root / "train" / "normal", stripes(40, False, seed=0))
    _png_dir(root / "train" / "anomaly" / "vertical", stripes(6, True, seed=1))
    _png_dir(root / "train" / "anomaly" / "noise", noise(6, 2))
    _png_dir(root / "test" / "normal", stripes(10, False, seed=3))
    _png_dir(root / "test" / "anomaly" / "vertical", stripes(4, True, seed=4))
    _png_dir(root / "test" / "anomaly" / "noise", noise(7, 5))
    data = f"folder:{root}"

    s = _settings(data=data, ratios=(0.1,), groups=("knn", "deepsad"), max_train=None)
    run_benchmark(s, tmp_path / "ova", progress=False)
    rows = json.loads((tmp_path / "ova" / "results.json").read_text())["rows"]
    by = {r["method"]: r for r in rows}
    assert by["deepsad"]["n_train_anomalies"] == round(0.1 * 40 / 0.9)
    assert by["knn"]["n_train_anomalies"] == 0  # label-free: the γ = 0 cell, labels never seen
    assert by["knn"]["n_test"] == by["deepsad"]["n_test"] == 21 and by["knn"]["auroc"] > 0.9

    s = _settings(data=data, protocol="cross-type", ratios=(0.1,), seeds=2, groups=("knn",), max_train=None)
    run_benchmark(s, tmp_path / "ct", progress=False)
    rows = {r["other"]: r for r in json.loads((tmp_path / "ct" / "results.json").read_text())["rows"]}
    assert rows[0]["n_test"] == 10 + 7 and rows[1]["n_test"] == 10 + 4  # types sorted: noise, vertical
    with pytest.raises(ConfigError, match="--classes 0"):
        run_benchmark(_settings(data=data, classes=(1,)), tmp_path / "bad", progress=False)
    with pytest.raises(DataError, match="train/anomaly holds 6 besides the held-out type"):
        run_benchmark(_settings(data=data, protocol="cross-type", ratios=(0.5,), groups=("knn",)), tmp_path / "b2",
                      progress=False)


def test_parallel_jobs_give_the_same_cells(tmp_path):
    s = _settings(classes=(0, 1), ratios=(0.0, 0.1), groups=("knn", "iforest"))
    key = lambda r: (r["normal_class"], r["ratio"], r["method"])  # noqa: E731
    runs = []
    for jobs in (1, 2):
        run_benchmark(s, tmp_path / f"j{jobs}", jobs=jobs, threads=1, progress=False)
        rows = json.loads((tmp_path / f"j{jobs}" / "results.json").read_text())["rows"]
        runs.append({key(r): r["auroc"] for r in rows})
    assert len(runs[0]) == 8 and runs[0] == runs[1]


def test_paper_column_trains_the_paper_method(monkeypatch):
    """anomem-paper: same preset and budget, no pseudo-anomalies, no bank; anomem: both on."""
    from anomem.bench import runner as benchmark
    from anomem.detector import AnoMem

    seen = {}
    real_fit = AnoMem.fit

    def spy(self, X, anomalies=None, **kw):
        seen[self.config.pseudo.enabled] = self.config.bank.size
        return real_fit(self, X, anomalies, **kw)

    monkeypatch.setattr(AnoMem, "fit", spy)
    s = _settings(groups=("anomem", "anomem-paper"))
    for g in s.groups:
        cell = Cell("one-vs-all", 0, 0.0, 0, g)
        out = benchmark.run_group(s, cell, benchmark.build_split(s, cell))
        assert set(out) == {g} and np.isfinite(out[g]).all()
    assert seen == {True: 2048, False: 0}


def test_in_process_cells_restore_the_thread_count():
    import torch

    from anomem.bench.runner import run_cell

    before = torch.get_num_threads()
    run_cell(_settings(), Cell("one-vs-all", 0, 0.0, 0, "knn"), threads=before + 1)
    assert torch.get_num_threads() == before


def test_settings_carry_the_config_object_without_changing_their_identity():
    """The CLI hands the runner a built config; the benchmark's identity stays preset +
    overrides, so directories written before the config was carried still resume."""
    from dataclasses import replace

    from anomem.bench.runner import _anomem_config
    from anomem.config import load_config

    s = _settings()
    cfg = load_config("tiny", None, list(FAST))
    cfg = replace(cfg, heads=replace(cfg.heads, steps=7))  # an edit no override string says
    with_cfg = replace(s, config=cfg.to_dict())
    assert with_cfg.fingerprint() == s.fingerprint()
    got = _anomem_config(with_cfg, seed=3)
    assert got.heads.steps == 7 and got.train.seed == 3  # trained from the object, seed set per cell
    assert _anomem_config(s, seed=3).heads.steps != 7  # without it: preset + overrides


def test_a_directory_written_with_old_keys_resumes_with_todays(tmp_path):
    """The committed fashion-mnist-contrast run was asked with scorer.calibration_max_fraction=0:
    the same settings spelled today (threshold.calibration_max_fraction=0) are the same benchmark."""
    import json as _json

    from anomem.bench.plan import fingerprint

    root = Path(__file__).resolve().parents[2] / "docs/results/fashion-mnist-contrast/benchmark.json"
    old = _json.loads(root.read_text())["settings"]
    assert "scorer.calibration_max_fraction=0" in old["overrides"]
    today = {**old, "overrides": [o.replace("scorer.calibration", "threshold.calibration") for o in old["overrides"]]}
    assert fingerprint(today) == fingerprint(old)
    assert fingerprint({**today, "overrides": [*today["overrides"], "train.seed=1"]}) != fingerprint(old)
