"""The fit of the image split (anomem.fit.fusion) on folders where one part dominates:
the fit must pick that part (issue 26: the fusion picked the wrong signal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.data.photos import photo_category

SINGLE = {"global": (1.0, 0.0, 0.0), "feature_patches": (0.0, 1.0, 0.0), "pixel_patches": (0.0, 0.0, 1.0)}


def _u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def texture():
    """A texture (48-px crops of a brick wall): rotations and flips leave it a texture, so
    the shifts are dropped and the local pseudo-defects decide; raw-pixel patches see them."""
    sp = photo_category("brick", size=48, n_train=80, n_test_normal=4, per_kind=2, kinds=("stain",), seed=0)
    return AnoMem("tiny", progress=False, epochs=2, heads__steps=10, prototype_cache=0,
                  calibration_fraction=0.15).fit(_u8(sp.train))


def test_on_a_texture_the_fit_picks_the_pixel_patches(texture):
    fit = texture.fusion_
    assert fit is not None and "defects" in fit.families
    d = fit.families.index("defects")
    single = {name: fit.table[w][d] for name, w in SINGLE.items() if w in fit.table}
    # the folder is one where a part dominates: the pixel patches, by a margin on the defects
    others = max(v for k, v in single.items() if k != "pixel_patches")
    assert single["pixel_patches"] >= others + 0.05, single
    split = texture.settings_["image"]
    assert split[2] == max(split) and split[2] >= 0.5, split  # the fit picks that part
    assert texture.weights_["pixel_patches"] == pytest.approx(split[2])
