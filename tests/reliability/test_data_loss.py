"""No command path loses data (issue 10): outputs never land on inputs, nothing is
written before the inputs are checked, a run directory has one owner at a time and a
finished run is never mixed with a new one.

Each test snapshots every file involved (bytes), runs the hostile command, and checks
the exit code, the one-line message, and that the snapshot is byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_checks import one_line_error

import anomem
from anomem import AnoMem
from anomem.cli import main
from anomem.errors import OutputError
from anomem.io.outputs import LOCK, MARKER, RunLock, check_outputs, file_kind


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every regular file below ``roots`` (or the file itself), path -> bytes."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = p.read_bytes()
    return out


@pytest.fixture
def images(images_copy) -> Path:
    """A private copy of 6 test images (the tests try to overwrite them)."""
    return images_copy


@pytest.fixture
def model(trained_run, tmp_path) -> Path:
    m = tmp_path / "model" / "M.ckpt"
    m.parent.mkdir()
    shutil.copy(trained_run / "model.ckpt", m)
    return m


# -- 1: heat-maps over the input images -------------------------------------------
def test_maps_never_overwrite_the_images_being_scored(model, images, tmp_path, capsys, monkeypatch):
    before = snapshot(images, model)
    link = tmp_path / "link-to-images"
    link.symlink_to(images, target_is_directory=True)
    monkeypatch.chdir(images)
    cases = {
        "same dir": [str(images)],                       # the reported case
        "a sub-folder of it": [str(images / "maps")],    # inside an input
        "via a symlink": [str(link)],                    # same dir under another name
        "cwd holding the input files": ["."],            # contains inputs given as files
    }
    for name, maps in cases.items():
        inputs = [str(p) for p in sorted(images.glob("*.png"))] if name.startswith("cwd") else [str(images)]
        assert main(["score", str(model), *inputs, "--maps", *maps]) == 2, name
        one_line_error(capsys, "--maps")
        assert snapshot(images, model) == before, name
        assert not (images / "maps").exists()
    # a folder the heat-maps may fill: new, then the same one again (our marker), never a foreign one
    maps = tmp_path / "heat"
    assert main(["score", str(model), str(images), "--maps", str(maps)]) == 0
    assert (maps / MARKER).is_file() and len(list(maps.glob("*.png"))) == 6
    assert main(["score", str(model), str(images), "--maps", str(maps)]) == 0
    capsys.readouterr()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "n000.png").write_bytes(b"my holiday photo")
    assert main(["score", str(model), str(images), "--maps", str(foreign)]) == 2
    one_line_error(capsys, "not empty")
    assert (foreign / "n000.png").read_bytes() == b"my holiday photo"
    assert snapshot(images, model) == before


# -- 2: the score CSV over the model ----------------------------------------------
def test_score_out_never_replaces_the_model_or_an_input(model, images, trained_run, tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    shutil.copy(trained_run / "model.ckpt", other)
    hard = tmp_path / "hardlink.ckpt"
    os.link(model, hard)
    before = snapshot(images, model, other)
    for out, needle in [(model, "same path as the input checkpoint"),
                        (hard, "same path as the input checkpoint"),
                        (other, "is a checkpoint"),                      # another model: not ours to replace
                        (images / "scores.csv", "lies inside the input"),
                        (images / "n000.png", "lies inside the input path"),
                        (tmp_path / "images", "same path as the input")]:
        assert main(["score", str(model), str(images), "--out", str(out)]) == 2, out
        one_line_error(capsys, needle)
        assert snapshot(images, model, other) == before, out
    AnoMem.load(model)
    csv_out = tmp_path / "scores.csv"
    for _ in range(2):  # a CSV replaces the previous CSV
        assert main(["score", str(model), str(images), "--out", str(csv_out)]) == 0
    assert file_kind(csv_out) == "text"


# -- 3: an export over the model ---------------------------------------------------
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_never_replaces_the_model(model, images, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    before = snapshot(model, images)
    for out, needle in [(model, "same path as the input checkpoint"), (images / "n000.png", "is an image")]:
        assert main(["export", str(model), "--format", fmt, "--out", str(out)]) == 2
        one_line_error(capsys, needle)
    assert snapshot(model, images) == before
    AnoMem.load(model)
    out = tmp_path / f"scorer.{fmt}"
    assert main(["export", str(model), "--format", fmt, "--out", str(out)]) == 0
    assert file_kind(out) == fmt
    assert main(["export", str(model), "--format", fmt, "--out", str(out)]) == 0  # replaces its own kind


# -- 4: two runs in one directory at once -----------------------------------------
def test_run_directory_has_one_owner(folder_dataset, tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # another process's run, as far as the kernel is concerned (a separate open file)
        assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(run), *tiny_train]) == 2
        one_line_error(capsys, "in use by another anomem process", str(os.getpid()))
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing of the refused run
    assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(run), *tiny_train]) == 0
    capsys.readouterr()
    with RunLock(run):
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        one_line_error(capsys, "in use")


def _env() -> dict[str, str]:
    src = str(Path(anomem.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # two fresh Python processes (~10 s on 2 cores)
def test_two_concurrent_trains_one_wins_and_the_run_is_consistent(folder_dataset, tiny_train, tmp_path):
    run = tmp_path / "race"
    argv = [sys.executable, "-m", "anomem.cli", "train", "--data", str(folder_dataset), "--epochs", "3",
            "--out", str(run), *tiny_train]
    procs = [subprocess.Popen([*argv, "--seed", str(seed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=_env(), text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert ("in use by another anomem process" in loser or "already holds a run" in loser) and "Traceback" not in loser
    seed = json.loads((run / "args.json").read_text())["seed"]
    assert json.loads((run / "metrics.json").read_text())["seed"] == seed
    assert AnoMem.load(run / "model.ckpt").config_.train.seed == seed
    assert torch.load(run / "last.ckpt", weights_only=True)["seed"] == seed


@pytest.mark.slow  # one fresh Python process
def test_a_killed_owner_leaves_no_stale_lock(folder_dataset, tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    code = "import sys, time; from pathlib import Path; from anomem.io.outputs import RunLock; " \
           "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, env=_env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(run), *tiny_train]) == 2
        one_line_error(capsys, f"pid {holder.pid}")
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(run), *tiny_train]) == 0


# -- 5: a new run into a finished one ---------------------------------------------
def test_new_run_never_mixes_with_a_finished_one(trained_run, folder_dataset, tiny_train, tmp_path, capsys):
    run = tmp_path / "finished"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    for extra in ([], ["--set", "train.lr=0.5"], ["--seed", "3"]):
        assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(run), *tiny_train, *extra]) == 2
        one_line_error(capsys, "already holds a run", "--resume")
    assert snapshot(run) == before
    # a run killed before it saved anything (args.json, config.json, train.log only) may be started again
    early = tmp_path / "early"
    early.mkdir()
    for name in ("args.json", "config.json", "train.log"):
        shutil.copy(trained_run / name, early / name)
    assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(early), *tiny_train]) == 0
    capsys.readouterr()
    # a directory of someone else's files is not a run directory
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    assert main(["train", "--data", str(folder_dataset), "--epochs", "1", "--out", str(foreign), *tiny_train]) == 2
    one_line_error(capsys, "not empty")
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


# -- 6: nothing written before the inputs are checked ------------------------------
def test_train_writes_nothing_into_its_inputs_or_before_they_are_checked(folder_maker, tiny_train, tmp_path, capsys):
    data = folder_maker(tmp_path / "D", n_train=8, with_test=False)
    cfg = tmp_path / "cfgdir" / "c.yaml"
    cfg.parent.mkdir()
    cfg.write_text("train:\n  epochs: 1\n")
    before = snapshot(data, cfg)
    for out in (data / "train" / "normal", data / "train", data, data.parent, cfg.parent, cfg):
        assert main(["train", "--data", str(data), "--config", str(cfg), "--out", str(out), *tiny_train]) == 2, out
        one_line_error(capsys, "input")
        assert snapshot(data, cfg) == before, out
    # every data error: the run directory is not even created
    (data / "train" / "normal" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "never"
    assert main(["train", "--data", str(data), "--out", str(out), *tiny_train]) == 2
    one_line_error(capsys, "broken.png")
    assert not out.exists()
    (data / "train" / "normal" / "broken.png").unlink()
    # scorer.mode=supervised without anomalies: refused before stage 1, nothing written
    assert main(["train", "--data", str(data), "--out", str(out), "--set", "scorer.mode=supervised", *tiny_train]) == 2
    one_line_error(capsys, "supervised", "labelled anomalies")
    assert not out.exists()
    assert snapshot(data, cfg) == before


def test_evaluate_report_never_replaces_run_files(trained_run, folder_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run, folder_dataset)
    for out, needle in [(run, "contains the input checkpoint"), (folder_dataset / "test", "lies inside the input")]:
        assert main(["evaluate", str(run / "model.ckpt"), "--data", str(folder_dataset), "--out", str(out)]) == 2
        one_line_error(capsys, needle)
    other = tmp_path / "other-run"
    shutil.copytree(trained_run, other)
    (other / "model.ckpt").unlink()
    assert main(["evaluate", str(run / "model.ckpt"), "--data", str(folder_dataset), "--out", str(other)]) == 2
    one_line_error(capsys, "not empty")
    assert snapshot(run, folder_dataset) == before
    assert (other / "metrics.json").read_bytes() == (trained_run / "metrics.json").read_bytes()
    report = tmp_path / "report"
    for _ in range(2):  # the same report directory again is fine
        assert main(["evaluate", str(run / "model.ckpt"), "--data", str(folder_dataset), "--out", str(report)]) == 0
        capsys.readouterr()
    assert (report / "report.html").is_file()


def test_refit_and_threshold_out_stay_off_inputs_and_foreign_files(model, images, tmp_path, capsys):
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    before = snapshot(model, images, note)
    for argv in (["refit", str(model), "--anomalies", str(images), "--out", str(images / "r.ckpt")],
                 ["refit", str(model), "--anomalies", str(images), "--out", str(note)],
                 ["threshold", str(model), "--value", "1.0", "--out", str(note)],
                 ["threshold", str(model), "--value", "1.0", "--normals", str(images), "--out", str(images)]):
        assert main(argv) == 2, argv
        one_line_error(capsys, "--out")
        assert snapshot(model, images, note) == before, argv
    assert main(["threshold", str(model), "--value", "1.0"]) == 0  # in place, as documented
    assert AnoMem.load(model).threshold_.value == 1.0


# -- 7: temp cleanup through the CLI ----------------------------------------------
def test_score_out_with_glob_characters_deletes_nothing(model, images, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bystander = out_dir / ".results.csv.abcdefgh.tmp"  # looks like a stale temp of another file
    bystander.write_text("not ours")
    aged = time.time() - 7200
    os.utime(bystander, (aged, aged))
    assert main(["score", str(model), str(images), "--out", str(out_dir / "*.csv")]) == 0
    assert bystander.read_text() == "not ours" and (out_dir / "*.csv").is_file()


# -- the rule itself ----------------------------------------------------------------
def test_check_outputs_rule(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    ok = [(tmp_path / "out", tmp_path / "in"), (tmp_path / "inx", tmp_path / "in"), (tmp_path / "in.csv", tmp_path / "in")]
    for out, inp in ok:  # siblings and name prefixes are not containment
        check_outputs([("--out", out)], [("input", inp)])
    bad = [(tmp_path / "in", tmp_path / "in"), (tmp_path / "in" / "x", tmp_path / "in"),
           (tmp_path, tmp_path / "in" / "a.png"), (tmp_path / "in" / ".." / "in", tmp_path / "in")]
    for out, inp in bad:
        with pytest.raises(OutputError):
            check_outputs([("--out", out)], [("input", inp)])
    with pytest.raises(OutputError, match="overlap"):
        check_outputs([("--out", tmp_path / "m" / "s.csv"), ("--maps", tmp_path / "m")], [])


def test_benchmark_out_never_fills_a_foreign_directory(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my own results")
    assert main(["benchmark", "--data", "digits", "--methods", "knn", "--out", str(out)]) == 2
    one_line_error(capsys, "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"] and (out / "results.csv").read_text() == "my own results"


def test_a_run_directory_with_a_write_in_flight_is_a_run_not_a_foreign_folder(tmp_path):
    """The temp file of another run's atomic write (it may be writing right now) marks the
    folder as a run directory; anything else still makes it a foreign folder."""
    from anomem.errors import OutputError
    from anomem.io.outputs import check_new_run_dir

    run = tmp_path / "race"
    run.mkdir()
    (run / ".last.ckpt.ab12cd34.tmp").write_bytes(b"partial")
    (run / ".anomem.lock").write_text("123\n")
    check_new_run_dir(run)  # no error: the lock decides who owns it
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a run directory"):
        check_new_run_dir(run)
