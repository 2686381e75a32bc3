"""Fit the ``image`` and ``map`` splits per dataset, without labels.

The image score is the global score (the memory's or the heads', the feature bank's and
the pixel bank's terms of :func:`anomem.stage2.weights.compose`) and the local signals
(the patch banks), mixed by the ``image`` split; the heat-map the same by ``map``.
Which evidence matters depends on the data: semantic anomalies (another object) move the
global signals, small local defects on a photograph move only a few patches. So the weights are chosen at fit time
on the held-out normals (never seen by stage 1, the banks or the heads) against
pseudo-anomalies of two families made from those same normals (:mod:`anomem.model.pseudo`):

* ``defects``: local defects (cut-paste, scars, noise patches, ...: ``pseudo.fusion_defects``,
  or ``pseudo.defects`` when that is empty);
* ``shifts``: the distribution shifts these normals are not invariant to (rotations,
  flips; :func:`anomem.splits.usable_shifts`), a stand-in for semantic anomalies.

Each candidate on a grid of the simplex (step 1/4, every single signal included) is
scored by its validation AUROC in each family. The shifts family comes first: a
candidate may make at most ``SHIFT_SLACK`` (1) times the errors (1 - AUROC) of the best
candidate on it, i.e. only the candidates best on the shifts stay, because shifts are an
easy stand-in for semantic anomalies (AUROC near 1) and any slack towards the defects
lost AUROC on semantic anomalies on a validation split of Fashion-MNIST's training data
(docs/decisions.md, Decision 13, which replaced Decision 10's 1.1). Among the candidates
left, the best mean over families wins; ties go to the larger global weight. The best single signal on the shifts is
always left, so on that family the fused score is never worse than the best single
signal, and among those left it is the best on average.

Once stage 1 is taught local evidence on the defect kinds the fusion validates on (the
local recipe, :func:`learned_locally`), its learned parts score those kinds near 1 and the
table no longer says which split serves kinds it never saw; the shifts, where usable, then
pick the split by what tells a turned texture from an upright one, which is not local
evidence either. So no family ranks the image split: it is even over the ready signals
(:func:`unranked`; docs/decisions.md, Decision 15), in units of each signal's spread on the
held-out normals (:func:`spreads`; Decision 17): the global score's z-scores are standardised
on the training normals, which stage 1 and the banks have seen, so on fresh normals its
spread can be ten times the patch banks' and an even split of raw z-scores would be the
global score alone. The map split is still fitted on the defects' masks, and the table is
still computed and kept for the user to read.

The heat-map mixes the same three kinds of evidence as maps (the memory's deviation
map, the feature-patch map, the pixel-patch map); its weights are chosen the same way,
by the pixel AUROC of the pseudo-defects' masks against every pixel of the held-out
normals and the defects' untouched pixels.
"""

from __future__ import annotations

import itertools
import json
from typing import NamedTuple

import numpy as np
import torch

from anomem.config import AnoMemConfig
from anomem.fit.stage2 import ScoreBank, cached_reading, compose_weights
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.metrics import image_auroc
from anomem.model.pseudo import make_pseudo_anomalies
from anomem.splits import usable_shifts
from anomem.stage2.scorer import fuse
from anomem.stage2.standard import EPS
from anomem.stage2.weights import LOCAL, global_only


class FusionFit(NamedTuple):
    """What :func:`fit_fusion` chose and why.

    Attributes:
        weights: (3,) the chosen (global, feature patches, pixel patches) weights.
        families: the pseudo-anomaly families validated on.
        table: candidate weights -> AUROC per family, every candidate tried.
        normals: how many held-out normals scored.
        ranked: the families that ranked the image split (None: all of them; empty: none
            could, and the split is even, :func:`unranked`).
        spreads: each signal's standard deviation on the held-out normals (the units of an
            even split), or None (older files; a ranked split does not read them).
    """

    weights: tuple[float, ...]
    families: tuple[str, ...]
    table: dict[tuple[float, ...], tuple[float, ...]]
    normals: int
    map_weights: tuple[float, ...] = tuple(global_only())
    map_table: dict[tuple[float, ...], float] | None = None
    ranked: tuple[str, ...] | None = None
    spreads: tuple[float, ...] | None = None

    def to_json(self) -> str:
        """As JSON (saved in the detector file: a loaded detector holds the same record)."""
        table = lambda t: None if t is None else [[list(w), v] for w, v in t.items()]  # noqa: E731
        return json.dumps({"weights": self.weights, "families": self.families, "table": table(self.table),
                           "normals": self.normals, "map_weights": self.map_weights, "map_table": table(self.map_table),
                           "ranked": self.ranked, "spreads": self.spreads})

    @classmethod
    def from_json(cls, text: str) -> FusionFit:
        d = json.loads(text)
        table = lambda rows, f: None if rows is None else {tuple(w): f(v) for w, v in rows}  # noqa: E731
        return cls(tuple(d["weights"]), tuple(d["families"]), table(d["table"], tuple), int(d["normals"]),
                   tuple(d["map_weights"]), table(d["map_table"], float),
                   None if d.get("ranked") is None else tuple(d["ranked"]),
                   None if d.get("spreads") is None else tuple(d["spreads"]))


