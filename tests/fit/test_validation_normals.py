"""Validation normals given to fit (``AnoMem.fit(validation=...)``, ``anomem train --val-normals``).

Crops cut from one photograph overlap: a crop held out of training shares most of its
pixels with training crops, so it scores lower than any new image and a threshold set on
it flags far more new normals than its target. Normals from a region no training crop
touches take every held-out role instead (threshold, fusion fit, patch-bank statistics).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.data.photos import _crops, _photo
from anomem.errors import DataError
from anomem.inputs import validation_set

from synthetic import stripes


def _u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def brick():
    """48-px crops of a brick wall: 80 overlapping training crops from the top half, 40
    validation crops from the bottom half's left columns, 60 fresh crops from its right
    columns (no pixel shared with either)."""
    photo = _photo("brick")
    h, w = photo.shape[1:]
    rng = np.random.default_rng(0)
    train = _u8(_crops(photo, (0, h // 2), 80, 48, rng))
    val = _u8(_crops(photo, (h // 2, h), 40, 48, rng, cols=(0, w // 2)))
    fresh = _u8(_crops(photo, (h // 2, h), 60, 48, rng, cols=(w // 2, w)))
    kw = dict(progress=False, epochs=2, heads__steps=10, prototype_cache=0, calibration_fraction=0.15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the threshold module raises the target for 20 / 40 normals and says so
        held = AnoMem("tiny", **kw).fit(train)
        given = AnoMem("tiny", **kw).fit(train, validation=val)
    return train, val, fresh, held, given


def test_validation_normals_take_every_held_out_role(brick):
    train, val, _, held, given = brick
    assert held.threshold_.n_normal == 20 and held.banks_.normal_scores.shape[0] == 60  # 0.25 of 80 held out
    # nothing held out of the training images; the threshold and the fusion read the 40 given
    assert given.banks_.normal_scores.shape[0] == 80
    assert given.threshold_.n_normal == 40 and given.calibration_bank_.raw.shape[0] == 40
    assert given.fusion_ is not None and given.fusion_.normals == 40
    # the threshold sits at its target on the normals it was set on
    assert given.predict(val).mean() <= given.threshold_.target + 1e-9


def test_a_threshold_from_overlapping_crops_flags_new_normals_and_one_from_validation_does_not(brick):
    _, _, fresh, held, given = brick
    over, honest = held.predict(fresh).mean(), given.predict(fresh).mean()
    # held-out crops overlap training crops: new normals exceed their target by far
    assert over >= 1.5 * held.threshold_.target, (over, held.threshold_.target)
    # normals from a region of their own carry over to another region of it
    assert honest <= given.threshold_.target + 0.05, (honest, given.threshold_.target)


def test_bad_validation_sets_are_refused_with_what_is_wrong():
    x = stripes(20, vertical=True, size=16, seed=0)
    with pytest.raises(DataError, match=r"validation images have shape \(1, 12, 12\) per image but X has \(1, 16, 16\)"):
        validation_set(stripes(4, vertical=True, size=12, seed=1), x)
    with pytest.raises(DataError, match="at least 2 normal images, got 1"):
        validation_set(stripes(1, vertical=True, size=16, seed=1), x)
    with pytest.raises(DataError, match=r"validation: 2 of 5 images are also training images \(first: index \[0, 1\]\)"):
        validation_set(torch.cat([x[:2], stripes(3, vertical=True, size=16, seed=2)]), x)
    v = stripes(4, vertical=True, size=16, seed=3)
    assert validation_set(v, x) is not None and validation_set(v.float() / 255, x).shape == v.shape
