"""Issue 10, the rest of the hostile-user run: arguments checked before any work, inputs
that used to give tracebacks or silently wrong results, and misleading messages.

Every CLI case must exit 2 with one line starting ``anomem: error:`` and no traceback;
every API case must raise a DataError/ConfigError naming the problem.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import one_line_error
from PIL import Image

from anomem import AnoMemError, CheckpointError, DataError
from anomem.cli import main
from anomem.data.folder import load_folder, load_images, read_image, scan_image_files
from anomem.detector import AnoMem
from anomem.inputs import as_images, as_labels, check_batch_size, check_trainable_size
from anomem.io.checkpoint import load_checkpoint

from synthetic import stripes


# -- argument ranges, checked before any work --------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "-256", "100000"])
def test_batch_size_out_of_range(trained_run, folder_dataset, tmp_path, capsys, value):
    ckpt = str(trained_run / "model.ckpt")
    assert main(["score", ckpt, str(folder_dataset / "test"), "--batch-size", value]) == 2
    one_line_error(capsys, "--batch-size must lie in [1, 65536]", value)
    out = tmp_path / "report"
    assert main(["evaluate", ckpt, "--data", str(folder_dataset), "--out", str(out), "--batch-size", value]) == 2
    one_line_error(capsys, "--batch-size")
    assert not out.exists()


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "8", None])
def test_check_batch_size_refuses_non_positive_and_non_integers(value):
    with pytest.raises(DataError, match="batch_size"):
        check_batch_size(value)


@pytest.mark.parametrize("argv,needle", [
    (["--max-images", "-5"], "--max-images must lie in [1,"),
    (["--max-images", "0"], "--max-images must lie in [1,"),
    (["--max-images", "1", "--defects"], "--max-images must lie in [2,"),
    (["--max-images", "0", "--defects"], "--max-images must lie in [2,"),
])
def test_evaluate_max_images_range(trained_run, tmp_path, capsys, argv, needle):
    out = tmp_path / "r"
    assert main(["evaluate", str(trained_run / "model.ckpt"), "--data", "digits", "--normal-class", "0",
                 "--out", str(out), *argv]) == 2
    one_line_error(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["--jobs", "0"], "--jobs must lie in [1, 256]"),
    (["--jobs", "-2"], "--jobs"),
    (["--threads", "0"], "--threads must lie in [1, 1024]"),
    (["--seeds", "0"], "--seeds"),
    (["--max-train", "0"], "--max-train"),
    (["--max-test", "-1"], "--max-test"),
])
def test_benchmark_counts_are_positive(tmp_path, capsys, argv, needle):
    out = tmp_path / "b"
    assert main(["benchmark", "--data", "digits", "--methods", "knn", "--out", str(out), *argv]) == 2
    one_line_error(capsys, needle)
    assert not out.exists()


# -- inputs that gave tracebacks ---------------------------------------------------
def test_wide_unsigned_images_are_scaled_by_their_range():
    for dtype, top in ((np.uint16, 65535), (np.uint32, 2**32 - 1)):
        x = np.stack([np.full((4, 4), v, dtype) for v in (0, top // 2 + 1, top)])
        out = as_images(x)
        assert out.dtype == torch.uint8 and out[:, 0, 0, 0].tolist() == [0, 128, 255], dtype
    # int32 keeps its meaning: pixel values 0..255
    assert as_images(np.full((2, 4, 4), 200, np.int32)).max() == 200


def test_16_and_32_bit_image_files_are_scaled(tmp_path):
    ramp16 = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "a16.png")
    Image.fromarray(ramp16).save(tmp_path / "a16.tif")
    ramp32 = (np.arange(256, dtype=np.uint64).reshape(16, 16) * 16843009).astype(np.uint32)
    Image.fromarray(ramp32).save(tmp_path / "a32.tif")  # Pillow stores it as signed 32-bit "I"
    for name in ("a16.png", "a16.tif", "a32.tif"):
        px = read_image(tmp_path / name, channels=1).flatten()
        assert px.tolist() == list(range(256)), name


def test_sparse_and_meta_tensors_are_refused():
    for x, needle in [(torch.zeros(2, 1, 8, 8).to_sparse(), "sparse"),
                      (torch.zeros(2, 1, 8, 8, device="meta"), "'meta' device")]:
        with pytest.raises(DataError, match=needle):
            as_images(x)


@pytest.mark.parametrize("y", [["1", "0", "1"], np.array(["a", "b", "c"]), [None, 1, 0], [b"1", b"0", b"1"]])
def test_string_and_object_labels_are_refused(y):
    with pytest.raises(DataError, match="labels must be numbers"):
        as_labels(y, 3)


class _Strings(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return f"img{i}.png", 0


def test_dataset_yielding_strings_is_refused():
    with pytest.raises(DataError, match="yields str 'img0.png' at index 0"):
        as_images(_Strings())


def test_images_smaller_than_the_augmentations_need(tmp_path, tiny_train, png_writer, capsys):
    with pytest.raises(DataError, match="at least 2x2"):
        check_trainable_size((1, 1))
    check_trainable_size((2, 2))
    root = tmp_path / "ds"
    for i in range(8):
        (root / "train" / "normal").mkdir(parents=True, exist_ok=True)
        Image.new("L", (1, 1), i * 30).save(root / "train" / "normal" / f"p{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", *tiny_train]) == 2
    one_line_error(capsys, "1x1 pixels", "at least 2x2")
    assert not out.exists()


def test_one_tiny_image_does_not_resize_the_training_set(tmp_path, png_writer):
    normal = tmp_path / "ds" / "train" / "normal"
    png_writer(normal, stripes(5, False, seed=0), "n")  # 16x16
    Image.new("L", (1, 1), 7).save(normal / "a-first-in-order.png")
    ds = load_folder(tmp_path / "ds", "train")
    assert ds.images.shape == (6, 1, 16, 16)


def test_supervised_mode_without_anomalies_is_refused_before_training(folder_dataset, tiny_train, tmp_path, capsys,
                                                                       monkeypatch):
    import anomem.detector

    def must_not_train(*a, **k):
        raise AssertionError("stage 1 started")

    monkeypatch.setattr(anomem.detector.AnoMem, "fit", must_not_train)
    out = tmp_path / "r"
    assert main(["train", "--data", str(folder_dataset), "--out", str(out), "--set", "scorer.mode=supervised",
                 *tiny_train]) == 2
    one_line_error(capsys, "scorer.mode=supervised needs labelled anomalies")
    assert not out.exists()


# -- folders: symlinks, unreadable subfolders --------------------------------------
def test_symlinked_subfolder_is_followed_and_loops_are_reported(tmp_path, png_writer):
    normal = tmp_path / "ds" / "train" / "normal"
    png_writer(normal, stripes(3, False, seed=0), "n")
    elsewhere = tmp_path / "more"
    png_writer(elsewhere, stripes(2, False, seed=1), "m")
    (normal / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)
    scan = scan_image_files(normal)
    assert [p.relative_to(normal).as_posix() for p in scan.images] == [
        "linked/m000.png", "linked/m001.png", "n000.png", "n001.png", "n002.png"]
    assert len(scan.skipped) == 1 and "already scanned" in scan.skipped[0][1]
    with pytest.warns(UserWarning, match="already scanned"):
        ds = load_folder(tmp_path / "ds", "train")
    assert ds.images.shape[0] == 5


def test_unreadable_subfolder_is_an_error_not_a_silent_skip(tmp_path, png_writer, trained_run, monkeypatch, capsys):
    normal = tmp_path / "ds" / "train" / "normal"
    png_writer(normal, stripes(3, False, seed=0), "n")
    png_writer(normal / "locked", stripes(2, False, seed=1), "l")
    real_scandir = os.scandir

    def scandir(path):  # simulated: the tests may run as root, who can read anything
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot be read: .*locked \(cannot read it: Permission denied\)"):
        load_folder(tmp_path / "ds", "train")
    with pytest.raises(DataError, match="--skip-invalid"):
        load_images(normal)
    assert load_images(normal, skip_invalid=True).meta["skipped"] == [str(normal / "locked")]
    assert main(["score", str(trained_run / "model.ckpt"), str(normal), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 invalid file(s)" in captured.err and "locked" in captured.err


# -- results printed as CSV --------------------------------------------------------
def test_score_to_stdout_is_valid_csv_for_any_file_name(trained_run, tmp_path, capsys):
    d = tmp_path / "weird"
    names = ["a,b.png", 'quote".png', "new\nline.png", "plain.png"]
    for i, name in enumerate(names):
        (d).mkdir(exist_ok=True)
        Image.new("L", (16, 16), 40 * i).save(d / name, "PNG")
    assert main(["score", str(trained_run / "model.ckpt"), str(d)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "score", "score_normalized", "is_anomaly", "threshold"]
    assert sorted(Path(r[0]).name for r in rows[1:]) == sorted(names)
    assert all(len(r) == 5 and float(r[1]) == float(r[1]) for r in rows[1:])


# -- messages that misled -----------------------------------------------------------
def test_not_a_checkpoint_messages(tmp_path, trained_run):
    rnd = tmp_path / "random.ckpt"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    text = tmp_path / "text.ckpt"
    text.write_text("hello world")
    badzip = tmp_path / "badzip.ckpt"
    badzip.write_bytes(b"PK\x03\x04" + b"garbage" * 10)
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes((trained_run / "model.ckpt").read_bytes()[:-30])
    for path, needle in [(rnd, "neither a torch zip archive nor a pickle"), (text, "starts with b'hell'"),
                         (badzip, "failed reading zip archive"), (trunc, "failed finding central directory")]:
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert needle in msg and "objects other than tensors" not in msg and "\n" not in msg, msg
        assert not msg.rstrip().endswith(": 101"), msg


def test_skip_invalid_hint_names_the_cli_flag(trained_run, folder_dataset, tmp_path, capsys):
    d = tmp_path / "imgs"
    shutil.copytree(folder_dataset / "test" / "normal", d)
    (d / "notes.txt").write_text("x")
    assert main(["score", str(trained_run / "model.ckpt"), str(d)]) == 2
    one_line_error(capsys, "--skip-invalid")


def test_config_directory_and_multi_line_yaml_errors(folder_dataset, tmp_path, capsys):
    cfg_dir = tmp_path / "cfgdir"
    cfg_dir.mkdir()
    out = tmp_path / "r"
    assert main(["train", "--data", str(folder_dataset), "--config", str(cfg_dir), "--out", str(out)]) == 2
    one_line_error(capsys, "is a directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n  lr: {\n")
    assert main(["train", "--data", str(folder_dataset), "--config", str(bad), "--out", str(out)]) == 2
    one_line_error(capsys, "not valid YAML")
    assert not out.exists()


def test_plain_folders_load_without_skip_warnings(folder_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_folder(folder_dataset, "train").images.shape[0] == 32


# -- upper bounds where memory or time explodes ------------------------------------
@pytest.mark.parametrize("item,key", [
    ("backbone.width=100000", "backbone.width"), ("memory.sizes=[10000000,16]", "memory.sizes"),
    ("memory.max_steps=100000", "memory.max_steps"), ("train.epochs=10000000", "train.epochs"),
    ("train.batch_size=1000000", "train.batch_size"), ("heads.pool_size=1000", "heads.pool_size"),
    ("heads.steps=1000000000000", "heads.steps"), ("heads.hidden=10000000", "heads.hidden"),
    ("scorer.normal_bank=1000000000", "scorer.normal_bank"), ("pseudo.ratio=1000", "pseudo.ratio"),
    ("train.seed=-1", "train.seed"), ("train.seed=99999999999", "train.seed"),
])
def test_config_values_above_their_ceiling_are_refused_before_work(folder_dataset, tmp_path, capsys, item, key):
    out = tmp_path / "r"
    assert main(["train", "--data", str(folder_dataset), "--preset", "tiny", "--set", item, "--out", str(out)]) == 2
    one_line_error(capsys, key)
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["evaluate", "{ckpt}", "--data", "{data}", "--out", "{tmp}/r", "--seed", "-1"], "--seed must lie in"),
    (["linear-eval", "{ckpt}", "--data", "digits", "--seed", "-7"], "--seed must lie in"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--seed", "-3"], "train.seed must lie in"),
    (["demo", "--data", "digits", "--classes", "12", "--out", "{tmp}/r"], "--classes must lie in [0, 9]"),
    (["demo", "--classes", "1", "--out", "{tmp}/r"], "--classes applies to --data digits, not --data photo"),
    (["demo", "--data", "digits", "--size", "64", "--out", "{tmp}/r"], "--size applies to --data photo"),
    (["demo", "--category", "sky", "--out", "{tmp}/r"], "--category must be one of grass, gravel"),
    (["demo", "--size", "16", "--out", "{tmp}/r"], "--size must lie in [32, 256]"),
    (["benchmark", "--data", "digits", "--methods", "knn", "--pollution", "-1", "--out", "{tmp}/r"], "--pollution"),
    (["benchmark", "--data", "digits", "--set", "backbone.width=4096", "--out", "{tmp}/r"], "backbone.width"),
])
def test_seeds_classes_and_fractions_checked_first(trained_run, folder_dataset, tmp_path, capsys, argv, needle):
    argv = [a.format(ckpt=trained_run / "model.ckpt", data=folder_dataset, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "r").exists()


def test_checkpoint_config_above_a_ceiling_is_refused_before_allocating(trained_run, tmp_path):
    import json
    import time

    ckpt = torch.load(trained_run / "model.ckpt", weights_only=True)
    cfg = json.loads(ckpt["config"])
    cfg["backbone"]["width"] = 200_000  # would build a network of ~10^13 parameters
    ckpt["config"] = json.dumps(cfg)
    torch.save(ckpt, tmp_path / "huge.ckpt")
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="backbone.width = 200000 is above the limit"):
        AnoMem.load(tmp_path / "huge.ckpt")
    assert time.monotonic() - t0 < 10


def test_api_side_checks_come_before_any_work(tmp_path):
    """The Python API refuses what the CLI refuses, before stage 1 or scoring starts."""
    from anomem import ConfigError, load_config

    x = (torch.rand(20, 1, 16, 16) * 255).to(torch.uint8)
    fast = ["train.epochs=1", "train.batch_size=8", "heads.steps=2", "scorer.prototype_cache=0"]
    with pytest.raises(ConfigError, match="supervised.*no labelled anomalies"):
        AnoMem(load_config("tiny", overrides=[*fast, "scorer.mode=supervised"]), progress=False).fit(x)
    with pytest.raises(DataError, match="at least 2x2"):
        AnoMem(load_config("tiny", overrides=fast), progress=False).fit(torch.zeros(4, 1, 1, 1))
    det = AnoMem(load_config("tiny", overrides=fast), progress=False).fit(x)
    for bad in (0, -1, 2.5):
        for call in (det.anomaly_score, det.score_per_scale, det.embed, det.anomaly_maps):
            with pytest.raises(AnoMemError, match="batch_size"):
                call(x, batch_size=bad)
    (tmp_path / "cfg").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config("tiny", tmp_path / "cfg")
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: [1,\n  lr: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config("tiny", tmp_path / "bad.yaml")
    assert "\n" not in str(e.value)


def test_progress_counts_the_epochs_that_min_steps_adds(folder_dataset, tiny_train, tmp_path, capsys):
    """Issue 25: with train.min_steps adding epochs, the lines used to read `epoch 6/2`."""
    args = [a for a in tiny_train if a != "--no-progress"]
    assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--set", "train.min_steps=4",
                 "--out", str(tmp_path / "run"), *args]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    counts = [ln.split()[1] for ln in lines]
    assert len(lines) > 1 and counts == [f"{k}/{len(lines)}" for k in range(1, len(lines) + 1)], lines


def test_min_steps_has_a_ceiling(folder_dataset, tiny_train, tmp_path, capsys):
    """Issue 25: train.min_steps=10^12 was accepted and the run never ended."""
    assert main(["train", "--data", str(folder_dataset), "--set", "train.min_steps=1000000000000",
                 "--out", str(tmp_path / "run"), *tiny_train]) == 2
    one_line_error(capsys, "train.min_steps = 1000000000000 is above the limit")
    assert not (tmp_path / "run").exists()
