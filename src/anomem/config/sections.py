"""The sections of :class:`anomem.config.AnoMemConfig`: one frozen dataclass each,
every default in one place, validated on construction (one ConfigError line)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from anomem.choices import DEFECTS, LOCAL_RECIPES, NORMALISATIONS, SHIFTS, STEMS
from anomem.choices import MODES as SCORE_MODES
from anomem.errors import ConfigError

ARCHS = ("resnet18", "resnet34", "resnet50")
OBJECTIVES = ("ntxent", "barlow")
MERGES = ("weighted", "standardized")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class BackboneConfig:
    """The ResNet encoder f and which of its stages are tapped as scales.

    ``arch`` is one of :data:`ARCHS` (our own ResNet with a width multiplier) or
    ``"torchvision:<name>"`` for any torchvision ResNet constructor.
    """

    arch: str = "resnet18"
    width: int = 64  # channels of the first stage; torchvision's ResNets use 64
    # "small": 3x3 conv stride 1, no max-pool (28-32 px); "imagenet" (stride 4);
    # "imagenet8" (stride 8); "auto": chosen from the image size (anomem.model.backbone.resolve_stem)
    stem: str = "auto"
    taps: tuple[str, ...] = ("layer3", "layer4")
    # A local torchvision ResNet state dict (.pth) to start stage 1 from; "" = from scratch.
    # Never downloaded; tensors matching in name and shape are loaded at fit
    # (anomem.model.backbone.load_resnet_weights), and the file is not needed to load a detector.
    weights: str = ""
    # Stages stage 1 leaves as they start (at their initialisation, or at ``weights``): their
    # parameters get no gradient; their batch-norm statistics still follow the training views.
    # Names from ("stem", "layer1", ..., "layer4"); () trains every stage (the default).
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(
            self.arch in ARCHS or self.arch.startswith("torchvision:"),
            f"backbone.arch must be one of {ARCHS} or 'torchvision:<name>', got {self.arch!r}",
        )
        _check(self.width >= 4, f"backbone.width must be >= 4, got {self.width}")
        _check(self.stem in STEMS, f"backbone.stem must be one of {STEMS}, got {self.stem!r}")
        _check(len(self.taps) >= 1, "backbone.taps must name at least one stage")
        valid = ("layer1", "layer2", "layer3", "layer4")
        for t in self.taps:
            _check(t in valid, f"backbone.taps: unknown stage {t!r}; expected names from {valid}")
        _check(
            list(self.taps) == sorted(set(self.taps), key=valid.index),
            f"backbone.taps must be distinct and ordered shallow to deep, got {self.taps}",
        )
        for f in self.freeze:
            _check(f in ("stem", *valid), f"backbone.freeze: unknown stage {f!r}; expected names from {('stem', *valid)}")
        _check(len(set(self.freeze)) == len(self.freeze), f"backbone.freeze names a stage twice: {self.freeze}")


@dataclass(frozen=True)
class MemoryConfig:
    """One Hopfield memory per tapped scale (Eq. 1) and the spatial sampling of Eq. 7."""

    enabled: bool = True  # False: Mem(z, y) = z, i.e. plain SimCLR on the taps (ablation)
    init: str = "data"  # data: patterns start as features of random training positions | random
    sizes: tuple[int, ...] = (512, 256)  # N_mem per scale
    # β and normalisation were chosen by measurement (docs/decisions.md,
    # benchmarks/validation_sweep.py): with unit vectors β = 2 makes retrieval uniform and
    # every image recalls the same prototype; centring each vector first stops post-ReLU
    # features from all looking alike; β = 8 (not 32) because sharper retrieval inverts the
    # one-class score of short runs on some seeds (docs/decisions.md, Decision 3).
    beta: float = 8.0  # inverse temperature β
    learn_beta: bool = False
    normalize: str = "centered-l2"  # none | l2 | centered-l2 | layernorm, queries and patterns
    max_steps: int = 3  # retrieval iterations of Eq. 1 at most
    tol: float = 0.0  # stop early when max |Δξ| < tol (0 = always max_steps, no host sync)
    sample_ratios: tuple[float, ...] = (0.3, 1.0)  # r^(s): fraction of positions in Ω^(s)

    def __post_init__(self) -> None:
        _check(all(n >= 1 for n in self.sizes), f"memory.sizes must be >= 1, got {self.sizes}")
        _check(self.beta > 0, f"memory.beta must be > 0, got {self.beta}")
        _check(self.init in ("data", "random"), f"memory.init must be 'data' or 'random', got {self.init!r}")
        _check(self.normalize in NORMALISATIONS, f"memory.normalize must be one of {NORMALISATIONS}, got {self.normalize!r}")
        _check(self.max_steps >= 1, f"memory.max_steps must be >= 1, got {self.max_steps}")
        _check(self.tol >= 0, f"memory.tol must be >= 0, got {self.tol}")
        _check(
            all(0 < r <= 1 for r in self.sample_ratios),
            f"memory.sample_ratios must lie in (0, 1], got {self.sample_ratios}",
        )


@dataclass(frozen=True)
class LossConfig:
    """Stage-1 objective: pairwise loss of Eq. 4-5 and the variance term of Eq. 6."""

    objective: str = "ntxent"  # ntxent | barlow
    temperature: float = 0.1  # τ
    variance_weight: float = 0.05  # λ_V
    variance_eps: float = 1e-4  # ε inside sqrt(Var + ε)
    barlow_lambda: float = 5e-3  # off-diagonal weight, Barlow Twins only
    # λ_L: the local hinge on the memory's deviation at positions of local negatives (pseudo.local > 0):
    # normal positions within local_margins[0] of their recollection, altered ones beyond local_margins[1],
    # relative to the query's length (anomem.model.losses.local_hinge)
    local_weight: float = 0.0
    local_margins: tuple[float, float] = (0.5, 1.0)
    # a position counts as altered in the local hinge when the defect covers at least this share of
    # its cell; positions touched less are left out of the hinge (still y = 0 in Eq. 3). 0: any touch
    local_cover: float = 0.0

    def __post_init__(self) -> None:
        _check(self.objective in OBJECTIVES, f"loss.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        _check(self.temperature > 0, f"loss.temperature must be > 0, got {self.temperature}")
        _check(self.variance_weight >= 0, f"loss.variance_weight must be >= 0, got {self.variance_weight}")
        _check(self.variance_eps > 0, f"loss.variance_eps must be > 0, got {self.variance_eps}")
        _check(self.local_weight >= 0, f"loss.local_weight must be >= 0, got {self.local_weight}")
        _check(0 <= self.local_cover < 1, f"loss.local_cover must lie in [0, 1), got {self.local_cover}")
        _check(len(self.local_margins) == 2 and 0 <= self.local_margins[0] < self.local_margins[1],
               f"loss.local_margins must be a pair 0 <= normal < altered, got {self.local_margins}")


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR-style views (paper §4.2); each parameter is drawn per sample."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4  # ignored for 1-channel images
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.5
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        for name in ("crop_scale", "blur_sigma"):
            _check(len(getattr(self, name)) == 2, f"augment.{name} must be a pair [lo, hi], got {getattr(self, name)}")
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "blur_p", "noise_p"):
            v = getattr(self, name)
            _check(0 <= v <= 1, f"augment.{name} is a probability, got {v}")
        for name in ("brightness", "contrast", "saturation", "noise_std"):
            _check(getattr(self, name) >= 0, f"augment.{name} must be >= 0, got {getattr(self, name)}")
        _check(0 < self.blur_sigma[0] <= self.blur_sigma[1], f"augment.blur_sigma must be 0 < lo <= hi, got {self.blur_sigma}")


@dataclass(frozen=True)
class TrainConfig:
    """Stage-1 optimisation (paper §4.2: SGD + Nesterov, cosine annealing)."""

    epochs: int = 100
    min_steps: int = 0  # at least this many optimizer steps: more epochs for small sets
    batch_size: int = 1024
    lr: float = 0.5  # for batch 256; scaled linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # NHWC convolutions in stage 1 (CUDA and CPU)
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.min_steps >= 0, f"train.min_steps must be >= 0, got {self.min_steps}")
        _check(self.batch_size >= 2, f"train.batch_size must be >= 2 (contrastive pairs need negatives), got {self.batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(
            self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None,
            f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


@dataclass(frozen=True)
class ScorerConfig:
    """Stage 2 as a whole: which score is read and how heat-maps are drawn."""

    mode: str = "auto"  # auto: supervised heads if labelled anomalies were given
    # standardized: every signal a z-score on training normals before weighing (today's
    # method); weighted: Eq. 13 on the raw Eq. 9 scores, as the paper (needs the banks off)
    merge: str = "standardized"
    normal_bank: int = 4096  # pooled normal deviations kept for refitting without the data
    map_sigma: float = 0.04  # Gaussian smoothing of heat-maps, σ as a fraction of the image side (0 = off)
    prototype_cache: int = 512  # training normals scanned at fit time for nearest-prototype patches (0 = off)

    def __post_init__(self) -> None:
        _check(self.mode in SCORE_MODES, f"scorer.mode must be one of {SCORE_MODES}, got {self.mode!r}")
        _check(self.merge in MERGES, f"scorer.merge must be one of {MERGES}, got {self.merge!r}")
        _check(self.normal_bank >= 1, f"scorer.normal_bank must be >= 1, got {self.normal_bank}")
        _check(0 <= self.map_sigma <= 1, f"scorer.map_sigma must lie in [0, 1] (fraction of the image side), got {self.map_sigma}")
        _check(self.prototype_cache >= 0, f"scorer.prototype_cache must be >= 0, got {self.prototype_cache}")


@dataclass(frozen=True)
class HeadsConfig:
    """The semi-supervised heads g^(s) ∘ φ (Eq. 10) and their training (Eq. 11-12)."""

    pool_size: int = 2  # φ: adaptive average pool to pool_size x pool_size
    hidden: int = 128  # width of the 2-layer MLP g^(s)
    margin: float = 2.0  # M of Eq. 11
    steps: int = 300
    batch_size: int = 256
    lr: float = 0.05
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        _check(self.pool_size >= 1, f"heads.pool_size must be >= 1, got {self.pool_size}")
        _check(self.hidden >= 1, f"heads.hidden must be >= 1, got {self.hidden}")
        _check(self.margin > 1, f"heads.margin M must be > 1 so that 1/M < M, got {self.margin}")
        _check(self.steps >= 1, f"heads.steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 2, f"heads.batch_size must be >= 2, got {self.batch_size}")
        _check(self.lr > 0, f"heads.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"heads.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class ThresholdConfig:
    """The decision threshold set at fit on held-out normals (:mod:`anomem.calibration`)."""

    calibration_fraction: float = 0.1  # normals held out of training to set the threshold (0 = off)
    # ... raised up to this share when too few to estimate target_fpr (5 expected false
    # positives; anomem.calibration.calibration_count); <= calibration_fraction: never raised
    calibration_max_fraction: float = 0.25
    target_fpr: float = 0.01  # false-positive rate the threshold is set for on the held-out normals
    # PyOD-style: > 0 sets the fit-time threshold at the (1 - contamination) quantile of the
    # held-out normals' scores (of the training normals' without any) instead of at target_fpr
    contamination: float = 0.0

    def __post_init__(self) -> None:
        _check(0 <= self.calibration_fraction < 1,
               f"threshold.calibration_fraction must lie in [0, 1), got {self.calibration_fraction}")
        _check(0 <= self.calibration_max_fraction < 1,
               f"threshold.calibration_max_fraction must lie in [0, 1), got {self.calibration_max_fraction}")
        _check(0 <= self.target_fpr < 1, f"threshold.target_fpr must lie in [0, 1), got {self.target_fpr}")
        _check(0 <= self.contamination <= 0.5,
               f"threshold.contamination must lie in [0, 0.5] (0 = off), got {self.contamination}")


@dataclass(frozen=True)
class BankConfig:
    """The pooled-feature bank (:mod:`anomem.stage2.feature_bank`); its normals also fill the pixel bank."""

    size: int = 2048  # training normals kept (0 = off, and no pixel bank either)
    k: int = 2  # neighbours averaged by the kNN distances (feature bank, pixel bank, contrast)

    def __post_init__(self) -> None:
        _check(self.size >= 0, f"bank.size must be >= 0, got {self.size}")
        _check(self.k >= 1, f"bank.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class PixelsConfig:
    """The raw-pixel bank (:mod:`anomem.stage2.pixel_bank`): the input as the finest scale.

    Its weights are in the ``weights`` section; all of them 0 = no pixel bank.
    """

    side: int = 32  # images are kept with the longer side at most this
    local_k: int = 20  # neighbours the local map takes its per-position minimum over

    def __post_init__(self) -> None:
        _check(self.side >= 1, f"pixels.side must be >= 1, got {self.side}")  # ceilings: anomem.limits
        _check(self.local_k >= 1, f"pixels.local_k must be >= 1, got {self.local_k}")


@dataclass(frozen=True)
class WeightsConfig:
    """The settings the score's flat weights are composed from (:mod:`anomem.stage2.weights`,
    which names them the same); ``image`` and ``map`` are fitted, not set here."""

    scales: tuple[float, ...] | None = None  # λ^(s) of Eq. 13; None = 2^(s-1) (paper §4.2)
    bank: float = 0.5  # share of the pooled-feature bank in each scale's score
    # share of the raw-pixel kNN score beside the scales (docs/decisions.md, Decision 6)
    pixel_global: float = 1 / 3
    # the pixel bank's local map: its maximum in the image score, the map in the heat-map (Decision 7)
    pixel_local: float = 0.0
    map_pixel: float = 0.5
    # with labelled anomalies, the contrast (distance to the normals minus distance to the
    # anomalies) takes pixel_global's place when the heads score (Decision 9)
    contrast: float = 0.5

    def __post_init__(self) -> None:
        if self.scales is not None:
            _check(all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and 0 < w <= 1e6
                       for w in self.scales), f"weights.scales must be numbers in (0, 1e6], got {self.scales}")
        _check(0 <= self.bank <= 1, f"weights.bank must lie in [0, 1], got {self.bank}")
        _check(0 <= self.pixel_global < 1, f"weights.pixel_global must lie in [0, 1), got {self.pixel_global}")
        _check(0 <= self.pixel_local < 1 and self.pixel_global + self.pixel_local < 1,
               f"weights.pixel_local must lie in [0, 1) with pixel_global + pixel_local < 1, got {self.pixel_local}")
        _check(0 <= self.contrast < 1 and (self.pixel_global == 0 or self.contrast + self.pixel_local < 1),
               f"weights.contrast must lie in [0, 1) with contrast + pixel_local < 1 (unless pixel_global "
               f"is 0, which turns it off), got {self.contrast}")
        _check(0 <= self.map_pixel <= 1, f"weights.map_pixel must lie in [0, 1], got {self.map_pixel}")

    def settings(self, n_scales: int) -> dict[str, float | list[float]]:
        """The settings by name, λ^(s) filled in (2^(s-1) unless given)."""
        lam = list(self.scales) if self.scales is not None else [float(2**s) for s in range(n_scales)]
        return {"scales": lam, "bank": self.bank, "pixel_global": self.pixel_global, "pixel_local": self.pixel_local,
                "contrast": self.contrast, "map_pixel": self.map_pixel}

    @property
    def pixel_bank_used(self) -> bool:
        """Whether any weight reads the raw-pixel bank (else it is not kept)."""
        return max(self.pixel_global, self.pixel_local, self.map_pixel, self.contrast) > 0


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo-anomalies made from the training normals (:mod:`anomem.model.pseudo`).

    They join stage 1 as y = 0 samples (Eq. 3: no memory, hard negatives) and stage 2
    as the anomalies the heads learn from (Eq. 10-12), beside any real labelled
    anomalies. ``enabled=false`` gives the paper's method exactly.
    """

    enabled: bool = True
    ratio: float = 1.0  # pseudo-anomalies per training normal
    shifts: tuple[str, ...] = ("rot90", "rot180", "rot270")  # distribution shifts (semantic)
    defects: tuple[str, ...] = ("cutpaste", "scar", "noise")  # synthetic local defects
    defect_fraction: float = 0.0  # share of the pseudo-anomalies that are local defects
    defect_size: tuple[float, float] = (0.1, 0.25)  # box side as a fraction of the image side
    # the local defects the stage-2 fusion fit (anomem.fit.fusion) validates against; empty = ``defects``.
    # Kinds stage 1 never drew keep that fit from being decided by what stage 1 was taught (every part ~1)
    fusion_defects: tuple[str, ...] = ()
    heads: bool = False  # without real anomalies, also train the stage-2 heads on pseudo-anomalies alone
    # share of the normals of each stage-1 batch that get a local defect (kinds ``defects``), drawn
    # afresh each step at the same place of both views; the positions it touches are y = 0 at every
    # tap (Eq. 3 read per position: no memory there, hard negatives of the normal prototypes)
    local: float = 0.0
    # the local recipe (anomem.config.resolve_local_recipe; docs/decisions.md, "Finding — the local
    # recipe against the defaults"): always = local negatives (``local`` 0.5 unless set), the local
    # hinge (``loss.local_weight`` 1 unless set), at least 300 stage-1 steps at batch <= 64; auto = so
    # for images larger than 64 px (those the ``auto`` stem does not treat as small); never = as configured.
    # auto by default since Decision 16 (docs/decisions.md; with it the image split is even, Decision 15)
    local_recipe: str = "auto"
    # keep only the shifts that move this class's normals off their distribution: pixel-kNN
    # AUROC of shifted vs unshifted normals at least this (0 = keep all; anomem.model.pseudo.shift_separability)
    min_separability: float = 0.7

    def __post_init__(self) -> None:

        _check(self.ratio > 0, f"pseudo.ratio must be > 0, got {self.ratio}")
        for k in self.shifts:
            _check(k in SHIFTS, f"pseudo.shifts: unknown shift {k!r}; expected names from {SHIFTS}")
        for name in ("defects", "fusion_defects"):
            for k in getattr(self, name):
                _check(k in DEFECTS, f"pseudo.{name}: unknown defect {k!r}; expected names from {DEFECTS}")
        _check(bool(self.shifts) or bool(self.defects), "pseudo needs at least one shift or defect kind")
        _check(0 <= self.min_separability <= 1, f"pseudo.min_separability must lie in [0, 1], got {self.min_separability}")
        _check(0 <= self.local <= 1, f"pseudo.local must lie in [0, 1], got {self.local}")
        _check(self.local_recipe in LOCAL_RECIPES,
               f"pseudo.local_recipe must be one of {LOCAL_RECIPES}, got {self.local_recipe!r}")
        _check(self.local == 0 or bool(self.defects), "pseudo.local draws local defects: pseudo.defects cannot be empty")
        _check(0 <= self.defect_fraction <= 1, f"pseudo.defect_fraction must lie in [0, 1], got {self.defect_fraction}")
        _check(len(self.defect_size) == 2 and 0 < self.defect_size[0] <= self.defect_size[1] < 1, f"pseudo.defect_size must be a pair 0 < lo <= hi < 1, got {self.defect_size}")


