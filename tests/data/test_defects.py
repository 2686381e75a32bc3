"""The synthetic defect generator: masks mark exactly what changed, seeded, visible."""

import numpy as np
import pytest
import torch

from anomem.data.defects import DEFECT_KINDS, add_defects
from anomem.errors import DataError


def _images(n=24, c=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.zeros(n, c, size, size)
    imgs[:, :, 6:22, 8:20] = 0.8  # a bright object on a dark ground, like Fashion-MNIST
    imgs += 0.05 * torch.rand(imgs.shape, generator=g)
    return (imgs.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_only_masked_pixels_visibly(kind):
    x = _images()
    before = x.clone()
    d = add_defects(x, kinds=(kind,), seed=1, min_contrast=0.25)
    assert torch.equal(x, before)  # input untouched
    assert d.images.shape == x.shape and d.images.dtype == torch.uint8
    assert d.masks.shape == (24, 1, 28, 28) and d.masks.dtype == torch.uint8
    assert set(torch.unique(d.masks).tolist()) <= {0, 255}
    assert d.kinds == (kind,) * 24
    m = d.masks[:, 0] > 0  # (N, H, W)
    diff = (d.images.float() - x.float()).abs()[:, 0] / 255  # (N, H, W)
    assert (diff[~m] == 0).all(), "pixels outside the mask changed"
    for i in range(24):
        assert m[i].sum() >= 2
        assert diff[i][m[i]].mean() >= 0.25 - 1 / 255, f"{kind} defect {i} is too faint"
    area = m.flatten(1).float().mean(1)
    assert area.max() < 0.25  # local: a small part of the image


def test_seeded_and_mixed_kinds():
    x = _images(30)
    a, b = add_defects(x, seed=3), add_defects(x, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and a.kinds == b.kinds
    c = add_defects(x, seed=4)
    assert not torch.equal(a.masks, c.masks)
    assert set(a.kinds) == set(DEFECT_KINDS)  # 30 draws from 3 kinds


def test_colour_float_input_and_several_defects():
    x = _images(6, c=3).float() / 255
    d = add_defects(x, seed=0, per_image=3, size=(0.1, 0.15))
    assert d.images.shape == (6, 3, 28, 28) and d.images.dtype == torch.uint8
    changed = (d.images.float() / 255 - x).abs().amax(1) > 1 / 255  # (N, H, W)
    assert (changed <= (d.masks[:, 0] > 0)).all()
    assert np.all(d.masks.flatten(1).gt(0).sum(1).numpy() > 0)


def test_bad_arguments():
    x = _images(2)
    with pytest.raises(DataError, match="kinds"):
        add_defects(x, kinds=("crack",))
    with pytest.raises(DataError, match="size"):
        add_defects(x, size=(0.5, 0.2))
    with pytest.raises(DataError, match="per_image"):
        add_defects(x, per_image=0)
    with pytest.raises(DataError, match="channels"):
        add_defects(np.zeros((2, 28, 28, 3), np.uint8))
