"""Upper bounds on every size, count and seed, where memory or time would explode.

:mod:`anomem.config` checks that each value makes sense (``> 0``, a probability...);
this module adds the ceiling: a ``backbone.width`` of 10⁶ or ``memory.sizes`` of 10⁹
would try to allocate terabytes, ``heads.steps`` of 10¹² would never end, a seed
outside ``[0, 2³² − 1]`` fails in NumPy's generators. The bounds are far above any
setting we use (the paper's largest preset is width 64, memories of 2048, 300 steps).

:func:`check_config_limits` runs on every config the CLI builds and on every config read
from a checkpoint (:mod:`anomem.io.validate`), before anything is allocated.
"""

from __future__ import annotations

from typing import Any

from anomem.errors import ConfigError

MAX_SEED = 2**32 - 1

# (section, key): (largest value, why)
LIMITS: dict[tuple[str, str], tuple[float, str]] = {
    ("backbone", "width"): (512, "channels of the first stage (ResNet-18 at 512 has ~180M parameters)"),
    ("memory", "sizes"): (65536, "patterns per memory"),
    ("memory", "max_steps"): (1000, "retrieval iterations"),
    ("memory", "beta"): (1e6, "inverse temperature"),
    ("train", "epochs"): (100000, "epochs"),
    ("train", "min_steps"): (10_000_000, "stage-1 optimisation steps at least"),
    ("train", "batch_size"): (65536, "images per batch"),
    ("train", "warmup_epochs"): (100000, "warm-up epochs"),
    ("train", "seed"): (MAX_SEED, "seed"),
    ("heads", "pool_size"): (64, "pooled side of the heads' input"),
    ("heads", "hidden"): (65536, "hidden units of the heads"),
    ("heads", "steps"): (1_000_000, "stage-2 optimisation steps"),
    ("heads", "batch_size"): (65536, "stage-2 batch"),
    ("scorer", "normal_bank"): (10_000_000, "pooled normal deviations kept"),
    ("bank", "size"): (1_000_000, "kNN bank size"),
    ("bank", "k"): (1024, "kNN neighbours"),
    ("scorer", "prototype_cache"): (1_000_000, "training normals scanned for prototypes"),
    ("pseudo", "ratio"): (100, "pseudo-anomalies per training normal"),
    ("pixels", "side"): (512, "longer side of a stored pixel vector"),
    ("pixels", "local_k"): (1024, "neighbours of the local pixel map"),
    ("patches", "feature_bank"): (1_000_000, "coreset rows of the feature patch bank"),
    ("patches", "pixel_bank"): (1_000_000, "coreset rows of the pixel patch bank"),
    ("patches", "min_validation"): (1_000_000, "held-out normals needed to fit the fusion"),
}


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer in [0, 2^32 - 1] (NumPy's generators refuse negative ones)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must lie in [0, {MAX_SEED}], got {value}")
    return value


def check_config_limits(cfg: Any) -> None:
    """Raise ConfigError naming the first value of ``cfg`` above its ceiling (or a negative seed)."""
    check_seed("train.seed", cfg.train.seed)
    for (section, key), (top, what) in LIMITS.items():
        value = getattr(getattr(cfg, section), key)
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            if v > top:
                raise ConfigError(f"{section}.{key} = {v} is above the limit {top:g} ({what}); "
                                  "this would exhaust memory or never finish")
