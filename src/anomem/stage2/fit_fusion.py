"""Fit the fusion of the image score per dataset, without labels.

The image score is w_image · (global score, feature patches, pixel patches), where the
global score is the memory's (or the heads'), the feature bank's and the pixel bank's,
merged by steps 1-2 of :mod:`anomem.stage2.fusion`; these are the ``image`` weights
(and ``map`` for the heat-map) of :class:`~anomem.stage2.fusion.FusionWeights`. Which evidence matters depends on
the data: semantic anomalies (another object) move the global signals, small local
defects on a photograph move only a few patches. So the weights are chosen at fit time
on the held-out normals (never seen by stage 1, the banks or the heads) against
pseudo-anomalies of two families made from those same normals (:mod:`anomem.model.pseudo`):

* ``defects``: local defects (cut-paste, scars, noise patches);
* ``shifts``: the distribution shifts these normals are not invariant to (rotations,
  flips; :func:`anomem.splits.usable_shifts`), a stand-in for semantic anomalies.

Each candidate on a grid of the simplex (step 1/4, every single signal included) is
scored by its validation AUROC in each family. The shifts family comes first: a
candidate may make at most ``SHIFT_SLACK`` times the errors (1 - AUROC) of the best
candidate on it, because shifts are an easy stand-in for semantic anomalies (AUROC
near 1) and a small loss there was a large loss on real ones (Fashion-MNIST, see
docs/method.md, Decision 10). Among the candidates left, the best mean over families
wins; ties go to the larger global weight. The best single signal on the shifts is
always left, so on that family the fused score is never worse than the best single
signal, and among those left it is the best on average.

The heat-map mixes the same three kinds of evidence as maps (the memory's deviation
map, the feature-patch map, the pixel-patch map); its weights are chosen the same way,
by the pixel AUROC of the pseudo-defects' masks against every pixel of the held-out
normals and the defects' untouched pixels.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch

from anomem.config import AnoMemConfig
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.metrics import image_auroc
from anomem.model.pseudo import make_pseudo_anomalies
from anomem.splits import usable_shifts
from anomem.stage2.fit import ScoreBank, cached_parts
from anomem.stage2.fusion import IMAGE_SIGNALS, image_components


class FusionFit(NamedTuple):
    """What :func:`fit_fusion` chose and why.

    Attributes:
        weights: (3,) the chosen (global, feature patches, pixel patches) weights.
        families: the pseudo-anomaly families validated on.
        table: candidate weights -> AUROC per family, every candidate tried.
        normals: how many held-out normals scored.
    """

    weights: tuple[float, ...]
    families: tuple[str, ...]
    table: dict[tuple[float, ...], tuple[float, ...]]
    normals: int
    map_weights: tuple[float, ...] = (1.0, 0.0, 0.0)
    map_table: dict[tuple[float, ...], float] | None = None


def candidates(ready: tuple[bool, ...], step: int = 4) -> list[tuple[float, ...]]:
    """Weights on the simplex grid of ``1/step`` for the ready signals (others 0),
    largest global weight first."""
    out = []
    for combo in itertools.product(range(step + 1), repeat=len(ready)):
        if sum(combo) == step and all(r or c == 0 for r, c in zip(ready, combo)):
            out.append(tuple(c / step for c in combo))
    return sorted(out, key=lambda w: (-w[0], -w[1]))


@torch.inference_mode()
def signal_scores(model: AnoMemModel, images: torch.Tensor) -> np.ndarray:
    """(N, 3) the three scores the ``image`` weights weigh, of ``images``: the global
    score and the standardised patch scores (:func:`~anomem.stage2.fusion.image_components`)."""
    w, rows = model.scorer.weights.get(), []
    for ev in model.evidence_batches(images, 128, every=True):
        rows.append(image_components(model.scorer.parts(ev, model.use_heads), w))
    return torch.cat(rows).double().cpu().numpy()


def fit_fusion(model: AnoMemModel, cfg: AnoMemConfig, held_out: torch.Tensor, bank: ScoreBank | None) -> FusionFit | None:
    """Choose and set the ``image`` and ``map`` weights (see the module docstring). Returns what was
    chosen, or None (weights left at the global score alone) when the fit is off, no
    patch bank is ready, or fewer than ``patches.min_validation`` normals are held out."""
    scorer = model.scorer
    ready = (True, *(b.ready for b in scorer.patches.values()))
    n = int(held_out.shape[0])
    if not cfg.patches.fit_fusion or not any(ready[1:]) or bank is None or n < cfg.patches.min_validation:
        return None
    scorer.weights.set(image=[1.0, 0.0, 0.0], map=[1.0, 0.0, 0.0])
    with torch.inference_mode():
        normal = image_components(cached_parts(model, bank, every=True), scorer.weights.get())
    if normal is None:
        return None
    normal = normal.double().cpu().numpy()
    x = to_float(held_out)
    gen = torch.Generator().manual_seed(cfg.train.seed + 65537)
    families, masks = {}, None
    if cfg.pseudo.defects:
        made = make_pseudo_anomalies(x, 2 * n, (), cfg.pseudo.defects, 1.0, cfg.pseudo.defect_size, gen)
        families["defects"], masks = made.images, made.masks[:, 0]
    shifts = cfg.pseudo.shifts
    if x.shape[-1] != x.shape[-2]:
        shifts = tuple(k for k in shifts if k not in ("rot90", "rot270"))
    shifts = usable_shifts(x, shifts, cfg)
    if shifts:
        families["shifts"] = make_pseudo_anomalies(x, 2 * n, shifts, (), 0.0, cfg.pseudo.defect_size, gen).images
    if not families:
        return None
    fam_scores = {name: signal_scores(model, imgs) for name, imgs in families.items()}
    table = {}
    for w in candidates(ready):
        wv = np.asarray(w)
        table[w] = tuple(
            image_auroc(np.r_[np.zeros(len(normal)), np.ones(len(a))], np.r_[normal @ wv, a @ wv]) for a in fam_scores.values()
        )
    best = choose(table, tuple(families))
    scorer.weights.set(image=best)
    fit = FusionFit(best, tuple(families), table, n)
    if masks is not None:
        map_table = fit_map_fusion(model, ready, x, families["defects"], masks)
        best_map = max(map_table, key=map_table.get)
        scorer.weights.set(map=best_map)
        fit = fit._replace(map_weights=best_map, map_table=map_table)
    return fit


SHIFT_SLACK = 1.1  # a fused score may make at most this many times the best candidate's errors on shifts


def choose(table: dict[tuple[float, ...], tuple[float, ...]], families: tuple[str, ...]) -> tuple[float, ...]:
    """The candidate of ``table`` (weights -> AUROC per family) the module docstring names."""
    left = list(table)
    if "shifts" in families and len(families) > 1:
        j = families.index("shifts")
        least = min(1.0 - v[j] for v in table.values())
        left = [w for w in table if 1.0 - table[w][j] <= SHIFT_SLACK * least + 1e-9]
    return max(left, key=lambda w: np.mean(table[w]))  # max keeps the first of equals: larger global weight


MAP_IMAGES = 96  # held-out normals and pseudo-defects whose maps are compared, each at most


@torch.inference_mode()
def map_parts(model: AnoMemModel, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) memory, feature-patch and pixel-patch maps of ``images``."""
    out = []
    for ev in model.evidence_batches(images, 64, every=True):
        out.append(model.heatmap_parts(ev)[1])
    return torch.cat(out)


def fit_map_fusion(model: AnoMemModel, ready: tuple[bool, ...], normals: torch.Tensor, defects: torch.Tensor,
                   masks: torch.Tensor) -> dict[tuple[float, ...], float]:
    """Pixel AUROC of every candidate heat-map weighting on the pseudo-defects' masks."""
    normals, defects, masks = normals[:MAP_IMAGES], defects[:MAP_IMAGES], masks[:MAP_IMAGES]
    parts = torch.cat([map_parts(model, normals), map_parts(model, defects)])  # (N, 3, H, W)
    truth = torch.cat([torch.zeros(normals.shape[0], *masks.shape[1:], dtype=torch.bool), masks.cpu()])
    flat = parts.permute(1, 0, 2, 3).reshape(3, -1).double().cpu().numpy()  # (3, N·H·W)
    labels = truth.flatten().numpy()
    return {w: image_auroc(labels, np.asarray(w) @ flat) for w in candidates(ready)}


__all__ = ["FusionFit", "IMAGE_SIGNALS", "SHIFT_SLACK", "candidates", "choose", "fit_fusion", "signal_scores"]
