"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set, 1797 images).

The data ships with scikit-learn, so it is always available offline. It has no official
split: :func:`load_digits_splits` draws a seeded, stratified one. Pixel values 0..16 are
scaled to 0..255 and the images optionally upscaled (bilinear) so convolutional
encoders with several downsampling stages can use them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = ["DIGITS_CLASSES", "DigitsSplits", "load_digits_splits"]

DIGITS_CLASSES = tuple(str(d) for d in range(10))
_MAX_VALUE = 16.0  # optdigits counts set pixels in 4x4 blocks: 0..16


class DigitsSplits(NamedTuple):
    """The train and test parts of the digits data set."""

    train: ImageSet
    test: ImageSet


def load_digits_splits(
    image_size: int = 16, test_fraction: float = 0.4, seed: int = 0
) -> DigitsSplits:
    """Load the 8x8 digits, scaled to uint8, resized, and split per class.

    Args:
        image_size: output side (8 keeps the original resolution).
        test_fraction: share of each class put in the test split, in (0, 1); each class
            contributes ``round(n_class * test_fraction)`` test images.
        seed: seeds the split; the same seed always gives the same split.

    Shape:
        images (N, 1, image_size, image_size) uint8; targets (N,) int64 in 0..9.
    """
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int | np.integer)
        or image_size < 1
    ):
        raise DataError(f"image_size must be a positive int, got {image_size!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    from sklearn.datasets import load_digits  # slow import; only this loader needs it

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)  # (N, 1, 8, 8)
    pixels = pixels * (255.0 / _MAX_VALUE)
    if image_size != 8:
        pixels = F.interpolate(
            pixels, size=(int(image_size),) * 2, mode="bilinear", align_corners=False
        )
    images = pixels.round().clamp(0, 255).to(torch.uint8)  # (N, 1, S, S)
    targets = torch.from_numpy(bunch.target.astype(np.int64))

    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(targets), dtype=bool)
    for c in range(len(DIGITS_CLASSES)):
        members = np.flatnonzero(bunch.target == c)
        n_test = int(round(len(members) * float(test_fraction)))
        test_mask[rng.permutation(members)[:n_test]] = True
    if test_mask.all() or not test_mask.any():
        raise DataError(f"test_fraction={test_fraction} leaves one split empty")

    full = ImageSet(
        images=images,
        targets=targets,
        class_names=DIGITS_CLASSES,
        meta={"dataset": "digits", "seed": seed, "test_fraction": float(test_fraction)},
    )
    mask = torch.from_numpy(test_mask)
    train, test = full.subset(~mask), full.subset(mask)
    train.meta["split"], test.meta["split"] = "train", "test"
    return DigitsSplits(train=train, test=test)
