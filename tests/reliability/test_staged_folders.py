"""Issue 19, rule 3: heat-map (and report) folders are all-or-nothing and never mixed.

``score --maps`` and ``evaluate --out`` fill a hidden staging folder beside the target
and put it in place in one step (:class:`anomem.io.outputs.StagedDir`): Ctrl-C or an error
leaves the old folder byte-identical (or none), a reused folder holds only the new
files, and when two commands fill one folder at once the later one is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anomem.bench.report as report
import anomem.cli.score as score_cli
from anomem.cli import main
from anomem.errors import CheckpointError, OutputError
from anomem.io.outputs import MARKER
from anomem.io.staging import StagedDir

SRC = str(Path(__file__).resolve().parents[2] / "src")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def setup(trained_run, folder_dataset, tmp_path):
    model = tmp_path / "M.ckpt"
    shutil.copy(trained_run / "model.ckpt", model)
    images = tmp_path / "images"
    shutil.copytree(folder_dataset / "test" / "normal", images)
    out = tmp_path / "out"
    out.mkdir()
    return model, images, out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_after=st.integers(0, 5), earlier=st.booleans(), interrupt=st.sampled_from(["ctrl-c", "disk full"]))
def test_interrupted_maps_leave_the_old_folder_or_none(setup, monkeypatch, capsys, stop_after, earlier, interrupt):
    model, images, out = setup
    maps, csv = out / "maps", out / "s.csv"
    shutil.rmtree(maps, ignore_errors=True)
    csv.unlink(missing_ok=True)
    if earlier:
        assert main(["score", str(model), str(images), "--maps", str(maps), "--out", str(csv)]) == 0
    before, csv_before = (snapshot(maps), csv.read_bytes()) if earlier else (None, None)
    real_save, written = report.save_heatmap_map, []

    def failing_save(path, *a, **k):
        if len(written) == stop_after:  # what the atomic writer raises on ENOSPC, or Ctrl-C
            raise CheckpointError(f"cannot write {path}: No space left on device") if interrupt == "disk full" \
                else KeyboardInterrupt()
        written.append(path)
        return real_save(path, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(report, "save_heatmap_map", failing_save)
        code = main(["score", str(model), str(images), "--maps", str(maps), "--out", str(csv)])
    assert code == (130 if interrupt == "ctrl-c" else 2)
    capsys.readouterr()
    if earlier:
        assert snapshot(maps) == before and csv.read_bytes() == csv_before
    else:
        assert not maps.exists() and not csv.exists()
    assert leftovers(out) == [], "the staging folder was left behind"


def test_a_reused_maps_folder_holds_only_the_new_maps(setup, folder_dataset, capsys):
    model, images, out = setup
    maps = out / "maps"
    assert main(["score", str(model), str(images), str(folder_dataset / "test" / "anomaly"), "--maps", str(maps)]) == 0
    assert len(list(maps.glob("*.png"))) == 12
    assert main(["score", str(model), str(images), "--maps", str(maps), "--maps-format", "npy"]) == 0
    assert sorted(p.name for p in maps.iterdir()) == sorted([MARKER, *(f"n{i:03d}.npy" for i in range(6))])
    assert leftovers(out) == []
    (maps / "notes.txt").write_text("mine")  # the user's file beside the maps is never deleted by a reuse
    (maps / "n000.npy").unlink()
    before = snapshot(maps)
    capsys.readouterr()
    assert main(["score", str(model), str(images), "--maps", str(maps)]) == 2
    one_line_error(capsys, "holds files anomem score --maps did not write (notes.txt)")
    assert snapshot(maps) == before and leftovers(out) == []


def test_two_scores_into_one_new_folder_the_later_is_refused(setup, trained_run, tmp_path, monkeypatch, capsys):
    """Model B's `score --maps` commits while model A's is still writing (both started on a
    new folder): A is refused and writes no CSV; B's CSV points at B's own maps."""
    model_a, images, out = setup
    model_b = tmp_path / "B.ckpt"
    shutil.copy(trained_run / "model.ckpt", model_b)
    maps, csv_a, csv_b = out / "maps", out / "a.csv", out / "b.csv"
    real_write, calls = score_cli._write_heatmaps, []

    def write_then_let_b_finish(det, where, *a, **k):
        files = real_write(det, where, *a, **k)
        if not calls:
            calls.append(where)
            assert main(["score", str(model_b), str(images), "--maps", str(maps), "--out", str(csv_b)]) == 0
            capsys.readouterr()
        return files

    monkeypatch.setattr(score_cli, "_write_heatmaps", write_then_let_b_finish)
    assert main(["score", str(model_a), str(images), "--maps", str(maps), "--out", str(csv_a)]) == 2
    one_line_error(capsys, "was changed by another process")
    assert not csv_a.exists()
    rows = csv_b.read_text().splitlines()[1:]
    assert len(rows) == 6 and all(str(maps) in r for r in rows)
    assert sorted(p.name for p in maps.glob("*.png")) == [f"n{i:03d}.png" for i in range(6)]
    assert leftovers(out) == []


def test_staged_dir_rules(tmp_path):
    target = tmp_path / "t"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "photo.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="not empty"):
        StagedDir("--maps", foreign, "score --maps")
    assert (foreign / "photo.png").read_bytes() == b"mine"
    older = tmp_path / "older"  # a folder from before markers listed files: its own kinds of files only
    older.mkdir()
    (older / MARKER).write_text("score --maps\n")
    (older / "a.png").write_bytes(b"old map")
    (older / "thesis.pdf").write_bytes(b"mine")
    with pytest.raises(OutputError, match="did not write \\(thesis.pdf\\)"):
        StagedDir("--maps", older, "score --maps")
    (older / "thesis.pdf").unlink()
    with StagedDir("--maps", older, "score --maps") as s:
        s.commit()
    assert sorted(p.name for p in older.iterdir()) == [MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    for k, where in enumerate((target, empty, target)):  # new, empty, ours again
        before = snapshot(where) if where.exists() else None
        with StagedDir("--maps", where, "score --maps") as s:
            (s.path / f"x{k}.npy").write_bytes(b"new")
            assert (snapshot(where) if where.exists() else None) == before  # nothing visible before the commit
            s.commit()
        assert sorted(p.name for p in where.iterdir()) == sorted([MARKER, f"x{k}.npy"])
    a = StagedDir("--maps", tmp_path / "race", "score --maps")
    b = StagedDir("--maps", tmp_path / "race", "score --maps")
    a.commit()
    with pytest.raises(OutputError, match="changed by another process"):
        with b:
            b.commit()
    assert leftovers(tmp_path) == []


def test_interrupted_evaluate_report_leaves_nothing(setup, folder_dataset, monkeypatch, capsys):
    model, _, out = setup
    rep = out / "report"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    assert main(["evaluate", str(model), "--data", str(folder_dataset), "--out", str(rep)]) == 130
    assert not rep.exists() and leftovers(out) == []
    monkeypatch.undo()
    assert main(["evaluate", str(model), "--data", str(folder_dataset), "--out", str(rep)]) == 0
    assert (rep / "report.html").is_file() and leftovers(out) == []


# Run `anomem score` in a child process whose hook sends the process a real SIGINT when
# it is inside one phase (the Nth call of a function of that phase), so the test knows,
# without any clock, where the signal lands. The hook is installed before the command runs.
_INTERRUPT_AT = """
import functools, os, signal, sys
# a parent that ignores SIGINT (an earlier test in the same pytest process may leave it so)
# hands that on to its children, and Python then never raises KeyboardInterrupt: restore it
signal.signal(signal.SIGINT, signal.default_int_handler)
phase, nth = sys.argv[1], int(sys.argv[2])
import anomem.bench.report as report, anomem.data.scan as scan, anomem.inference as inference
import anomem.io.staging as staging
calls = [0]
def hook(fn, after=False):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == nth and not after:
            os.kill(os.getpid(), signal.SIGINT)
        out = fn(*a, **k)
        if calls[0] == nth and after:
            os.kill(os.getpid(), signal.SIGINT)
        return out
    return wrapped
