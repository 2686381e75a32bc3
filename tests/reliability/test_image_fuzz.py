"""Property tests of the image loader and folder scanner: bad bytes give DataError only.

Image files are untrusted input. Whatever bytes a file holds (random, a valid image of
any mode and format, that image truncated or with flipped bytes) and whatever it is
named, ``read_image`` / ``load_images`` / ``load_folder`` either return well-formed uint8
tensors or raise :class:`DataError`, never another exception.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anomem.data.folder import load_folder, load_images, read_image
from anomem.errors import DataError

FORMATS = {"PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "JPEG": ".jpg", "WEBP": ".webp", "PPM": ".ppm"}
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK"]


@st.composite
def image_bytes(draw) -> tuple[bytes, str]:
    """A real image of a random mode/size/format, then maybe truncated or corrupted."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(MODES))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 2**16, (h, w)).astype(np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format=fmt)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip", "prefix"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        arr = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(arr) - 1))
            arr[i] ^= draw(st.integers(1, 255))
        data = bytes(arr)
    elif damage == "prefix":
        data = draw(st.binary(max_size=16)) + data
    return data, FORMATS[fmt]


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow warns on damaged TIFF tags

any_bytes = st.one_of(image_bytes(), st.tuples(st.binary(max_size=300), st.sampled_from(sorted(FORMATS.values()))))


def _check_tensor(t: torch.Tensor, channels: int, size: tuple[int, int]) -> None:
    assert t.dtype == torch.uint8 and tuple(t.shape) == (channels, *size)


@settings(max_examples=250, deadline=None)
@given(item=any_bytes, channels=st.sampled_from([1, 3]))
def test_read_image_gives_tensor_or_data_error(item, channels):
    data, ext = item
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{ext}"
        path.write_bytes(data)
        try:
            t = read_image(path, (8, 8), channels)
        except DataError as e:
            assert str(path) in str(e)
            return
        _check_tensor(t, channels, (8, 8))


name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
file_name = st.one_of(
    st.text(name_chars, min_size=1, max_size=12).map(lambda s: s + ".png"),
    st.text(name_chars, min_size=1, max_size=12),
    st.sampled_from(["a.PNG", ".hidden.png", "notes.txt", "a.png.tmp", "sub/b.png", "sub/.x/c.png", "Thumbs.db"]),
)


@settings(max_examples=120, deadline=None)
@given(files=st.lists(st.tuples(file_name, any_bytes), min_size=0, max_size=5), skip=st.booleans())
def test_scanner_and_loaders_give_images_or_data_error(files, skip):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        normal = root / "train" / "normal"
        normal.mkdir(parents=True)
        for name, (data, _) in files:
            if len(name.encode("utf-8")) > 200 or name in (".", ".."):
                continue
            path = normal / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except (IsADirectoryError, NotADirectoryError, FileExistsError):
                continue  # a name clashes with a folder made for another name
        try:
            ds = load_folder(root, "train")
        except DataError as e:
            assert str(e)
        else:
            assert ds.images.dtype == torch.uint8 and ds.images.ndim == 4 and len(ds) >= 1
            assert ds.images.shape[1] in (1, 3)
        try:
            imgs = load_images(normal, image_size=8, skip_invalid=skip)
        except DataError as e:
            assert str(e)
        else:
            assert imgs.images.shape[2:] == (8, 8) and len(imgs.paths) == len(imgs)
