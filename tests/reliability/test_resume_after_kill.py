"""A training run SIGKILLed mid-epoch resumes with ``anomem train --resume RUN_DIR``.

The run is a real ``anomem train`` process that SIGKILLs itself at the first training step
after its first ``last.ckpt`` was saved (so inside epoch 2). Resuming must finish the run, and on
CPU with a fixed seed its final checkpoint must be bit-identical to an uninterrupted
run's: last.ckpt holds the optimizer, schedule, epoch count and the global RNG state
taken at the epoch boundary (kornia's augmentations draw from it); the data order and
Ω come from generators seeded by (seed, epoch, step), so they need no saved state.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomem import AnoMem
from anomem.cli import main
from anomem.io.checkpoint import load_checkpoint

VOLATILE = {"meta", "history"}  # wall-clock timings; compared separately below


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _losses(ckpt: dict) -> list[float]:
    return [e["loss"] for e in json.loads(ckpt["history"])]


# `anomem train` that kills itself (SIGKILL) in the first training step after its first
# last.ckpt was saved: mid-epoch 2 on any machine, without a clock.
_KILL_IN_EPOCH_2 = """
import os, signal, sys
import anomem.cli.train as train
import anomem.engine as engine
saved = [False]
real_save, real_step = train.save_checkpoint, engine.Stage1Trainer._step
def save(*a, **k):
    real_save(*a, **k)
    saved[0] = True
def step(self, *a, **k):
    if saved[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, *a, **k)
train.save_checkpoint, engine.Stage1Trainer._step = save, step
from anomem.cli import main
sys.argv = ["anomem", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.slow  # a fresh Python process (imports torch) plus a resumed run: ~15 s on 2 idle cores
def test_sigkill_mid_run_then_resume_equals_uninterrupted(folder_dataset, trained_run, trained_epochs, tiny_train, tmp_path):
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same kernels as this process
    argv = [sys.executable, "-m", "anomem.cli", "train", "--data", str(folder_dataset),
            "--epochs", str(trained_epochs), "--out", str(run), *tiny_train]
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_EPOCH_2, *argv[3:]], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not (run / "model.ckpt").exists(), "the run was not interrupted"
    assert load_checkpoint(run / "last.ckpt")["trainer"]["epoch"] == 1 < trained_epochs

    # Resume from a moved directory: outputs go to RUN_DIR, not the original --out.
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert main(["train", "--resume", str(moved), "--no-progress"]) == 0
    assert not run.exists()

    resumed, reference = load_checkpoint(moved / "model.ckpt"), load_checkpoint(trained_run / "model.ckpt")
    _assert_same({k: v for k, v in resumed.items() if k not in VOLATILE},
                 {k: v for k, v in reference.items() if k not in VOLATILE})
    assert _losses(resumed) == _losses(reference) and len(_losses(resumed)) == trained_epochs
    _assert_same(load_checkpoint(moved / "last.ckpt")["net"], load_checkpoint(trained_run / "last.ckpt")["net"])

    test = AnoMem.load(trained_run / "model.ckpt")
    imgs = torch.stack([torch.full((1, 16, 16), v, dtype=torch.uint8) for v in (0, 90, 255)])
    assert (AnoMem.load(moved / "model.ckpt").anomaly_score(imgs) == test.anomaly_score(imgs)).all()


def test_resume_before_first_checkpoint_says_start_again(folder_dataset, tmp_path, capsys):
    run = tmp_path / "early"
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"data": str(folder_dataset)}))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt" in err and "start it again" in err


def test_resume_without_args_json_is_refused(trained_run, tmp_path, capsys):
    run = tmp_path / "noargs"
    shutil.copytree(trained_run, run)
    (run / "args.json").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "args.json" in capsys.readouterr().err


def test_last_ckpt_holds_everything_resume_needs(trained_run, trained_epochs):
    state = load_checkpoint(trained_run / "last.ckpt")
    trainer = state["trainer"]
    assert trainer["epoch"] == trained_epochs
    assert {"optimizer", "scheduler", "rng_cpu"} <= set(trainer)
    assert trainer["scheduler"]["last_epoch"] > 0 and trainer["optimizer"]["state"]  # momentum buffers
    assert isinstance(trainer["rng_cpu"], torch.Tensor) and trainer["rng_cpu"].dtype == torch.uint8
    assert Path(trained_run / "args.json").is_file()


def _killed_copy(trained_run: Path, dst: Path) -> Path:
    """A copy of the finished run as it was before its final save (no model.ckpt/metrics)."""
    shutil.copytree(trained_run, dst)
    for name in ("model.ckpt", "metrics.json", "test_scores.csv"):
        (dst / name).unlink()
    return dst


