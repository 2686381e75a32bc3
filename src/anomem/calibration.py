"""Thresholds of a fitted detector: set from held-out normals, labels or by hand.

:class:`ThresholdMixin` is the part of :class:`anomem.AnoMem` that chooses
``threshold_`` (the rules themselves are in :mod:`anomem.thresholds`); stage 1 and
stage 2 are never touched. Scores of the normals held out at fit time come from their
stored :class:`~anomem.fit.stage2.ScoreBank`, so a threshold can be re-derived without the
images.

**How many normals are held out.** ``threshold.calibration_fraction`` of them, raised, when
that is too few to estimate the target FPR (``threshold.target_fpr``, or
``threshold.contamination`` when set), towards :func:`~anomem.thresholds.normals_needed`
(5 expected false positives: 500 normals for 1 %), but never beyond
``threshold.calibration_max_fraction`` of the normals (:func:`calibration_fraction_for`).
When even that is too few for a target the user asked for, the threshold warns with the
resolution it can reach. Where nobody asked (``threshold.target_fpr`` left at its default,
or no ``fpr`` given to :meth:`ThresholdMixin.calibrate_threshold`), the target is raised
instead to the smallest FPR the normals can estimate (:func:`fit_target_fpr`), and the
threshold says why in its description: small training sets get a threshold without a
warning, and the warning is kept for the targets people choose.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from anomem.config import ThresholdConfig
from anomem.errors import ConfigError, DataError, NotFittedError
from anomem.fit.stage2 import cached_scores
from anomem.inputs import check_disjoint, image_digests
from anomem.splits import calibration_split
from anomem.thresholds import (
    Threshold,
    ThresholdWarning,
    normal_spread,
    normals_needed,
    smallest_estimable,
    threshold_at_contamination,
    threshold_at_fpr,
    threshold_at_recall,
    threshold_max_f1,
    user_stacklevel,
)

HELD_OUT = "held-out normals"
TRAINING = "training normals"
GIVEN = "given normals"
_TRAINING_BIAS = ("training normals score lower than new normals (the detector's banks hold them), so the FPR on new "
                  "normals will be higher than the contamination; keep threshold.calibration_fraction > 0")


#: ``threshold.target_fpr`` when nobody set it: raised by :func:`fit_target_fpr` where too few normals resolve it.
DEFAULT_TARGET_FPR: float = next(f.default for f in fields(ThresholdConfig) if f.name == "target_fpr")


class TargetFPR(NamedTuple):
    """The FPR a threshold aims at, and why it was chosen ("" when asked for or configured)."""

    fpr: float
    reason: str = ""


def fit_target_fpr(asked: float | None, configured: float, n: int) -> TargetFPR:
    """The target FPR for a threshold from ``n`` normals, and why it was chosen.

    ``asked`` (an explicit ``fpr``) or a ``configured`` value other than
    :data:`DEFAULT_TARGET_FPR` is used as it is, estimable or not (the threshold then
    warns). The default, when ``n`` normals cannot estimate it, becomes the smallest FPR they
    can (:func:`~anomem.thresholds.smallest_estimable`; unchanged below 10 normals).
    """
    if asked is not None:
        return TargetFPR(asked)
    raised = smallest_estimable(n)
    if configured != DEFAULT_TARGET_FPR or n >= normals_needed(configured) or raised is None:
        return TargetFPR(configured)
    return TargetFPR(raised, f"chosen: the smallest FPR {n} normals can estimate (the default {configured:g} needs "
                             f"{normals_needed(configured)}; set threshold.target_fpr or --fpr to choose)")


def calibration_count(n_normal: int, threshold: ThresholdConfig) -> int:
    """How many of ``n_normal`` normals to hold out for the threshold (see the module doc)."""
    if threshold.calibration_fraction <= 0:
        return 0
    base = int(threshold.calibration_fraction * n_normal)
    target = threshold.contamination if threshold.contamination > 0 else threshold.target_fpr
    grown = min(normals_needed(target), int(threshold.calibration_max_fraction * n_normal))
    return max(0, min(max(base, grown), n_normal - 2))


def calibration_fraction_for(n_normal: int, threshold: ThresholdConfig) -> float:
    """The fraction to pass to :func:`anomem.splits.calibration_split` so that it holds out
    :func:`calibration_count` normals (``threshold.calibration_fraction`` itself when that
    is already enough, so splits of large data sets are unchanged)."""
    count = calibration_count(n_normal, threshold)
    if count == int(threshold.calibration_fraction * n_normal) or n_normal == 0:
        return threshold.calibration_fraction
    return (count + 0.5) / n_normal


def held_out_normals(normal: torch.Tensor, threshold: ThresholdConfig, seed: int, given: bool) -> torch.Tensor:
    """Indices of the training normals ``fit`` holds out for the threshold and the fusion
    fit: :func:`anomem.splits.calibration_split` at :func:`calibration_fraction_for`, or none
    when validation normals are ``given`` (they play that role; docs/decisions.md, Decision 14)."""
    if given:
        return normal.nonzero().flatten()[:0]
    return calibration_split(normal, calibration_fraction_for(int(normal.sum()), threshold), seed)


def _at_fpr(scores: np.ndarray, asked: float | None, configured: float, source: str) -> Threshold:
    """:func:`~anomem.thresholds.threshold_at_fpr` at the target :func:`fit_target_fpr` picks."""
    target = fit_target_fpr(asked, configured, int(np.asarray(scores).size))
    return replace(threshold_at_fpr(scores, target.fpr, source=source), target_reason=target.reason)


class ThresholdMixin:
    """Threshold methods of :class:`anomem.AnoMem` (see there for the attributes)."""

    def require_threshold(self, what: str) -> None:
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(
                f"{what} needs a threshold and this detector has none; set one with calibrate_threshold() "
                "or set_threshold() (or `anomem threshold`)"
            )

    def check_labels(self, normals: Any = None, anomalies: Any = None) -> None:
        """Refuse images given with the label opposite to the one this detector learned
        them with (:attr:`training_digests_`): an image cannot be both normal and anomalous."""
        known = getattr(self, "training_digests_", None) or {}
        for images, name, other, what in ((anomalies, "anomalies", "normal", "was trained on as normal"),
                                          (normals, "normals", "anomaly", "was given as anomalies")):
            if images is not None and other in known:
                check_disjoint(image_digests(self.prepare_images(images, name)), known[other], name,
                               f"images this detector {what}")

    def _warn_if_trained_on(self, normals: Any) -> None:
        """A threshold from normals the detector was trained on is biased: say so (ThresholdWarning)."""
        known = (getattr(self, "training_digests_", None) or {}).get("normal")
        if known is None or not known.numel():
            return
        trained = torch.isin(image_digests(self.prepare_images(normals, "normals")), known)
        if bool(trained.any()):
            warnings.warn(f"{int(trained.sum())} of the {trained.numel()} given normals are images this detector "
                          "was trained on: they score lower than new normals, so the threshold will flag more new "
                          "normals than its target; set it from normals it has not seen", ThresholdWarning,
                          stacklevel=user_stacklevel())

    def _held_out_scores(self) -> np.ndarray:
        if self.calibration_bank_ is None:
            raise DataError(
                "no held-out normals are stored with this detector (threshold.calibration_fraction was 0 or "
                "there were too few normals); pass normals"
            )
        return cached_scores(self.model_, self.calibration_bank_)

    def fit_threshold(self, training_normals: Callable[[], Any] | None = None) -> Threshold | None:
        """The threshold :meth:`fit` sets (and :meth:`refit_scorer` re-derives).

        From the held-out normals: at ``threshold.contamination`` (PyOD's quantile rule)
        when it is > 0, else at ``threshold.target_fpr``. Without held-out normals, only
        a contamination threshold is set, from ``training_normals()`` (PyOD's habit; it
        warns, as they score lower than new normals); otherwise None.
        """
        s = self.config_.threshold
        if self.calibration_bank_ is not None:
            scores, source = cached_scores(self.model_, self.calibration_bank_), HELD_OUT
        elif s.contamination > 0 and training_normals is not None:
            scores, source = self.anomaly_score(training_normals()), TRAINING
        else:
            if s.calibration_fraction > 0:  # one was expected: say why there is none
                n = int(self.banks_.normal[0].shape[0])
                need = next((m for m in range(3, 10_000) if calibration_count(m, s) > 0), "thousands of")
                warnings.warn(f"no threshold was set: {n} normal images are too few to hold any out for it (at "
                              f"least {need} are needed with threshold.calibration_fraction={s.calibration_fraction:g}); "
                              "predict() and the is_anomaly column need one: set it from other normals with "
                              "calibrate_threshold(normals) or `anomem threshold --normals DIR`",
                              ThresholdWarning, stacklevel=user_stacklevel())
            return None
        if s.contamination <= 0:
            return _at_fpr(scores, None, s.target_fpr, source)
        t = threshold_at_contamination(scores, s.contamination, source=source)
        if source == TRAINING:
            warnings.warn(_TRAINING_BIAS, ThresholdWarning, stacklevel=user_stacklevel())
            t = replace(t, note="; ".join(n for n in (t.note, _TRAINING_BIAS) if n))
        return t

    def calibrate_threshold(
        self,
        normals: Any = None,
        anomalies: Any = None,
        *,
        fpr: float | None = None,
        method: str | None = None,
        recall: float = 0.95,
        contamination: float | None = None,
    ) -> ThresholdMixin:
        """Set :attr:`threshold_` from data; stage 1 and stage 2 are not touched.

        * normals only (``method="fpr"``, the default without anomalies): the threshold
          with a false-positive rate of ``fpr`` (default ``threshold.target_fpr``) on
          ``normals`` — by default the normals held out at fit time. Use normals the
          detector was not trained on, or the FPR on new data will be higher.
        * ``method="contamination"`` (the default when ``contamination`` is given):
          PyOD's rule, the (1 - ``contamination``) quantile of the same normal scores.
        * normals and anomalies: ``method="f1"`` (default) maximises F1,
          ``method="recall"`` keeps the largest threshold flagging at least ``recall``
          of the anomalies.

        A :class:`~anomem.thresholds.ThresholdWarning` says when the normals are too
        few to resolve the target FPR, or when the threshold flags most of them. See
        :mod:`anomem.thresholds` for the exact rules.

        Returns:
            self
        """
        self.check_fitted()
        method = method or ("contamination" if contamination is not None else "fpr" if anomalies is None else "f1")
        if method not in ("fpr", "f1", "recall", "contamination"):
            raise ConfigError(f"threshold method must be 'fpr', 'f1', 'recall' or 'contamination', got {method!r}")
        if contamination is not None and method != "contamination":
            raise ConfigError(f"contamination applies to method 'contamination' only, not {method!r}")
        self.check_labels(normals, anomalies)
        if normals is None:
            normal_scores, source = self._held_out_scores(), HELD_OUT
        else:
            normal_scores, source = self.anomaly_score(normals), GIVEN
            self._warn_if_trained_on(normals)
        if method in ("fpr", "contamination"):
            if anomalies is not None:
                raise ConfigError(f"method {method!r} sets the threshold from normals only; drop anomalies or use "
                                  "'f1'/'recall'")
            if method == "fpr":
                self.threshold_ = _at_fpr(normal_scores, fpr, self.config_.threshold.target_fpr, source)
            else:
                if fpr is not None:
                    raise ConfigError("fpr applies to method 'fpr' only, not 'contamination'")
                c = self.config_.threshold.contamination if contamination is None else contamination
                self.threshold_ = threshold_at_contamination(normal_scores, c, source=source)
            return self
        if anomalies is None:
            raise ConfigError(f"method {method!r} needs labelled anomalies")
        if fpr is not None:
            raise ConfigError(f"fpr applies to method 'fpr' only, not {method!r}")
        a_scores = self.anomaly_score(anomalies)
        scores = np.r_[normal_scores, a_scores]
        is_anomaly = np.r_[np.zeros(normal_scores.size, bool), np.ones(a_scores.size, bool)]
        if method == "f1":
            self.threshold_ = threshold_max_f1(scores, is_anomaly, source=source)
        else:
            self.threshold_ = threshold_at_recall(scores, is_anomaly, recall, source=source)
        return self

    def rederive_threshold(self, old: Threshold | None) -> Threshold | None:
        """After stage 2 changed: ``old``'s FPR or contamination target again on the
        held-out normals (the fit-time rule for any other method); None without them."""
        if self.calibration_bank_ is None:
            return None
        scores = cached_scores(self.model_, self.calibration_bank_)
        if old is not None and old.method == "contamination" and old.target is not None:
            return threshold_at_contamination(scores, old.target, source=HELD_OUT)
        if old is not None and old.method == "fpr" and old.target is not None:
            return replace(threshold_at_fpr(scores, old.target, source=HELD_OUT), target_reason=old.target_reason)
        return self.fit_threshold()

    def set_threshold(self, value: float, scale: float | None = None) -> ThresholdMixin:
        """Set the threshold by hand (anomaly iff raw score > ``value``).

        ``scale`` (the spread used by normalised scores) defaults to the spread of the
        held-out normals' scores. Without held-out normals it is Σ_k w[k] over the image
        parts: every part is a z-score of unit spread on training normals, so that is the
        largest spread their weighted sum can have (the kept training normals hold only
        the memory's and the heads' parts, not enough to score them whole).

        Returns:
            self
        """
        self.check_fitted()
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold value must be a number, got {value!r}") from None
        if scale is None:
            if self.calibration_bank_ is not None:
                scale = normal_spread(cached_scores(self.model_, self.calibration_bank_))
            else:
                scale = sum(v for k, v in self.weights_.items() if not k.startswith("map."))
        self.threshold_ = Threshold(value=value, method="manual", scale=float(scale))
        return self


__all__ = ["DEFAULT_TARGET_FPR", "TargetFPR", "ThresholdMixin", "calibration_count", "calibration_fraction_for",
           "fit_target_fpr"]
