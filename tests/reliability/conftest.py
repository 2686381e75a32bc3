"""Fixtures for the reliability suite: a tiny generated folder dataset and one tiny run.

Everything is 16x16 grey stripes (``tests/synthetic.py``) and the ``tiny`` preset with
batch 16 and a few epochs, so the whole suite runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from anomem.cli import main

from synthetic import stripes

TRAINED_EPOCHS = 3  # of the shared `trained_run`
# One short training configuration shared by every test that trains.
TINY_TRAIN = ["--preset", "tiny", "--set", "train.batch_size=16", "--set", "heads.steps=10",
              "--set", "train.device=cpu", "--no-progress"]


def write_pngs(directory: Path, images, prefix: str = "img") -> list[Path]:
    """Save (N, 1, H, W) uint8 images as grey PNGs named ``<prefix>NNN.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        path = directory / f"{prefix}{i:03d}.png"
        Image.fromarray(im[0].numpy(), mode="L").save(path)
        paths.append(path)
    return paths


def make_folder_dataset(root: Path, n_train: int = 32, with_test: bool = True) -> Path:
    """The user-folder layout (train/normal, test/normal, test/anomaly) of 16x16 PNGs."""
    write_pngs(root / "train" / "normal", stripes(n_train, False, seed=0), "n")
    if with_test:
        write_pngs(root / "test" / "normal", stripes(6, False, seed=1), "n")
        write_pngs(root / "test" / "anomaly", stripes(6, True, seed=2), "a")
    return root


@pytest.fixture(scope="session")
def tiny_train() -> list[str]:
    """CLI arguments of the shared short training configuration."""
    return list(TINY_TRAIN)


@pytest.fixture(scope="session")
def trained_epochs() -> int:
    return TRAINED_EPOCHS


@pytest.fixture(scope="session")
def folder_maker():
    """``make(root, n_train=32, with_test=True)``: write a generated folder dataset."""
    return make_folder_dataset


@pytest.fixture(scope="session")
def png_writer():
    """``write(directory, images, prefix)``: save (N, 1, H, W) uint8 images as PNGs."""
    return write_pngs


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder_ds"))


@pytest.fixture(scope="session")
def trained_run(folder_dataset, tmp_path_factory) -> Path:
    """A finished 3-epoch ``anomem train`` run directory (model.ckpt, last.ckpt, metrics...)."""
    run = tmp_path_factory.mktemp("trained_run")
    code = main(["train", "--data", str(folder_dataset), "--epochs", str(TRAINED_EPOCHS), "--out", str(run), *TINY_TRAIN])
    assert code == 0
    return run


@pytest.fixture
def model_copy(trained_run, tmp_path) -> Path:
    """A private copy of the shared run's model.ckpt (tests try to overwrite or damage it)."""
    m = tmp_path / "M.ckpt"
    shutil.copy(trained_run / "model.ckpt", m)
    return m


@pytest.fixture
def images_copy(folder_dataset, tmp_path) -> Path:
    """A private copy of the 6 normal test images."""
    d = tmp_path / "images"
    shutil.copytree(folder_dataset / "test" / "normal", d)
    return d
