"""Where commands may write: one rule for every output path, checked before any write.

Every command that writes a file or fills a directory goes through this module:

* :func:`check_outputs` — no output path may equal, contain or sit inside an input path
  (symlinks resolved, hard links compared by inode). ``score DIR --maps DIR`` would
  otherwise overwrite the images with their heat-maps, ``score M.ckpt … --out M.ckpt``
  the model with a CSV, ``train --out DATA/train/normal`` pollute the dataset.
* :func:`check_file_target` — an existing file at an output path is overwritten only if
  it is the kind of file the command writes (a CSV never replaces a checkpoint, an
  export never replaces a model or an image).
* :func:`claim_output_dir` — a directory that a command fills with several files
  (report, heat-maps) must be new, empty, or one the same command filled before (it
  holds the marker file ``.anomem-output``); files someone else put there are never
  overwritten.
* :class:`anomem.io.staging.StagedDir` — such a directory is all-or-nothing and never
  mixed: it is filled in a hidden staging folder beside it and put in place in one step
  at the end, so an interrupted command leaves the old folder (or none), a reused folder
  holds only the new files, and of two commands filling one folder at once the second is
  refused.
* Outputs that are not regular files (``-`` = stdout, character devices, FIFOs,
  ``/dev/stdout``) are written through and never renamed over (see
  :func:`anomem.io.checkpoint.is_stream`); the kind checks only ``stat`` them, so no check
  opens a FIFO and blocks.
* :class:`RunLock` — a training run directory is owned by one process at a time
  (``.anomem.lock``, an ``flock`` the kernel releases when the process dies, so a killed
  run never leaves a stale lock).
* :func:`check_new_run_dir` — a new run never goes into a directory holding a run that
  saved anything (last.ckpt, model.ckpt, metrics…); that run is continued with
  ``--resume`` or a new ``--out`` is chosen.

Commands call these after their inputs are validated and before their first write, so
a refused command leaves the file system exactly as it was.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from anomem.errors import OutputError
from anomem.io.checkpoint import (
    NAME_MAX,
    atomic_write_text,
    is_stream,
    is_temp_of,
    special_kind,
)

MARKER = ".anomem-output"
LOCK = ".anomem.lock"
# Files `anomem train` writes into a run directory; any of the first four means the run saved work.
RUN_RESULTS = ("last.ckpt", "model.ckpt", "metrics.json", "test_scores.csv")
RUN_FILES = (*RUN_RESULTS, "args.json", "config.json", "train.log")

Labelled = Sequence[tuple[str, "str | os.PathLike[str] | None"]]


def real(path: str | os.PathLike[str]) -> Path:
    """Absolute path with every existing symlink resolved (the rest kept as written)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_outputs(outputs: Labelled, inputs: Labelled) -> None:
    """Refuse when an output path equals, contains or lies inside an input path.

    Args:
        outputs: (what, path) pairs, e.g. ("--maps", "heat/"); None paths are skipped.
        inputs: (what, path) pairs of everything the command reads.

    Raises:
        OutputError: naming both paths and the relation.
    """
    outs = [(label, Path(p), real(p)) for label, p in outputs if p is not None and os.fspath(p) != "-"]
    ins = [(label, Path(p), real(p)) for label, p in inputs if p is not None]
    for olabel, opath, o in outs:
        for ilabel, ipath, i in ins:
            if o == i or _same_file(o, i):
                raise OutputError(f"{olabel} {str(opath)!r} is the same path as the input {ilabel} {str(ipath)!r}; "
                                  "refusing to overwrite an input")
            if _inside(o, i):
                raise OutputError(f"{olabel} {str(opath)!r} lies inside the input {ilabel} {str(ipath)!r}; "
                                  "write outputs outside the inputs")
            if _inside(i, o):
                raise OutputError(f"{olabel} {str(opath)!r} contains the input {ilabel} {str(ipath)!r}; "
                                  "write outputs outside the inputs")
    for k, (alabel, apath, a) in enumerate(outs):
        for blabel, bpath, b in outs[k + 1:]:
            if _inside(a, b) or _inside(b, a):
                raise OutputError(f"{alabel} {str(apath)!r} and {blabel} {str(bpath)!r} overlap; give them separate paths")


