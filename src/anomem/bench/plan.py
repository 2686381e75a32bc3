"""What a benchmark runs: method groups, table columns, protocols, settings and cells.

Shared by the runner (:mod:`anomem.bench.runner`) and the summary
(:mod:`anomem.bench.tables`); see :mod:`anomem.bench.runner` for what each group is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from anomem.config.legacy import MOVED

__all__ = ["GROUPS", "LABEL_FREE", "METHODS", "PROTOCOLS", "BenchmarkSettings", "Cell"]

GROUPS: dict[str, tuple[str, ...]] = {
    "anomem": ("anomem",),
    "anomem-paper": ("anomem-paper",),
    "anomem-single-scale": ("anomem-single-scale",),
    "simclr": ("simclr-knn", "simclr-kmeans"),
    "deepsad": ("deepsad",),
    "knn": ("knn",),
    "patch-knn": ("patch-knn",),
    "ocsvm": ("ocsvm",),
    "iforest": ("iforest",),
}
#: Groups that never see labelled anomalies: under one-vs-all their training set (the
#: normals) is the same at every γ, so γ > 0 cells copy the γ = 0 result instead of
#: training again.
LABEL_FREE = frozenset({"simclr", "knn", "patch-knn", "ocsvm", "iforest"})
#: Table columns, in order.
METHODS: tuple[str, ...] = tuple(m for ms in GROUPS.values() for m in ms)
PROTOCOLS = ("one-vs-all", "deep-sad", "cross-type", "ood")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything that decides a cell's result; saved as ``benchmark.json``."""

    protocol: str = "one-vs-all"
    data: str = "fashion-mnist"
    data_root: str | None = None
    ood: str | None = None  # OoD dataset (protocol "ood")
    classes: tuple[int, ...] = (0,)
    ratios: tuple[float, ...] = (0.0,)
    seeds: int = 1
    groups: tuple[str, ...] = tuple(GROUPS)
    preset: str = "cpu-small"
    overrides: tuple[str, ...] = ()
    max_train: int | None = None  # cap on training normals per cell (seeded subsample)
    max_test: int | None = None  # cap on test images per cell (seeded, stratified by class)
    pollution: float = 0.0  # γ_p of the Deep SAD protocol
    # The AnoMem config the CLI built (AnoMemConfig.to_dict()): the runner trains from it,
    # never re-parsing strings. ``preset`` + ``overrides`` stay as the record of what was
    # asked (and the identity below); None = build it from them.
    config: dict | None = field(default=None, compare=False)

    def fingerprint(self) -> str:
        """Identity of the benchmark (:func:`fingerprint`)."""
        return fingerprint(asdict(self))


def fingerprint(settings: dict) -> str:
    """Identity of a benchmark from its settings: every one but ``config``, which preset
    and overrides determine (so directories written before it existed still resume), with
    each override's key in today's spelling (a directory written with ``scorer.bank=0``
    resumes with ``bank.size=0``; :data:`anomem.config.legacy.MOVED`)."""
    d = {k: v for k, v in settings.items() if k != "config"}
    if isinstance(d.get("overrides"), list | tuple):
        d["overrides"] = [_today(o) for o in d["overrides"]]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _today(override: object) -> object:
    """``key=value`` with the key in today's spelling (anything else as it is)."""
    if not isinstance(override, str) or "=" not in override:
        return override
    key, value = override.split("=", 1)
    return f"{MOVED.get(key.strip(), key.strip())}={value}" if key.strip() in MOVED else override


@dataclass(frozen=True)
class Cell:
    """One unit of work: a split (protocol, class, ratio, seed, other) and a method group.

    ``other`` is the known anomaly class (deep-sad) or the held-out type (cross-type).
    """

    protocol: str
    normal_class: int
    ratio: float
    seed: int
    group: str
    other: int | None = None

    @property
    def source(self) -> Cell:
        """The cell whose result this one shares (itself unless label-free at γ > 0)."""
        if self.protocol == "one-vs-all" and self.group in LABEL_FREE and self.ratio > 0:
            return Cell(self.protocol, self.normal_class, 0.0, self.seed, self.group, self.other)
        return self

    @property
    def key(self) -> str:
        o = "" if self.other is None else f"_o{self.other}"
        return f"{self.protocol}_c{self.normal_class}_r{self.ratio:g}_s{self.seed}{o}_{self.group}"