def test_args_json_stores_absolute_paths_and_a_data_digest(trained_run, folder_dataset):
    saved = json.loads((trained_run / "args.json").read_text())
    assert Path(saved["data"]).is_absolute() and Path(saved["data"]) == folder_dataset.resolve()
    assert len(saved["data_sha256"]) == 64 and Path(saved["cwd"]).is_absolute()


def test_relative_data_resumes_from_another_working_directory(folder_dataset, tiny_train, tmp_path, monkeypatch):
    monkeypatch.chdir(folder_dataset.parent)
    run = tmp_path / "rel"
    assert main(["train", "--data", folder_dataset.name, "--epochs", "1", "--out", str(run), *tiny_train]) == 0
    (run / "model.ckpt").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    # a run from an older anomem that stored the relative path: resolved against the start directory
    saved = json.loads((run / "args.json").read_text())
    saved["data"] = folder_dataset.name
    saved["cwd"] = str(folder_dataset.parent)
    (run / "args.json").write_text(json.dumps(saved))
    (run / "model.ckpt").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_resume_refuses_changed_data(trained_run, folder_maker, tiny_train, tmp_path, capsys):
    data = folder_maker(tmp_path / "D", n_train=8)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--out", str(run), *tiny_train]) == 0
    (run / "model.ckpt").unlink()
    capsys.readouterr()
    victim = sorted((data / "train" / "normal").iterdir())[0]
    shutil.copy(sorted((data / "test" / "anomaly").iterdir())[0], victim)  # one training image replaced
    last = (run / "last.ckpt").read_bytes()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "differ from the data the run started with" in err and len(err.strip().splitlines()) == 1, err
    assert (run / "last.ckpt").read_bytes() == last and not (run / "model.ckpt").exists()


@pytest.mark.parametrize("content,needle", [
    ("", "unreadable"),
    ("[1, 2]", "not a mapping"),
    ('{"ratio": 0.0}', "no 'data' entry"),
    ('{"data": 3}', "'data' has the wrong type"),
    ('{"data": ""}', "'data' is empty"),
    ('{"data": "x", "ratio": "0.1"}', "'ratio' has the wrong type"),
    ('{"data": "x", "ratio": 5}', "outside [0, 1)"),
    ('{"data": "x", "channels": 2}', "channels 2"),
    ('{"data": "x", "normal_class": true}', "'normal_class' has the wrong type"),
])
def test_edited_args_json_is_refused_in_one_line(trained_run, tmp_path, capsys, content, needle):
    run = _killed_copy(trained_run, tmp_path / "run")
    (run / "args.json").write_text(content)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomem: error: cannot resume") and needle in err and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


_ARG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
                        st.text(max_size=12), st.lists(st.integers(), max_size=2), st.just({}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.dictionaries(st.sampled_from(["data", "data_root", "normal_class", "ratio", "channels", "seed",
                                              "data_sha256", "cwd", "bogus"]), _ARG_VALUES, min_size=1, max_size=4),
       drop=st.booleans())
def test_fuzzed_args_json_resumes_or_gives_one_line_error(trained_run, tmp_path_factory, edits, drop):
    """Random edits of a real args.json: exit 0 (still a valid run) or exit 2 in one line, last.ckpt unchanged."""
    run = _killed_copy(trained_run, tmp_path_factory.mktemp("fuzzed") / "run")
    saved = json.loads((run / "args.json").read_text())
    if drop:
        saved = {k: v for k, v in saved.items() if k not in edits}
    else:
        saved.update(edits)
    (run / "args.json").write_text(json.dumps(saved))
    last = (run / "last.ckpt").read_bytes()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--resume", str(run), "--no-progress"])
    text = err.getvalue().strip().splitlines()
    assert code in (0, 2) and "Traceback" not in err.getvalue()
    if code == 2:
        assert text[-1].startswith("anomem: error:"), text
        assert (run / "last.ckpt").read_bytes() == last and not (run / "model.ckpt").exists()


def test_config_json_holds_the_local_recipe_as_resolved(folder_dataset, tiny_train, tmp_path, monkeypatch):
    """config.json is what the checkpoints hold: the local recipe already read against the image
    size, or a resume would find the two files differ and refuse."""
    import anomem.detector

    class Stop(Exception):
        pass

    def stop(self, *args, **kwargs):
        raise Stop

    monkeypatch.setattr(anomem.detector.AnoMem, "fit", stop)
    run = tmp_path / "run"
    with pytest.raises(Stop):
        main(["train", "--data", str(folder_dataset), "--out", str(run), *tiny_train, "--set", "pseudo.local_recipe=always"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["pseudo"]["local"] == 0.5 and cfg["loss"]["local_weight"] == 1.0
    assert cfg["train"]["min_steps"] == 300 and cfg["train"]["batch_size"] == 16  # a smaller batch is kept
