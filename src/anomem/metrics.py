"""Detection and localisation metrics: image AUROC / AP, pixel AUROC and AUPRO.

Image level: scores (N,) against is_anomaly (N,), higher score = more anomalous.
Pixel level: anomaly maps (N, H, W) against ground-truth masks (N, H, W) (non-zero =
anomalous pixel), pooled over every pixel of every image, defect-free images included.

AUPRO (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, §5.2): the
per-region overlap PRO(t) is the mean, over every connected component of every mask,
of the fraction of that component's pixels whose map value exceeds t; FPR(t) is the
fraction of normal pixels exceeding t. The PRO-vs-FPR curve is integrated from FPR 0 to
``max_fpr`` (0.3, the usual limit) and divided by ``max_fpr``, so 1.0 is perfect and a
random map scores about ``max_fpr / 2``. Connected components use 8-connectivity, as in
MVTec's evaluation code. The curve is computed exactly, one point per distinct map
value, by sorting all pixels once (no threshold grid).

Symbols: N images, H W spatial size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from anomem.errors import DataError
from anomem.inputs import binary_values

__all__ = [
    "LocalisationMetrics",
    "ProCurve",
    "aupro",
    "average_precision",
    "confusion_metrics",
    "image_auroc",
    "inverted_warning",
    "localisation_metrics",
    "pixel_auroc",
    "pro_curve",
]

#: FPR up to which the PRO curve is integrated by default (MVTec AD convention).
DEFAULT_MAX_FPR = 0.3


class ProCurve(NamedTuple):
    """Exact PRO-vs-FPR curve, one point per distinct map value, from (0, 0) upwards.

    Attributes:
        fpr: (P,) false-positive rate over normal pixels, non-decreasing.
        pro: (P,) mean per-region overlap, non-decreasing.
        thresholds: (P,) the map value t of each point (pixels > t count as positive);
            the first point, (0, 0), has t = +inf.
        n_regions: number of connected anomalous regions.
    """

    fpr: np.ndarray
    pro: np.ndarray
    thresholds: np.ndarray
    n_regions: int


class LocalisationMetrics(NamedTuple):
    """Pixel-level metrics."""

    pixel_auroc: float
    aupro: float


def _labels(is_anomaly: Any, n: int, name: str = "is_anomaly") -> np.ndarray:
    y = binary_values(np.asarray(is_anomaly).reshape(-1), n, name, "0 (normal) or 1 (anomaly)")
    if y.all() or not y.any():
        raise DataError(f"{name} must contain both normal and anomalous examples to compute a ranking metric")
    return y


def _scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise DataError(f"{name} contain NaN or infinite values")
    return s


def confusion_metrics(is_anomaly: Any, predicted: Any) -> dict[str, Any]:
    """Counts and rates of 0/1 predictions against the truth, anomalies as positives:
    ``tp fp tn fn`` (scikit-learn's confusion matrix), ``accuracy``, ``precision``,
    ``recall``, ``f1`` and ``fpr``; a rate whose denominator is 0 is None."""
    y = binary_values(np.asarray(is_anomaly).reshape(-1), None, "is_anomaly", "0 (normal) or 1 (anomaly)")
    p = binary_values(np.asarray(predicted).reshape(-1), y.shape[0], "predicted", "0 (normal) or 1 (anomaly)")
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, p, labels=[False, True]).ravel())
    prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="binary", pos_label=True, zero_division=np.nan)
    rate = lambda v: None if v is None or np.isnan(v) else float(v)  # noqa: E731
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": (tp + tn) / y.shape[0],
            "precision": rate(prec), "recall": rate(rec), "f1": rate(f1) if tp + fp + fn else None,
            "fpr": fp / (fp + tn) if fp + tn else None}


def image_auroc(is_anomaly: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores (1 = anomaly in ``is_anomaly``)."""
    s = _scores(scores)
    return float(roc_auc_score(_labels(is_anomaly, s.shape[0]), s))


def inverted_warning(auroc: float | None, what: str = "AUROC") -> str | None:
    """The warning a user needs when an AUROC below 0.5 was measured, else None.

    Below 0.5 the scores rank anomalies as *more normal* than the normals: the detector
    is worse than a coin, not merely weak.
    """
    if auroc is None or not np.isfinite(auroc) or auroc >= 0.5:
        return None
    return (
        f"warning: {what} {auroc:.3f} is below 0.5: the scores rank anomalies as more normal than the normals. "
        "Check that the normal and anomaly folders are not swapped; otherwise train longer (train.epochs), keep "
        "pseudo-anomalies on (pseudo.enabled=true) and use milder crops (augment.crop_scale=[0.6,1])"
    )


def average_precision(is_anomaly: Any, scores: Any) -> float:
    """Average precision (area under precision-recall), anomalies as positives."""
    s = _scores(scores)
    return float(average_precision_score(_labels(is_anomaly, s.shape[0]), s))


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps, dtype=np.float64)
    g = np.asarray(masks)
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]  # (N, 1, H, W) masks as loaders return them
    if m.ndim == 2:
        m, g = m[None], g[None] if g.ndim == 2 else g
    if m.ndim != 3 or g.shape != m.shape:
        raise DataError(f"maps (N, H, W) and masks must have the same shape, got {m.shape} and {g.shape}")
    if not np.isfinite(m).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    g = g != 0
    if not g.any():
        raise DataError("masks have no anomalous pixel: pixel metrics need at least one")
    if g.all():
        raise DataError("masks have no normal pixel: pixel metrics need at least one")
    return m, g


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC AUC over all pixels of all images (mask non-zero = anomalous pixel).

    Shape:
        masks (N, H, W) or (N, 1, H, W), maps (N, H, W) -> float
    """
    m, g = _maps_and_masks(maps, masks)
    return float(roc_auc_score(g.reshape(-1), m.reshape(-1)))


def pro_curve(masks: Any, maps: Any) -> ProCurve:
    """The exact PRO-vs-FPR curve (see the module docstring).

    Every pixel moves the curve when the threshold passes below its value: a normal
    pixel adds 1 / (number of normal pixels) to FPR, a pixel of region r adds
    1 / (|r| · number of regions) to PRO. Sorting all pixels by value once and taking
    cumulative sums gives the curve; pixels with equal values are passed together.

    Shape:
        masks (N, H, W) or (N, 1, H, W), maps (N, H, W) -> ProCurve
    """
    m, g = _maps_and_masks(maps, masks)
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity
    region = np.zeros(g.shape, dtype=np.int64)  # (N, H, W), 0 = normal pixel
    n_regions = 0
    for i in range(g.shape[0]):  # components never cross images
        lab, k = ndimage.label(g[i], structure=structure)
        region[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += k
    region = region.reshape(-1)
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)  # sizes[0] = normal pixels
    fpr_step = np.where(region == 0, 1.0 / sizes[0], 0.0)
    pro_step = np.where(region > 0, 1.0 / (sizes[region] * n_regions), 0.0)
    values = m.reshape(-1)
    order = np.argsort(-values, kind="stable")
    values = values[order]
    fpr = np.cumsum(fpr_step[order])
    pro = np.cumsum(pro_step[order])
    # Keep the last pixel of each run of equal values: a threshold cannot split a tie.
    last = np.r_[values[1:] != values[:-1], True]
    fpr = np.r_[0.0, np.minimum(fpr[last], 1.0)]
    pro = np.r_[0.0, np.minimum(pro[last], 1.0)]
    fpr[-1] = pro[-1] = 1.0  # every pixel passed: exact, whatever the rounding of the sums
    thresholds = np.r_[np.inf, values[last]]
    return ProCurve(fpr, pro, thresholds, n_regions)


def aupro(masks: Any, maps: Any, max_fpr: float = DEFAULT_MAX_FPR) -> float:
    """Area under the PRO curve for FPR in [0, ``max_fpr``], divided by ``max_fpr``.

    The curve is linearly interpolated at ``max_fpr`` (trapezoidal rule).

    Shape:
        masks (N, H, W) or (N, 1, H, W), maps (N, H, W) -> float in [0, 1]
    """
    if not 0.0 < max_fpr <= 1.0:
        raise DataError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    curve = pro_curve(masks, maps)
    fpr, pro = curve.fpr, curve.pro
    inside = fpr <= max_fpr
    x, y = fpr[inside], pro[inside]
    if x[-1] < max_fpr:  # interpolate the point at max_fpr between its neighbours
        j = int(np.searchsorted(fpr, max_fpr, side="right"))
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        x, y = np.r_[x, max_fpr], np.r_[y, y_end]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / max_fpr


def localisation_metrics(masks: Any, maps: Any, max_fpr: float = DEFAULT_MAX_FPR) -> LocalisationMetrics:
    """Pixel AUROC and AUPRO in one call."""
    return LocalisationMetrics(pixel_auroc(masks, maps), aupro(masks, maps, max_fpr))
