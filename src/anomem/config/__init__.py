"""Typed configuration for AnoMem: dataclasses with every default in one place.

A config is a tree of frozen dataclasses. It is validated on construction, saved as a
plain dict into every checkpoint and result file, and can be built from a named preset,
a YAML file and ``key=value`` overrides (``train.epochs=5``), in that order.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from anomem.choices import SMALL_SIDE
from anomem.config.legacy import upgrade
from anomem.config.sections import (  # noqa: F401  (re-exported: the sections are part of the config's API)
    ARCHS,
    MERGES,
    NORMALISATIONS,
    OBJECTIVES,
    SCORE_MODES,
    AugmentConfig,
    BackboneConfig,
    BankConfig,
    HeadsConfig,
    LossConfig,
    MemoryConfig,
    PatchConfig,
    PixelsConfig,
    PseudoConfig,
    ScorerConfig,
    ThresholdConfig,
    TrainConfig,
    WeightsConfig,
    _check,
)
from anomem.config.tree import build_dataclass
from anomem.errors import ConfigError

PIXEL_WEIGHTS = ("pixel_global", "pixel_local", "map_pixel", "contrast")  # the settings that read the pixel bank


@dataclass(frozen=True)
class AnoMemConfig:
    """Everything that defines an AnoMem detector and how it is trained."""

    preset: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    pixels: PixelsConfig = field(default_factory=PixelsConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def __post_init__(self) -> None:
        s = len(self.backbone.taps)
        for name in ("sizes", "sample_ratios"):
            n = len(getattr(self.memory, name))
            _check(n == s, f"memory.{name} has {n} entries but backbone.taps has {s} scales")
        if self.weights.scales is not None:
            _check(len(self.weights.scales) == s, f"weights.scales has {len(self.weights.scales)} entries for {s} scales")
        # Settings that would be ignored are refused, never silently dropped.
        _check(self.scorer.merge == "standardized" or self.bank.size == 0,
               "scorer.merge=weighted weighs raw Eq. 9 scores, which the banks' z-scores cannot join: "
               "set bank.size=0 too (or scorer.merge=standardized)")
        used = [f"weights.{n}" for n in PIXEL_WEIGHTS if getattr(self.weights, n) > 0]
        _check(self.bank.size > 0 or not used,
               f"the pixel bank keeps the bank's normals, so bank.size=0 leaves {', '.join(used)} without effect: "
               f"set {'=0, '.join(used)}=0 too, or keep bank.size > 0 and set weights.bank=0")

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnoMemConfig:
        """Build from a (possibly partial) nested dict; unknown keys are errors (a key of
        an older layout names its new place; old files are upgraded where they are read,
        :func:`anomem.config.legacy.upgrade`)."""
        return build_dataclass(cls, d, prefix="")


# -- presets ---------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # Narrow ResNet-18 for 2 CPU cores: a few minutes per Fashion-MNIST class.
    # Milder crops than SimCLR's (0.2-1): on 28-px images a small crop no longer shows the
    # object's shape (Fashion-MNIST validation, docs/decisions.md, Decision 5).
    "cpu-small": {
        "backbone": {"arch": "resnet18", "width": 16, "stem": "auto", "taps": ["layer3", "layer4"]},
        "memory": {"sizes": [128, 64], "sample_ratios": [0.3, 1.0]},
        "augment": {"crop_scale": [0.6, 1.0]},
        "train": {"epochs": 15, "min_steps": 100, "batch_size": 256, "lr": 0.3, "warmup_epochs": 1},
    },
    # torchvision-sized ResNet-18 on one GPU.
    "gpu-r18": {
        "backbone": {"arch": "resnet18", "width": 64, "stem": "auto", "taps": ["layer3", "layer4"]},
        "memory": {"sizes": [512, 256], "sample_ratios": [0.3, 1.0]},
        "train": {"epochs": 100, "batch_size": 1024, "lr": 0.5},
    },
    # The paper's setting (§4.2): ResNet-50, taps after stages 3 and 4, β = 2 on raw
    # (unnormalised) features, the literal reading of Eq. 1.
    "paper-r50": {
        "backbone": {"arch": "resnet50", "width": 64, "stem": "auto", "taps": ["layer3", "layer4"]},
        "memory": {"sizes": [512, 256], "sample_ratios": [0.3, 1.0], "beta": 2.0, "normalize": "none"},
        "loss": {"temperature": 0.1, "variance_weight": 0.05},
        "heads": {"margin": 2.0},
        "train": {"epochs": 500, "batch_size": 1024, "lr": 0.5},
    },
    # Tiny network for tests.
    "tiny": {
        "backbone": {"arch": "resnet18", "width": 8, "stem": "auto", "taps": ["layer3", "layer4"]},
        "memory": {"sizes": [32, 16], "sample_ratios": [0.5, 1.0]},
        "train": {"epochs": 30, "batch_size": 128, "lr": 0.3, "warmup_epochs": 1},
        "heads": {"steps": 200},
    },
}
# ``anomem demo`` on the scikit-learn digits: "tiny" with settings chosen on a validation
# split of the digits training data (docs/decisions.md, Decision 8; benchmarks/demo_validation.py):
# digits are not flip-invariant, and heavy crops erase what tells them apart.
PRESETS["demo-digits"] = {
    **PRESETS["tiny"],
    "backbone": {**PRESETS["tiny"]["backbone"], "width": 16},
    "train": {**PRESETS["tiny"]["train"], "epochs": 100, "batch_size": 32},
    "memory": {**PRESETS["tiny"]["memory"], "normalize": "l2", "beta": 8.0},
    "augment": {"flip_p": 0.0, "crop_scale": [0.85, 1.0]},
    "weights": {"pixel_global": 0.9},
}

# The paper's method read literally, on top of any preset (the ``anomem-paper`` benchmark
# group): no pseudo-anomalies, no feature, pixel or patch bank; stage 1 and Eq. 9-13 alone.
PAPER_LITERAL: dict[str, Any] = {
    "pseudo": {"enabled": False},
    "bank": {"size": 0},
    "weights": {n: 0.0 for n in PIXEL_WEIGHTS},
    "patches": {"feature_bank": 0, "pixel_bank": 0},
}


def paper_literal(cfg: AnoMemConfig) -> AnoMemConfig:
    """``cfg`` with the paper's method read literally (:data:`PAPER_LITERAL`)."""
    return AnoMemConfig.from_dict(_merge(cfg.to_dict(), PAPER_LITERAL))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["train.epochs=5", "memory.sizes=[64,32]"]`` into a nested dict.

    Values are parsed as YAML scalars/lists, so ``5`` is an int, ``0.1`` a float,
    ``[64, 32]`` a list and ``l2`` a string.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: dates like 2020-13-45
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def load_config(
    preset: str | None = "cpu-small",
    yaml_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> AnoMemConfig:
    """Preset, then YAML file, then ``key=value`` overrides, validated once at the end."""
    import yaml

    d: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        d = _merge(d, PRESETS[preset])
        d["preset"] = preset
    if yaml_path is not None:
        p = Path(yaml_path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory; pass a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            y = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8, bad dates
            msg = " ".join(part.strip() for part in str(e).splitlines() if part.strip())  # one line, as promised
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {msg}") from None
        if not isinstance(y, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level")
        if "preset" in y and preset is None:
            name = y.pop("preset")
            if not isinstance(name, str):
                raise ConfigError(f"config file {str(p)!r}: preset must be a name, got {name!r}")
            if name in PRESETS:
                d = _merge(PRESETS[name], d)
            d["preset"] = name
        d = _merge(d, y)
    d = _merge(d, parse_overrides(list(overrides)))
    return AnoMemConfig.from_dict(d)


def with_overrides(cfg: AnoMemConfig, overrides: list[str] | tuple[str, ...]) -> AnoMemConfig:
    """A copy of ``cfg`` with ``key=value`` overrides applied and re-validated."""
    return AnoMemConfig.from_dict(_merge(cfg.to_dict(), parse_overrides(list(overrides))))


# ``pseudo.local_recipe``: the settings with which stage 1 learns local evidence on photographs,
# measured on a validation split of photographs (benchmarks/local_evidence.py; docs/decisions.md).
LOCAL_RECIPE = {"local": 0.5, "local_weight": 1.0, "min_steps": 300, "batch_size": 64}


def resolve_local_recipe(cfg: AnoMemConfig, image_size: tuple[int, int] | list[int]) -> AnoMemConfig:
    """``cfg`` with ``pseudo.local_recipe`` applied for images of ``image_size`` (H, W).

    ``always`` (or ``auto`` with a side larger than :data:`anomem.choices.SMALL_SIDE`) turns on
    the local negatives and the local hinge where they are off (a share or weight already
    set is kept) and trains at least ``min_steps`` steps at a batch of at most
    ``batch_size`` (:data:`LOCAL_RECIPE`). With ``never``, or without pseudo-anomalies or defect kinds
    to draw, ``cfg`` is returned unchanged. Applying it twice changes nothing more."""
    p = cfg.pseudo
    on = p.local_recipe == "always" or (p.local_recipe == "auto" and max(image_size) > SMALL_SIDE)
    if not on or not p.enabled or not p.defects:
        return cfg
    r = LOCAL_RECIPE
    return replace(
        cfg,
        pseudo=replace(p, local=p.local or r["local"]),
        loss=replace(cfg.loss, local_weight=cfg.loss.local_weight or r["local_weight"]),
        train=replace(cfg.train, min_steps=max(cfg.train.min_steps, r["min_steps"]),
                      batch_size=min(cfg.train.batch_size, r["batch_size"])),
    )


__all__ = [
    "AnoMemConfig",
    "LOCAL_RECIPE",
    "AugmentConfig",
    "BackboneConfig",
    "BankConfig",
    "HeadsConfig",
    "LossConfig",
    "MemoryConfig",
    "PAPER_LITERAL",
    "PRESETS",
    "PatchConfig",
    "PixelsConfig",
    "PseudoConfig",
    "ScorerConfig",
    "ThresholdConfig",
    "TrainConfig",
    "WeightsConfig",
    "paper_literal",
    "load_config",
    "parse_overrides",
    "replace",
    "resolve_local_recipe",
    "with_overrides",
]


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The dotted keys where two config dicts (as in config.json or a checkpoint) differ,
    sorted; compared through JSON so tuples and lists are alike, keys of the old layout moved
    first. The one rule resume uses."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix.rstrip("."): d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    fa, fb = flat(upgrade(json.loads(json.dumps(a)))), flat(upgrade(json.loads(json.dumps(b))))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, ...) != fb.get(k, ...))
