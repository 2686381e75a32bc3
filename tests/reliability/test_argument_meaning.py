"""Issue 19, rule 6: arguments mean what they say.

Negative numbers in any notation are values; ``--sigma`` works for any σ ≥ 0 on any
model; a run folder stands for its ``model.ckpt``; Ctrl-C at any moment ends with one
line; arrays in either byte order are images; flags that conflict or would do nothing
are refused, not ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_line_error
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anomem import AnoMem
from anomem.cli import main
from anomem.errors import CheckpointError

SRC = str(Path(__file__).resolve().parents[2] / "src")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.floats(-1e6, -1e-6), style=st.sampled_from(["{:e}", "{:.3E}", "{!r}", "{:g}", "{:.0e}"]))
def test_negative_numbers_in_any_notation_are_values(model_copy, tmp_path, value, style, capsys):
    text = style.format(value)
    out = tmp_path / "t.ckpt"
    assert main(["threshold", str(model_copy), "--value", text, "--out", str(out)]) == 0, text
    capsys.readouterr()
    assert AnoMem.load(out).threshold_.value == float(text)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(sigma=5e-324)  # found by hypothesis: a subnormal σ crashed kornia
@given(sigma=st.one_of(st.sampled_from([0.0, 5.1, 7.5, 8.0, 15.9, 40.0]), st.floats(0, 64)))
def test_export_sigma_works_on_a_small_model(model_copy, tmp_path, sigma, capsys):
    out = tmp_path / "e.pt"
    out.unlink(missing_ok=True)
    assert main(["export", str(model_copy), "--format", "torchscript", "--out", str(out), "--sigma", repr(sigma)]) == 0
    capsys.readouterr()
    assert out.is_file()


def test_a_run_folder_stands_for_its_model(trained_run, folder_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    images = str(folder_dataset / "test" / "normal")
    for cmd in (["score", str(run), images, "--out", str(tmp_path / "s.csv")],
                ["threshold", str(run), "--fpr", "0.2"],
                ["evaluate", str(run), "--data", str(folder_dataset), "--out", str(tmp_path / "rep")],
                ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "e.pt")],
                ["refit", str(run), "--anomalies", str(folder_dataset / "test" / "anomaly")]):
        assert main(cmd) == 0, cmd
    assert AnoMem.load(run).threshold_ is not None
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained_run / "last.ckpt", unfinished / "last.ckpt")
    capsys.readouterr()  # the commands above may end with their own warnings
    assert main(["score", str(unfinished), images]) == 2
    one_line_error(capsys, "without a model.ckpt", "--resume")
    with pytest.raises(CheckpointError, match="directory without a model.ckpt"):
        AnoMem.load(tmp_path / "rep")


# Runs `anomem` with a SIGINT that the process sends itself from inside one phase: while
# torch is being imported (from a meta-path finder, when torch.nn is asked for), while the
# parser is built, while the checkpoint is loaded, or while images are scored. No clock: the
# signal lands in that phase on any machine.
_CTRL_C_IN = """
import functools, importlib.abc, os, signal, sys
# a parent that ignores SIGINT (an earlier test in the same pytest process may leave it so)
# hands that on to its children, and Python then never raises KeyboardInterrupt: restore it
signal.signal(signal.SIGINT, signal.default_int_handler)
phase = sys.argv[1]
def interrupt():
    os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here
def inside(fn):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        interrupt()
        return fn(*a, **k)
    return wrapped
if phase == "importing torch":
    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch.nn":
                sys.meta_path.remove(self)
                interrupt()
            return None
    sys.meta_path.insert(0, Finder())
elif phase == "parsing":
    import anomem.cli.parser as parser
    parser.build_parser = inside(parser.build_parser)
else:
    from anomem.detector import AnoMem
    if phase == "loading":
        AnoMem.load = classmethod(inside(AnoMem.load.__func__))
    else:
        AnoMem.anomaly_score = inside(AnoMem.anomaly_score)
