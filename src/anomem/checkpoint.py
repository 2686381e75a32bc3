"""One-file checkpoints, written atomically and read without unpickling code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read with ``torch.load(weights_only=True)``, whose restricted
unpickler refuses anything but those types: a file that tries to import or call
something is rejected with :class:`CheckpointError` and nothing in it runs.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed
over the target, so a crash mid-write leaves the previous good file in place.
"""

from __future__ import annotations

import os
import pickle
import tempfile
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """Atomically save a checkpoint dict (adds the format tag)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **obj}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; never executes code stored in the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it contains objects other than tensors and plain data "
            f"(a tampered or foreign file?): {first}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (corrupt or truncated?): {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an AnoMem checkpoint")
    ver = obj.get("format_version")
    if not isinstance(ver, int) or ver > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} uses checkpoint format {ver!r}, newer than this AnoMem understands "
            f"({FORMAT_VERSION}); upgrade anomem"
        )
    return obj
