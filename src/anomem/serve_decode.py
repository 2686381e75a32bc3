"""Decoding uploads for ``anomem serve`` within a memory budget.

An upload is decoded only once its memory can be reserved: :func:`decode_estimate` reads
the image header and estimates the bytes its decode takes (Pillow's raster, the copy an
EXIF rotation makes, the converted image); :class:`DecodeBudget` hands out at most
``--decode-budget-mb`` of them at a time, first come first served; an image whose
estimate alone is over the budget, or over ``--max-pixels``, is refused with 413
(:class:`BadRequest`). After a large decode the freed heap is given back to the system.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import io
import warnings
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from PIL import Image

from anomem.data.image_io import (
    ImageTooLarge,
    count_conversions,
    decode_image,
    describe_conversions,
)
from anomem.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anomem.serve import ServeLimits

MIB = 2**20


class BadRequest(Exception):
    """A request the server refuses: answered ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Uploads(NamedTuple):
    """A request's images at the detector's input: ``images`` (n, C, H, W) uint8, and what
    was converted to fit it (``anomem score``'s stderr line), or None."""

    images: torch.Tensor
    conversions: str | None


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).
    Decoding a large image frees hundreds of MB in Pillow-sized blocks that glibc would
    otherwise keep in each decoding thread's arena, so the server's RSS stayed at its peak."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
_TRIM_AFTER_PIXELS = 4_000_000  # decodes this large are followed by a trim (small ones are not worth it)


def decode_all(files: list[tuple[str, bytes]], det: Any, max_pixels: int | None = None) -> Uploads:
    """The uploads decoded as ``anomem score`` reads files (none over ``max_pixels``: 413)."""
    decoded = []
    try:
        for name, data in files:
            try:
                decoded.append(decode_image(data, name, det.image_size_, det.in_channels_, max_pixels=max_pixels))
            except ImageTooLarge as e:
                raise BadRequest(413, f"{e} (--max-pixels)") from None
            except DataError as e:
                raise BadRequest(415, f"not an image: {e}") from None
    finally:
        if len(decoded) < len(files) or any(d.info.size[0] * d.info.size[1] > _TRIM_AFTER_PIXELS for d in decoded):
            _trim_heap()
    counts = count_conversions([d.info for d in decoded], det.image_size_, det.in_channels_)
    return Uploads(torch.stack([d.image for d in decoded]), describe_conversions(counts))


# Bytes per pixel of Pillow's raster for each mode: 1 for "1", "L", "P"; 2 for the 16-bit
# grey modes; 4 for every other mode (Pillow keeps RGB, LA, "I" and "F" in 32 bits a pixel).
_RASTER_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_WIDE_EXTRA = 34  # wide grey samples go through int64, uint64 and float64 arrays (_to_mode, wide_to_uint8)


class Estimate(NamedTuple):
    """What decoding one upload takes: ``pixels`` (from its header) and ``bytes`` at its peak."""

    pixels: int
    bytes: int
    what: str  # "9000x9000 RGBA", for messages


def decode_estimate(data: bytes, size: tuple[int, int], channels: int) -> Estimate | None:
    """The memory :func:`~anomem.data.image_io.decode_image` takes for ``data`` at its peak,
    from the header alone (nothing is decoded); None when the header is unreadable (the
    decode then fails at once, with its own message). Raises Pillow's DecompressionBombError
    for a header of more than twice Pillow's pixel limit (about 179 Mpx).

    Per pixel of the file: twice its raster (Pillow's decoded image and the copy that
    applies the EXIF rotation), the raster of the converted image (grey 1 byte, RGB 4), 4
    more for a palette with transparency (expanded to RGBA first), 34 more for 16- and
    32-bit grey (widened to 64-bit arrays to scale them); plus the resized image three times
    (Pillow, numpy, torch). Measured peaks are 0.3-4 bytes per pixel below this
    (``benchmarks/serve_limits.py``, first table).
    """
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the decode refuses those itself
            w, h, mode, palette_alpha = im.width, im.height, im.mode, "transparency" in im.info
    except Image.DecompressionBombError:
        raise
    except Exception:  # noqa: BLE001 - not an image: the decode says why
        return None
    raster = _RASTER_BYTES.get(mode, 4)
    per_pixel = 2 * raster + (1 if channels == 1 else 4)
    if mode == "PA" or (mode == "P" and palette_alpha):
        per_pixel += 4
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        per_pixel += _WIDE_EXTRA
    out = size[0] * size[1] * channels * 3
    return Estimate(w * h, w * h * per_pixel + out, f"{w}x{h} {mode}")


class DecodeBudget:
    """Bytes of decoding memory shared by the requests of one event loop.

    ``async with budget.reserve(n)`` takes ``n`` bytes, waiting until they fit; requests are
    let in in the order they asked, so a large one is not passed over for ever by small
    ones. A reservation larger than the whole budget raises ValueError at once. A waiter
    whose request is cancelled (its client went away) leaves the queue.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used, self.peak = capacity, 0, 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, f in self._waiting)

    @contextlib.asynccontextmanager
    async def reserve(self, n: int) -> AsyncIterator[None]:
        if n > self.capacity:
            raise ValueError(f"{n} bytes is more than the whole budget ({self.capacity} bytes)")
        if self._waiting or self.used + n > self.capacity:
            entry = (n, asyncio.get_running_loop().create_future())
            self._waiting.append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                if entry[1].done() and not entry[1].cancelled():  # granted, then cancelled: give it back
                    self._release(n)
                else:
                    self._waiting.remove(entry)
                    self._wake()
                raise
        else:
            self._take(n)
        try:
            yield
        finally:
            self._release(n)

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            n, future = self._waiting[0]
            if future.done():  # cancelled while queued
                self._waiting.popleft()
                continue
            if self.used + n > self.capacity:
                return
            self._waiting.popleft()
            self._take(n)
            future.set_result(None)


def estimate_all(files: list[tuple[str, bytes]], det: Any, limits: ServeLimits) -> int:
    """Bytes to reserve for decoding ``files`` one after another: the largest estimate plus
    the resized images. Refuses (413) an image over ``max_pixels`` or over the whole budget."""
    largest, outputs = 0, 0
    for name, data in files:
        try:
            est = decode_estimate(data, det.image_size_, det.in_channels_)
        except Image.DecompressionBombError as e:
            raise BadRequest(413, f"{name}: {e} (--max-pixels)") from None
        if est is None:
            continue
        if est.pixels > limits.max_pixels:
            raise BadRequest(413, f"{name} is {est.what.split()[0]} = {est.pixels} pixels; "
                                  f"the limit is {limits.max_pixels} pixels per image (--max-pixels)")
        if est.bytes > limits.decode_budget:
            raise BadRequest(413, f"{name} ({est.what}) takes about {est.bytes / MIB:.0f} MiB to decode; the "
                                  f"decode budget is {limits.decode_budget / MIB:.0f} MiB (--decode-budget-mb)")
        h, w = det.image_size_
        out = h * w * det.in_channels_ * 3
        largest, outputs = max(largest, est.bytes - out), outputs + out
    return largest + outputs


__all__ = ["MIB", "BadRequest", "DecodeBudget", "Estimate", "Uploads", "decode_all", "decode_estimate", "estimate_all"]
