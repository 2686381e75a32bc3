"""Generated image data for the baseline tests (small, so the suite runs in seconds).

Normals are smooth Gaussian blobs near the image centre; anomalies are other generated
patterns (stripes, checkerboards) that no blob resembles.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

Maker = Callable[..., np.ndarray]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy[None], xx[None]


def _to_uint8(img: np.ndarray, rng: np.random.Generator, channels: int) -> np.ndarray:
    img = img + rng.normal(0.0, 0.02, img.shape)
    img = np.clip(img, 0.0, 1.0)
    out = np.round(255 * img).astype(np.uint8)[:, None]  # (N, 1, H, W)
    return np.repeat(out, channels, axis=1) if channels > 1 else out


def blobs(n: int, seed: int = 0, size: int = 28, channels: int = 1) -> np.ndarray:
    """Normal images: one Gaussian blob, random centre/width/brightness. uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    cy, cx = rng.uniform(0.35 * size, 0.65 * size, (2, n, 1, 1))
    sigma = rng.uniform(0.12 * size, 0.2 * size, (n, 1, 1))
    amp = rng.uniform(0.7, 1.0, (n, 1, 1))
    img = amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return _to_uint8(img, rng, channels)


def stripes(n: int, seed: int = 1, size: int = 28, channels: int = 1) -> np.ndarray:
    """Anomalies: sinusoidal stripes, random period/phase/orientation. uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    period = rng.uniform(3.0, 6.0, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    u = np.cos(theta) * xx + np.sin(theta) * yy
    img = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)
    return _to_uint8(img, rng, channels)


def checkers(n: int, seed: int = 2, size: int = 28, channels: int = 1) -> np.ndarray:
    """Anomalies of a second type: checkerboards of random cell size. uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    cell = rng.integers(3, 7, (n, 1, 1))
    off = rng.integers(0, 7, (2, n, 1, 1))
    img = (((xx + off[0]) // cell + (yy + off[1]) // cell) % 2).astype(np.float64)
    return _to_uint8(0.2 + 0.6 * img, rng, channels)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny networks run fastest on one thread; on shared CPUs two threads spin and can
    be 10x slower. Restores the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_blobs() -> Maker:
    return blobs


@pytest.fixture
def make_stripes() -> Maker:
    return stripes


@pytest.fixture
def make_checkers() -> Maker:
    return checkers
