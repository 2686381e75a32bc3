"""The learning-rate schedule of stage 1 and of the stage-2 heads."""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine annealing to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


__all__ = ["cosine_with_warmup"]
