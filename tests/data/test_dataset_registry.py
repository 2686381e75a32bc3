"""Dataset names, root search order, options, and class selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomem.data import ImageSet
from anomem.data.registry import (
    available_datasets,
    load_dataset,
    search_dirs,
    select_classes,
    validate_class_index,
)
from anomem.errors import DataError

from fakes import (
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_folder,
    write_fake_idx,
    write_fake_svhn,
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No $ANOMEM_DATA and an empty working directory, so only test files are found."""
    monkeypatch.delenv("ANOMEM_DATA", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def test_available_datasets_lists_every_name():
    names = available_datasets()
    for name in (
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "cifar100-coarse",
        "svhn",
        "cub200",
        "digits",
    ):
        assert name in names
    assert "folder:<path>" in names and "imagefolder:<path>" in names


def test_unknown_name_lists_known_names():
    with pytest.raises(
        DataError, match=r"unknown dataset 'cifar11'; known: .*cifar10.*fashion-mnist"
    ):
        load_dataset("cifar11", "train")


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMEM_DATA", str(tmp_path / "store"))
    dirs = search_dirs("fashion-mnist")
    assert [str(d) for d in dirs] == [
        str(tmp_path / "store" / "fashion-mnist"),
        str(tmp_path / "store"),
        "data/fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
    ]
    assert search_dirs("cifar100-coarse")[0] == tmp_path / "store" / "cifar100"
    assert search_dirs("svhn", root="/x") == [Path("/x")]


def test_env_var_wins_over_working_dir(tmp_path, monkeypatch):
    write_fake_idx(tmp_path / "store" / "mnist", n_train=20)
    write_fake_idx(tmp_path / "cwd" / "data" / "mnist", n_train=30)
    assert len(load_dataset("mnist", "train")) == 30  # ./data/<name>
    monkeypatch.setenv("ANOMEM_DATA", str(tmp_path / "store"))
    ds = load_dataset("mnist", "train")
    assert len(ds) == 20 and ds.class_names[3] == "3"
    write_fake_cifar10(tmp_path / "store", per_batch=2)  # $ANOMEM_DATA/cifar-10-batches-py
    assert len(load_dataset("cifar10", "test")) == 2


def test_explicit_root_is_the_only_place_searched(tmp_path, monkeypatch):
    write_fake_svhn(tmp_path / "store" / "svhn")
    monkeypatch.setenv("ANOMEM_DATA", str(tmp_path / "store"))
    assert len(load_dataset("svhn", "test")) == 11
    with pytest.raises(
        DataError, match=r"svhn \(test\) not found; put train_32x32.mat.* in one of: .*elsewhere"
    ):
        load_dataset("svhn", "test", root=tmp_path / "elsewhere")


def test_cifar100_coarse_name(tmp_path):
    write_fake_cifar100(tmp_path)
    coarse = load_dataset("cifar100-coarse", "train", root=tmp_path)
    fine = load_dataset("cifar100", "train", root=tmp_path)
    assert len(coarse.class_names) == 20 and len(fine.class_names) == 100
    assert (
        len(load_dataset("cifar100", "test", root=tmp_path, label_mode="coarse").class_names) == 20
    )
    with pytest.raises(DataError, match="implies label_mode='coarse'"):
        load_dataset("cifar100-coarse", "train", root=tmp_path, label_mode="fine")


def test_folder_and_imagefolder_names(tmp_path):
    root = write_fake_folder(tmp_path / "user")
    ds = load_dataset(f"folder:{root}", "test", image_size=8)
    assert ds.images.shape == (5, 1, 8, 8) and ds.masks is not None
    assert len(load_dataset("folder", "train", root=root)) == 5
    images = load_dataset(f"imagefolder:{root}", "train", image_size=8, mode="L")
    assert images.class_names == ("anomaly", "normal") and images.meta["split"] == "train"
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("folder", "train")
    with pytest.raises(DataError, match="not both"):
        load_dataset(f"folder:{root}", "train", root=root)
    with pytest.raises(DataError, match="takes no option.*mode"):
        load_dataset(f"folder:{root}", "train", mode="L")


def test_digits_name():
    ds = load_dataset("digits", "test", image_size=8)
    assert isinstance(ds, ImageSet) and ds.images.shape[1:] == (1, 8, 8)
    with pytest.raises(DataError, match="root and download do not apply"):
        load_dataset("digits", "train", root="/tmp")


def test_bad_split_option_and_download(tmp_path):
    with pytest.raises(DataError, match="has splits train, test, extra"):
        load_dataset("svhn", "val")
    with pytest.raises(DataError, match="takes no option"):
        load_dataset("cifar10", "train", image_size=32)
    with pytest.raises(
        DataError, match="cannot be downloaded automatically; put cifar-10-batches-py"
    ):
        load_dataset("cifar10", "train", download=True)
    with pytest.raises(DataError, match=r"or pass download=True"):
        load_dataset("fashion-mnist", "train", root=tmp_path)


def _toy() -> ImageSet:
    return ImageSet(
        images=torch.zeros(6, 1, 2, 2, dtype=torch.uint8),
        targets=torch.tensor([0, 1, 2, 0, 1, 2]),
        class_names=("a", "b", "c"),
    )


def test_select_classes_and_validation():
    ds = _toy()
    assert select_classes(ds, [2, 0]).targets.tolist() == [0, 2, 0, 2]
    assert select_classes(ds, ["b"]).targets.tolist() == [1, 1]
    assert validate_class_index(ds.class_names, "c") == 2
    with pytest.raises(DataError, match=r"class index 3 does not exist; valid: 0\.\.2"):
        select_classes(ds, [3])
    with pytest.raises(DataError, match="does not exist"):
        validate_class_index(ds.class_names, -1)
    with pytest.raises(DataError, match="unknown class 'd'"):
        select_classes(ds, ["d"])
    with pytest.raises(DataError, match="int or a class name"):
        validate_class_index(ds.class_names, 1.5)
    with pytest.raises(DataError, match="at least one class"):
        select_classes(ds, [])


@pytest.mark.realdata
def test_fashion_mnist_found_in_system_dir(require_realdata):
    system_dir = require_realdata(
        "/usr/share/datasets/fashion-mnist", "Fashion-MNIST (Debian package)"
    )
    ds = load_dataset("fashion-mnist", "test")
    assert ds.meta["root"] == str(system_dir)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(ds.targets), torch.full((10,), 1000))
