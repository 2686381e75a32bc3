"""`anomem train` / `evaluate` on MVTec AD and flat folders (--normal-dir, --abnormal-dir, ...)."""

import json

import numpy as np
from cli_checks import one_line_error
from PIL import Image

from anomem.cli import main

from synthetic import stripes

TINY = ["--preset", "tiny", "--epochs", "1", "--set", "train.batch_size=16", "--set", "heads.steps=10", "--no-progress"]


def _write(dirpath, imgs, prefix=""):
    dirpath.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im[0].numpy(), mode="L").save(dirpath / f"{prefix}{i:03d}.png")


def test_mvtec_layout_trains_and_evaluates_with_masks(tmp_path):
    root = tmp_path / "bottle"
    _write(root / "train/good", stripes(32, False, seed=0))
    _write(root / "test/good", stripes(6, False, seed=1))
    _write(root / "test/vertical", stripes(6, True, seed=2))
    mask = np.zeros((16, 16), np.uint8)
    mask[:, :8] = 255
    (root / "ground_truth/vertical").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(mask).save(root / f"ground_truth/vertical/{i:03d}_mask.png")
    layout = ["--normal-dir", "good", "--abnormal-dir", "*", "--mask-dir", "ground_truth"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), *layout, *TINY, "--out", str(run)]) == 0
    assert "test_auroc" in json.loads((run / "metrics.json").read_text())
    saved = json.loads((run / "args.json").read_text())
    assert saved["normal_dir"] == "good" and saved["abnormal_dir"] == ["*"]
    report = tmp_path / "report"
    assert main(["evaluate", str(run / "model.ckpt"), "--data", str(root), *layout, "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert "pixel_auroc" in json.dumps(metrics) and "image_auroc" in json.dumps(metrics)


def test_flat_folder_of_normals_trains(tmp_path, capsys):
    root = tmp_path / "good"
    _write(root, stripes(40, False, seed=0))
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--normal-dir", ".", *TINY, "--out", str(run)]) == 0
    assert "flat layout: 80% of the normals train" in (run / "train.log").read_text() + capsys.readouterr().out


def test_layout_mistakes_are_one_line_errors(tmp_path, capsys):
    root = tmp_path / "good"
    _write(root, stripes(4, False, seed=0))
    assert main(["train", "--data", str(root), *TINY, "--out", str(tmp_path / "r1")]) == 2
    one_line_error(capsys, "missing folder train/normal", "--normal-dir .")
    assert main(["train", "--data", str(root), "--normal-dir", ".", "--normal-split-ratio", "1", *TINY,
                 "--out", str(tmp_path / "r2")]) == 2
    one_line_error(capsys, "normal_split_ratio must be a number in [0, 1)")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
