"""What `anomem score` / `evaluate` / `train` hand to a pipeline: score files with a header
and named columns (CSV, JSON, JSON lines), heat-map files that never collide, a line on
what was converted (and --strict), and progress that suits a log."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import expit

from anomem import AnoMem, load_config
from anomem.cli import main
from anomem.cli.common import progress_mode
from anomem.data.folder import load_images
from anomem.io.outputs import unique_names

from synthetic import stripes

CFG = load_config("tiny", None, ["train.epochs=2", "train.batch_size=64", "heads.steps=20"])
COLUMNS = ["path", "score", "score_normalized", "is_anomaly", "threshold"]


def _save(path, arr, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    det = AnoMem(CFG, progress=False).fit(stripes(96, False, seed=0))
    assert det.threshold_ is not None
    ckpt = root / "m.ckpt"
    det.save(ckpt)
    det.threshold_ = None
    bare = root / "bare.ckpt"
    det.save(bare)
    imgs = torch.cat([stripes(3, False, seed=1), stripes(3, True, seed=2)])
    for i in range(3):  # the same file name in two folders, and a name CSV must quote
        _save(root / "in" / "a" / f"x{i}.png", imgs[i, 0].numpy())
        _save(root / "in" / "b" / f"x{i}.png", imgs[3 + i, 0].numpy())
    _save(root / "in" / "c" / 'odd, "name".png', imgs[0, 0].numpy())
    return root, AnoMem.load(ckpt), ckpt, bare


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_stdout_csv_has_header_and_named_columns(setup, capsys):
    root, det, ckpt, _ = setup
    assert main(["score", str(ckpt), str(root / "in")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(COLUMNS)
    rows = _csv(out)
    assert len(rows) == 7 and any(r["path"].endswith('odd, "name".png') for r in rows)  # quoted, read back whole
    th = det.threshold_
    for r in rows:
        s = float(r["score"])
        assert float(r["threshold"]) == th.value
        assert r["is_anomaly"] == str(int(s > th.value))
        n = float(r["score_normalized"])
        # the logistic of the distance to the threshold in units of its scale, 0.5 at the threshold
        assert n == pytest.approx(expit((s - th.value) / th.scale), rel=1e-9, abs=1e-12)
        assert (n > 0.5) == (s > th.value)
    files = load_images([root / "in"], image_size=det.image_size_, channels=det.in_channels_)
    np.testing.assert_allclose([float(r["score"]) for r in rows], det.anomaly_score(files.images), rtol=1e-6)


def test_json_and_json_lines_match_csv(setup, tmp_path, capsys):
    root, _, ckpt, _ = setup
    assert main(["score", str(ckpt), str(root / "in"), "--out", str(tmp_path / "s.csv")]) == 0
    rows = _csv((tmp_path / "s.csv").read_text())
    capsys.readouterr()
    assert main(["score", str(ckpt), str(root / "in"), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert main(["score", str(ckpt), str(root / "in"), "--out", str(tmp_path / "s.jsonl")]) == 0
    lines = [json.loads(ln) for ln in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert records == lines and len(records) == len(rows) == 7
    for r, rec in zip(rows, records):
        assert list(rec) == COLUMNS and rec["path"] == r["path"]
        assert rec["score"] == float(r["score"]) and rec["is_anomaly"] == int(r["is_anomaly"])
        assert isinstance(rec["is_anomaly"], int) and isinstance(rec["score_normalized"], float)


def test_without_threshold_prediction_columns_are_empty(setup, capsys):
    root, _, _, bare = setup
    assert main(["score", str(bare), str(root / "in" / "a")]) == 0
    rows = _csv(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["score"] and not r["score_normalized"] and not r["is_anomaly"]
                                  and not r["threshold"] for r in rows)
    assert main(["score", str(bare), str(root / "in" / "a"), "--format", "jsonl"]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert all(r["is_anomaly"] is None and r["score_normalized"] is None for r in recs)


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_maps_are_unique_linked_and_raw(setup, tmp_path, capsys, fmt):
    root, det, ckpt, _ = setup
    maps = tmp_path / "maps"
    args = ["score", str(ckpt), str(root / "in" / "a"), str(root / "in" / "b"), "--maps", str(maps)]
    assert main([*args, "--maps-format", fmt]) == 0
    rows = _csv(capsys.readouterr().out)
    linked = [r["heatmap"] for r in rows]
    assert len(set(linked)) == 6 and all(p.endswith("." + fmt) for p in linked)
    assert sorted(p.name for p in maps.iterdir() if not p.name.startswith(".")) == sorted(
        p.rsplit("/", 1)[1] for p in linked)
    assert not {r["path"] for r in rows} & set(linked)
    files = load_images([root / "in" / "a", root / "in" / "b"], image_size=det.image_size_, channels=1)
    fused = det.anomaly_maps(files.images).fused
    for i, path in enumerate(linked):
        if fmt == "npy":
            np.testing.assert_allclose(np.load(path), fused[i], rtol=1e-5, atol=1e-6)
        else:
            im = Image.open(path)
            assert im.mode == "RGB" and im.size == (16, 16)
    if fmt == "png":  # hotter pixels are brighter in 'inferno'
        a = np.asarray(Image.open(linked[0]), dtype=float).sum(2)
        hot, cold = np.unravel_index(fused[0].argmax(), fused[0].shape), np.unravel_index(fused[0].argmin(), fused[0].shape)
        assert a[hot] > a[cold]


def test_unique_names_never_collide():
    names = unique_names(["a/x.png", "a/x_2.png", "b/x.png", "c/X.jpg", "d/x.tif"], ".png")
    assert len({n.lower() for n in names}) == 5 and names[0] == "x.png" and names[1] == "x_2.png"


def test_maps_dir_may_not_hold_inputs(setup, capsys):
    root, _, ckpt, _ = setup
    assert main(["score", str(ckpt), str(root / "in" / "a"), "--maps", str(root / "in")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def colour(setup):
    root = setup[0]
    for i in range(2):  # 20 wide, 12 high, RGB: the detector takes 16x16 grey
        arr = np.zeros((12, 20, 3), dtype=np.uint8)
        arr[:, 5 + i: 8 + i] = (200, 120, 40)
        _save(root / "colour" / f"c{i}.png", arr, mode="RGB")
    return root / "colour"


def test_conversion_is_reported_and_does_not_change_scores(setup, colour, capsys):
    root, det, ckpt, _ = setup
    assert main(["score", str(ckpt), str(colour)]) == 0
    cap = capsys.readouterr()
    assert "converted 2 images: 2 resized 20x12->16x16, 2 RGB->grey (detector input: 16x16 grey)" in cap.err
    assert len(cap.err.strip().splitlines()) == 1
    files = load_images([colour], image_size=16, channels=1)
    np.testing.assert_allclose([float(r["score"]) for r in _csv(cap.out)], det.anomaly_score(files.images), rtol=1e-6)
    assert main(["score", str(ckpt), str(root / "in" / "a")]) == 0
    assert "converted" not in capsys.readouterr().err


def test_strict_refuses_conversion_and_writes_nothing(setup, colour, tmp_path, capsys):
    _, _, ckpt, _ = setup
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert main(["score", str(ckpt), str(colour), "--strict", "--out", str(out), "--maps", str(maps)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anomem: error: --strict") and "RGB->grey" in err[0]
    assert not out.exists() and not maps.exists()


def test_evaluate_strict_and_report(setup, tmp_path, capsys):
    root, _, ckpt, _ = setup
    data = tmp_path / "ds"
    for i in range(3):
        _save(data / "train" / "normal" / f"n{i}.png", np.full((20, 20), 30 * i, dtype=np.uint8))
        _save(data / "test" / "normal" / f"n{i}.png", stripes(1, False, size=20, seed=i)[0, 0].numpy())
        _save(data / "test" / "anomaly" / f"a{i}.png", stripes(1, True, size=20, seed=9 + i)[0, 0].numpy())
    assert main(["evaluate", str(ckpt), "--data", str(data), "--out", str(tmp_path / "r1"), "--strict"]) == 2
    assert "resized 20x20->16x16" in capsys.readouterr().err and not (tmp_path / "r1").exists()
    assert main(["evaluate", str(ckpt), "--data", str(data), "--out", str(tmp_path / "r2")]) == 0
    assert "converted 6 images: 6 resized 20x20->16x16" in capsys.readouterr().err


def test_progress_mode_follows_the_terminal():
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    assert progress_mode(True, Stream(True)) == (True, False)
    assert progress_mode(True, Stream(False)) == (False, True)
    assert progress_mode(False, Stream(True)) == (False, False)


def test_train_logs_epochs_as_lines_outside_a_terminal(tmp_path, capsys):
    data = tmp_path / "ds"
    for i, im in enumerate(stripes(24, False, seed=0)):
        _save(data / "train" / "normal" / f"n{i}.png", im[0].numpy())
    for i, im in enumerate(stripes(4, True, seed=1)):
        _save(data / "test" / "anomaly" / f"a{i}.png", im[0].numpy())
    for i, im in enumerate(stripes(4, False, seed=2)):
        _save(data / "test" / "normal" / f"n{i}.png", im[0].numpy())
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--preset", "tiny", "--epochs", "2", "--set", "heads.steps=10",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    epochs = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/2", "2/2"] and "loss" in epochs[0]
    assert "stage 1" not in err and "\r" not in err  # no tqdm bar in a log
    rows = _csv((run / "test_scores.csv").read_text())
    assert list(rows[0]) == [*COLUMNS, "truth_is_anomaly"] and len(rows) == 8
    assert sorted(r["truth_is_anomaly"] for r in rows) == ["0"] * 4 + ["1"] * 4
    assert all(r["truth_is_anomaly"] == str(int("/anomaly/" in r["path"])) for r in rows)


def test_benchmark_logs_one_line_per_cell_outside_a_terminal(tmp_path, capsys):
    args = ["benchmark", "--data", "digits", "--classes", "3", "4", "--methods", "knn", "--max-train", "50",
            "--out", str(tmp_path / "b")]
    assert main(args) == 0
    err = capsys.readouterr().err
    cells = [ln for ln in err.splitlines() if ln.startswith("cell ")]
    assert len(cells) == 2 and "one-vs-all_c3_r0_s0_knn: knn AUROC 0." in cells[0] and cells[1].startswith("cell 2 done")
    assert "benchmark cells" not in err and "\r" not in err
    assert main([*args, "--no-progress"]) == 0  # resumed: nothing to run, and nothing logged
    assert "cell " not in capsys.readouterr().err


def test_conversion_kinds_of_one_file(tmp_path):
    from anomem.data.image_io import (
        conversions,
        count_conversions,
        describe_conversions,
        probe_image,
    )

    Image.fromarray(np.zeros((8, 6, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    rgba, deep = probe_image(tmp_path / "rgba.png"), probe_image(tmp_path / "deep.png")
    assert conversions(rgba, (8, 6), 3) == ["alpha dropped"]
    assert conversions(rgba, (8, 6), 1) == ["RGB->grey", "alpha dropped"]
    assert conversions(deep, (8, 8), 1) == ["16-bit->8-bit"] and conversions(deep, (8, 8), 3)[0] == "grey->RGB"
    counts = count_conversions([rgba, deep], (8, 8), 1)
    assert describe_conversions(counts) == "converted 2 images: 1 resized 6x8->8x8, 1 RGB->grey, 1 alpha dropped, 1 16-bit->8-bit"
    assert describe_conversions(count_conversions([deep], (8, 8), 1)) == "converted 1 image: 1 16-bit->8-bit"
    assert describe_conversions(count_conversions([rgba], (8, 6), 3)) == "converted 1 image: 1 alpha dropped"
    assert describe_conversions({"images": 0}) is None


def test_threshold_says_what_it_converted(setup, colour, tmp_path, capsys):
    _, _, ckpt, _ = setup
    out = tmp_path / "t.ckpt"
    assert main(["threshold", str(ckpt), "--normals", str(colour), "--fpr", "0.5", "--out", str(out)]) == 0
    assert "converted 2 images: 2 resized 20x12->16x16, 2 RGB->grey" in capsys.readouterr().err