owner, name = {"loading": (scan, "read_image"), "scoring": (inference.AnoMemModel, "heatmaps"),
               "writing maps": (report, "save_heatmap_map"), "committing": (staging.StagedDir, "commit"),
               "after the commit": (staging.StagedDir, "commit")}[phase]
setattr(owner, name, hook(getattr(owner, name), after=phase == "after the commit"))
from anomem.cli import main
sys.argv = ["anomem", *sys.argv[3:]]
sys.exit(main())
"""


@pytest.mark.parametrize("phase,nth", [("loading", 700), ("scoring", 2), ("writing maps", 700), ("committing", 1),
                                       ("after the commit", 1)])
def test_real_ctrl_c_during_maps_of_many_images_leaves_all_or_nothing(setup, phase, nth):
    """A real SIGINT to `score --maps` of 1,500 images while it is loading, scoring, writing
    maps, putting the folder in place or just after: either no folder, no CSV and no staging
    folder (exit 130), or every map and the CSV (the signal came once both were due)."""
    model, images, out = setup
    many = out / "many"
    many.mkdir()
    first = sorted(images.glob("*.png"))[0]
    for i in range(1500):
        os.link(first, many / f"{i:04d}.png")
    maps, csv = out / "maps", out / "s.csv"
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_AT, phase, str(nth), "score", str(model), str(many),
                           "--maps", str(maps), "--out", str(csv), "--batch-size", "512"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC},
                          timeout=600)
    err = proc.stderr.decode()
    assert "Traceback" not in err and proc.returncode == 130 and "anomem: interrupted" in err, err
    if phase in ("committing", "after the commit"):  # the folder and the CSV are put in place as one step
        assert len(list(maps.glob("*.png"))) == 1500 and len(csv.read_text().splitlines()) == 1501
    else:
        assert not maps.exists() and not csv.exists(), err
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
