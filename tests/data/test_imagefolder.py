"""Class-per-folder datasets: class order, channel modes, flat folders, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem.data.imagefolder import load_image_folder
from anomem.errors import DataError

from fakes import solid, write_image


def _make(root):
    write_image(root / "cat" / "a.png", solid((255, 0, 0)))
    write_image(root / "cat" / "nested" / "b.jpg", solid((250, 5, 5)), quality=95)
    write_image(root / "bird" / "c.png", solid(90))
    return root


def test_classes_sorted_and_rgb(tmp_path):
    ds = load_image_folder(_make(tmp_path), image_size=8)
    assert ds.class_names == ("bird", "cat")
    assert ds.targets.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.images[1, :, 0, 0].tolist() == [255, 0, 0]
    assert ds.images[0, :, 0, 0].tolist() == [90, 90, 90]  # grey -> RGB replicates
    assert ds.paths[2].endswith("nested/b.jpg")


def test_class_index_is_sorted_folder_name(tmp_path):
    names = ["zeta", "alpha", "mid", "beta", "omega", "kappa"]
    for value, name in enumerate(names):
        write_image(tmp_path / name / "x.png", solid(value))
    ds = load_image_folder(tmp_path, image_size=2, mode="L")
    assert ds.class_names == tuple(sorted(names))
    for target, image in zip(ds.targets.tolist(), ds.images, strict=True):
        assert names[int(image[0, 0, 0])] == ds.class_names[target]


def test_mode_l(tmp_path):
    ds = load_image_folder(_make(tmp_path), image_size=(4, 6), mode="L")
    assert ds.images.shape == (3, 1, 4, 6)
    assert int(ds.images[1, 0, 0, 0]) == 76  # ITU-R 601 luma of pure red: 0.299 * 255


def test_flat_folder_is_one_class(tmp_path):
    for i in range(3):
        write_image(tmp_path / "LSUN_resize" / f"{i}.jpg", np.full((36, 36, 3), i * 50, np.uint8))
    ds = load_image_folder(tmp_path / "LSUN_resize", image_size=32)
    assert ds.class_names == ("LSUN_resize",) and ds.targets.tolist() == [0, 0, 0]
    assert ds.images.shape == (3, 3, 32, 32)


def test_errors(tmp_path):
    root = _make(tmp_path / "ds")
    (root / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="non-image files.*notes.txt"):
        load_image_folder(root)
    assert len(load_image_folder(root, skip_invalid=True)) == 3
    (root / "stray.png").write_bytes(b"")
    with pytest.raises(DataError, match="both class folders"):
        load_image_folder(root)
    with pytest.raises(DataError, match="mode must be 'L' or 'RGB'"):
        load_image_folder(root, mode="RGBA")
    (root / "empty").mkdir()
    (root / "stray.png").unlink()
    with pytest.raises(DataError, match="empty: class folder holds no images"):
        load_image_folder(root, skip_invalid=True)
