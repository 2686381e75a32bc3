"""Heat-map PNGs, `anomem evaluate` reports (HTML self-contained, Markdown) on a folder
with test/masks and on a named dataset with generated defects."""

import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem, load_config
from anomem.bench.report import evaluate
from anomem.cli import main
from anomem.data.defects import add_defects
from anomem.metrics import aupro, image_auroc, pixel_auroc

from synthetic import stripes

CFG = load_config("tiny", None, ["train.epochs=2", "train.batch_size=64", "heads.steps=20"])


def _save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    normals = stripes(96, False, seed=0)
    for i, im in enumerate(normals[:16]):
        _save_png(root / "train" / "normal" / f"n{i:02d}.png", im[0].numpy())
    test_normal = stripes(6, False, seed=1)
    bad = add_defects(stripes(6, False, seed=2), seed=0)
    for i in range(6):
        _save_png(root / "test" / "normal" / f"n{i}.png", test_normal[i, 0].numpy())
        _save_png(root / "test" / "anomaly" / f"a{i}.png", bad.images[i, 0].numpy())
        _save_png(root / "test" / "masks" / f"a{i}.png", bad.masks[i, 0].numpy())
    det = AnoMem(CFG, progress=False).fit(normals)
    ckpt = root / "m.ckpt"
    det.save(ckpt)
    return root, det, ckpt


def test_score_maps_writes_one_png_per_image(setup, tmp_path, capsys):
    root, det, ckpt = setup
    out = tmp_path / "maps"
    assert main(["score", str(ckpt), str(root / "test" / "anomaly"), "--maps", str(out), "--maps-format", "figure"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"a{i}.png" for i in range(6)]
    w, h = Image.open(pngs[0]).size
    assert w > 2.5 * h  # image | overlay | 2 scales, side by side
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and all(r["is_anomaly"] in ("0", "1") for r in rows)  # the checkpoint has a threshold
    assert [r["heatmap"] for r in rows] == [str(p) for p in pngs]


def test_evaluate_matches_metrics_module(setup):
    root, det, _ = setup
    from anomem.data.folder import load_folder

    test = load_folder(root, "test")
    ev = evaluate(det, test.images, test.anomaly, test.masks)
    y = test.anomaly.numpy()
    assert ev.metrics["image_auroc"] == pytest.approx(image_auroc(y, det.anomaly_score(test.images)))
    maps = det.anomaly_maps(test.images).fused
    gt = test.masks[:, 0].numpy() > 0
    assert ev.metrics["pixel_auroc"] == pytest.approx(pixel_auroc(gt, maps))
    assert ev.metrics["aupro"] == pytest.approx(aupro(gt, maps))
    m = ev.metrics
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == 12 and m["n_anomaly"] == 6
    assert np.array_equal(ev.predicted, det.predict(test.images))


def test_evaluate_command_writes_self_contained_html_and_markdown(setup, tmp_path, capsys):
    root, _, ckpt = setup
    out = tmp_path / "report"
    assert main(["evaluate", str(ckpt), "--data", str(root), "--out", str(out)]) == 0
    assert "pixel_auroc" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # curves, histogram, two grids
    for needle in ("Image AUROC", "Pixel AUROC", "AUPRO", "predicted anomaly", "most anomalous"):
        assert needle in page
    # nothing is loaded from elsewhere: no scripts, stylesheets or remote/relative images
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'src="(?!data:)', page)
    md = (out / "report.md").read_text()
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == 4 and all((out / f).is_file() for f in figures)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    # the written numbers are those of the metrics module on the folder's test images
    from anomem.data.folder import load_folder

    test, det = load_folder(root, "test"), AnoMem.load(ckpt)
    assert metrics["image_auroc"] == pytest.approx(image_auroc(test.anomaly.numpy(), det.anomaly_score(test.images)))
    assert metrics["aupro"] == pytest.approx(aupro(test.masks[:, 0].numpy() > 0, det.anomaly_maps(test.images).fused))


def test_evaluate_named_dataset_with_generated_defects(setup, tmp_path, capsys):
    _, _, ckpt = setup
    out = tmp_path / "digits"
    argv = ["evaluate", str(ckpt), "--data", "digits", "--normal-class", "3", "--defects", "--max-images", "20",
            "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["n_normal"] == metrics["n_anomaly"] == 10 and "aupro" in metrics
    assert main(["evaluate", str(ckpt), "--data", "digits", "--out", str(out)]) == 2  # no --normal-class
    assert "--normal-class" in capsys.readouterr().err


def test_report_without_threshold_says_so(setup, tmp_path):
    from anomem.bench.report import write_report

    _, det, _ = setup
    x = torch.cat([stripes(4, False, seed=3), stripes(4, True, seed=4)])
    saved, det.threshold_ = det.threshold_, None
    try:
        ev = evaluate(det, x, np.r_[np.zeros(4), np.ones(4)])
    finally:
        det.threshold_ = saved
    assert ev.predicted is None and "pixel_auroc" not in ev.metrics
    files = write_report(ev, x, tmp_path / "r", grid_size=3)
    assert "No threshold is stored" in files.html.read_text()


def test_per_type_results(setup, tmp_path):
    """Per anomaly type: AUROC of that type against every normal (sklearn on the subset),
    recall at the threshold, hardest first; shown in both report pages."""
    from sklearn.metrics import roc_auc_score

    from anomem.bench.report import write_report

    _, det, _ = setup
    x = torch.cat([stripes(6, False, seed=7), stripes(4, True, seed=8), add_defects(stripes(4, False, seed=9), seed=1).images])
    y = np.r_[np.zeros(6), np.ones(8)].astype(bool)
    types = [""] * 6 + ["vertical"] * 4 + ["defect"] * 4
    ev = evaluate(det, x, y, types=types)
    rows = ev.metrics["per_type"]
    s = det.anomaly_score(x)
    for r in rows:
        sel = np.array([t == r["type"] for t in types]) | ~y
        assert r["image_auroc"] == pytest.approx(roc_auc_score(y[sel], s[sel]))
        assert r["n"] == 4 and r["recall"] == pytest.approx(det.predict(x)[np.array(types) == r["type"]].mean())
    assert [r["image_auroc"] for r in rows] == sorted(r["image_auroc"] for r in rows)
    files = write_report(ev, x, tmp_path / "r")
    for page in (files.html, files.markdown):
        assert "Each anomaly type" in page.read_text() and "vertical" in page.read_text()
    one = evaluate(det, x, y, types=[""] * 6 + ["vertical"] * 8)
    assert "per_type" not in one.metrics  # one type: the overall numbers say it all
    with pytest.raises(Exception, match="types has 3 entries for 14 images"):
        evaluate(det, x, y, types=["a", "b", "c"])
