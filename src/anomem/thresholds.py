"""Decision thresholds on anomaly scores, and scores normalised to [0, 1].

A :class:`Threshold` turns a raw anomaly score s (higher = more anomalous) into a
decision: **anomaly iff s > t**. It is chosen from data by one of:

* :func:`threshold_at_fpr` — from normal images only: the largest t with at most a
  fraction ``fpr`` of the given normals above it (a target false-positive rate);
* :func:`threshold_max_f1` — from labelled normals and anomalies: the t maximising F1
  (anomalies as positives);
* :func:`threshold_at_recall` — from labelled anomalies: the largest t that still flags
  at least a fraction ``recall`` of them;
* :func:`threshold_at_contamination` — PyOD's rule: the (1 - contamination) quantile of
  the scores of images assumed normal (``np.quantile``, linear interpolation).

**How far a threshold can be trusted.** n normal scores resolve FPRs only in steps of
1/n, and a threshold for a target FPR f is only estimable when about
:data:`MIN_FALSE_POSITIVES` or more false positives are expected among them
(f · n >= 5, i.e. n >= 500 normals for f = 1 %). Below that the rules still return a
threshold but warn (:class:`ThresholdWarning`) with the achievable resolution, and the
caveat is kept in :attr:`Threshold.note`. A threshold flagging more than half of its
normals (F1 on badly separated scores does that) warns too. Every threshold records its
provenance: ``method``, ``source`` (which scores), ``n_normal`` / ``n_anomaly`` and the
FPR it achieves on those normals; ``str(threshold)`` says all of it in one line.

**Normalised scores.** ``p = 1 / (1 + exp(-(s - t) / scale))``: a logistic squash
centred on the threshold, so p > 0.5 exactly when the raw score is above t, p lies in
(0, 1) and the ranking of images is unchanged. ``scale`` is the standard deviation of
the normal scores the threshold was set from (or of the training normals for a manual
threshold): an image one normal-spread above t gets p ≈ 0.73, three spreads above
p ≈ 0.95. p is a monotone rescaling, not a calibrated probability of being anomalous.

Everything here works on NumPy arrays of scores; :class:`anomem.AnoMem` keeps a
:class:`Threshold` in ``threshold_`` and in its checkpoint (as JSON).
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from anomem.errors import CheckpointError, ConfigError, DataError
from anomem.inputs import binary_values

__all__ = [
    "HIGH_FPR",
    "METHODS",
    "MIN_FALSE_POSITIVES",
    "Threshold",
    "ThresholdWarning",
    "estimability_note",
    "normal_spread",
    "normals_needed",
    "smallest_estimable",
    "threshold_at_contamination",
    "threshold_at_fpr",
    "threshold_at_recall",
    "threshold_max_f1",
    "user_stacklevel",
]

#: How a threshold was chosen.
METHODS = ("fpr", "f1", "recall", "contamination", "manual")
#: A target FPR f is estimable from n normals when f · n >= this many false positives.
MIN_FALSE_POSITIVES = 5
#: A threshold flagging more than this share of its normals warns.
HIGH_FPR = 0.5


class ThresholdWarning(UserWarning):
    """A threshold was set, but from too few normals to resolve its target, or it flags
    most normals. The message says why and what to do; :attr:`Threshold.note` keeps it."""


def normals_needed(fpr: float) -> int:
    """How many normal scores make a target FPR ``fpr`` estimable: :data:`MIN_FALSE_POSITIVES`
    expected on each side of the threshold, i.e. ceil(5 / min(fpr, 1 - fpr)), at most
    10^15 (0 for ``fpr`` = 0: the largest normal score needs no estimate)."""
    if fpr <= 0:
        return 0
    side = min(fpr, 1.0 - fpr)
    return int(min(math.ceil(MIN_FALSE_POSITIVES / side - 1e-9), 1e15)) if side > 5e-15 else 10**15


def estimability_note(fpr: float, n: int, what: str = "target FPR") -> str:
    """Empty when ``n`` normals resolve a target FPR ``fpr``, else the one-line reason."""
    if fpr <= 0 or n >= normals_needed(fpr):
        return ""
    k = int(math.floor(fpr * n + 1e-9))
    return (f"{what} {fpr:g} is not estimable from {n} normals: their resolution is 1/{n} = {1 / n:.3g} and "
            f"{min(fpr, 1 - fpr) * n:.3g} false positives are expected where {MIN_FALSE_POSITIVES} are needed "
            f"({normals_needed(fpr)} normals); expect an FPR near {(k + 1) / (n + 1):.3g} on new normals; "
            f"give {normals_needed(fpr)} normals{_or_larger_target(n) if fpr < 0.5 else ''}")


def smallest_estimable(n: int) -> float | None:
    """The smallest target FPR that ``n`` normals estimate (:data:`MIN_FALSE_POSITIVES` / n,
    rounded up to 3 decimals), or None when no target below 0.5 is estimable (n < 10)."""
    if n < 2 * MIN_FALSE_POSITIVES:
        return None
    return math.ceil(1000 * MIN_FALSE_POSITIVES / n - 1e-9) / 1000


def _or_larger_target(n: int) -> str:
    f = smallest_estimable(n)
    return f" (fewer than {2 * MIN_FALSE_POSITIVES} estimate no target)" if f is None else f", or a target of at least {f:g}"


def _high_fpr_note(method: str, fpr: float, n: int) -> str:
    if fpr <= HIGH_FPR:
        return ""
    return (f"the {method} threshold flags {fpr:.1%} of the {n} normals (FPR {fpr:.3g} > {HIGH_FPR:g}): the scores "
            "hardly separate these anomalies from the normals; consider method='fpr'")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by this function's caller point at
    the first frame outside the anomem package (the user's line, not ours)."""
    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _warned(t: Threshold) -> Threshold:
    if t.note:
        warnings.warn(t.note, ThresholdWarning, stacklevel=user_stacklevel())
    return t


