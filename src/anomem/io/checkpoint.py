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
form mkstemp gives (``.<name>.XXXXXXXX.tmp``, regular files) are ever removed; for a name
too long to take the 14 extra bytes, ``<name>`` in it is cut and followed by ``~`` and 8
hex digits of its sha256 (:func:`temp_prefix`), so every legal name can be written.

What is not a regular file is never renamed over: ``-`` is standard output, and a
character device, a FIFO or a path through a process's open files (``/dev/stdout``,
``/dev/fd/N``, ``/proc/self/fd/N``) is written through, in one piece once the content is
complete (:func:`is_stream`). Block devices and sockets are refused.

Every checkpoint carries ``content_sha256``, a sha256 over every field and every
tensor's dtype, shape and bytes in a fixed order (:func:`content_hash`); the loaders
check it after the fields are validated (:func:`verify_content_hash`), so a flipped bit
in a weight is an error, not a silent change of scores. Files from before it have no
hash and load as before.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import re
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anomem.errors import CheckpointError

FORMAT = "anomem-checkpoint"
FORMAT_VERSION = 3  # 1: stage 2 one module; 2: nested fusion weights; 3: flat weights (anomem.io.migrate)


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs, APFS, NTFS in UTF-16 units)
_TEMP_EXTRA = 13  # mkstemp's 8 random characters, a dot and ".tmp"


def temp_prefix(name: str) -> str:
    """``.<name>.``, the prefix of ``name``'s temp files and staging folders; a name too
    long for it is cut (in bytes) and followed by ``~`` and 8 hex digits of its sha256."""
    prefix = f".{name}."
    if len(os.fsencode(prefix)) + _TEMP_EXTRA <= NAME_MAX:
        return prefix
    raw = os.fsencode(name)
    keep = raw[: NAME_MAX - _TEMP_EXTRA - 11]  # ".", "~", 8 hex digits and "." around it
    return f".{os.fsdecode(keep)}~{hashlib.sha256(raw).hexdigest()[:8]}."


def _link_hops(path: str) -> list[str]:
    """``path`` and every symlink it leads through (absolute, up to 40 hops)."""
    hops = [os.path.abspath(path)]
    for _ in range(40):
        try:
            nxt = os.readlink(hops[-1])
        except OSError:
            break
        hops.append(os.path.abspath(os.path.join(os.path.dirname(hops[-1]), nxt)))
    return hops


def is_stream(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is written through, never renamed over: ``-`` (stdout), a
    character device or FIFO, or a path leading through a process's open files
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/<pid>/fd/N``: stdout when it is a file).
    Only ``stat`` is used: nothing is opened, so the check never blocks."""
    p = os.fspath(path)
    if p == "-":
        return True
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return False
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return True
    return any(_OPEN_FILE.fullmatch(h) for h in _link_hops(p))


# A process's open file: /dev/stdout and friends, /dev/fd/N, /proc/<pid>/fd/N.
_OPEN_FILE = re.compile(r"/dev/std(in|out|err)|/dev/fd/\d+|/proc/(self|thread-self|\d+)/fd/\d+")


def special_kind(path: str | os.PathLike[str]) -> str | None:
    """"a block device" or "a socket" when ``path`` is one (never written), else None."""
    try:
        mode = os.stat(os.fspath(path)).st_mode
    except OSError:
        return None
    return "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else None


def _write_through(path: str, data: bytes) -> None:
    """Stream ``data`` to stdout (``-`` or a path to our own stdout/stderr) or open ``path``
    for writing without creating, truncating or renaming anything."""
    try:
        target = None if path == "-" else os.stat(path)
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            same = target is not None and _same_inode(target, fd)
            if path == "-" and fd == 1 or same:
                stream.flush()
                out = getattr(stream, "buffer", None)
                if out is None:  # a text stream without bytes (a test's capture): decode as written
                    stream.write(data.decode("utf-8", "surrogateescape"))
                else:
                    out.write(data)
                    out.flush()
                return
        with os.fdopen(os.open(path, os.O_WRONLY), "wb") as f:
            f.write(data)
    except BrokenPipeError:  # the reader went away: the command stops (the CLI exits quietly)
        raise
    except OSError as e:
        raise CheckpointError(f"cannot write {path!r}: {e.strerror or e}") from None


def _same_inode(st: os.stat_result, fd: int) -> bool:
    try:
        other = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it over ``path``.

    A stream target (:func:`is_stream`) gets the complete content written through instead;
    a symlink is followed (the file it names is replaced, the link stays).
    """
    if is_stream(path):
        buf = io.BytesIO()
        write(buf)
        _write_through(os.fspath(path), buf.getvalue())
        return
    special = special_kind(path)
    if special is not None:
        raise CheckpointError(f"cannot write {str(path)!r}: it is {special}; refusing to write onto it")
    if os.path.islink(path):  # replace the file the link names, never the link itself
        path = os.path.realpath(path)
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    _remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the usual permissions
            os.fchmod(fd, 0o666 & ~current_umask())
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


