"""The user-facing estimator: fit, score, map, refit stage 2, save and load.

Conventions follow scikit-learn / PyOD: ``__init__`` only stores its arguments, ``fit``
validates input and returns ``self``, learned state ends in ``_``, scoring never changes
the estimator, and scores are HIGHER = MORE ANOMALOUS (the paper's y = 1 normal /
y = 0 anomaly convention stays internal).

Stage 1 (encoder + memories) is shared by the one-class and semi-supervised settings;
:meth:`AnoMem.refit_scorer` retrains only stage 2 with new labelled anomalies, in
seconds, leaving every stage-1 weight bit-identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from anomem import __version__
from anomem.checkpoint import git_commit, load_checkpoint, save_checkpoint
from anomem.config import AnoMemConfig, load_config
from anomem.engine import (
    EpochLog,
    Stage1Trainer,
    deviation_batches,
    fit_heads,
    resolve_device,
    to_float,
)
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError, NotFittedError
from anomem.explain import PrototypeCache, build_prototype_cache
from anomem.inputs import as_images, as_labels, match_geometry
from anomem.model import AnoMemNet
from anomem.pseudo import make_pseudo_anomalies, shift_separability
from anomem.scoring import Scorer, merge_scales, mix_bank, one_class_scores
from anomem.thresholds import (
    Threshold,
    normal_spread,
    threshold_at_fpr,
    threshold_at_recall,
    threshold_max_f1,
)
from anomem.validate import validate_detector_checkpoint

EpochCallback = Callable[["AnoMem", Stage1Trainer, EpochLog], None]


class AnomalyMaps(NamedTuple):
    """Where the anomaly is.

    Attributes:
        fused: (N, H, W) λ-weighted merge of the standardised per-scale maps.
        per_scale: (N, S, H, W) ‖Δ^(s)_ij‖₂ upsampled (bilinear) to the input size,
            then Gaussian-smoothed (σ = ``scorer.map_sigma`` × the shorter side).
        scores: (N,) image anomaly scores, as :meth:`AnoMem.anomaly_score`.
    """

    fused: np.ndarray
    per_scale: np.ndarray
    scores: np.ndarray


class ScoreBank(NamedTuple):
    """Stage-2 inputs of a set of images, enough to score them under any scorer state.

    Attributes:
        raw: (N, S) one-class scores ‖Δ^(s)‖₂ (Eq. 9), before standardisation.
        pooled: S x (N, D_s) pooled deviations φ(Δ^(s)) for the heads (Eq. 10).
        bank: (N, S) standardised normal-bank distances, or (N, 0) when the detector
            keeps no bank (the banks never change after fit, so these stay valid).
    """

    raw: torch.Tensor
    pooled: list[torch.Tensor]
    bank: torch.Tensor | None = None


class DeviationSummary(NamedTuple):
    """Per-image stage-2 inputs, computed in one pass over the data."""

    scores: torch.Tensor  # (N, S) one-class scores ‖Δ^(s)‖₂ (Eq. 9)
    pooled: list[torch.Tensor]  # S x (N, D_s) pooled deviations φ(Δ^(s))
    embeddings: list[torch.Tensor]  # S x (N, C_s) tap features averaged over positions
    map_mean: torch.Tensor  # (S,) mean of per-position ‖Δ_ij‖ over all images
    map_sq: torch.Tensor  # (S,) mean of per-position ‖Δ_ij‖²


class AnoMem:
    """AnoMem anomaly detector (Jezequel et al., multi-scale contrasted memory).

    Args:
        config: an :class:`AnoMemConfig`, a preset name (``cpu-small``, ``gpu-r18``,
            ``paper-r50``, ``tiny``) or ``None`` for ``cpu-small``.
        progress: show a progress bar while training.

    Example:
        >>> det = AnoMem("tiny").fit(normal_images)            # doctest: +SKIP
        >>> det.anomaly_score(test_images)  # (N,), higher = more anomalous  # doctest: +SKIP
        >>> det.refit_scorer(a_few_anomalies)                  # doctest: +SKIP
    """

    def __init__(self, config: AnoMemConfig | str | None = None, progress: bool = True) -> None:
        self.config = config
        self.progress = progress

    # -- fitting -------------------------------------------------------------------
    def _resolve_config(self) -> AnoMemConfig:
        if self.config is None:
            return load_config("cpu-small")
        if isinstance(self.config, str):
            return load_config(self.config)
        if isinstance(self.config, AnoMemConfig):
            return self.config
        raise ConfigError(f"config must be an AnoMemConfig or a preset name, got {type(self.config).__name__}")

    def fit(
        self,
        X: Any,
        anomalies: Any = None,
        *,
        y: Any = None,
        on_epoch_end: EpochCallback | None = None,
        resume: dict[str, Any] | None = None,
    ) -> AnoMem:
        """Train stage 1, then stage 2, then set the threshold from held-out normals.

        A fraction ``scorer.calibration_fraction`` of the normal images (seeded draw,
        at least 2 normals stay for training) is held out of stages 1 and 2; their
        scores set :attr:`threshold_` at ``scorer.target_fpr`` and stay in the
        checkpoint so the threshold can be re-derived later (see
        :meth:`calibrate_threshold`). With fewer than ``1 / calibration_fraction``
        normals nothing is held out and no threshold is set.

        Args:
            X: training images (N, H, W) or (N, C, H, W), uint8 or float in [0, 1],
                or a Dataset / ImageSet. All normal unless ``y`` says otherwise.
            anomalies: optional labelled anomaly images (M, ...), same format.
            y: optional labels for ``X`` (1 = normal, 0 = anomaly).
            on_epoch_end: called after each stage-1 epoch (used to checkpoint).
            resume: a checkpoint dict from a stage-1 checkpoint, to continue training.

        Returns:
            self
        """
        cfg = self._resolve_config()
        x = as_images(X, "X")
        normal = torch.ones(x.shape[0], dtype=torch.bool) if y is None else as_labels(y, x.shape[0], "y")
        if anomalies is not None:
            a = as_images(anomalies, "anomalies")
            if a.shape[1:] != x.shape[1:]:
                raise DataError(f"anomalies have shape {tuple(a.shape[1:])} per image but X has {tuple(x.shape[1:])}")
            if a.dtype != x.dtype:
                a, x = to_float(a), to_float(x)
            x = torch.cat([x, a])
            normal = torch.cat([normal, torch.zeros(a.shape[0], dtype=torch.bool)])
        if int(normal.sum()) < 2:
            raise DataError(f"fit needs at least 2 normal images, got {int(normal.sum())}")
        cal = _calibration_split(normal, cfg.scorer.calibration_fraction, cfg.train.seed)
        calibration = x[cal]
        if cal.numel():
            train = torch.ones(x.shape[0], dtype=torch.bool)
            train[cal] = False
            x, normal = x[train], normal[train]

        real = ~normal  # labelled anomalies; pseudo-anomalies are appended after them
        if cfg.pseudo.enabled:  # pseudo-anomalies join both stages as y = 0 (Eq. 3)
            fake = _pseudo_anomalies(x[normal], cfg)
            if x.dtype == torch.uint8:  # keep the dataset compact: shifts and cut-paste are exact in uint8
                fake = fake.mul(255).round_().to(torch.uint8)
            x = torch.cat([x if x.dtype == fake.dtype else to_float(x), fake])
            normal = torch.cat([normal, torch.zeros(fake.shape[0], dtype=torch.bool)])
            real = torch.cat([real, torch.zeros(fake.shape[0], dtype=torch.bool)])

        torch.manual_seed(cfg.train.seed)
        device = resolve_device(cfg.train.device)
        self.config_ = cfg
        self.in_channels_ = int(x.shape[1])
        self.image_size_ = (int(x.shape[2]), int(x.shape[3]))
        self.device_ = device
        net = AnoMemNet.from_config(cfg, self.in_channels_)
        normals_f = to_float(x[normal])
        net.pixel_mean.copy_(normals_f.mean((0, 2, 3)))
        net.pixel_std.copy_(normals_f.std((0, 2, 3)).clamp_min(1e-3))
        del normals_f
        self.net_ = net
        trainer = Stage1Trainer(net, cfg, x, normal, device)
        self.history_: list[EpochLog] = []
        if resume is not None:
            self._restore_stage1(resume, trainer)
        bar = _progress(cfg.train.epochs, trainer.epoch, self.progress)
        try:
            while trainer.epoch < cfg.train.epochs:
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
        self.net_ = trainer.net.to(memory_format=torch.contiguous_format)
        self._fit_stage2(x[normal], x[real], x[~normal & ~real])
        self.calibration_bank_: ScoreBank | None = None
        self.threshold_: Threshold | None = None
        if calibration.shape[0]:
            summ = self._summarise(calibration)
            # Capped like the normal bank, so the checkpoint does not grow with the data.
            keep = torch.randperm(summ.scores.shape[0], generator=torch.Generator().manual_seed(cfg.train.seed))
            keep = keep[: cfg.scorer.normal_bank]
            bank = self.scorer_.bank_scores([e[keep] for e in summ.embeddings]) if self.scorer_.has_banks else None
            self.calibration_bank_ = ScoreBank(summ.scores[keep], [p[keep.to(p.device)] for p in summ.pooled], bank)
            self.threshold_ = threshold_at_fpr(self._bank_scores(self.calibration_bank_), cfg.scorer.target_fpr)
        self.prototype_cache_: PrototypeCache | None = None
        if cfg.scorer.prototype_cache > 0:
            self.prototype_cache_ = build_prototype_cache(self.net_, x[normal][: cfg.scorer.prototype_cache], self.device_)
        return self

    def _fit_stage2(self, normals: torch.Tensor, anomalies: torch.Tensor, pseudo: torch.Tensor) -> None:
        """Statistics, banks and (with labelled anomalies) the heads, on a trained stage 1.

        The heads learn from the labelled anomalies and the pseudo-anomalies together;
        pseudo-anomalies alone train them only with ``pseudo.heads`` (alone they make
        unstable heads, docs/method.md), but their pooled deviations are kept so that a
        later :meth:`refit_scorer` uses them beside the new anomalies.
        """
        cfg = self.config_
        channels = self.net_.backbone.tap_channels
        scorer = _new_scorer(cfg, channels)
        self.scorer_ = scorer.to(self.device_)
        summ = self._summarise(normals)
        scorer.score_mean.copy_(summ.scores.mean(0))
        scorer.score_std.copy_(summ.scores.std(0, unbiased=False).clamp_min(1e-8))
        scorer.map_mean.copy_(summ.map_mean)
        scorer.map_std.copy_((summ.map_sq - summ.map_mean**2).clamp_min(1e-12).sqrt())
        if cfg.scorer.bank > 0 and scorer.standardize and normals.shape[0] > 2:
            pick = torch.randperm(normals.shape[0], generator=torch.Generator().manual_seed(cfg.train.seed + 31))
            pick = pick[: cfg.scorer.bank]
            scorer.set_banks([e[pick.to(e.device)] for e in summ.embeddings])
        gen = torch.Generator().manual_seed(cfg.train.seed)
        keep = torch.randperm(normals.shape[0], generator=gen)[: cfg.scorer.normal_bank]
        self.normal_bank_ = [p[keep.to(p.device)] for p in summ.pooled]
        self.normal_score_bank_ = summ.scores[keep.to(summ.scores.device)]  # (n, S) raw, same rows
        # Fresh empty tensors: a p[:0] view would keep (and save) every pooled row.
        self.anomaly_bank_ = [p.new_zeros((0, p.shape[1])) for p in summ.pooled]
        self.pseudo_bank_ = [p.new_zeros((0, p.shape[1])) for p in summ.pooled]
        if pseudo.shape[0] > 0:
            keep = torch.randperm(pseudo.shape[0], generator=gen)[: cfg.scorer.normal_bank]
            self.pseudo_bank_ = self._summarise(pseudo[keep]).pooled
        if cfg.scorer.mode == "one-class":
            return
        if anomalies.shape[0] > 0:
            self.anomaly_bank_ = self._summarise(anomalies).pooled
        if anomalies.shape[0] > 0 or (cfg.pseudo.heads and pseudo.shape[0] > 0):
            self._fit_heads()

    def _fit_heads(self) -> None:
        s = self.scorer_
        anomalies = [torch.cat([a, p]) for a, p in zip(self.anomaly_bank_, self.pseudo_bank_)]
        fit_heads(s.heads, self.normal_bank_, anomalies, self.config_.scorer, self.config_.train.seed)
        with torch.no_grad():
            d = torch.stack([h.distance(f) for h, f in zip(s.heads, self.normal_bank_)], 1)  # (N, S)
            s.head_mean.copy_(d.mean(0))
            s.head_std.copy_(d.std(0, unbiased=False).clamp_min(1e-6))
            s.supervised.fill_(True)

    @torch.inference_mode()
    def _summarise(self, images: torch.Tensor, batch_size: int = 256) -> DeviationSummary:
        scores, pooled, embs, msum, msq, count = [], None, [], None, None, 0
        for ev in deviation_batches(self.net_, images, self.device_, batch_size):
            devs = ev.deviations
            embs.append(ev.embeddings)
            scores.append(one_class_scores(devs))
            p = [h.pool_features(d) for h, d in zip(self.scorer_.heads, devs)]
            pooled = [[t] for t in p] if pooled is None else [acc + [t] for acc, t in zip(pooled, p)]
            norms = [d.norm(dim=1) for d in devs]  # S x (B, H_s, W_s)
            m = torch.stack([n.mean((1, 2)).sum() for n in norms])
            q = torch.stack([(n**2).mean((1, 2)).sum() for n in norms])
            msum = m if msum is None else msum + m
            msq = q if msq is None else msq + q
            count += devs[0].shape[0]
        embeddings = [torch.cat(e) for e in zip(*embs)]
        return DeviationSummary(torch.cat(scores), [torch.cat(p) for p in pooled], embeddings, msum / count, msq / count)

    def refit_scorer(self, anomalies: Any, normals: Any = None, keep_previous: bool = True) -> AnoMem:
        """Retrain only stage 2 (the heads g^(s)) with labelled anomalies.

        Encoder and memories are not touched. Normals come from the bank of pooled
        training-normal deviations kept at fit time (and in the checkpoint) unless
        ``normals`` is given. With ``keep_previous`` the anomalies seen before are
        kept and the new ones added. The pseudo-anomalies made at fit time
        (``pseudo.enabled``; their pooled deviations are in the checkpoint) always join
        them, as they do in :meth:`fit` with labelled anomalies.

        The heads change the score scale, so a stored threshold is re-derived from the
        held-out normals kept at fit time, at its target FPR (at ``scorer.target_fpr``
        if it was set another way); without held-out normals it is removed
        (``threshold_`` becomes None) and must be set again.

        Returns:
            self
        """
        self._check_fitted()
        a = self._prepare(anomalies, "anomalies")
        new = self._summarise(a).pooled
        if normals is not None:
            summ = self._summarise(self._prepare(normals, "normals"))
            self.normal_bank_, self.normal_score_bank_ = summ.pooled, summ.scores
        if keep_previous:
            new = [torch.cat([old, n]) for old, n in zip(self.anomaly_bank_, new)]
        self.anomaly_bank_ = new
        self._fit_heads()
        old = self.threshold_
        self.threshold_ = None
        if self.calibration_bank_ is not None:
            keep_target = old is not None and old.method == "fpr" and old.target is not None
            self.calibrate_threshold(fpr=old.target if keep_target else self.config_.scorer.target_fpr)
        return self

    # -- scoring -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError("this AnoMem detector is not fitted yet; call fit() or AnoMem.load() first")

    def _prepare(self, X: Any, name: str = "images") -> torch.Tensor:
        return match_geometry(as_images(X, name), self.in_channels_, self.image_size_, name)

    def _use_heads(self) -> bool:
        mode = self.config_.scorer.mode
        fitted = bool(self.scorer_.supervised)
        if mode == "supervised" and not fitted:
            raise NotFittedError("scorer.mode is 'supervised' but no labelled anomalies were given; use refit_scorer()")
        return fitted and mode != "one-class"

    @property
    def is_supervised(self) -> bool:
        """True when scores come from the supervised heads (Eq. 10)."""
        self._check_fitted()
        return self._use_heads()

    @torch.inference_mode()
    def score_per_scale(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """Per-scale anomaly scores (N, S), standardised if configured."""
        self._check_fitted()
        x, sup = self._prepare(X), self._use_heads()
        out = [self.scorer_.per_scale(d, sup) for d in deviation_batches(self.net_, x, self.device_, batch_size)]
        return torch.cat(out).cpu().numpy()

    @torch.inference_mode()
    def anomaly_score(self, X: Any, batch_size: int = 256, normalized: bool = False) -> np.ndarray:
        """Anomaly score of each image (N,), higher = more anomalous (Eq. 9/10 + 13).

        Args:
            normalized: return the scores squashed into (0, 1) with the threshold at
                0.5 (:meth:`anomem.thresholds.Threshold.normalize`: a logistic centred
                on the threshold, scaled by the spread of normal scores); needs a
                threshold. The default is the raw score.
        """
        self._check_fitted()
        if normalized:
            self._require_threshold("normalized scores")
        x, sup = self._prepare(X), self._use_heads()
        out = [self.scorer_(d, sup) for d in deviation_batches(self.net_, x, self.device_, batch_size)]
        raw = torch.cat(out).float().cpu().numpy()
        return self.threshold_.normalize(raw) if normalized else raw

    def embed(self, X: Any, batch_size: int = 256, scale: int = -1) -> np.ndarray:
        """Frozen-encoder features (N, C_s): tap ``scale`` (default: the deepest),
        average-pooled over positions, before any memory. For linear evaluation and for
        feature-space baselines (SimCLR + kNN / k-means)."""
        self._check_fitted()
        x = self._prepare(X)
        self.net_.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch_size):
                feats = self.net_.features(to_float(x[i : i + batch_size].to(self.device_)))
                out.append(feats[scale].float().mean((2, 3)).cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def predict(self, X: Any, batch_size: int = 256) -> np.ndarray:
        """0/1 label of each image (N,) int64: 1 = anomaly (raw score > threshold)."""
        self._check_fitted()
        self._require_threshold("predict")
        return self.threshold_.predict(self.anomaly_score(X, batch_size))

    # -- thresholds ----------------------------------------------------------------
    def _require_threshold(self, what: str) -> None:
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(
                f"{what} needs a threshold and this detector has none; set one with calibrate_threshold() "
                "or set_threshold() (or `anomem threshold`)"
            )

    @torch.inference_mode()
    def _bank_scores(self, bank: ScoreBank) -> np.ndarray:
        """Merged scores (N,) of a :class:`ScoreBank` under the current stage 2, as
        :meth:`anomaly_score` would give for those images (mirrors Scorer.per_scale)."""
        s = self.scorer_
        if self._use_heads():
            per = torch.stack([h.distance(p.to(self.device_)) for h, p in zip(s.heads, bank.pooled)], 1)  # Eq. 10
            mean, std = s.head_mean, s.head_std
        else:
            per, mean, std = bank.raw.to(self.device_), s.score_mean, s.score_std  # Eq. 9
        if s.standardize:
            per = (per - mean) / std
            if s.has_banks and bank.bank is not None and bank.bank.numel():
                per = mix_bank(per, bank.bank.to(self.device_), s.bank_weight)
        return merge_scales(per, s.scale_weights).float().cpu().numpy()  # Eq. 13

    def calibrate_threshold(
        self,
        normals: Any = None,
        anomalies: Any = None,
        *,
        fpr: float | None = None,
        method: str | None = None,
        recall: float = 0.95,
    ) -> AnoMem:
        """Set :attr:`threshold_` from data; stage 1 and stage 2 are not touched.

        * normals only (``method="fpr"``, the default without anomalies): the threshold
          with a false-positive rate of ``fpr`` (default ``scorer.target_fpr``) on
          ``normals`` — by default the normals held out at fit time. Use normals the
          detector was not trained on, or the FPR on new data will be higher.
        * normals and anomalies: ``method="f1"`` (default) maximises F1,
          ``method="recall"`` keeps the largest threshold flagging at least ``recall``
          of the anomalies.

        See :mod:`anomem.thresholds` for the exact rules.

        Returns:
            self
        """
        self._check_fitted()
        method = method or ("fpr" if anomalies is None else "f1")
        if method not in ("fpr", "f1", "recall"):
            raise ConfigError(f"threshold method must be 'fpr', 'f1' or 'recall', got {method!r}")
        if normals is None:
            if self.calibration_bank_ is None:
                raise DataError(
                    "no held-out normals are stored with this detector (scorer.calibration_fraction was 0 or "
                    "there were too few normals); pass normals"
                )
            normal_scores = self._bank_scores(self.calibration_bank_)
        else:
            normal_scores = self.anomaly_score(normals)
        if method == "fpr":
            if anomalies is not None:
                raise ConfigError("method 'fpr' sets the threshold from normals only; drop anomalies or use 'f1'/'recall'")
            target = self.config_.scorer.target_fpr if fpr is None else fpr
            self.threshold_ = threshold_at_fpr(normal_scores, target)
            return self
        if anomalies is None:
            raise ConfigError(f"method {method!r} needs labelled anomalies")
        if fpr is not None:
            raise ConfigError(f"fpr applies to method 'fpr' only, not {method!r}")
        a_scores = self.anomaly_score(anomalies)
        scores = np.r_[normal_scores, a_scores]
        is_anomaly = np.r_[np.zeros(normal_scores.size, bool), np.ones(a_scores.size, bool)]
        if method == "f1":
            self.threshold_ = threshold_max_f1(scores, is_anomaly)
        else:
            self.threshold_ = threshold_at_recall(scores, is_anomaly, recall)
        return self

    def set_threshold(self, value: float, scale: float | None = None) -> AnoMem:
        """Set the threshold by hand (anomaly iff raw score > ``value``).

        ``scale`` (the spread used by normalised scores) defaults to the spread of the
        held-out normals' scores, else of the training normals kept at fit time.

        Returns:
            self
        """
        self._check_fitted()
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold value must be a number, got {value!r}") from None
        if scale is None:
            bank = self.calibration_bank_ or ScoreBank(self.normal_score_bank_, self.normal_bank_)
            if bank.raw.shape[0] == 0:  # a checkpoint from before thresholds existed
                raise ConfigError("this detector keeps no normal scores to derive the scale from; pass scale=")
            scale = normal_spread(self._bank_scores(bank))
        self.threshold_ = Threshold(value=value, method="manual", scale=float(scale))
        return self

    # -- heat-maps -----------------------------------------------------------------
    @torch.inference_mode()
    def anomaly_maps(self, X: Any, batch_size: int = 128, sigma: float | None = None) -> AnomalyMaps:
        """Per-scale and fused heat-maps at input resolution (see :class:`AnomalyMaps`).

        Each scale's ‖Δ^(s)_ij‖₂ map is upsampled (bilinear) to the input size and
        smoothed with a Gaussian of standard deviation ``sigma`` pixels (default
        ``scorer.map_sigma`` × the shorter image side; 0 = no smoothing); the fused map
        is the λ-weighted mean of the per-scale maps standardised by their statistics
        on training normals (Eq. 13 applied per pixel).

        Args:
            sigma: smoothing σ in pixels; None = the configured default.
        """
        self._check_fitted()
        x, sup = self._prepare(X), self._use_heads()
        size = self.image_size_
        sigma = self.map_sigma_pixels if sigma is None else float(sigma)
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
        w = self.scorer_.scale_weights
        fused, per, scores = [], [], []
        for ev in deviation_batches(self.net_, x, self.device_, batch_size):
            devs = ev.deviations
            maps = torch.stack(
                [F.interpolate(d.norm(dim=1, keepdim=True), size=size, mode="bilinear", align_corners=False)[:, 0] for d in devs],
                dim=1,
            )  # (B, S, H, W)
            maps = smooth_maps(maps, sigma)
            z = (maps - self.scorer_.map_mean[:, None, None]) / self.scorer_.map_std[:, None, None]
            fused.append((z * w[:, None, None]).sum(1) / w.sum())
            per.append(maps)
            scores.append(self.scorer_(ev, sup))
        cat = lambda t: torch.cat(t).float().cpu().numpy()  # noqa: E731
        return AnomalyMaps(cat(fused), cat(per), cat(scores))

    @property
    def map_sigma_pixels(self) -> float:
        """Default heat-map smoothing σ in pixels (``scorer.map_sigma`` × shorter side)."""
        self._check_fitted()
        return self.config_.scorer.map_sigma * min(self.image_size_)

    # -- persistence ---------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "library_version": __version__,
            "git_commit": git_commit(),
            "config": self.config_.to_json(),
            "seed": self.config_.train.seed,
            "in_channels": self.in_channels_,
            "image_size": list(self.image_size_),
            "net": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()},
        }

    def stage1_checkpoint(self, trainer: Stage1Trainer) -> dict[str, Any]:
        """A resumable mid-training checkpoint dict (weights + trainer state)."""
        state = self._state()
        state["net"] = {k: v.detach().cpu() for k, v in trainer.net.state_dict().items()}
        state["trainer"] = trainer.state_dict()
        state["history"] = json.dumps([log.__dict__ for log in self.history_])
        return state

    def _restore_stage1(self, ckpt: dict[str, Any], trainer: Stage1Trainer) -> None:
        if "trainer" not in ckpt:
            raise CheckpointError("this checkpoint holds no training state to resume from")
        try:
            self._restore_stage1_state(ckpt, trainer)
        except AnoMemError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"cannot resume: malformed training checkpoint: {type(e).__name__}: {e}") from None

    def _restore_stage1_state(self, ckpt: dict[str, Any], trainer: Stage1Trainer) -> None:
        # Compare through JSON on both sides: to_dict() holds tuples where the file has lists.
        if json.loads(ckpt["config"]) != json.loads(self.config_.to_json()):
            raise CheckpointError("cannot resume: the checkpoint was made with a different config")
        trainer.net.load_state_dict(ckpt["net"])
        trainer.load_state_dict(ckpt["trainer"])
        self.history_ = _history_from_json(ckpt.get("history", "[]"))

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Write the fitted detector to one file (atomically)."""
        self._check_fitted()
        state = self._state()
        state["scorer"] = {k: v.detach().cpu() for k, v in self.scorer_.state_dict().items()}
        state["normal_bank"] = [t.cpu() for t in self.normal_bank_]
        state["anomaly_bank"] = [t.cpu() for t in self.anomaly_bank_]
        state["pseudo_bank"] = [t.cpu() for t in self.pseudo_bank_]
        state["normal_score_bank"] = self.normal_score_bank_.cpu()
        cal = self.calibration_bank_
        state["calibration_bank"] = {} if cal is None else {
            "raw": cal.raw.cpu(), "pooled": [t.cpu() for t in cal.pooled],
            "bank": torch.zeros(cal.raw.shape[0], 0) if cal.bank is None else cal.bank.cpu()}
        state["threshold"] = "" if self.threshold_ is None else self.threshold_.to_json()
        cache = self.prototype_cache_
        state["prototype_cache"] = {} if cache is None else cache.to_state()
        state["history"] = json.dumps([log.__dict__ for log in self.history_])
        state["meta"] = json.dumps(meta or {})
        save_checkpoint(state, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> AnoMem:
        """Load a detector saved by :meth:`save` (no code in the file is executed).

        Raises:
            CheckpointError: the file is missing, corrupt, unsafe, from a newer format,
                or holds entries of the wrong kind (a clear message, never a traceback).
        """
        ckpt = load_checkpoint(path)
        validate_detector_checkpoint(ckpt, path)  # anomem.validate: every field checked before use
        try:
            return cls._from_checkpoint(ckpt, path, device)
        except AnoMemError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{str(path)!r} is a malformed checkpoint: {type(e).__name__}: {e}") from None

    @classmethod
    def _from_checkpoint(cls, ckpt: dict[str, Any], path: str | Path, device: str) -> AnoMem:
        if "scorer" not in ckpt:
            raise CheckpointError(f"{str(path)!r} is a mid-training checkpoint; resume it with `anomem train --resume`")
        try:
            cfg = AnoMemConfig.from_dict(json.loads(ckpt["config"]))
        except (ConfigError, ValueError, KeyError) as e:
            raise CheckpointError(f"{str(path)!r} holds a config this version cannot read: {e}") from None
        det = cls(cfg, progress=False)
        det.config_ = cfg
        det.in_channels_ = int(ckpt["in_channels"])
        det.image_size_ = tuple(int(v) for v in ckpt["image_size"])
        det.device_ = resolve_device(device)
        net = AnoMemNet.from_config(cfg, det.in_channels_)
        channels = net.backbone.tap_channels
        scorer = _new_scorer(cfg, channels)
        try:
            net.load_state_dict(ckpt["net"])
            scorer.resize_banks(ckpt["scorer"])
            scorer.load_state_dict(ckpt["scorer"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{str(path)!r}: weights do not match its config: {str(e).splitlines()[0]}") from None
        det.net_ = net.to(det.device_).eval()
        det.scorer_ = scorer.to(det.device_).eval()
        det.normal_bank_ = [t.to(det.device_) for t in ckpt["normal_bank"]]
        det.anomaly_bank_ = [t.to(det.device_) for t in ckpt["anomaly_bank"]]
        # checkpoints from before pseudo-anomalies keep none
        det.pseudo_bank_ = [t.to(det.device_) for t in ckpt.get("pseudo_bank", [a[:0].clone() for a in ckpt["anomaly_bank"]])]
        # Checkpoints from before thresholds/explanations lack these entries.
        n_scales = len(channels)
        det.normal_score_bank_ = ckpt.get("normal_score_bank", torch.zeros(0, n_scales)).to(det.device_)
        cal = ckpt.get("calibration_bank") or None
        det.calibration_bank_ = None if cal is None else ScoreBank(cal["raw"], list(cal["pooled"]), cal.get("bank"))
        det.threshold_ = Threshold.from_json(ckpt["threshold"]) if ckpt.get("threshold") else None
        cache = ckpt.get("prototype_cache") or None
        det.prototype_cache_ = None if cache is None else PrototypeCache.from_state(cache)
        det.history_ = _history_from_json(ckpt.get("history", "[]"))
        det.meta_ = json.loads(ckpt.get("meta", "{}"))
        det.library_version_ = ckpt.get("library_version")
        return det


def _calibration_split(normal: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the normals held out to set the threshold: floor(fraction · n) of the
    n normals, drawn with a generator seeded by ``seed`` (the global RNG is untouched),
    never leaving fewer than 2 normals to train on. (M,) int64, sorted; M may be 0."""
    idx = normal.nonzero().flatten()
    m = min(int(fraction * idx.numel()), idx.numel() - 2)
    if m <= 0:
        return idx[:0]
    gen = torch.Generator().manual_seed(seed + 7919)  # a stream of its own, not the training one
    return idx[torch.randperm(idx.numel(), generator=gen)[:m]].sort().values


def _pseudo_anomalies(normals: torch.Tensor, cfg: AnoMemConfig) -> torch.Tensor:
    """``pseudo.ratio`` x N pseudo-anomalies of the training normals (float, CPU), seeded
    by ``train.seed`` on a stream of their own (:mod:`anomem.pseudo`)."""
    p = cfg.pseudo
    count = max(1, round(p.ratio * normals.shape[0]))
    gen = torch.Generator().manual_seed(cfg.train.seed + 104729)
    shifts = p.shifts
    if normals.shape[-1] != normals.shape[-2]:  # quarter turns need square images
        shifts = tuple(k for k in shifts if k not in ("rot90", "rot270"))
        if not shifts and not p.defects:
            raise ConfigError("pseudo.shifts holds only quarter turns, which need square images; add rot180 or vflip")
    x = to_float(normals)
    if shifts and p.min_separability > 0 and x.shape[0] >= 4:
        # a shift this class is (nearly) invariant to makes pseudo-anomalies that look normal
        sep = shift_separability(x, shifts, generator=torch.Generator().manual_seed(cfg.train.seed + 7))
        shifts = tuple(k for k in shifts if sep[k] >= p.min_separability)
    if not shifts and (p.defect_fraction == 0 or not p.defects):
        return x[:0]  # nothing left that makes an anomaly: the paper's stage 1
    made = make_pseudo_anomalies(x, count, shifts, p.defects, p.defect_fraction, p.defect_size, gen)
    return made.images


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of heat-maps, σ in pixels (0 = unchanged), reflect borders.

    The kernel spans ±3σ (odd size ``2·ceil(3σ) + 1``, at least 3).

    Shape:
        maps (B, S, H, W) -> (B, S, H, W)
    """
    if sigma <= 0:
        return maps
    from kornia.filters import gaussian_blur2d

    k = max(3, 2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * min(maps.shape[-2:]) - 1)  # reflect padding needs k // 2 < side
    return gaussian_blur2d(maps, (k, k), (sigma, sigma), border_type="reflect")


def _new_scorer(cfg: AnoMemConfig, channels: tuple[int, ...]) -> Scorer:
    """An untrained stage-2 scorer for taps with ``channels`` (fit and load build the same)."""
    s = cfg.scorer
    return Scorer(channels, cfg.memory.weights(len(channels)), s.pool_size, s.hidden, s.merge == "standardized",
                  s.bank_k, s.bank_weight)


def _history_from_json(text: str) -> list[EpochLog]:
    """Stage-1 epoch logs as saved in a checkpoint's ``history`` entry."""
    return [EpochLog(**{**d, "retrieval_steps": tuple(d["retrieval_steps"])}) for d in json.loads(text)]


def _progress(total: int, initial: int, enabled: bool):  # -> tqdm | None
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="stage 1", unit="epoch", leave=False)


__all__ = ["AnoMem", "AnomalyMaps", "ScoreBank", "smooth_maps"]