@dataclass(frozen=True)
class Threshold:
    """A decision threshold on raw anomaly scores (anomaly iff score > ``value``).

    Attributes:
        value: t.
        method: one of :data:`METHODS`.
        target: the requested FPR (``fpr``) or recall (``recall``); None otherwise.
        scale: spread of normal scores used by :meth:`normalize` (> 0).
        n_normal, n_anomaly: how many scores of each class it was set from.
        fpr: the false-positive rate it achieves on those normals (None if none).
        recall: the recall it achieves on those anomalies (None if none).
        source: which scores it was set from, e.g. ``"held-out normals"`` ("" if unknown:
            files from before provenance was recorded).
        note: why it may not hold (too few normals for its target, most normals
            flagged), or "" (see :class:`ThresholdWarning`).
        target_reason: why ``target`` was chosen when nobody asked for it (a default
            raised to what the normals can estimate, :func:`anomem.calibration.fit_target_fpr`), or "".
    """

    value: float
    method: str
    scale: float
    target: float | None = None
    n_normal: int = 0
    n_anomaly: int = 0
    fpr: float | None = None
    recall: float | None = None
    source: str = ""
    note: str = ""
    target_reason: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"threshold method must be one of {METHODS}, got {self.method!r}")
        if not math.isfinite(self.value):
            raise ConfigError(f"threshold value must be a finite number, got {self.value!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"threshold scale must be a finite number > 0, got {self.scale!r}")

    def predict(self, scores: Any) -> np.ndarray:
        """0/1 labels (1 = anomaly) for raw scores (N,) -> int64 (N,)."""
        return (np.asarray(scores, dtype=np.float64) > self.value).astype(np.int64)

    def normalize(self, scores: Any) -> np.ndarray:
        """Logistic squash of raw scores into (0, 1) with the threshold at 0.5 -> (N,)."""
        z = (np.asarray(scores, dtype=np.float64) - self.value) / self.scale
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Threshold:
        try:
            d = json.loads(text)
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"stored threshold is not readable: {e}") from None

    @property
    def resolution(self) -> float | None:
        """The FPR step its normals can resolve, 1 / ``n_normal`` (None without normals)."""
        return 1.0 / self.n_normal if self.n_normal else None

    def describe(self, note: bool = True) -> str:
        """One line for people: value, how it was set, from what, what it achieves, and
        (unless ``note=False``: the command says it once, at its end) why it may not hold."""
        normals = self.source or "normals"
        if self.method == "fpr":
            how = f"target FPR {self.target:g} on {self.n_normal} {normals}"
            how += f", {self.target_reason}" if self.target_reason else ""
        elif self.method == "contamination":
            how = f"contamination {self.target:g}: the {1 - self.target:g} quantile of {self.n_normal} {normals}"
        elif self.method == "recall":
            how = f"target recall {self.target:g} on {self.n_anomaly} anomalies"
        elif self.method == "f1":
            how = f"max F1 on {self.n_normal} {normals} / {self.n_anomaly} anomalies"
        else:
            how = "set by hand"
        got = []
        if self.fpr is not None:
            got.append(f"FPR {self.fpr:.4f}")
        if self.recall is not None:
            got.append(f"recall {self.recall:.4f}")
        if self.resolution is not None:
            got.append(f"resolution {self.resolution:.3g}")
        text = f"threshold {self.value:.6g} ({how}" + (f"; achieves {', '.join(got)})" if got else ")")
        return text + (f" WARNING: {self.note}" if self.note and note else "")

    __str__ = describe


