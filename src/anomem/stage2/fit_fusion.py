"""Fit the fusion of the image score per dataset, without labels.

The image score is w_global · (memory, feature bank and pixel bank, as merged by
:meth:`anomem.stage2.scorer.Scorer.image_score`) + w_feature · feature patches + w_pixel ·
pixel patches (:meth:`anomem.stage2.scorer.Scorer.fuse`). Which evidence matters depends on
the data: semantic anomalies (another object) move the global signals, small local
defects on a photograph move only a few patches. So the weights are chosen at fit time
on the held-out normals (never seen by stage 1, the banks or the heads) against
pseudo-anomalies of two families made from those same normals (:mod:`anomem.model.pseudo`):

* ``defects``: local defects (cut-paste, scars, noise patches);
* ``shifts``: the distribution shifts these normals are not invariant to (rotations,
  flips; :func:`anomem.stage2.fit.usable_shifts`), a stand-in for semantic anomalies.

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
from anomem.errors import ConfigError
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.metrics import image_auroc
from anomem.model.pseudo import make_pseudo_anomalies
from anomem.stage2.fit import ScoreBank, bank_scores, usable_shifts

SIGNALS = ("global", "feature", "pixel")


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


def check_fusion(weights: object) -> torch.Tensor:
    """Fusion weights as a (3,) tensor: three finite numbers >= 0 summing to 1."""
    try:
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"fusion must be 3 numbers (global, feature patches, pixel patches), got {weights!r}") from None
    if w.numel() != 3 or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or abs(float(w.sum()) - 1) > 1e-6:
        raise ConfigError(f"fusion must be 3 numbers >= 0 summing to 1 (global, feature patches, pixel patches), "
                          f"got {w.tolist()}")
    return w


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
    """(N, 3) global image score and standardised patch scores of ``images``, with the
    fusion set to the global score alone (as it is before :func:`fit_fusion`)."""
    rows = []
    for ev in model.evidence_batches(images, 128, patches=True):
        glob = model.merged_score(ev)
        rows.append(torch.cat([glob[:, None], ev.patch_scores], 1))
    return torch.cat(rows).double().cpu().numpy()


def fit_fusion(model: AnoMemModel, cfg: AnoMemConfig, held_out: torch.Tensor, bank: ScoreBank | None) -> FusionFit | None:
    """Choose and set ``model.scorer.fusion`` (see the module docstring). Returns what was
    chosen, or None (weights left at the global score alone) when the fit is off, no
    patch bank is ready, or fewer than ``patches.min_validation`` normals are held out."""
    scorer = model.scorer
    ready = (True, *(b.ready for b in scorer.patches.values()))
    n = int(held_out.shape[0])
    if not cfg.patches.fit_fusion or not any(ready[1:]) or bank is None or bank.patches is None \
            or n < cfg.patches.min_validation:
        return None
    scorer.fusion.copy_(torch.tensor([1.0, 0.0, 0.0]))
    normal = np.concatenate([bank_scores(model, bank)[:, None], bank.patches.double().cpu().numpy()], 1)
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
    scorer.fusion.copy_(torch.tensor(best, dtype=scorer.fusion.dtype))
    fit = FusionFit(best, tuple(families), table, n)
    if masks is not None:
        map_table = fit_map_fusion(model, ready, x, families["defects"], masks)
        best_map = max(map_table, key=map_table.get)
        scorer.map_fusion.copy_(torch.tensor(best_map, dtype=scorer.map_fusion.dtype))
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
    for ev in model.evidence_batches(images, 64, patches=True):
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


__all__ = ["FusionFit", "SHIFT_SLACK", "SIGNALS", "candidates", "check_fusion", "choose", "fit_fusion", "signal_scores"]