def file_kind(path: Path) -> str:
    """What an existing file is: "missing", "directory", "stream" (``-``, a character
    device, a FIFO, ``/dev/stdout``: written through, never opened here), "special" (a
    block device or socket), else from a regular file's first bytes: "checkpoint" (a
    torch.save zip), "torchscript", "onnx", "zip", "image", "text" or "binary"."""
    if is_stream(path):
        return "stream"
    if not os.path.lexists(path):
        return "missing"
    if path.is_dir():
        return "directory"
    if special_kind(path) is not None or not stat.S_ISREG(os.stat(path).st_mode):
        return "special"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "binary"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "zip"
        if any("/code/" in n for n in names):
            return "torchscript"
        return "checkpoint" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head.startswith(b"\x08"):  # protobuf field 1 (ir_version) as ONNX files begin; never text
        return "onnx"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")):
        return "image"
    # Text in any 8-bit encoding (a score file naming a Latin-1 file is not UTF-8, and 4096
    # bytes may end inside a character): no NUL and no control byte but whitespace and ESC.
    return "binary" if head.translate(None, _TEXT_CONTROLS) != head else "text"


_TEXT_CONTROLS = bytes(c for c in range(32) if c not in b"\t\n\r\f\b\x1b")  # NUL included


def check_file_target(label: str, path: str | os.PathLike[str], allowed: Iterable[str]) -> None:
    """Refuse to write ``path`` if it exists and is not one of the ``allowed`` kinds.

    ``allowed`` are :func:`file_kind` names ("missing" and "stream" are always allowed):
    a score CSV may replace a text file, a checkpoint only a checkpoint, and so on.
    """
    path = Path(path)
    if is_stream(path):
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    kind = file_kind(path)
    ok = {"missing", *allowed}
    if kind not in ok:
        what = {"directory": "a directory", "special": special_kind(path) or "a special file", "checkpoint": "a checkpoint", "torchscript": "a TorchScript file",
                "zip": "a zip archive", "onnx": "an ONNX file", "image": "an image", "text": "a text file", "binary": "a binary file"}[kind]
        raise OutputError(f"{label} {str(path)!r} already exists and is {what}; refusing to overwrite it "
                          "(choose another path or remove it first)")


def _marker_lines(d: Path) -> list[str] | None:
    """The lines of ``d``'s marker; None unless it is a regular file of at most 16 MiB (a
    FIFO or device planted there is never opened, so no check blocks)."""
    try:
        st = os.lstat(d / MARKER)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 16 * 2**20:
            return None
        return (d / MARKER).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return None


def marker_of(d: Path) -> str | None:
    """The command named by ``d``'s marker (its first line), or None."""
    lines = _marker_lines(d)
    return lines[0].strip() if lines else None


def marker_files(d: Path) -> list[str] | None:
    """The entries the command wrote into ``d``, as its marker lists them (a JSON list on
    the second line, written by :class:`anomem.io.staging.StagedDir`); None for older markers."""
    lines = _marker_lines(d)
    try:
        names = json.loads(lines[1]) if lines and len(lines) > 1 else None
    except ValueError:
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def check_claimable(label: str, path: str | os.PathLike[str], kind: str, legacy: Sequence[str] = ()) -> None:
    """Raise unless :func:`claim_output_dir` may use ``path`` (nothing is written here).

    A directory is reused only if it is empty, holds the marker of the same ``kind``, or
    holds one of ``legacy`` (a file the same command wrote before markers existed).
    """
    d = Path(path)
    if os.fspath(path) == "-" or is_stream(d):
        raise OutputError(f"{label} {str(path)!r} must be a directory (it receives several files), not a stream")
    if d.exists() and not d.is_dir():
        raise OutputError(f"cannot write to output directory {str(d)!r}: it exists and is not a directory")
    if not d.is_dir():
        return
    try:
        entries = sorted(os.listdir(d))
    except OSError as e:
        raise OutputError(f"cannot write to output directory {str(d)!r}: {e.strerror or e}") from None
    ours = MARKER in entries and marker_of(d) == kind
    if entries and not ours and not any(name in entries for name in legacy):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise OutputError(f"{label} {str(d)!r} is not empty ({shown}) and was not written by anomem {kind}; "
                          "choose a new or empty directory")