def current_umask() -> int:
    """The process's umask (read by setting it and back)."""
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
    prefix, suffix = temp_prefix(target), ".tmp"
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
    """UTF-8 text; a file name that is not UTF-8 (held as surrogates) keeps its own bytes."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


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


HASH_KEY = "content_sha256"


def _feed(h: Any, value: Any) -> None:
    """Canonical bytes of ``value`` into ``h``: a type tag, then the content, containers
    in a fixed order (dict items sorted by key), tensors as dtype, shape and raw bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:  # never in our files (the validator refuses them)
            h.update(f"X{t.layout}".encode())
            return
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1)
            if flat.stride(0) != 1:  # one element stored with stride 0 (a damaged header) counts as contiguous
                flat = flat.clone(memory_format=torch.contiguous_format)
            h.update(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for k in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, k)
            _feed(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}|".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        h.update(f"S{len(raw)}|".encode() + raw)
    elif isinstance(value, bytes):
        h.update(f"B{len(value)}|".encode() + value)
    elif isinstance(value, float):
        h.update(f"F{value.hex()}|".encode())
    elif value is None or isinstance(value, bool | int):
        h.update(f"{type(value).__name__}{value!r}|".encode())
    else:  # torch.dtype, torch.Size and the like: their repr is stable
        h.update(f"?{type(value).__name__}{value!r}|".encode())


def content_hash(ckpt: dict[str, Any]) -> str:
    """sha256 (hex) over every field of ``ckpt`` except the hash itself (see :func:`_feed`)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != HASH_KEY})
    return h.hexdigest()


def verify_content_hash(ckpt: dict[str, Any], path: str | Path, prefix: str = "") -> bool:
    """Raise CheckpointError when ``ckpt`` holds a content hash that its fields do not
    match, else remove the hash from ``ckpt`` (it describes the file, not the model).
    Returns False for files from before hashes (nothing to check), True otherwise."""
    if HASH_KEY not in ckpt:
        return False
    stored = ckpt.pop(HASH_KEY)
    if not isinstance(stored, str) or stored != content_hash(ckpt):
        raise CheckpointError(f"{prefix}{str(path)!r} is damaged: its contents do not match the sha256 stored when it "
                              "was saved (a changed byte in a weight or field); restore it from a copy")
    return True


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Atomically save a checkpoint dict (adds the format tag and the content hash)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **obj}
    payload[HASH_KEY] = content_hash(payload)
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


# Deepest nesting of [ and { accepted in a JSON text read from a file (checkpoint fields,
# args.json, config.json); ours are at most 5 deep. Far below Python's recursion limit, so
# json.loads never raises RecursionError on what passed.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deeply ``[`` and ``{`` nest in ``text``, outside JSON strings (0 for a scalar).
    Linear and without recursion, so it is safe on any input, valid JSON or not."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_json(text: str) -> Any:
    """``json.loads`` with the nesting limited to :data:`MAX_JSON_DEPTH` (ValueError beyond)."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    return json.loads(text)


def _first_sentence(e: BaseException) -> str:
    """``TypeName: first sentence of the message``, on one line."""
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    cut = text.find(". ")
    return f"{type(e).__name__}: {text[:cut] if cut > 0 else text}"[:300]


def resolve_checkpoint_path(path: str | Path) -> Path:
    """``path``, or a run directory's ``model.ckpt`` when ``path`` is a run directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "model.ckpt").is_file():
        return path / "model.ckpt"
    hint = (" (its run has not finished: continue it with `anomem train --resume`)"
            if (path / "last.ckpt").is_file() else "")
    raise CheckpointError(f"{str(path)!r} is a directory without a model.ckpt{hint}; give a checkpoint file")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """Load and check a checkpoint; never executes code stored in the file.

    ``verify=False`` leaves the content hash in the dict, for a loader that validates
    the fields first (their messages are more precise) and calls
    :func:`verify_content_hash` last.
    """
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
    if type(ver) is not int or not 1 <= ver <= FORMAT_VERSION:  # a bool is an int to isinstance
        what = "newer than this AnoMem understands" if type(ver) is int and ver > FORMAT_VERSION else "not one of"
        raise CheckpointError(f"{str(path)!r} uses checkpoint format {ver!r}"[:300] + f", {what} "
                              f"(1..{FORMAT_VERSION}){'; upgrade anomem' if what.startswith('newer') else ''}")
    if isinstance(obj.get("seed"), bool):  # io.validate checks the other integer fields the same way
        raise CheckpointError(f"{str(path)!r} is malformed: seed must be an integer, got {obj['seed']!r}")
    for key, value in obj.items():  # JSON text (config, meta, history, threshold) is read later, many times
        if isinstance(value, str) and (depth := json_depth(value)) > MAX_JSON_DEPTH:
            raise CheckpointError(f"{str(path)!r} is malformed: field {key!r} is JSON nested {depth} levels deep "
                                  f"(at most {MAX_JSON_DEPTH})")
    if verify:
        verify_content_hash(obj, path)
    return obj