def candidates(ready: tuple[bool, ...], step: int = 4) -> list[tuple[float, ...]]:
    """Weights on the simplex grid of ``1/step`` for the ready signals (others 0),
    largest global weight first."""
    out = []
    for combo in itertools.product(range(step + 1), repeat=len(ready)):
        if sum(combo) == step and all(r or c == 0 for r, c in zip(ready, combo)):
            out.append(tuple(c / step for c in combo))
    return sorted(out, key=lambda w: (-w[0], -w[1]))


Parts = dict[str, torch.Tensor]


@torch.inference_mode()
def image_parts(model: AnoMemModel, images: torch.Tensor) -> Parts:
    """Every readable image part (N,) of ``images``, by name."""
    rows = [model.scorer.parts(r) for r in model.readings(images, 128, need=model.need(every=True))]
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def aurocs(model: AnoMemModel, cfg: AnoMemConfig, normal: Parts, anomalous: Parts, key: str,
           pixels: np.ndarray | None = None) -> dict[tuple[float, ...], float]:
    """AUROC of every candidate ``key`` (``image`` or ``map``) split: the fused score of
    ``normal`` parts (label 0) against ``anomalous`` parts (label 1); with ``pixels`` the
    parts are maps and ``pixels`` their per-pixel labels."""
    ready = (True, *(model.scorer.local(p).ready for p in LOCAL))
    normal, anomalous = ({k: v.double() for k, v in d.items()} for d in (normal, anomalous))
    out = {}
    for w in candidates(ready):
        flat = compose_weights(model, cfg, **{key: list(w)})
        a, b = fuse(normal, flat).cpu().numpy(), fuse(anomalous, flat).cpu().numpy()
        labels = np.r_[np.zeros(len(a)), np.ones(len(b))] if pixels is None else pixels
        out[w] = image_auroc(labels, np.r_[a.ravel(), b.ravel()])
    return out


def fit_fusion(model: AnoMemModel, cfg: AnoMemConfig, held_out: torch.Tensor, bank: ScoreBank | None) -> FusionFit | None:
    """Choose the ``image`` and ``map`` split and compose the weights with it (see the
    module docstring). Returns what was chosen, or None (the global score alone) when the
    fit is off, no patch bank is ready, or fewer than ``patches.min_validation`` normals
    are held out."""
    scorer = model.scorer
    n = int(held_out.shape[0])
    if not cfg.patches.fit_fusion or not any(scorer.local(p).ready for p in LOCAL) or bank is None \
            or n < cfg.patches.min_validation:
        return None
    with torch.inference_mode():
        normal = scorer.parts(cached_reading(model, bank))
    x = to_float(held_out)
    gen = torch.Generator().manual_seed(cfg.train.seed + 65537)
    families, masks = {}, None
    defects = cfg.pseudo.fusion_defects or cfg.pseudo.defects
    if defects:
        made = make_pseudo_anomalies(x, 2 * n, (), defects, 1.0, cfg.pseudo.defect_size, gen)
        families["defects"], masks = made.images, made.masks[:, 0]
    shifts = cfg.pseudo.shifts
    if x.shape[-1] != x.shape[-2]:
        shifts = tuple(k for k in shifts if k not in ("rot90", "rot270"))
    shifts = usable_shifts(x, shifts, cfg)
    if shifts:
        families["shifts"] = make_pseudo_anomalies(x, 2 * n, shifts, (), 0.0, cfg.pseudo.defect_size, gen).images
    if not families:
        return None
    per_family = [aurocs(model, cfg, normal, image_parts(model, imgs), "image") for imgs in families.values()]
    table = {w: tuple(f[w] for f in per_family) for w in per_family[0]}
    ranked = () if learned_locally(cfg, defects) else tuple(families)
    units = spreads(model, cfg, normal)
    best = choose(table, tuple(families), ranked, units)
    fit = FusionFit(best, tuple(families), table, n, ranked=ranked, spreads=units)
    if masks is not None:
        map_table = fit_map_fusion(model, cfg, x, families["defects"], masks)
        fit = fit._replace(map_weights=max(map_table, key=map_table.get), map_table=map_table)
    scorer.weights.set(compose_weights(model, cfg, image=list(fit.weights), map=list(fit.map_weights)))
    return fit