def _as_scores(scores: Any, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise DataError(f"{name}: no scores given")
    if not np.isfinite(s).all():
        raise DataError(f"{name}: scores contain NaN or infinite values")
    return s


def normal_spread(normal_scores: Any) -> float:
    """The ``scale`` of :meth:`Threshold.normalize`: std of normal scores (1.0 if they are all equal)."""
    s = _as_scores(normal_scores, "normal scores")
    std = float(s.std())
    return std if std > 0 else 1.0


def _below(x: float) -> float:
    """The largest float64 strictly below ``x`` (so that ``x > result`` holds)."""
    return float(np.nextafter(x, -np.inf))


def threshold_at_fpr(normal_scores: Any, fpr: float = 0.01, scale: float | None = None,
                     source: str = "") -> Threshold:
    """Largest t with at most ``floor(fpr * n)`` of the n normal scores above it.

    With k = floor(fpr · n) false positives allowed, t is the (k+1)-th largest normal
    score, so the achieved FPR on these normals is at most ``fpr`` (ties can make it
    lower); on new normals it is about (k + 1) / (n + 1), scattering by about
    sqrt(fpr (1 - fpr) / n). ``fpr`` below 1/n gives t = the largest normal score. Warns
    (:class:`ThresholdWarning`) when fewer than :func:`normals_needed` normals are given.

    Args:
        normal_scores: raw scores (n,) of normal images not used for training.
        fpr: target false-positive rate in [0, 1).
        scale: spread for normalised scores; default :func:`normal_spread` of these scores.
        source: where the scores come from (kept as provenance).
    """
    s = _as_scores(normal_scores, "normal scores")
    if not (isinstance(fpr, (int, float)) and 0.0 <= fpr < 1.0):
        raise ConfigError(f"target FPR must lie in [0, 1), got {fpr!r}")
    k = int(math.floor(fpr * s.size + 1e-9))
    t = float(np.sort(s)[::-1][k])
    return _warned(Threshold(
        value=t,
        method="fpr",
        scale=normal_spread(s) if scale is None else float(scale),
        target=float(fpr),
        n_normal=int(s.size),
        fpr=float((s > t).mean()),
        source=source,
        note=estimability_note(float(fpr), int(s.size)),
    ))


def threshold_at_contamination(normal_scores: Any, contamination: float = 0.1, scale: float | None = None,
                               source: str = "") -> Threshold:
    """PyOD's rule: t = the (1 - ``contamination``) quantile of the normal scores.

    ``np.quantile`` with linear interpolation, as PyOD's ``percentile``; about a fraction
    ``contamination`` of the scores lie above t. Warns like :func:`threshold_at_fpr`
    when the scores are too few to resolve ``contamination``.

    Args:
        normal_scores: raw scores (n,) of images assumed normal.
        contamination: expected share of anomalies, in (0, 0.5] (PyOD's range).
        scale: spread for normalised scores; default :func:`normal_spread` of these scores.
        source: where the scores come from (kept as provenance).
    """
    s = _as_scores(normal_scores, "normal scores")
    if isinstance(contamination, bool) or not (isinstance(contamination, (int, float)) and 0 < contamination <= 0.5):
        raise ConfigError(f"contamination must lie in (0, 0.5], got {contamination!r}")
    t = float(np.quantile(s, 1.0 - contamination))
    return _warned(Threshold(
        value=t,
        method="contamination",
        scale=normal_spread(s) if scale is None else float(scale),
        target=float(contamination),
        n_normal=int(s.size),
        fpr=float((s > t).mean()),
        source=source,
        note=estimability_note(float(contamination), int(s.size), "contamination"),
    ))


def _split(scores: Any, is_anomaly: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores")
    y = binary_values(np.asarray(is_anomaly).reshape(-1), s.size, "is_anomaly", "0 (normal) or 1 (anomaly)")
    if not y.any() or y.all():
        raise DataError("a threshold from labels needs both normal and anomalous images")
    return s, y


def threshold_max_f1(scores: Any, is_anomaly: Any, scale: float | None = None, source: str = "") -> Threshold:
    """The t maximising F1 of "score > t" against the labels (anomaly = positive).

    Candidates are every distinct score (flag what lies strictly above it) and one value
    just below the smallest (flag everything); ties in F1 go to the highest t. When the
    scores separate the classes badly this flags most normals: above :data:`HIGH_FPR`
    it warns (:class:`ThresholdWarning`).

    Args:
        scores: raw scores (n,).
        is_anomaly: (n,) 1/True for anomalies.
        scale: spread for normalised scores; default :func:`normal_spread` of the normals.
    """
    s, y = _split(scores, is_anomaly)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)  # flagging the top i+1 scores
    fp = np.cumsum(~y_sorted)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # cut only between distinct values
    tp, fp = tp[last], fp[last]
    f1 = 2 * tp / (tp + fp + y.sum())  # 2TP / (2TP + FP + FN) with FN = P - TP
    # Flagging the top group ending at position j means t = the next distinct value.
    groups = s_sorted[last]
    thresholds = np.r_[groups[1:], _below(groups[-1])]
    f1 = np.r_[0.0, f1]  # flag nothing: t = max score
    thresholds = np.r_[groups[0], thresholds]
    best = int(np.argmax(f1))  # first maximum = highest threshold
    t = float(thresholds[best])
    fpr = float((s[~y] > t).mean())
    return _warned(Threshold(
        value=t,
        method="f1",
        scale=normal_spread(s[~y]) if scale is None else float(scale),
        n_normal=int((~y).sum()),
        n_anomaly=int(y.sum()),
        fpr=fpr,
        recall=float((s[y] > t).mean()),
        source=source,
        note=_high_fpr_note("F1", fpr, int((~y).sum())),
    ))


def threshold_at_recall(scores: Any, is_anomaly: Any, recall: float = 0.95, scale: float | None = None,
                        source: str = "") -> Threshold:
    """Largest t flagging at least a fraction ``recall`` of the anomalies (score > t).

    With m anomalies, r = ceil(recall · m) of them must lie above t, so t sits just
    below the r-th largest anomaly score; the FPR that costs is read off the normals
    (above :data:`HIGH_FPR` it warns, :class:`ThresholdWarning`).

    Args:
        scores: raw scores (n,).
        is_anomaly: (n,) 1/True for anomalies (normals are used for ``scale`` and FPR).
        recall: target recall in (0, 1].
        scale: spread for normalised scores; default :func:`normal_spread` of the normals.
    """
    s, y = _split(scores, is_anomaly)
    if not (isinstance(recall, (int, float)) and 0.0 < recall <= 1.0):
        raise ConfigError(f"target recall must lie in (0, 1], got {recall!r}")
    a = np.sort(s[y])[::-1]
    r = max(1, int(math.ceil(recall * a.size - 1e-9)))
    t = _below(float(a[r - 1]))
    fpr = float((s[~y] > t).mean())
    return _warned(Threshold(
        value=t,
        method="recall",
        scale=normal_spread(s[~y]) if scale is None else float(scale),
        target=float(recall),
        n_normal=int((~y).sum()),
        n_anomaly=int(y.sum()),
        fpr=fpr,
        recall=float((s[y] > t).mean()),
        source=source,
        note=_high_fpr_note("recall", fpr, int((~y).sum())),
    ))
