"""Fit and validate, shared by the validation sweeps; re-scoring under other weights.

The sweeps (validation_sweep.py, score_ablation.py, oneclass_sweep.py, semi_sweep.py,
demo_validation.py) choose settings on a VALIDATION split carved out of a dataset's
training split, never on the test split: :func:`split` (a third of the training split,
after an optional seeded subsample, :func:`anomem.bench.protocols.validation_split`),
:func:`fit_class` (AnoMem fitted on one normal class), :func:`knn_auroc` (the raw-pixel
kNN baseline, k = 2) and :func:`cells` (the AUROC columns they print).

:func:`score_with` and :func:`maps_with` read a fitted detector under other stage-2
weights, always under their future public names:

* ``scales``        λ per scale (Eq. 13), a sequence of one number per scale;
* ``bank``          share of the pooled-feature kNN bank in each scale's score;
* ``pixel_global``  share of the pixel bank's global score in the image score;
* ``pixel_local``   share of the pixel bank's local score in the image score;
* ``contrast``      the pixel bank's contrast (normals vs labelled anomalies) in place of
                    its global score, with labelled anomalies;
* ``map_pixel``     share of the pixel bank's local map in the fused heat-map;
* ``image``         3 numbers: global score, feature patches, pixel patches (the fusion);
* ``map``           3 numbers: the same for the fused heat-map.

They pass them to ``AnoMem.anomaly_score(X, weights={...})`` / ``anomaly_maps``: the
detector is never changed, and no script touches a scorer's attributes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomem import AnomalyMaps, AnoMem, AnoMemConfig, load_config
from anomem.baselines import make_baseline
from anomem.bench.protocols import FitValidation, validation_split
from anomem.data.registry import load_dataset
from anomem.imageset import ImageSet
from anomem.stage2.weights import SETTINGS

# -- fit and validate ------------------------------------------------------------------


def split(data: str, max_train: int | None, seed: int) -> FitValidation:
    """(fit, validation) parts of ``data``'s training split: ``max_train`` images drawn
    first (seeded, all when None), then a third of them for validation; one NumPy
    generator seeded by ``seed`` draws both, so a script's split is fixed by its seed."""
    return validation_split(load_dataset(data, "train"), max_train, seed)


def draw(val: ImageSet, max_val: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``max_val`` validation (images, targets), drawn by ``rng`` and kept in
    order; the caller may go on drawing from ``rng``."""
    keep = np.sort(rng.permutation(len(val))[:max_val])
    return val.images[keep], val.targets[keep]


def variant_overrides(variant: str) -> list[str]:
    """The config overrides of a ``;``-separated variant (empty parts dropped)."""
    return [o for o in variant.split(";") if o]


def sweep_config(preset: str, epochs: int, seed: int, batch_size: int, overrides: Sequence[str] = ()) -> AnoMemConfig:
    """``preset`` with the sweep's stage-1 epochs, seed and batch size, then ``overrides``."""
    return load_config(preset, overrides=[f"train.epochs={epochs}", f"train.seed={seed}",
                                          f"train.batch_size={batch_size}", *overrides])


@dataclass
class ClassFit:
    """AnoMem fitted on one normal class, and the validation labels it is read against."""

    cls: int
    normals: torch.Tensor  # the training normals it was fitted on
    det: AnoMem
    labels: np.ndarray  # (N_val,) bool: True where a validation image is not of class ``cls``
    seconds: float  # wall-clock seconds of the fit

    def auroc(self, scores: Any) -> float:
        """AUROC of ``scores`` on the validation images (anomaly = any other class)."""
        return roc_auc_score(self.labels, scores)

    def knn_auroc(self, x_val: torch.Tensor) -> float:
        """AUROC of raw-pixel kNN (k = 2) fitted on the same normals."""
        return knn_auroc(self.normals, x_val, self.labels)


def fit_class(cfg: AnoMemConfig, normals: torch.Tensor, y_val: torch.Tensor, cls: int,
              anomalies: torch.Tensor | None = None) -> ClassFit:
    """Fit AnoMem (``cfg``, no progress bar) on ``normals`` of class ``cls`` (and labelled
    ``anomalies``, if any), timed; validation labels from the targets ``y_val``."""
    t0 = time.time()
    det = AnoMem(cfg, progress=False)
    det = det.fit(normals) if anomalies is None else det.fit(normals, anomalies=anomalies)
    return ClassFit(cls, normals, det, (y_val != cls).numpy(), time.time() - t0)


def knn_auroc(normals: torch.Tensor, x_val: torch.Tensor, labels: np.ndarray) -> float:
    """AUROC on ``x_val`` of raw-pixel kNN (k = 2) fitted on ``normals``: the reference row."""
    return roc_auc_score(labels, make_baseline("knn").fit(normals).anomaly_score(x_val))


def cells(values: Iterable[Any], width: int, digits: int = 3) -> str:
    """Table cells of ``width`` characters joined by spaces: numbers with ``digits``
    decimals, strings (column names) right-aligned, None (not measured) as ``-``."""
    def cell(v: Any) -> str:
        if v is None:
            return f"{'-':>{width}}"
        return f"{v:>{width}}" if isinstance(v, str) else f"{v:{width}.{digits}f}"

    return " ".join(cell(v) for v in values)


# -- re-scoring under other weights ----------------------------------------------------

WEIGHTS = SETTINGS


def _given(weights: dict[str, Any]) -> dict[str, Any]:
    """The weights given (None: as fitted), their names checked."""
    unknown = sorted(set(weights) - set(WEIGHTS))
    if unknown:
        raise TypeError(f"unknown weight(s) {unknown}; the weights are {list(WEIGHTS)}")
    return {k: v for k, v in weights.items() if v is not None}


def score_with(det: AnoMem, X: Any, heads: bool | None = None, **weights: Any) -> np.ndarray:
    """``det.anomaly_score(X)`` with other stage-2 ``weights`` (see the module docstring;
    the others as fitted), through the public API. ``heads`` is no weight but a reading:
    True reads per-scale scores from the heads (Eq. 10), False from the memories (Eq. 9),
    None as fitted; the other reading moves each scale's weight between ``memory.s``
    and ``heads.s`` (the score is linear: a reading is a choice of weights)."""
    w = _given(weights)
    if heads is None:
        return det.anomaly_score(X, weights=w or None)
    flat = det.fusion_weights(w) if w else det.weights_
    frm, to = ("memory", "heads") if heads else ("heads", "memory")
    for s in range(det.scorer_.num_scales):
        flat[f"{to}.{s}"], flat[f"{frm}.{s}"] = flat[f"{to}.{s}"] + flat[f"{frm}.{s}"], 0.0
    return det.anomaly_score(X, weights=flat)


def maps_with(det: AnoMem, X: Any, heads: bool | None = None, **weights: Any) -> AnomalyMaps:
    """``det.anomaly_maps(X)`` (scores and heat-maps) with other stage-2 ``weights``, as
    :func:`score_with` (the heads' or the memories' reading changes the scores only)."""
    maps = det.anomaly_maps(X, weights=_given(weights) or None)
    return maps if heads is None else maps._replace(scores=score_with(det, X, heads, **weights))