SHIFT_SLACK = 1.0  # a fused score may make at most this many times the best candidate's errors on shifts


def shortlist(table: dict[tuple[float, ...], tuple[float, ...]], families: tuple[str, ...]) -> list[tuple[float, ...]]:
    """The candidates of ``table`` (weights -> AUROC per family) the shifts family keeps:
    at most ``SHIFT_SLACK`` times the best candidate's shift errors (all of them without shifts)."""
    if "shifts" not in families or len(families) < 2:
        return list(table)
    j = families.index("shifts")
    least = min(1.0 - v[j] for v in table.values())
    return [w for w in table if 1.0 - table[w][j] <= SHIFT_SLACK * least + 1e-9]


def learned_locally(cfg: AnoMemConfig, kinds: tuple[str, ...]) -> bool:
    """Whether stage 1 was taught local evidence (local negatives and the local hinge,
    ``pseudo.local`` and ``loss.local_weight``) on any of these defect ``kinds``: then its
    learned parts score those kinds near 1 and a table validated on them cannot rank the
    image split (docs/decisions.md, Decision 15)."""
    return cfg.pseudo.local > 0 and cfg.loss.local_weight > 0 and bool(set(kinds) & set(cfg.pseudo.defects))


def spreads(model: AnoMemModel, cfg: AnoMemConfig, normal: Parts) -> tuple[float, ...]:
    """The population standard deviation of each term of the image split (the global score,
    each local signal) over the held-out normals' parts ``normal`` (at least ``EPS``)."""
    out = []
    for i in range(1 + len(LOCAL)):
        flat = compose_weights(model, cfg, image=[float(i == j) for j in range(1 + len(LOCAL))])
        out.append(max(float(fuse(normal, flat).double().std(unbiased=False)), EPS))
    return tuple(out)


def unranked(table: dict[tuple[float, ...], tuple[float, ...]],
             units: tuple[float, ...] | None = None) -> tuple[float, ...]:
    """The even split over the signals the table's candidates use (no family ranks them):
    with ``units`` (:func:`spreads`) even in those units, each weight ∝ 1 / its spread."""
    used = [any(w[i] > 0 for w in table) for i in range(len(next(iter(table))))]
    inv = [1.0 / (units[i] if units else 1.0) if u else 0.0 for i, u in enumerate(used)]
    return tuple(v / sum(inv) for v in inv)


def choose(table: dict[tuple[float, ...], tuple[float, ...]], families: tuple[str, ...],
           ranked: tuple[str, ...] | None = None, units: tuple[float, ...] | None = None) -> tuple[float, ...]:
    """The candidate of ``table`` (weights -> AUROC per family) the module docstring names,
    judged on the ``ranked`` families only (default all; none: :func:`unranked` in ``units``)."""
    ranked = families if ranked is None else ranked
    if not ranked:
        return unranked(table, units)
    cols = [families.index(f) for f in ranked]
    table = {w: tuple(v[i] for i in cols) for w, v in table.items()}
    left = shortlist(table, ranked)
    return max(left, key=lambda w: np.mean(table[w]))  # max keeps the first of equals: larger global weight


MAP_IMAGES = 96  # held-out normals and pseudo-defects whose maps are compared, each at most


@torch.inference_mode()
def map_parts(model: AnoMemModel, images: torch.Tensor) -> Parts:
    """Every map part (N, H, W) of ``images``, by name."""
    rows = [model.scorer.map_parts(r, model.image_size, model.map_sigma)[1]
            for r in model.readings(images, 64, need=model.need(every=True))]
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def fit_map_fusion(model: AnoMemModel, cfg: AnoMemConfig, normals: torch.Tensor, defects: torch.Tensor,
                   masks: torch.Tensor) -> dict[tuple[float, ...], float]:
    """Pixel AUROC of every candidate heat-map split on the pseudo-defects' masks, against
    every pixel of the held-out normals and the defects' untouched pixels."""
    normals, defects, masks = normals[:MAP_IMAGES], defects[:MAP_IMAGES], masks[:MAP_IMAGES]
    truth = torch.cat([torch.zeros(normals.shape[0], *masks.shape[1:], dtype=torch.bool), masks.cpu()])
    return aurocs(model, cfg, map_parts(model, normals), map_parts(model, defects), "map", truth.flatten().numpy())


__all__ = ["FusionFit", "SHIFT_SLACK", "aurocs", "candidates", "choose", "fit_fusion", "image_parts", "learned_locally",
           "shortlist", "spreads", "unranked"]
