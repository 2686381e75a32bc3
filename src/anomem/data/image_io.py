"""Reading one image file safely: format probing, decompression-bomb limits, EXIF
orientation, 8/16/32-bit depths, grey/colour conversion, masks (used by the folder
loaders in :mod:`anomem.data.folder` and the dataset readers)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from anomem.errors import DataError
from anomem.inputs import wide_to_uint8

__all__ = ["FOLDER_CLASSES", "IMAGE_EXTENSIONS", "DecodedImage", "ImageInfo", "conversions", "count_conversions",
           "decode_image",
           "describe_conversions", "image_hw",
           "probe_image", "read_image"]


FOLDER_CLASSES = ("normal", "anomaly")


IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


_GREY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "La"}


_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


_EXIF_ORIENTATION = 0x0112


class ImageInfo(NamedTuple):
    """What an image file's header says: size after EXIF rotation and colourfulness."""

    path: Path
    size: tuple[int, int]  # (H, W)
    colour: bool
    mode: str = ""  # Pillow's mode ("L", "RGB", "RGBA", "I;16", ...)
    bits: int = 8  # bits per integer sample in the file (16 or 32 for wide grey images)


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` as (H, W): an int means a square. Raises DataError otherwise."""
    values = [image_size] if not isinstance(image_size, Sequence) else list(image_size)
    if len(values) not in (1, 2) or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0 for v in values
    ):
        raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    h, w = (int(values[0]),) * 2 if len(values) == 1 else (int(values[0]), int(values[1]))
    return h, w


def _check_channels(channels: int | None) -> None:
    if channels not in (1, 3, None) or isinstance(channels, bool):
        raise DataError(f"channels must be 1, 3 or None (auto), got {channels!r}")


def _is_colour(im: Image.Image) -> bool:
    if im.mode in ("P", "PA"):
        palette = im.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
        return bool(np.any(rgb != rgb[:, :1]))
    return im.mode not in _GREY_MODES


@contextlib.contextmanager
def _refuse_bombs() -> Iterator[None]:
    """Make Pillow's decompression-bomb warning (over ~89 Mpx) an error: a header that
    claims a giant image must not make us allocate gigabytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def probe_image(path: str | Path) -> ImageInfo:
    """Read only the header of ``path``: its (H, W) after EXIF rotation and whether it is colour.

    Raises:
        DataError: the file is missing, empty or not an image Pillow can identify.
    """
    path = Path(path)
    _check_file(path)
    try:
        with _refuse_bombs(), Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
            return ImageInfo(path, (h, w), _is_colour(im), im.mode, _bits(im))
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is bad data
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def conversions(info: ImageInfo, size: tuple[int, int], channels: int) -> list[str]:
    """What :func:`read_image` changes when it reads ``info.path`` at ``size`` with
    ``channels``: "resized WxH->WxH", "RGB->grey", "grey->RGB", "16-bit->8-bit",
    "alpha dropped" (empty when the file is used as it is). Sizes are width x height."""
    kinds = []
    if tuple(info.size) != tuple(size):
        kinds.append(f"resized {info.size[1]}x{info.size[0]}->{size[1]}x{size[0]}")
    if info.colour and channels == 1:
        kinds.append("RGB->grey")
    elif not info.colour and channels == 3:
        kinds.append("grey->RGB")
    if info.mode in _SIXTEEN_BIT:
        kinds.append(f"{info.bits}-bit->8-bit")
    if info.mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        kinds.append("alpha dropped")
    return kinds


def count_conversions(infos: Sequence[ImageInfo], size: tuple[int, int], channels: int) -> dict[str, int]:
    """{"images": how many are converted at all, kind: how many of each} (see :func:`conversions`)."""
    counts: dict[str, int] = {"images": 0}
    for info in infos:
        kinds = conversions(info, size, channels)
        counts["images"] += bool(kinds)
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def describe_conversions(counts: dict[str, int] | None) -> str | None:
    """"converted 12 images: 12 resized 64x48->28x28, 12 RGB->grey", or None if nothing was converted."""
    if not counts or not counts.get("images"):
        return None
    n = counts["images"]
    parts = ", ".join(f"{c} {kind}" for kind, c in counts.items() if kind != "images")
    return f"converted {n} image{'s' if n != 1 else ''}: {parts}"


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if size == 0:
        raise DataError(f"cannot read image {path}: file is empty (0 bytes)")


def _decode(path: Path) -> Image.Image:
    """Fully decode ``path`` (so truncation is caught) and apply its EXIF rotation."""
    _check_file(path)
    return _decode_from(path, str(path))


def _decode_from(source: Path | io.BytesIO, label: str) -> Image.Image:
    try:
        with _refuse_bombs(), Image.open(source) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is bad data
        detail = "cannot identify image file" if isinstance(e, UnidentifiedImageError) and isinstance(
            source, io.BytesIO) else str(e)  # Pillow names the in-memory object, which says nothing
        raise DataError(f"cannot read image {label}: {type(e).__name__}: {detail}") from e


def _bits(im: Image.Image) -> int:
    """Bits per sample of a grey integer image: 16 for the "I;16" modes and 16-bit PNGs,
    a TIFF's BitsPerSample, else 32 (Pillow's "I" holds 32-bit integers); 8 otherwise."""
    if im.mode not in _SIXTEEN_BIT:
        return 8
    if im.mode != "I" or im.format == "PNG":  # PNG has no 32-bit samples
        return 16
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    bits = max(bits) if isinstance(bits, tuple) and bits else bits
    return bits if isinstance(bits, int) and bits in (16, 32) else 32


def _to_mode(im: Image.Image, channels: int, path: Path) -> Image.Image:
    """Convert to "L" (channels=1) or "RGB" (channels=3) explicitly."""
    if im.mode == "F":
        raise DataError(f"{path}: floating-point images are not supported; save it as 8 or 16 bit")
    if im.mode in _SIXTEEN_BIT:
        # Pillow reads unsigned 32-bit TIFFs as signed "I": their bits are taken as unsigned
        samples = np.asarray(im).astype(np.int64) & 0xFFFFFFFF
        im = Image.fromarray(wide_to_uint8(samples, _bits(im)), mode="L")
    elif im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA"):
        im = im.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    if im.mode == target:
        return im
    try:
        return im.convert(target)
    except ValueError as e:
        raise DataError(f"{path}: cannot convert image mode {im.mode} to {target}: {e}") from e


def read_image(
    path: str | Path, size: int | Sequence[int] | None = None, channels: int = 3
) -> torch.Tensor:
    """Decode one image file into a uint8 tensor.

    Args:
        path: any file Pillow can read.
        size: output (H, W) or a square side; None keeps the file's size.
        channels: 1 (converted to "L", ITU-R 601 luma) or 3 ("RGB"). 16-bit images are
            scaled to 8 bits (65535 -> 255); 32-bit integer images (TIFF) at the smallest
            depth that holds their values (0..255 kept, 0..65535 as 16-bit, else the full
            unsigned 32-bit range, 2^32 - 1 -> 255); alpha is dropped.

    Raises:
        DataError: the file is missing, empty, truncated or not an image.

    Shape:
        (C, H, W) uint8.
    """
    path = Path(path)
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    return _to_tensor(_decode(path), size, channels, path)


class DecodedImage(NamedTuple):
    """An image decoded from memory: ``image`` (C, H, W) uint8 and ``info``, what its file said."""

    image: torch.Tensor
    info: ImageInfo


class ImageTooLarge(DataError):
    """An image whose header gives more pixels than the caller allows (nothing was decoded)."""


def decode_image(
    data: bytes, name: str, size: int | Sequence[int] | None = None, channels: int = 3,
    max_pixels: int | None = None,
) -> DecodedImage:
    """:func:`read_image` for an image held in memory (an upload), decoded the same way.

    Args:
        data: the file's bytes.
        name: what messages call it (the upload's file name).
        max_pixels: refuse (:class:`ImageTooLarge`) an image whose header gives more
            pixels than this, before any pixel is decoded; None: only Pillow's bomb limit.

    Returns:
        the (C, H, W) uint8 tensor and the :class:`ImageInfo` of the file (for
        :func:`count_conversions`), as a :class:`DecodedImage`.

    Raises:
        DataError: empty, truncated or not an image, naming ``name``.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if not data:
        raise DataError(f"cannot read image {name}: file is empty (0 bytes)")
    if max_pixels is not None:
        try:
            with _refuse_bombs(), Image.open(io.BytesIO(data)) as header:
                w, h = header.size
        except Exception:  # noqa: BLE001, S110 - not an image: _decode_from says why, below
            w = h = 0
        if w * h > max_pixels:
            raise ImageTooLarge(f"{name} is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels per image")
    im = _decode_from(io.BytesIO(data), name)
    info = ImageInfo(Path(name), (im.height, im.width), _is_colour(im), im.mode, _bits(im))
    return DecodedImage(_to_tensor(im, size, channels, Path(name)), info)


def _to_tensor(im: Image.Image, size: int | Sequence[int] | None, channels: int, path: Path) -> torch.Tensor:
    """A decoded image in ``channels`` at ``size`` (bilinear) as a (C, H, W) uint8 tensor."""
    im = _to_mode(im, channels, path)
    if size is not None:
        h, w = image_hw(size)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)  # (H, W) or (H, W, 3)
    tensor = torch.from_numpy(arr.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _read_mask(
    path: Path, size: tuple[int, int], expected_hw: tuple[int, int], image: Path
) -> torch.Tensor:
    """Binary mask (1, H, W) uint8, 255 where the file is non-zero, resized with nearest."""
    im = _decode(path)
    if (im.height, im.width) != expected_hw:
        raise DataError(
            f"mask {path} is {im.height}x{im.width} but its image {image} is "
            f"{expected_hw[0]}x{expected_hw[1]}"
        )
    if im.mode in _GREY_MODES:
        on = np.asarray(im) != 0
        if on.ndim == 3:  # LA: ignore alpha
            on = on[..., 0]
    else:
        on = np.asarray(im.convert("RGB")).any(axis=2)
    binary = Image.fromarray(on.astype(np.uint8) * 255, mode="L")
    if binary.size != (size[1], size[0]):
        binary = binary.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.uint8) * 255).unsqueeze(0)