def claim_output_dir(label: str, path: str | os.PathLike[str], kind: str, legacy: Sequence[str] = ()) -> Path:
    """Create (or reuse, see :func:`check_claimable`) a directory that ``kind`` fills with
    several files, and mark it as written by ``kind``."""
    check_claimable(label, path, kind, legacy)
    d = prepare_dir(Path(path))
    atomic_write_text(d / MARKER, kind + "\n")
    return d


def unique_names(paths: Sequence[str | os.PathLike[str]], suffix: str) -> list[str]:
    """One output file name per input path, all different, for a directory of outputs
    (heat-maps): the input's stem plus ``suffix``; a name already given (compared without
    case, for case-insensitive file systems) gets ``_2``, ``_3``, ... so ``a/x.png`` and
    ``b/x.png`` never share a file. Inside a directory that :func:`check_outputs` keeps
    apart from the inputs, no name can be an input."""
    used: set[str] = set()
    names = []
    for p in paths:
        stem = Path(p).stem or "image"
        name, k = _fit_name(stem, suffix), 1
        while name.lower() in used or name == MARKER or name == LOCK:
            k += 1
            name = _fit_name(stem, f"_{k}{suffix}")
        used.add(name.lower())
        names.append(name)
    return names


def _fit_name(stem: str, tail: str) -> str:
    """``stem + tail``, the stem cut (in bytes) so the name stays a legal file name."""
    raw = os.fsencode(stem)
    room = NAME_MAX - len(os.fsencode(tail))
    return (stem if len(raw) <= room else os.fsdecode(raw[:room])) + tail


def prepare_dir(d: Path) -> Path:
    """mkdir -p, and check that files can be created in ``d``."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise OutputError(f"cannot write to output directory {str(d)!r}: {e.strerror or e}") from None
    return d


def check_new_run_dir(run: Path) -> None:
    """A new run may not go where a run already saved work (nothing is silently mixed)."""
    if os.fspath(run) == "-" or is_stream(run):
        raise OutputError(f"--out {str(run)!r} must be a directory (a run receives several files), not a stream")
    if not run.exists():
        return
    if not run.is_dir():
        raise OutputError(f"cannot write to output directory {str(run)!r}: it exists and is not a directory")
    saved = [n for n in RUN_RESULTS if (run / n).exists()]
    if saved:
        raise OutputError(f"--out {str(run)!r} already holds a run ({', '.join(saved)}); continue it with "
                          f"`anomem train --resume {run}` or choose a new --out")
    # a run's own files, the lock, and the temp files of a run's atomic writes in flight
    # (another process may be writing them right now: the lock below settles who owns it)
    others = sorted(n for n in os.listdir(run) if n not in RUN_FILES and n not in (LOCK, MARKER)
                    and not any(is_temp_of(n, f) for f in RUN_FILES))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise OutputError(f"--out {str(run)!r} is not empty ({shown}) and is not a run directory; "
                          "choose a new or empty directory")


class RunLock:
    """Exclusive ownership of a run directory while a process writes into it.

    The lock is an ``flock`` on ``RUN/.anomem.lock``, so the kernel drops it when the
    owner exits or is killed; the file itself (holding the owner's pid) stays behind and
    is harmless. Where ``fcntl`` does not exist the file is created exclusively instead.
    """

    def __init__(self, run: Path) -> None:
        self.path = Path(run) / LOCK
        self._fd: int | None = None
        self._exclusive_file = False

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: an exclusively created file
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                raise OutputError(f"run directory {str(self.path.parent)!r} is in use by another anomem process "
                                  f"(delete {str(self.path)!r} if none is running)") from None
            except OSError as e:
                raise OutputError(f"cannot lock run directory {str(self.path.parent)!r}: {e.strerror or e}") from None
            self._exclusive_file = True
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot lock run directory {str(self.path.parent)!r}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"run directory {str(self.path.parent)!r} is in use by another anomem process "
                              f"(pid {owner}); wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for the message above
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._exclusive_file:  # pragma: no cover - not POSIX
            os.remove(self.path)
            self._exclusive_file = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
