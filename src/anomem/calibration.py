"""Decision thresholds of a fitted detector: set from held-out normals, labels or by hand.

:class:`ThresholdMixin` is the part of :class:`anomem.AnoMem` that chooses
``threshold_`` (the rules themselves are in :mod:`anomem.thresholds`); stage 1 and
stage 2 are never touched. Scores of the normals held out at fit time come from their
stored :class:`~anomem.stage2.ScoreBank`, so a threshold can be re-derived without the
images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomem.errors import ConfigError, DataError, NotFittedError
from anomem.stage2 import ScoreBank, bank_scores
from anomem.thresholds import (
    Threshold,
    normal_spread,
    threshold_at_fpr,
    threshold_at_recall,
    threshold_max_f1,
)


class ThresholdMixin:
    """Threshold methods of :class:`anomem.AnoMem` (see there for the attributes)."""

    def require_threshold(self, what: str) -> None:
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(
                f"{what} needs a threshold and this detector has none; set one with calibrate_threshold() "
                "or set_threshold() (or `anomem threshold`)"
            )

    def calibrate_threshold(
        self,
        normals: Any = None,
        anomalies: Any = None,
        *,
        fpr: float | None = None,
        method: str | None = None,
        recall: float = 0.95,
    ) -> ThresholdMixin:
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
        self.check_fitted()
        method = method or ("fpr" if anomalies is None else "f1")
        if method not in ("fpr", "f1", "recall"):
            raise ConfigError(f"threshold method must be 'fpr', 'f1' or 'recall', got {method!r}")
        if normals is None:
            if self.calibration_bank_ is None:
                raise DataError(
                    "no held-out normals are stored with this detector (scorer.calibration_fraction was 0 or "
                    "there were too few normals); pass normals"
                )
            normal_scores = bank_scores(self.model_, self.calibration_bank_)
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

    def set_threshold(self, value: float, scale: float | None = None) -> ThresholdMixin:
        """Set the threshold by hand (anomaly iff raw score > ``value``).

        ``scale`` (the spread used by normalised scores) defaults to the spread of the
        held-out normals' scores, else of the training normals kept at fit time.

        Returns:
            self
        """
        self.check_fitted()
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold value must be a number, got {value!r}") from None
        if scale is None:
            bank = self.calibration_bank_ or ScoreBank(self.banks_.normal_scores, self.banks_.normal)
            if bank.raw.shape[0] == 0:  # a checkpoint from before thresholds existed
                raise ConfigError("this detector keeps no normal scores to derive the scale from; pass scale=")
            scale = normal_spread(bank_scores(self.model_, bank))
        self.threshold_ = Threshold(value=value, method="manual", scale=float(scale))
        return self


__all__ = ["ThresholdMixin"]
