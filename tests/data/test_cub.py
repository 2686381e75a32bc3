"""CUB-200-2011: text files, official split, resizing and inconsistent metadata."""

from __future__ import annotations

import pytest
import torch

from anomem.data.cub import load_cub200
from anomem.errors import DataError

from fakes import CUB_CLASSES, write_fake_cub


def test_cub_splits_labels_and_sizes(tmp_path):
    write_fake_cub(tmp_path, per_class=3)
    train = load_cub200(tmp_path, "train", image_size=24)
    test = load_cub200(tmp_path / "CUB_200_2011", "test", image_size=(20, 28))
    assert train.images.shape == (6, 3, 24, 24) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 3, 20, 28)
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.targets.tolist() == [0, 1, 2]
    assert train.class_names == CUB_CLASSES
    assert all("CUB_200_2011/images/" in p for p in train.paths)
    # Colours of the fake classes: red channel 40 * class id (JPEG is lossy).
    assert abs(int(test.images[1, 0].float().mean()) - 80) <= 3


def test_greyscale_image_becomes_rgb(tmp_path):
    write_fake_cub(tmp_path, per_class=2)
    ds = load_cub200(tmp_path, "train", image_size=16)
    grey = ds.images[-1]  # the last image was saved as greyscale
    assert grey.shape == (3, 16, 16)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_inconsistent_metadata(tmp_path):
    directory = write_fake_cub(tmp_path, per_class=2)
    labels = directory / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="image_class_labels.txt: image ids differ"):
        load_cub200(tmp_path, "train")
    labels.write_text("\n".join([*lines[:-1], "6 9"]) + "\n")
    with pytest.raises(DataError, match="id 6 has value '9'"):
        load_cub200(tmp_path, "train")
    labels.write_text("\n".join([*lines[:-1], "six 3"]) + "\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt:6: expected '<id> <value>'"):
        load_cub200(tmp_path, "train")


def test_missing_image_and_files(tmp_path):
    directory = write_fake_cub(tmp_path, per_class=2)
    first_train = (
        directory / "images" / (directory / "images.txt").read_text().splitlines()[1].split()[1]
    )
    first_train.unlink()
    with pytest.raises(DataError, match=f"{first_train.name}.*does not exist"):
        load_cub200(tmp_path, "train")
    (directory / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        load_cub200(tmp_path, "test")
    with pytest.raises(DataError, match="image_size"):
        load_cub200(tmp_path, "test", image_size=0)
