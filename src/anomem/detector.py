"""The user-facing estimator: fit, score, map, refit stage 2, save and load.

Conventions follow scikit-learn / PyOD: ``__init__`` only stores its arguments, ``fit``
validates input and returns ``self``, learned state ends in ``_``, scoring never changes
the estimator, and scores are HIGHER = MORE ANOMALOUS (the paper's y = 1 normal /
y = 0 anomaly convention stays internal).

A thin layer: all inference is one module, ``model_`` (:class:`anomem.inference.AnoMemModel`:
images -> Δ (Eq. 8) -> named parts -> the fused score and maps, :mod:`anomem.stage2`). Fit
runs stage 1 (:mod:`anomem.engine`), then stage 2 (:mod:`anomem.fit.stage2`); thresholds
live in :mod:`anomem.calibration`, files in :mod:`anomem.io.persistence`. Stage 1 is shared
by the one-class and semi-supervised settings: :meth:`AnoMem.refit_scorer` retrains only
stage 2 with new labelled anomalies, in seconds, every stage-1 weight bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from anomem import splits
from anomem._version import __version__
from anomem.calibration import ThresholdMixin, held_out_normals
from anomem.config import AnoMemConfig, load_config, resolve_local_recipe
from anomem.engine import EpochLog, Stage1Trainer, resolve_device
from anomem.errors import ConfigError, NotFittedError
from anomem.factory import build_net, build_scorer, load_backbone_weights
from anomem.fit.fusion import FusionFit, fit_fusion
from anomem.fit.stage2 import ScoreBank, Stage2Banks, calibration_bank, fit_scorer, refit
from anomem.fit.stage2 import settings_of as fitted_settings
from anomem.inference import AnoMemModel
from anomem.inputs import (
    as_images,
    check_batch_size,
    image_digests,
    match_geometry,
    to_float,
    training_set,
    validation_set,
)
from anomem.io.persistence import PersistenceMixin
from anomem.limits import check_config_limits
from anomem.model.net import AnoMemNet
from anomem.model.prototypes import PrototypeCache, build_prototype_cache
from anomem.params import ParamsMixin, apply_overrides, check_overrides, weights_for_call
from anomem.stage2.scorer import Scorer
from anomem.stage2.weights import SETTINGS, global_only
from anomem.thresholds import Threshold

EpochCallback = Callable[["AnoMem", Stage1Trainer, EpochLog], None]


class AnomalyMaps(NamedTuple):
    """Where the anomaly is.

    Attributes:
        fused: (N, H, W) the fused map (the ``map.*`` parts added up by :func:`anomem.stage2.scorer.fuse`).
        per_scale: (N, S, H, W) ‖Δ^(s)_ij‖₂ at input size, smoothed (``scorer.map_sigma``).
        scores: (N,) image anomaly scores, as :meth:`AnoMem.anomaly_score`.
    """

    fused: np.ndarray
    per_scale: np.ndarray
    scores: np.ndarray


class AnoMem(ParamsMixin, ThresholdMixin, PersistenceMixin):
    """AnoMem anomaly detector (Jezequel et al., multi-scale contrasted memory).

    Args:
        config: an :class:`AnoMemConfig`, a preset name (``cpu-small``, ``gpu-r18``,
            ``paper-r50``, ``tiny``) or ``None`` for ``cpu-small``.
        progress: show a progress bar while training.
        **overrides: config values applied on top of ``config`` at fit time, as
            ``section__field=value`` or, where the name is unique, ``field=value``:
            ``AnoMem("tiny", epochs=3, heads__steps=50, contamination=0.05)``
            (:mod:`anomem.params`), parameters for ``get_params`` / ``set_params`` / ``clone``.

    Scores and decisions follow PyOD: :meth:`decision_function` (= :meth:`anomaly_score`,
    float64, higher = more anomalous), :meth:`predict` (1 = anomaly, at
    :attr:`threshold_`, which ``contamination=`` sets PyOD's way), :meth:`predict_proba`.

    Attributes (after fit or load):
        model_: the inference module (:class:`~anomem.inference.AnoMemModel`).
        banks_: pooled deviations kept for refits (:class:`~anomem.fit.stage2.Stage2Banks`).
        calibration_bank_: stage-2 inputs of the held-out normals, or None.
        threshold_: the decision threshold (:class:`~anomem.thresholds.Threshold`) or None.
        training_digests_: {"normal", "anomaly"}: (N,) int64 pixel digests of the images
            it learned from (:func:`anomem.inputs.image_digests`), for the label check
            and evaluation; empty for files from before them.
        fusion_: what the fit of the ``image``/``map`` split chose, and why
            (:class:`~anomem.fit.fusion.FusionFit`), or None.
        backbone_weights_: what ``backbone.weights`` loaded at fit, or None.
        prototype_cache_, history_, config_, in_channels_, image_size_, device_, meta_
        (free-form metadata saved with the file), library_version_.

    Example:
        >>> det = AnoMem("tiny").fit(normal_images)            # doctest: +SKIP
        >>> det.anomaly_score(test_images)  # (N,), higher = more anomalous  # doctest: +SKIP
        >>> det.refit_scorer(a_few_anomalies)                  # doctest: +SKIP
    """

    def __init__(self, config: AnoMemConfig | str | None = None, progress: bool = True, **overrides: Any) -> None:
        self.config = config
        self.progress = progress
        check_overrides(overrides)
        for name, value in overrides.items():  # scikit-learn style: stored as given, by name
            setattr(self, name, value)

    # -- fitting -------------------------------------------------------------------
    def _resolve_config(self) -> AnoMemConfig:
        if self.config is None:
            cfg = load_config("cpu-small")
        elif isinstance(self.config, str):
            cfg = load_config(self.config)
        elif isinstance(self.config, AnoMemConfig):
            cfg = self.config
        else:
            raise ConfigError(f"config must be an AnoMemConfig or a preset name, got {type(self.config).__name__}")
        cfg = apply_overrides(cfg, self._overrides())
        check_config_limits(cfg)  # a ceiling is refused before anything is allocated
        return cfg

    def fit(
        self,
        X: Any,
        anomalies: Any = None,
        *,
        y: Any = None,
        validation: Any = None,
        on_epoch_end: EpochCallback | None = None,
        resume: dict[str, Any] | None = None,
    ) -> AnoMem:
        """Train stage 1, then stage 2, then set the threshold from held-out normals.

        A fraction ``threshold.calibration_fraction`` of the normal images (seeded draw,
        at least 2 normals stay for training; raised up to
        ``threshold.calibration_max_fraction`` when too few to estimate the target FPR,
        :func:`anomem.calibration.calibration_count`) is held out of stages 1 and 2;
        their scores set :attr:`threshold_` at ``threshold.target_fpr`` (or at the
        ``threshold.contamination`` quantile, PyOD's rule) and stay in the checkpoint so
        the threshold can be re-derived later (see :meth:`calibrate_threshold`). A
        :class:`~anomem.thresholds.ThresholdWarning` says when they are still too few
        to resolve the target. With fewer than ``1 / calibration_fraction`` normals
        nothing is held out and no threshold is set (unless ``threshold.contamination``
        is set: then it comes from the training normals' scores, with a warning).

        Args:
            X: training images (N, H, W) or (N, C, H, W), uint8 or float in [0, 1],
                or a Dataset / ImageSet. All normal unless ``y`` says otherwise.
            anomalies: optional labelled anomaly images (M, ...), same format.
            y: optional labels for ``X`` (1 = normal, 0 = anomaly).
            validation: optional normals sharing no pixels with ``X`` (crops of one scene
                overlap: take them from another region). They take every held-out role
                (threshold, fusion, patch-bank statistics; docs/decisions.md, Decision 14).
            on_epoch_end: called after each stage-1 epoch (used to checkpoint).
            resume: a checkpoint dict from a stage-1 checkpoint, to continue training.

        Returns:
            self
        """
        cfg = self._resolve_config()
        x, normal = training_set(X, anomalies, y)
        cfg = resolve_local_recipe(cfg, x.shape[-2:])  # pseudo.local_recipe, read against the image size
        digests = {"normal": image_digests(x[normal]), "anomaly": image_digests(x[~normal])}
        if cfg.scorer.mode == "supervised" and bool(normal.all()) and not (cfg.pseudo.enabled and cfg.pseudo.heads):
            raise ConfigError("scorer.mode is 'supervised' but no labelled anomalies were given; pass anomalies= "
                              "(or y=) or use scorer.mode=auto")
        held = None if validation is None else validation_set(validation, x, torch.cat(list(digests.values())))
        cal = held_out_normals(normal, cfg.threshold, cfg.train.seed, given=held is not None)
        calibration = x[cal] if held is None else held
        if cal.numel():  # the held-out normals leave training
            keep = torch.ones(x.shape[0], dtype=torch.bool).index_fill_(0, cal, False)
            x, normal = x[keep], normal[keep]
        real = ~normal  # labelled anomalies; pseudo-anomalies are appended after them
        if cfg.pseudo.enabled:  # pseudo-anomalies join both stages as y = 0 (Eq. 3)
            fake = splits.pseudo_anomalies(x[normal], cfg)
            if x.dtype == torch.uint8:  # keep the dataset compact: shifts and cut-paste are exact in uint8
                fake = fake.mul(255).round_().to(torch.uint8)
            x = torch.cat([x if x.dtype == fake.dtype else to_float(x), fake])
            normal = torch.cat([normal, torch.zeros(fake.shape[0], dtype=torch.bool)])
            real = torch.cat([real, torch.zeros(fake.shape[0], dtype=torch.bool)])
        torch.manual_seed(cfg.train.seed)
        self.config_ = cfg
        self.in_channels_ = int(x.shape[1])
        self.image_size_ = (int(x.shape[2]), int(x.shape[3]))
        self.device_ = resolve_device(cfg.train.device)
        net = build_net(cfg, self.in_channels_, self.image_size_)
        self.backbone_weights_ = load_backbone_weights(net, cfg)  # None unless backbone.weights names a file
        normals_f = to_float(x[normal])
        net.pixel_mean.copy_(normals_f.mean((0, 2, 3)))
        net.pixel_std.copy_(normals_f.std((0, 2, 3)).clamp_min(1e-3))
        del normals_f
        trainer = Stage1Trainer(net, cfg, x, normal, self.device_)
        self.history_: list[EpochLog] = []
        if resume is not None:
            self.restore_stage1(resume, trainer)
        self._train_stage1(trainer, on_epoch_end)
        net = trainer.net.to(memory_format=torch.contiguous_format)
        self.model_ = self.new_model(net, build_scorer(cfg, net.backbone.tap_channels)).to(self.device_)
        self.banks_ = fit_scorer(self.model_, cfg, x[normal], x[real], x[~normal & ~real], held_out=held)
        self.calibration_bank_: ScoreBank | None = None
        self.threshold_: Threshold | None = None
        if calibration.shape[0]:
            self.calibration_bank_ = calibration_bank(self.model_, calibration, cfg.scorer.normal_bank, cfg.train.seed)
        self.fusion_: FusionFit | None = fit_fusion(self.model_, cfg, calibration, self.calibration_bank_)
        self.threshold_ = self.fit_threshold(lambda: x[normal])
        self.prototype_cache_: PrototypeCache | None = None
        if cfg.scorer.prototype_cache > 0:
            self.prototype_cache_ = build_prototype_cache(net, x[normal][: cfg.scorer.prototype_cache], self.device_)
        self.training_digests_ = digests  # which images it learned from (refit and evaluation check them)
        self.meta_: dict[str, Any] = {}
        self.library_version_ = __version__
        self.check_loadable("the fitted detector")  # degenerate data stop here, not at load
        return self

    def _train_stage1(self, trainer: Stage1Trainer, on_epoch_end: EpochCallback | None) -> None:
        bar = _progress(trainer.epochs, trainer.epoch, self.progress)
        try:
            while trainer.epoch < trainer.epochs:
                log = trainer.run_epoch()
                self.history_.append(log)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{log.loss:.4f}", img_s=f"{log.images_per_s:.0f}")
                if on_epoch_end is not None:
                    on_epoch_end(self, trainer, log)
        finally:
            trainer.close()
            if bar is not None:
                bar.close()

    def new_model(self, net: AnoMemNet, scorer: Scorer) -> AnoMemModel:
        """The inference module around a network and scorer built for this detector."""
        sigma = self.config_.scorer.map_sigma * min(self.image_size_)
        return AnoMemModel(net, scorer, self.image_size_, sigma, self.config_.scorer.mode)

    def refit_scorer(self, anomalies: Any, normals: Any = None, keep_previous: bool = True) -> AnoMem:
        """Retrain only stage 2 (the heads g^(s)) with labelled anomalies.

        Encoder and memories are not touched. Normals come from the bank of pooled
        training-normal deviations kept at fit time (and in the checkpoint) unless
        ``normals`` is given. With ``keep_previous`` the anomalies seen before are
        kept and the new ones added. The pseudo-anomalies made at fit time
        (``pseudo.enabled``; their pooled deviations are in the checkpoint) always join
        them, as they do in :meth:`fit` with labelled anomalies.

        The heads change the score scale, so a stored threshold is re-derived from the
        held-out normals kept at fit time, at its target FPR or contamination (at the
        fit-time rule if it was set another way); without held-out normals it is
        removed (``threshold_`` becomes None) and must be set again.

        Returns:
            self
        """
        self.check_labels(normals, anomalies)
        a = self.prepare_images(anomalies, "anomalies")
        seen, mine = getattr(self, "training_digests_", None) or {}, image_digests(a)
        normals = None if normals is None else self.prepare_images(normals, "normals")
        cal = self.calibration_bank_  # without held-out pixel vectors (older files) the threshold could not follow
        contrast = cal is None or cal.pixel_features is not None
        self.banks_ = refit(self.model_, self.banks_, self.config_, a, normals, keep_previous, contrast)
        if seen:
            old = seen.get("anomaly", mine[:0]) if keep_previous else mine[:0]
            self.training_digests_ = {**seen, "anomaly": torch.cat([old, mine])}
        self.threshold_ = self.rederive_threshold(self.threshold_)
        return self

    # -- the fitted state ------------------------------------------------------------
    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the detector is fitted (or loaded)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("this AnoMem detector is not fitted yet; call fit() or AnoMem.load() first")

    @property
    def inference_model(self) -> AnoMemModel:
        """The fitted inference module, checked usable in the configured scorer mode."""
        self.check_fitted()
        if self.config_.scorer.mode == "supervised" and not bool(self.model_.scorer.heads.trained):
            raise NotFittedError("scorer.mode is 'supervised' but no labelled anomalies were given; use refit_scorer()")
        return self.model_

    def prepare_images(self, X: Any, name: str = "images") -> torch.Tensor:
        """``X`` as an image tensor of this detector's channels and size (see :mod:`anomem.inputs`)."""
        self.check_fitted()
        return match_geometry(as_images(X, name), self.in_channels_, self.image_size_, name)

    @property
    def input_shape_(self) -> tuple[int, int, int]:
        """(C, H, W) of the training images, as the baselines report it."""
        return (self.in_channels_, *self.image_size_)

    @property
    def net_(self) -> AnoMemNet:
        """The trained encoder and memories (part of :attr:`model_`)."""
        return self.model_.net

    @property
    def scorer_(self) -> Scorer:
        """The fitted stage 2 (part of :attr:`model_`)."""
        return self.model_.scorer

    @property
    def weights_(self) -> dict[str, float]:
        """The score's flat weights by part name (:mod:`anomem.stage2.weights`): the image
        score is Σ_k weights_[k] · part_k, the heat-map the same over the ``map.*`` parts."""
        self.check_fitted()
        return self.model_.scorer.weights.as_dict()

    @property
    def settings_(self) -> dict[str, Any]:
        """The settings of the weights: the config's ``weights`` section, the fitted splits."""
        self.check_fitted()
        return fitted_settings(self.model_, self.config_)

    def fusion_weights(self, weights: Mapping[str, Any] | None = None, fusion: Any = None) -> dict[str, float] | None:
        """Flat weights for one call: ``weights`` may name settings (:data:`SETTINGS`, the
        others as fitted, recomposed) and parts (replaced after); None when none are given."""
        self.check_fitted()
        return weights_for_call(self.model_, self.settings_, weights, fusion)

    @property
    def anomaly_bank_(self) -> list[torch.Tensor]:
        """Pooled deviations of every labelled anomaly the heads were trained on."""
        return self.banks_.anomaly

    @property
    def pseudo_bank_(self) -> list[torch.Tensor]:
        """Pooled deviations of the pseudo-anomalies made at fit time."""
        return self.banks_.pseudo

    @property
    def is_supervised(self) -> bool:
        """True when scores come from the supervised heads (Eq. 10)."""
        return self.inference_model.use_heads

    # -- scoring -------------------------------------------------------------------
    @torch.inference_mode()
    def score_per_scale(self, X: Any, batch_size: int = 256, weights: Mapping[str, Any] | None = None) -> np.ndarray:
        """Per-scale anomaly scores (N, S): the heads' or the memory's, standardised if
        configured, mixed with the feature bank (``weights`` as in :meth:`anomaly_score`)."""
        model, batch_size = self.inference_model, check_batch_size(batch_size)
        w = self.fusion_weights({**(weights or {}), "image": global_only(), "pixel_global": 0.0, "pixel_local": 0.0})
        out = [model.scale_scores(r, w) for r in model.readings(self.prepare_images(X), batch_size, need=set())]
        return torch.cat(out).cpu().numpy()

    @torch.inference_mode()
    def anomaly_score(self, X: Any, batch_size: int = 256, normalized: bool = False,
                      weights: Mapping[str, Any] | None = None, fusion: Any = None) -> np.ndarray:
        """Anomaly score of each image, float64 (N,), higher = more anomalous (Eq. 9/10 + 13).

        Args:
            normalized: return the scores squashed into (0, 1) with the threshold at
                0.5 (:meth:`anomem.thresholds.Threshold.normalize`: a logistic centred
                on the threshold, scaled by the spread of normal scores); needs a
                threshold. The default is the raw score.
            weights: other weights for this call, for sweeps and ablations (the detector is
                not changed): settings by name (``scales``, ``bank``, ``pixel_global``,
                ``pixel_local``, ``contrast``, ``image``, ``map_pixel``, ``map``; the
                others as in :attr:`settings_`) recompose the flat weights, and part
                names (``memory.0``, ``pixel_patches``, ... as in :attr:`weights_`) then
                replace single entries. ``{"image": (1, 0, 0)}`` is the score without
                patch banks, ``{"pixel_patches": 1}`` adds that part at weight 1.
            fusion: the same as ``weights={"image": fusion}``.
        """
        model, batch_size = self.inference_model, check_batch_size(batch_size)
        if normalized:
            self.require_threshold("normalized scores")
        w = self.fusion_weights(weights, fusion)
        out = [model.score(r, w) for r in model.readings(self.prepare_images(X), batch_size, need=model.need(w))]
        raw = torch.cat(out).double().cpu().numpy()  # float64 (N,), the estimator contract
        return self.threshold_.normalize(raw) if normalized else raw

    def decision_function(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """PyOD's name for :meth:`anomaly_score`: float64 (N,), higher = more anomalous."""
        return self.anomaly_score(X, batch_size)

    def predict_proba(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """(N, 2) float64: columns [normal, anomaly], the anomaly column being the
        normalised score (:meth:`anomem.thresholds.Threshold.normalize`: > 0.5 exactly
        where :meth:`predict` says 1). A monotone squash, not a calibrated probability."""
        p = self.anomaly_score(X, batch_size, normalized=True)
        return np.stack([1.0 - p, p], axis=1)

    @torch.inference_mode()
    def embed(self, X: Any, batch_size: int = 256, scale: int = -1) -> np.ndarray:
        """Frozen-encoder features (N, C_s): tap ``scale`` (default: the deepest),
        average-pooled over positions, before any memory. For linear evaluation and for
        feature-space baselines (SimCLR + kNN / k-means)."""
        self.check_fitted()
        model, batch_size = self.model_, check_batch_size(batch_size)
        out = [r.net.embeddings[scale].cpu() for r in model.readings(self.prepare_images(X), batch_size, need=set())]
        return torch.cat(out).numpy().astype(np.float64)

    def predict(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """0/1 label of each image (N,) int64: 1 = anomaly (raw score > :attr:`threshold_`,
        set at fit at ``threshold.target_fpr``, or PyOD's way with ``contamination=``)."""
        self.check_fitted()
        self.require_threshold("predict")
        return self.threshold_.predict(self.anomaly_score(X, batch_size))

    # -- heat-maps -----------------------------------------------------------------
    @torch.inference_mode()
    def anomaly_maps(self, X: Any, batch_size: int = 128, sigma: float | None = None,
                     weights: Mapping[str, Any] | None = None) -> AnomalyMaps:
        """Per-scale and fused heat-maps at input resolution (see :class:`AnomalyMaps`).

        Each scale's ‖Δ^(s)_ij‖₂ map is upsampled (bilinear) to the input size and
        smoothed with a Gaussian of standard deviation ``sigma`` pixels (default
        ``scorer.map_sigma`` × the shorter image side; 0 = no smoothing); the fused map
        is the fusion of the memory's per-scale maps, standardised and merged by Eq. 13
        per pixel, with the pixel bank's and the patch banks' maps
        (the ``map.*`` parts added up by :func:`anomem.stage2.scorer.fuse`).

        Args:
            sigma: smoothing σ in pixels; None = the configured default.
            weights: other fusion weights for this call (see :meth:`anomaly_score`).
        """
        w = self.fusion_weights(weights)
        model, batch_size = self.inference_model, check_batch_size(batch_size)
        sigma = model.map_sigma if sigma is None else float(sigma)
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
        fused, per, scores = [], [], []
        for r in model.readings(self.prepare_images(X), batch_size, need=model.need(w)):
            maps = model.heatmaps(r, sigma, w)
            fused.append(maps.fused)
            per.append(maps.per_scale)
            scores.append(model.score(r, w))
        cat = lambda t: torch.cat(t).float().cpu().numpy()  # noqa: E731
        return AnomalyMaps(cat(fused), cat(per), cat(scores))

    @property
    def map_sigma_pixels(self) -> float:
        """Default heat-map smoothing σ in pixels (``scorer.map_sigma`` × shorter side)."""
        self.check_fitted()
        return self.model_.map_sigma

def _progress(total: int, initial: int, enabled: bool):  # -> tqdm | None
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="stage 1", unit="epoch", leave=False)


__all__ = ["AnoMem", "AnomalyMaps", "SETTINGS", "ScoreBank", "Stage2Banks"]