from anomem.cli import main
sys.argv = ["anomem", *sys.argv[2:]]
sys.exit(main())
"""


@pytest.mark.parametrize("phase", ["importing torch", "parsing", "loading", "scoring"])
def test_ctrl_c_at_any_moment_is_one_line(model_copy, folder_dataset, tmp_path, phase):
    """SIGINT while Python imports torch, parses, loads or scores: exit 130, one line, no
    traceback. The process signals itself from inside the phase. (Before any anomem code
    runs, in the interpreter's own start-up, Python answers.)"""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_IN, phase, "score", str(model_copy), str(folder_dataset)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC},
                          timeout=300)
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    assert proc.returncode == 130 and err.strip().splitlines() == ["anomem: interrupted"], err


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(["u1", "u2", "u4", "u8", "i2", "i4", "i8", "f2", "f4", "f8"]),
       order=st.sampled_from(["<", ">"]), seed=st.integers(0, 9))
def test_arrays_in_either_byte_order_score_the_same(trained_run, dtype, order, seed):
    det = AnoMem.load(trained_run / "model.ckpt")
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (3, 1, 16, 16))
    if dtype[0] == "f":
        pixels = pixels / 255.0
    elif dtype == "u2":
        pixels = pixels * 257  # 16-bit images mean 0..65535
    native = pixels.astype(f"={dtype}" if dtype != "u1" else "u1")
    swapped = pixels.astype(f"{order}{dtype}" if dtype != "u1" else "u1")
    assert np.array_equal(det.anomaly_score(swapped), det.anomaly_score(native))


@pytest.mark.parametrize("argv,needle", [
    (["score", "{m}", "{i}", "--maps-format", "npy"], "--maps-format does nothing without --maps"),
    (["threshold", "{m}", "--value", "1", "--fpr", "0.1"], "--fpr does nothing with --value"),
    (["threshold", "{m}", "--value", "1", "--method", "fpr"], "--method does nothing with --value"),
    (["threshold", "{m}", "--recall", "0.9"], "--recall does nothing without --method recall"),
    (["evaluate", "{m}", "--data", "{d}", "--out", "{t}/r", "--normal-class", "3"], "--normal-class does nothing"),
    (["evaluate", "{m}", "--data", "{d}", "--out", "{t}/r", "--max-images", "5"], "--max-images does nothing"),
    (["evaluate", "{m}", "--data", "{d}", "--out", "{t}/r", "--defects"], "--defects does nothing"),
    (["evaluate", "{m}", "--data", "digits", "--normal-class", "0", "--out", "{t}/r", "--normal-split-ratio", "0.3"],
     "--normal-split-ratio does nothing with the named dataset"),
    (["train", "--resume", "{r}", "--epochs", "9"], "--epochs does nothing with --resume"),
    (["train", "--resume", "{r}", "--set", "train.lr=0.1"], "--set does nothing with --resume"),
    (["train", "--resume", "{r}", "--data", "{d}"], "--data does nothing with --resume"),
    (["train", "--data", "{d}", "--ratio", "0.1", "--out", "{t}/r"], "--ratio does nothing with the dataset folder"),
    (["train", "--data", "{d}", "--normal-class", "1", "--out", "{t}/r"], "--normal-class does nothing"),
    (["train", "--data", "digits", "--normal-class", "1", "--normal-dir", "good", "--out", "{t}/r"],
     "--normal-dir does nothing with the named dataset"),
    (["train", "--data", "digits", "--normal-class", "1", "--channels", "3", "--out", "{t}/r"], "--channels does nothing"),
])
def test_conflicting_or_inert_flags_are_refused(argv, needle, model_copy, trained_run, folder_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    images = folder_dataset / "test" / "normal"
    argv = [a.format(m=model_copy, i=images, d=folder_dataset, t=tmp_path, r=run) for a in argv]
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (tmp_path / "r").exists()
