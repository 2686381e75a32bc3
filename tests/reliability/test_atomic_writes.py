"""Checkpoints, results and reports are replaced atomically: never half-written.

A writer process is SIGKILLed at chosen points of a save (mid-data, after fsync but
before the rename, after the rename) and at random moments of a save loop; the target
must always load as the old good file or the new good file. Disk-full and permission
errors are simulated: a clear CheckpointError, the old file untouched, no temp files.
"""

from __future__ import annotations

import errno
import os
import random
import re
import select
import signal
import time
from pathlib import Path

import pytest
import torch

import anomem.io.checkpoint as ckpt_mod
from anomem import AnoMem, CheckpointError
from anomem.cli import main
from anomem.io.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)

N = 1 << 20  # 4 MiB of float32 per checkpoint, so a write takes a while


def _payload(version: int, data: torch.Tensor) -> dict:
    return {"version": version, "data": data}


def _check_good(path: Path, allowed: set[int]) -> int:
    """The file loads, is one whole version from ``allowed``, and its tensor matches it."""
    obj = load_checkpoint(path)
    v = obj["version"]
    assert v in allowed, f"version {v} not in {allowed}"
    assert obj["data"].shape == (N,) and bool((obj["data"] == float(v % 2)).all())
    return v


def _fork(child) -> tuple[int, int]:
    """Run ``child(write_fd)`` in a forked process; returns (pid, read_fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(r)
        try:
            child(w)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _wait_signal(r: int, timeout: float = 60) -> bytes:
    ready, _, _ = select.select([r], [], [], timeout)
    assert ready, "the writer never reached the kill point"
    return os.read(r, 1)


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.fixture(scope="module")
def blobs():
    return torch.zeros(N), torch.ones(N)


@pytest.mark.parametrize("point", ["mid-data", "before-rename", "after-rename"])
def test_sigkill_at_each_point_of_a_save_leaves_old_or_new(tmp_path, blobs, point):
    target = tmp_path / "last.ckpt"
    save_checkpoint(_payload(0, blobs[0]), target)

    def child(w):
        def pause():
            os.write(w, b"K")
            time.sleep(600)

        if point == "before-rename":
            ckpt_mod.os.replace = lambda *a: pause()  # the forked copy of the module only
        elif point == "after-rename":
            ckpt_mod._fsync_dir = lambda d: pause()
        if point == "mid-data":
            real = torch.save

            class HalfThenStop:
                def __init__(self, f):
                    self.f, self.n = f, 0

                def write(self, b):
                    self.n += len(b)
                    if self.n > 2 * N:  # about half of the 4 MiB tensor is on disk
                        self.f.flush()
                        pause()
                    return self.f.write(b)

                def flush(self):
                    self.f.flush()

            atomic_write_bytes(target, lambda f: real(_payload(1, blobs[1]), HalfThenStop(f)))
        else:
            save_checkpoint(_payload(1, blobs[1]), target)

    pid, r = _fork(child)
    assert _wait_signal(r) == b"K"
    _kill(pid)
    expected = {"mid-data": 0, "before-rename": 0, "after-rename": 1}[point]
    assert _check_good(target, {0, 1}) == expected
    temps = list(tmp_path.glob(".last.ckpt.*.tmp"))
    if point == "after-rename":
        assert temps == []
    else:  # the kill really interrupted a write: its temp file is there, never read
        assert len(temps) == 1 and temps[0].stat().st_size > 0


def test_sigkill_at_random_moments_of_a_save_loop(tmp_path, blobs):
    """A writer saving in a loop is killed 6 times, each after it has reported 1-3 finished
    saves and then a random delay (seeded) into the next one. The random delay is the only
    clock in the test, and the invariant holds at every delay: the target loads as one whole
    version, at least the last one reported."""
    target = tmp_path / "last.ckpt"
    save_checkpoint(_payload(0, blobs[0]), target)
    rng = random.Random(0)
    seen = []
    for _ in range(6):
        start = _check_good(target, set(range(10_000)))

        def child(w, start=start):
            for v in range(start + 1, start + 10_000):
                save_checkpoint(_payload(v, blobs[v % 2]), target)
                os.write(w, b"S")  # one save finished

        pid, r = _fork(child)
        for _ in range(rng.randint(1, 3)):
            assert _wait_signal(r) == b"S"
        time.sleep(rng.uniform(0.0, 0.05))
        _kill(pid)
        os.close(r)
        seen.append(_check_good(target, set(range(start + 1, start + 10_000))))
    assert seen == sorted(set(seen)) and len(seen) == 6  # every round got further: six different versions


def test_stale_temp_files_of_killed_writers_are_cleaned(tmp_path):
    target = tmp_path / "metrics.json"
    old = tmp_path / ".metrics.json.abc12_yz.tmp"  # the names mkstemp gives: 8 characters in the middle
    young = tmp_path / ".metrics.json.def45678.tmp"
    old.write_bytes(b"half a file")
    young.write_bytes(b"maybe a live writer")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}" and not old.exists() and young.exists()


@pytest.mark.parametrize("name", ["*.csv", "[ab].csv", "?.json", "**"])
def test_stale_temp_cleanup_never_treats_the_name_as_a_pattern(tmp_path, name):
    """Issue 10 #7: `score --out '/dir/*.csv'` deleted an unrelated old file of that directory."""
    aged = time.time() - 7200
    bystanders = [tmp_path / f".{n}.abcdefgh.tmp" for n in ("results.csv", "a.csv", "x.json", "model.ckpt")]
    bystanders += [tmp_path / ".scores.csv.tmp", tmp_path / "notes.tmp"]
    for p in bystanders:
        p.write_bytes(b"someone else's")
        os.utime(p, (aged, aged))
    ours = tmp_path / f".{name}.k2j4h6g8.tmp"  # a real leftover of this very target
    ours.write_bytes(b"half")
    os.utime(ours, (aged, aged))
    atomic_write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x"
    assert all(p.read_bytes() == b"someone else's" for p in bystanders)
    assert not ours.exists()