@dataclass(frozen=True)
class PatchConfig:
    """Patch-level evidence (:mod:`anomem.stage2.patch_bank`) and how it joins the image score.

    Two banks of local descriptors of the training normals, each a greedy coreset:
    the encoder's finest stages and raw-pixel patches. The image score is the fusion
    w_global · (memory, feature bank, pixel bank) + w_feature · feature patches +
    w_pixel · pixel patches, with weights fitted per dataset at fit time on held-out
    normals against pseudo-anomalies (:func:`anomem.fit.fusion.fit_fusion`).
    """

    feature_bank: int = 2048  # coreset rows of encoder patch descriptors (0 = off)
    pixel_bank: int = 2048  # coreset rows of raw-pixel patches (0 = off)
    top_k: float = 0.01  # share of a map's largest positions averaged into the image score
    held_out: float = 0.1  # share of training normals left out of the banks, for their statistics
    fit_fusion: bool = True  # fit the weights at fit time (False: the global score alone)
    min_validation: int = 8  # held-out normals needed to fit the weights

    def __post_init__(self) -> None:
        _check(self.feature_bank >= 0 and self.pixel_bank >= 0, f"patches.*_bank must be >= 0, got {self.feature_bank}, {self.pixel_bank}")
        _check(0 < self.top_k <= 1, f"patches.top_k must lie in (0, 1], got {self.top_k}")
        _check(0 < self.held_out < 1, f"patches.held_out must lie in (0, 1), got {self.held_out}")
        _check(self.min_validation >= 2, f"patches.min_validation must be >= 2, got {self.min_validation}")
