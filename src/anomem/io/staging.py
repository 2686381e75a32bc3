"""All-or-nothing output folders: filled beside the target, put in place in one step.

A command that fills a folder with several files (``score --maps``, ``evaluate --out``)
writes them into a hidden staging folder next to the target and renames it into place
at the end (:class:`StagedDir`): an interrupted command leaves the old folder (or none)
and no half-written one, a reused folder holds only the new files, and of two commands
filling one folder at once the later one is refused. The rules on which folders may be
used at all are :func:`anomem.io.outputs.check_claimable`'s.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from anomem.errors import OutputError
from anomem.io.checkpoint import atomic_write_text, current_umask, is_temp_of, temp_prefix
from anomem.io.outputs import MARKER, check_claimable, marker_files, marker_of, prepare_dir, real


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C waits until the block ends, then interrupts: a pair of renames or a clean-up
    is never cut in half. A no-op outside the main thread (only it can take over SIGINT)
    and where SIGINT is not Python's default (ignored in a background job, the
    application's own handler, or an enclosing ``deferred_interrupts`` block, which then
    holds the Ctrl-C until its own end)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells whether ``path`` changed: (device, inode, mtime), None when missing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


class StagedDir:
    """A directory that a command fills with several files, all-or-nothing, never mixed.

    ``path`` is a hidden staging folder beside the target (``.<name>.XXXXXXXX.tmp``, with
    the marker of ``kind``), where the command writes; :meth:`commit` puts it in the
    target's place: a new or empty target in one rename, a target that the same command
    filled before is moved aside, replaced and then deleted (so it holds only the new
    files). If the target changed since the check (another command committed into it),
    commit refuses and replaces nothing. Leaving the ``with`` block by an error or Ctrl-C
    deletes the staging folder; the staging folder of a killed process is deleted by a
    later command on the same target once it is an hour old.
    """

    def __init__(self, label: str, target: str | os.PathLike[str], kind: str, legacy: Sequence[str] = ()) -> None:
        check_claimable(label, target, kind, legacy)
        self.label, self.kind = label, kind
        self.target = real(target)  # a symlink to a folder: that folder is replaced, the link stays
        _refuse_foreign_files(label, self.target, kind)
        self._seen = _identity(self.target)
        parent = prepare_dir(self.target.parent)
        _remove_stale_staging(self.target, kind)
        with deferred_interrupts():  # a staging folder exists only with its marker, inside the `with`
            try:
                self.path = Path(tempfile.mkdtemp(prefix=temp_prefix(self.target.name), suffix=".tmp", dir=parent))
            except OSError as e:
                raise OutputError(f"cannot write to output directory {str(parent)!r}: {e.strerror or e}") from None
            try:
                os.chmod(self.path, 0o777 & ~current_umask())  # mkdtemp makes 0700; the folder is the user's
                atomic_write_text(self.path / MARKER, kind + "\n")
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise

    def final(self, path: str | os.PathLike[str]) -> Path:
        """Where a file written at ``path`` (inside the staging folder) will be after commit."""
        return self.target / Path(path).relative_to(self.path)

    def commit(self) -> Path:
        parent = self.target.parent
        with _DirLock(parent), deferred_interrupts():
            if _identity(self.target) != self._seen:
                raise OutputError(f"{self.label} {str(self.target)!r} was changed by another process while this "
                                  f"command ran (another anomem {self.kind} into it?); it was left as that process "
                                  "wrote it: run again or choose another directory")
            written = sorted(n for n in os.listdir(self.path) if n != MARKER)  # what a later reuse may delete
            atomic_write_text(self.path / MARKER, self.kind + "\n" + json.dumps(written) + "\n")
            try:
                os.replace(self.path, self.target)  # a missing or empty target: one atomic step
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise OutputError(f"cannot write {str(self.target)!r}: {e.strerror or e}") from None
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(self.target.name), suffix=".tmp", dir=parent))
                os.replace(self.target, old)  # our earlier output (it holds our marker)
                os.replace(self.path, self.target)
                shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        with deferred_interrupts():
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.discard()


# What the commands wrote before markers listed their files: a reused folder may hold these.
_WRITTEN_BEFORE_LISTS = {"score --maps": lambda name: name.endswith((".png", ".npy")),
                         "evaluate": lambda name: name in ("report.html", "report.md", "metrics.json", "figures")}


def _refuse_foreign_files(label: str, target: Path, kind: str) -> None:
    """A reused folder is replaced whole: refuse while it holds files the command did not
    write there (a user's notes beside the heat-maps), so that nothing of theirs is deleted."""
    try:
        entries = [n for n in os.listdir(target) if n != MARKER]
    except OSError:
        return  # new (or unreadable: check_claimable said so)
    listed = marker_files(target)
    ours = set(listed).__contains__ if listed is not None else _WRITTEN_BEFORE_LISTS.get(kind, lambda n: False)
    foreign = sorted(n for n in entries if not ours(n))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"{label} {str(target)!r} holds files anomem {kind} did not write ({shown}); a new run "
                          "replaces the whole folder, so move them out or choose another directory")


def _remove_stale_staging(target: Path, kind: str) -> None:
    """Staging folders of ``target`` left by killed commands: an hour old and holding our marker."""
    cutoff = time.time() - 3600
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        d = target.parent / name
        try:
            if (not is_temp_of(name, target.name) or not stat.S_ISDIR(os.lstat(d).st_mode)
                    or os.lstat(d).st_mtime >= cutoff or marker_of(d) != kind):
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)


class _DirLock:
    """An ``flock`` on a directory while a staged folder is put in place in it, so two
    anomem processes never swap into one target at once (a few milliseconds each)."""

    def __init__(self, directory: Path, timeout: float = 30.0) -> None:
        self.directory, self.timeout, self._fd = directory, timeout, -1

    def __enter__(self) -> _DirLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: the identity check alone
            return self
        self._fd = os.open(self.directory, os.O_RDONLY)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    os.close(self._fd)
                    raise OutputError(f"directory {str(self.directory)!r} stays locked by another anomem "
                                      "process") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops the flock
            self._fd = -1


__all__ = ["StagedDir", "deferred_interrupts"]