def test_stale_temp_cleanup_skips_links_and_directories(tmp_path):
    aged = time.time() - 7200
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    link = tmp_path / ".m.json.linklink.tmp"
    link.symlink_to(precious)
    sub = tmp_path / ".m.json.dirdirdi.tmp"
    sub.mkdir()
    for p in (link, sub):
        os.utime(p, (aged, aged), follow_symlinks=False)
    atomic_write_text(tmp_path / "m.json", "{}")
    assert precious.read_text() == "keep" and link.is_symlink() and sub.is_dir()


class _DiskFull:
    """A file object that raises ENOSPC once ``limit`` bytes were written."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.limit, self.n = f, limit, 0

    def write(self, b):
        self.n += len(b)
        if self.n > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("where", ["write", "fsync", "mkstemp", "rename"])
@pytest.mark.parametrize("what", ["checkpoint", "text"])
def test_disk_full_or_denied_keeps_old_file_and_no_temp(tmp_path, monkeypatch, blobs, where, what):
    target = tmp_path / ("m.ckpt" if what == "checkpoint" else "metrics.json")
    if what == "checkpoint":
        save_checkpoint(_payload(0, blobs[0]), target)
    else:
        atomic_write_text(target, '{"ok": true}')
    before = target.read_bytes()
    err = OSError(errno.EACCES if where == "mkstemp" else errno.ENOSPC,
                  os.strerror(errno.EACCES if where == "mkstemp" else errno.ENOSPC))
    real_fdopen = os.fdopen

    def boom(*a, **k):
        raise err

    if where == "write":
        monkeypatch.setattr(ckpt_mod.os, "fdopen", lambda fd, mode: _DiskFull(real_fdopen(fd, mode), 100))
    elif where == "fsync":
        monkeypatch.setattr(ckpt_mod.os, "fsync", boom)
    elif where == "mkstemp":
        monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", boom)
    else:
        monkeypatch.setattr(ckpt_mod.os, "replace", boom)
    with pytest.raises(CheckpointError, match=re.escape(err.strerror)) as info:
        if what == "checkpoint":
            save_checkpoint(_payload(1, blobs[1]), target)
        else:
            atomic_write_text(target, '{"new": ' + "1" * 1000 + "}")
    assert str(target) in str(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temp files left


def test_cli_disk_full_on_final_save_then_resume(folder_dataset, tiny_train, tmp_path, monkeypatch, capsys):
    """Disk full while writing model.ckpt: exit 2, last.ckpt intact, resume finishes the run."""
    run = tmp_path / "run"
    real_fdopen, real_mkstemp = os.fdopen, ckpt_mod.tempfile.mkstemp
    current = {}

    def mkstemp(prefix="", suffix="", dir=None):
        current["name"] = prefix
        return real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)

    def fdopen(fd, mode):
        f = real_fdopen(fd, mode)
        return _DiskFull(f, 4096) if current.get("name") == ".model.ckpt." else f

    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(ckpt_mod.os, "fdopen", fdopen)
    code = main(["train", "--data", str(folder_dataset), "--epochs", "2", "--out", str(run), *tiny_train])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "model.ckpt" in err and "Traceback" not in err
    monkeypatch.undo()
    assert not (run / "model.ckpt").exists()
    assert not list(run.glob(".*.tmp"))
    last = load_checkpoint(run / "last.ckpt")
    assert last["trainer"]["epoch"] == 2
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert AnoMem.load(run / "model.ckpt").image_size_ == (16, 16)


# Writes that may bypass the atomic writer, each with why it is fine.
ALLOWED_DIRECT_WRITES = {
    ("io/outputs.py", "os.write(fd, f\"{os.getpid()}"): "the lock file's owner pid, only ever read for a message",
    ("data/idx.py", "partial.write_bytes(content)"): "download written to .part, then renamed",
    ("bench/report.py", 'fig.savefig(buf, format="png"'): "into an in-memory buffer",
    ("io/export.py", "atomic_write_bytes(path, lambda f: torch.jit.save("): "inside the atomic writer",
    ("io/export.py", "torch.onnx.export("): "into an in-memory buffer, then written atomically",
    ("bench/runner.py", "lambda f: np.savez_compressed(f,"): "inside the atomic writer",
    ("bench/report.py", "atomic_write_bytes(path, lambda f: np.save(f, arr))"): "inside the atomic writer",
}
DIRECT_WRITE = re.compile(
    r"\.write_text\(|\.write_bytes\(|\bopen\([^)]*['\"][wax]b?\+?['\"]|torch\.save\(|jit\.save\(|\.savefig\("
    r"|np\.save|\.to_csv\(|json\.dump\(|traced\.save\(|onnx\.export\(|\bos\.write\("
)


def test_source_writes_files_only_through_the_atomic_writer():
    src = Path(__file__).resolve().parents[2] / "src" / "anomem"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel == "io/checkpoint.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if DIRECT_WRITE.search(line) and not any(
                rel == f and snippet in line for f, snippet in ALLOWED_DIRECT_WRITES
            ):
                offenders.append(f"{rel}:{no}: {line.strip()}")
    assert not offenders, "write these through anomem.io.checkpoint.atomic_write_*:\n" + "\n".join(offenders)
