"""One-file checkpoints, written atomically and read without unpickling code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read with ``torch.load(weights_only=True)``, whose restricted
unpickler refuses anything but those types: a file that tries to import or call
something is rejected with :class:`CheckpointError` and nothing in it runs.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed
over the target (and the directory entry flushed), so a crash mid-write leaves the
previous good file in place. A process killed mid-write can leave its ``.<name>.*.tmp``
file behind; it is never read, and a later write of ``<name>`` removes it once it is an
hour old (younger ones may belong to a writer still running). Only names of exactly the
form mkstemp gives (``.<name>.XXXXXXXX.tmp``, regular files) are ever removed.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anomem.errors import CheckpointError

FORMAT = "anomem-checkpoint"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    _remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the usual permissions
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os_error = _os_error_in_chain(e) if isinstance(e, Exception) else None
        if os_error is not None:
            raise CheckpointError(f"cannot write {str(path)!r}: {os_error.strerror or os_error}") from None
        raise


def _os_error_in_chain(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save re-raises a failed write (disk full) as RuntimeError."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Flush the rename to disk (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# mkstemp's names: prefix, 8 characters from this alphabet, suffix (CPython's tempfile).
_TEMP_MIDDLE = re.compile(r"[a-z0-9_]{8}")


def is_temp_of(name: str, target: str) -> bool:
    """True only for names ``.<target>.XXXXXXXX.tmp`` that mkstemp made for ``target``.

    Plain string matching, never a glob: a target named ``*.csv`` must not match
    another file's temp (or any file that merely looks like one).
    """
    prefix, suffix = f".{target}.", ".tmp"
    if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) != len(prefix) + 8 + len(suffix):
        return False
    return _TEMP_MIDDLE.fullmatch(name[len(prefix):-len(suffix)]) is not None


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by a writer that was killed (older than 1 hour)."""
    cutoff = time.time() - 3600
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not is_temp_of(name, path.name):
            continue
        stale = parent / name
        try:
            st = os.lstat(stale)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                stale.unlink()
        except OSError:
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the AnoMem source tree (``<sha>`` or ``<sha>-dirty``), None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=here)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Atomically save a checkpoint dict (adds the format tag)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **obj}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def _first_sentence(e: BaseException) -> str:
    """``TypeName: first sentence of the message``, on one line."""
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    cut = text.find(". ")
    return f"{type(e).__name__}: {text[:cut] if cut > 0 else text}"[:300]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; never executes code stored in the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror or e}") from None
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch zip, or a pickle (legacy torch)
        raise CheckpointError(f"{str(path)!r} is not a checkpoint: it is neither a torch zip archive nor a pickle "
                              f"(it starts with {head!r})")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        if "Unsupported operand" in reason:  # not code: bytes that are no valid pickle at all
            raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (corrupt or foreign bytes): "
                                  f"{reason.rstrip('.')}") from None
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it contains objects other than tensors and plain data "
            f"(a tampered or foreign file?): {reason or type(e).__name__}"
        ) from None
    except Exception as e:  # torch.load on damaged bytes raises many types (IndexError, struct.error...)
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (corrupt or truncated?): "
                              f"{_first_sentence(e)}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an AnoMem checkpoint")
    ver = obj.get("format_version")
    if not isinstance(ver, int) or ver > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} uses checkpoint format {ver!r}, newer than this AnoMem understands "
            f"({FORMAT_VERSION}); upgrade anomem"
        )
    return obj
