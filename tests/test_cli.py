"""The `anomem` command: train/score/refit on a folder, and clear errors (exit 2)."""

import csv
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from cli_checks import one_line_error
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomem import AnoMem
from anomem.cli import main

from synthetic import stripes


def _write(dirpath, imgs, prefix):
    dirpath.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im[0].numpy(), mode="L").save(dirpath / f"{prefix}{i:03d}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    _write(root / "train" / "normal", stripes(48, False, seed=0), "n")
    _write(root / "test" / "normal", stripes(8, False, seed=1), "n")
    _write(root / "test" / "anomaly", stripes(8, True, seed=2), "a")
    _write(root / "extra_anomalies", stripes(6, True, seed=3), "x")
    return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    code = main(["train", "--data", str(folder), "--preset", "tiny", "--epochs", "2", "--set", "train.batch_size=16",
                 "--set", "heads.steps=20", "--out", str(run), "--no-progress"])
    assert code == 0
    return run


def test_train_writes_run_directory(trained):
    for name in ("model.ckpt", "last.ckpt", "config.json", "metrics.json", "train.log", "test_scores.csv"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["seed"] == 0
    # the AUROC is the one of the written test scores, recomputed here with scikit-learn
    rows = list(csv.DictReader((trained / "test_scores.csv").open()))
    truth, scores = [int(r["truth_is_anomaly"]) for r in rows], [float(r["score"]) for r in rows]
    assert sum(truth) == 8 and len(rows) == 16
    assert metrics["test_auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    # vertical against horizontal stripes: training seeds 0-4 on this data and on a second
    # draw of it gave 0.953-1.0 (8 normals against 8 anomalies); 0.8 keeps a margin over chance
    assert metrics["test_auroc"] >= 0.8
    assert "epoch 2" in (trained / "train.log").read_text()


def test_score_writes_csv_and_json(trained, folder, tmp_path):
    out = tmp_path / "s.csv"
    assert main(["score", str(trained / "model.ckpt"), str(folder / "test"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and all(float(r["score"]) == float(r["score"]) for r in rows)
    js = tmp_path / "s.json"
    assert main(["score", str(trained / "model.ckpt"), str(folder / "test" / "anomaly"), "--out", str(js)]) == 0
    assert len(json.loads(js.read_text())) == 8


def test_refit_adds_anomalies(trained, folder, tmp_path):
    out = tmp_path / "refit.ckpt"
    assert main(["refit", str(trained / "model.ckpt"), "--anomalies", str(folder / "extra_anomalies"), "--out", str(out)]) == 0
    from anomem import AnoMem

    assert AnoMem.load(out).is_supervised


@pytest.mark.parametrize(
    "argv,message",
    [
        (["score", "missing.ckpt", "."], "does not exist"),
        (["train", "--data", "no-such-dataset", "--normal-class", "0", "--out", "{tmp}/r"], "no-such-dataset"),
        (["train", "--data", "{tmp}", "--out", "{tmp}_r"], "missing folder train/normal"),
        (["train", "--data", "digits", "--normal-class", "42", "--out", "{tmp}/r"], "class 42 does not exist"),
        (["train", "--data", "digits", "--normal-class", "0", "--set", "train.epochs=-1", "--out", "{tmp}/r"], "train.epochs"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomem: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_corrupt_checkpoint_and_image_are_refused(trained, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00not a checkpoint")
    assert main(["score", str(bad), str(tmp_path)]) == 2
    broken = tmp_path / "img" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"")
    assert main(["score", str(trained / "model.ckpt"), str(broken.parent)]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "anomem.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("anomem ")


def test_small_runs_get_an_estimable_threshold_and_asked_targets_warn_once_at_the_end(trained, folder, tmp_path, capsys):
    from anomem import AnoMem

    t = AnoMem.load(trained / "model.ckpt").threshold_  # 12 held-out normals cannot estimate the default 1 %
    assert t.note == "" and t.target == 0.417 and "chosen: the smallest FPR 12 normals can estimate" in str(t)
    capsys.readouterr()
    assert main(["threshold", str(trained / "model.ckpt"), "--fpr", "0.01", "--out", str(tmp_path / "m.ckpt")]) == 0
    out, err = capsys.readouterr()
    assert "WARNING" not in out and "not estimable" not in out  # the result line does not repeat it
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1 and err.splitlines()[-1] == warned[0], err  # said once, at the end
    assert "target FPR 0.01 is not estimable from 12 normals" in warned[0]
    assert "give 500 normals, or a target of at least 0.417" in warned[0] and "anomem threshold" in warned[0]
    score_out = tmp_path / "s.csv"
    assert main(["score", str(tmp_path / "m.ckpt"), str(folder / "test"), "--out", str(score_out)]) == 0
    out, err = capsys.readouterr()
    assert "WARNING" not in out and len([x for x in err.splitlines() if "warning" in x]) == 1


def test_digits_demo_prints_no_warnings(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["demo", "--data", "digits", "--classes", "0", "--set", "train.epochs=2",
                     "--out", str(tmp_path / "demo")]) == 0
    out, err = capsys.readouterr()
    assert "mean" in out and "warning:" not in (out + err).lower() and not caught, (err, [str(w.message) for w in caught])


def test_photo_demo_reports_what_its_saved_detector_scores(tmp_path, capsys, monkeypatch):
    """The photo demo at a small size: no warning; its report has the heat-maps and every
    defect kind; the AnoMem row is what the saved detector scores on the same crops; the
    baselines are on the same footing (same kinds, same normals)."""
    from anomem.bench.photos import family_means, per_kind
    from anomem.cli import demo
    from anomem.data.photos import OBVIOUS, SUBTLE, photo_category

    monkeypatch.setitem(demo.PHOTO, "n_train", 36)
    monkeypatch.setitem(demo.PHOTO, "n_val", 12)
    monkeypatch.setitem(demo.PHOTO, "n_test_normal", 12)
    monkeypatch.setitem(demo.PHOTO, "per_kind", 3)
    out_dir = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["demo", "--size", "32", "--set", "train.epochs=1", "--set", "train.min_steps=4",
                     "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in (out + err).lower() and not caught, (err, [str(w.message) for w in caught])
    result = json.loads((out_dir / "demo.json").read_text())
    assert list(result["methods"]) == ["AnoMem (cpu-small)", "patch kNN (coreset, max)",
                                       "patch kNN (coreset, top 1% mean)", "kNN (whole image)"]
    for name, row in result["methods"].items():
        assert set(row["kinds"]) == set(OBVIOUS + SUBTLE), name
        assert name in out
    sp = photo_category("grass", size=32, n_train=36, n_test_normal=12, per_kind=3, seed=0, n_val=12)
    det = AnoMem.load(out_dir / "detector.ckpt")
    assert det.threshold_.n_normal == 12 and det.banks_.normal_scores.shape[0] == 36  # validation crops, none held out
    u8 = lambda a: torch.from_numpy(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))  # noqa: E731
    kinds = per_kind(sp, det.anomaly_score(u8(sp.test_normal)), det.anomaly_score(u8(sp.test_defect)))
    row = result["methods"]["AnoMem (cpu-small)"]
    for fam, value in family_means(kinds).items():
        assert row[f"image_auroc_{fam}"] == pytest.approx(value, abs=1e-6)
    assert result["threshold_flags_test_normals"] == int(det.predict(u8(sp.test_normal)).sum())
    html = (out_dir / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and all(k in html for k in OBVIOUS + SUBTLE)
    assert "patch kNN (coreset, max): image AUROC obvious / subtle" in html


def test_train_with_val_normals_sets_the_threshold_from_them_and_refuses_bad_ones(folder, tmp_path, capsys):
    val = tmp_path / "val"
    _write(val, stripes(12, False, seed=7), "v")
    run = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--preset", "tiny", "--epochs", "1", "--set", "train.batch_size=16",
            "--set", "heads.steps=5", "--no-progress", "--val-normals", str(val)]
    assert main([*argv, "--out", str(run)]) == 0
    det = AnoMem.load(run / "model.ckpt")
    assert det.threshold_.n_normal == 12 and det.banks_.normal_scores.shape[0] == 48  # every training normal trains
    assert json.loads((run / "args.json").read_text())["val_normals"] == [str(val.resolve())]
    capsys.readouterr()
    # a training image among them, a missing folder, the run directory inside them: exit 2, nothing written
    _write(val, stripes(48, False, seed=0)[:1], "train-copy")
    assert main([*argv, "--out", str(tmp_path / "r2")]) == 2
    one_line_error(capsys, "validation: 1 of 13 images are also training images")
    assert not (tmp_path / "r2").exists()
    assert main([*argv[:-1], str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")]) == 2
    one_line_error(capsys, "nowhere: no such file or directory")
    assert main([*argv, "--out", str(val / "run")]) == 2
    one_line_error(capsys, "--out")
    assert not (val / "run").exists()
