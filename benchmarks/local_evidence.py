"""Which parts of a fitted detector see local defects it never saw, on a validation split.

The learned part of AnoMem (encoder + memory, read as the memory's deviations and the
encoder's patch descriptors) should carry local evidence on its own. This script fits
AnoMem on crops of a photograph's top rows with a stage-1 / stage-2 variant, then scores
a band of rows below them that no training crop touches (the photo benchmark's test rows
further down are never read), normal and with one local defect drawn in, and reports the
validation AUROC of every part separately:

* ``fused``: the fitted score as the library returns it; ``equal_split``: the same parts
  with the image split fixed at (1/3, 1/3, 1/3) instead of fitted; ``learned``: the learned
  part alone, (global score without the raw-pixel term, feature patches) at (1/2, 1/2);
* ``memory``: the memory's Eq. 9 scores (z-scored per scale, averaged over scales);
* ``memory_peak``: the top 1 % of the memory's standardised deviation map, averaged over
  scales (the memory read locally);
* ``bank``: the pooled-feature bank; ``feature_patches`` / ``pixel_patches``: the patch banks;
* ``map_memory`` / ``map_feature`` / ``map_fused``: pixel AUROC of those heat-maps (and of the
  library's fused one) on the defects' masks, normal images' pixels included;
* ``<map>_contrast`` / ``<map>_zpeak`` (memory, fused, feature_patches, pixel_patches): the
  image AUROC of a map read against the image's own map (its top 1 % less its median, and
  that over its standard deviation): a region unlike the rest of the same image.

Each row also stores the fit's candidate table and every validation image's split terms
(``scores``), so that ``--rules`` replays image-split rules (:data:`RULES`) offline.
``--split-kinds`` lets stage 1 draw only the first kind left after K and the fusion fit
validate on the others (no kind the fusion validates on was learned by stage 1).

Validation defects are of two families, none of them ever drawn in training by the fit
it validates:

* ``unseen-pseudo``: each pseudo-defect kind K of ``photo_validation.KINDS`` (cut-paste,
  scar, noise) in turn, with the fit's ``pseudo.defects`` set to the two others and any
  ``--add-kinds``, less K's near copies (:data:`NEAR`), so stage 1 and the fusion fit never
  see K; ``--fusion-kinds`` sets the kinds the fusion fit alone validates against;
* ``structure``: alterations that keep the photograph's own pixel values and change only
  the local structure (:func:`structure_defects`: a disc of the same band's texture
  shuffled in 4-px blocks, or resampled 1.6x larger), drawn only here; also read apart as
  ``shuffle`` and ``zoom`` (the library's ``smooth`` kind, a defocused blob, is akin to the
  zoom, which also lowers the local frequencies; nothing it draws resembles the shuffle).

    OMP_NUM_THREADS=2 python benchmarks/local_evidence.py --categories grass gravel \\
        --set pseudo__local=0.5 --out docs/results/local-evidence/local-0.5.json
    python benchmarks/local_evidence.py --table docs/results/local-evidence/*.json
    python benchmarks/local_evidence.py --rules docs/results/local-evidence/size-128-scores/*.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from anomem import AnoMem
from anomem.bench.photos import uint8_images
from anomem.fit.fusion import choose, image_parts, map_parts, shortlist
from anomem.metrics import image_auroc
from anomem.model.pseudo import make_pseudo_anomalies
from anomem.stage2.standard import EPS
from anomem.stage2.weights import LOCAL

# isort: split
# sibling module in benchmarks/ (a script's own directory is first on sys.path)
from photo_validation import KINDS, crops, parser


def _disc_masks(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, 1, size, size) bool discs, radius 0.08-0.16 x side, centre away from the border."""
    r = rng.uniform(0.08, 0.16, n) * size
    cy, cx = (rng.uniform(0.25, 0.75, (2, n)) * size)
    yy, xx = np.mgrid[:size, :size]
    m = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 <= r[:, None, None] ** 2
    return torch.from_numpy(m)[:, None]


def structure_defects(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Half of ``x`` gets a disc whose 4-px blocks are shuffled, half a disc of the image
    enlarged 1.6x about its centre: the pixel values stay the photograph's, the structure
    does not. Shape: (N, C, H, W) float -> images, masks (N, 1, H, W) bool."""
    n, c, h, w = x.shape
    masks = _disc_masks(n, h, rng)
    out = x.clone()
    b = 4
    for i in range(n):
        if i % 2 == 0:  # shuffled blocks
            blocks = x[i].unfold(1, b, b).unfold(2, b, b)  # (C, h/b, w/b, b, b)
            gh, gw = blocks.shape[1:3]
            flat = blocks.reshape(c, gh * gw, b, b)[:, torch.from_numpy(rng.permutation(gh * gw))]
            moved = flat.reshape(c, gh, gw, b, b).permute(0, 1, 3, 2, 4).reshape(c, gh * b, gw * b)
            out[i, :, : gh * b, : gw * b] = torch.where(masks[i, :, : gh * b, : gw * b], moved, x[i, :, : gh * b, : gw * b])
        else:  # enlarged about the disc's centre
            ys, xs = masks[i, 0].nonzero(as_tuple=True)
            cy, cx = ys.float().mean() / (h - 1) * 2 - 1, xs.float().mean() / (w - 1) * 2 - 1
            theta = torch.tensor([[1 / 1.6, 0, cx * (1 - 1 / 1.6)], [0, 1 / 1.6, cy * (1 - 1 / 1.6)]])[None]
            grid = F.affine_grid(theta, (1, c, h, w), align_corners=False)
            zoom = F.grid_sample(x[i : i + 1], grid, mode="bilinear", align_corners=False)[0]
            out[i] = torch.where(masks[i], zoom, x[i])
    return out, masks


def _aurocs(det: AnoMem, normal: torch.Tensor, anomalous: torch.Tensor, masks: torch.Tensor,
            scores: dict | None = None) -> dict:
    """Every part's AUROC (see the module docstring); with ``scores`` (a dict) it also
    receives each image's split terms (``global``, then each local signal's z-score), so
    that any image split ``w`` can be scored again offline as ``Σ w_i · term_i``."""
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    x = torch.cat([normal, anomalous])
    out = {"fused": image_auroc(y, det.anomaly_score(x))}
    if det.fusion_ is not None:  # fixed splits instead of the fitted one
        out["equal_split"] = image_auroc(y, det.anomaly_score(x, weights={"image": [1 / 3, 1 / 3, 1 / 3]}))
        out["learned"] = image_auroc(y, det.anomaly_score(x, weights={"image": [0.5, 0.5, 0.0], "pixel_global": 0.0}))
    model = det.model_
    parts = image_parts(model, x)
    if scores is not None and det.fusion_ is not None:
        scores["label"] = y.astype(int).tolist()
        scores.update(split_terms(det, x, parts))
    maps = map_parts(model, x)
    groups = {"memory": [k for k in parts if k.startswith("memory.")], "bank": [k for k in parts if k.startswith("bank.")],
              "feature_patches": ["feature_patches"], "pixel_patches": ["pixel_patches"]}
    for name, keys in groups.items():
        if all(k in parts for k in keys) and keys:
            out[name] = image_auroc(y, torch.stack([parts[k] for k in keys]).mean(0).numpy())
    mem = torch.stack([maps[k] for k in maps if k.startswith("map.memory.")]).mean(0)  # (N, H, W)
    flat = mem.flatten(1)
    top = max(1, int(round(0.01 * flat.shape[1])))
    out["memory_peak"] = image_auroc(y, flat.topk(top, dim=1).values.mean(1).numpy())
    truth = torch.cat([torch.zeros(len(normal), *masks.shape[1:], dtype=torch.bool), masks])[:, 0].flatten().numpy()
    out["map_memory"] = image_auroc(truth, mem.flatten().numpy())
    fused = det.anomaly_maps(x).fused
    out["map_fused"] = image_auroc(truth, fused.ravel())
    within = {"memory": mem, "fused": torch.as_tensor(fused).reshape(mem.shape),
              **{k.split(".", 1)[1]: maps[k] for k in maps if k.split(".", 1)[1] in LOCAL}}
    for name, m in within.items():  # the map read against the image's own map: a region unlike the rest
        out[f"{name}_contrast"], out[f"{name}_zpeak"] = _within_image(y, m.double())
    if "map.feature_patches" in maps:
        out["map_feature"] = image_auroc(truth, maps["map.feature_patches"].flatten().numpy())
    return out


def split_terms(det: AnoMem, x: torch.Tensor, parts: dict | None = None) -> dict:
    """The image split's terms of images ``x``: the global score and each local signal's
    z-score, rounded (lists), so that any split or rule can be replayed offline."""
    parts = image_parts(det.model_, x) if parts is None else parts
    out = {"global": np.round(det.anomaly_score(x, weights={"image": [1.0, 0.0, 0.0]}), 6).tolist()}
    out.update({p: np.round(parts[p].numpy(), 6).tolist() for p in LOCAL if p in parts})
    return out


def _within_image(y: np.ndarray, maps: torch.Tensor) -> tuple[float, float]:
    """Image AUROC of a map's peak (top 1 %) less its own median, and of that divided by
    the map's own spread (std), each image read against itself: (N, H, W) -> two AUROCs."""
    flat = maps.flatten(1)
    peak = flat.topk(max(1, int(round(0.01 * flat.shape[1]))), dim=1).values.mean(1)
    lift = peak - flat.median(1).values
    return image_auroc(y, lift.numpy()), image_auroc(y, (lift / (flat.std(1) + 1e-9)).numpy())


#: a validation kind -> the library's other pseudo-defect kinds that are near copies of it, left
#: out with it: ``graft`` blends in a region of another image of the category, as cut-paste does
NEAR = {"cutpaste": ("graft",)}


def kinds_for(kind: str, add: list[str], fusion: list[str], split: bool = False) -> dict:
    """The fit's ``pseudo.defects`` and ``pseudo.fusion_defects`` with ``kind`` and its near
    copies left out of both; ``split``: stage 1 draws only the first kind left and the
    fusion fit validates on the others, so that no kind it validates on was learned."""
    out = set((kind, *NEAR.get(kind, ())))
    keep = lambda ks: tuple(k for k in ks if k not in out)  # noqa: E731
    kw = {"pseudo__defects": keep([*KINDS, *add])}
    if split:
        left = kw["pseudo__defects"]
        return {"pseudo__defects": left[:1], "pseudo__fusion_defects": left[1:]}
    if fusion:
        kw["pseudo__fusion_defects"] = keep(fusion)
    return kw


def run(category: str, kind: str, seed: int, size: int, n_train: int, n_val: int, extra: dict,
        add: list[str] = (), fusion: list[str] = (), split: bool = False, fit_val: int | None = None) -> dict:
    train, val, rng, *held = crops(category, kind, seed, size, n_train, 3 * n_val, fit_val)
    held = held[0] if held and held[0].shape[0] else None  # the fit's own validation normals (--fit-validation)
    normal = uint8_images(val[:n_val])
    made = make_pseudo_anomalies(val[n_val : 2 * n_val], n_val, (), (kind,), 1.0, (0.1, 0.25),
                                 torch.Generator().manual_seed(seed))
    struct, struct_masks = structure_defects(val[2 * n_val :], rng)
    kw = kinds_for(kind, list(add), list(fusion), split)
    t0 = time.perf_counter()
    det = AnoMem(progress=False, train__seed=seed, **kw, **extra).fit(train, validation=held)
    fit_s = time.perf_counter() - t0
    struct = uint8_images(struct)
    scores: dict = {}
    out = {"category": category, "kind": kind, "seed": seed, "size": size, "set": extra, "fit_validation": fit_val,
           "kinds": {k.split("__")[1]: list(v) for k, v in kw.items()}, "fit_s": round(fit_s, 1),
           "unseen": _aurocs(det, normal, uint8_images(made.images), made.masks, scores.setdefault("unseen", {})),
           "structure": _aurocs(det, normal, struct, struct_masks, scores.setdefault("structure", {})),
           "shuffle": _aurocs(det, normal, struct[0::2], struct_masks[0::2]),
           "zoom": _aurocs(det, normal, struct[1::2], struct_masks[1::2])}
    if det.fusion_ is not None:
        f = det.fusion_
        out["fit"] = {"weights": list(f.weights), "map_weights": list(f.map_weights), "families": list(f.families),
                      "normals": f.normals,
                      "table": [[list(w), list(v)] for w, v in f.table.items()]}
        if held is not None:  # the fit's own validation normals: rules that standardise on them replay too
            scores["fit_normals"] = split_terms(det, held)
        out["scores"] = scores  # the split terms of every validation image: rules replayed offline
    return out


def summary(rows: list[dict]) -> str:
    lines = []
    for fam in [f for f in FAMILIES if all(f in r for r in rows)]:
        keys = sorted({k for r in rows for k in r[fam]})
        lines.append(f"{fam:<9} " + " ".join(f"{k}:{np.mean([r[fam][k] for r in rows if k in r[fam]]):.3f}" for k in keys))
    return "\n".join(lines)


FAMILIES = ("unseen", "structure", "shuffle", "zoom")  # shuffle and zoom: the structure family's two halves
PARTS = ("fused", "equal_split", "learned", "memory", "memory_peak", "bank", "feature_patches", "pixel_patches", "map_fused", "map_memory",
         "map_feature")


def table(paths: list[Path]) -> str:
    """A markdown table: per result file and validation family, each part's mean AUROC over its cells."""
    lines = ["| variant | family | cells | " + " | ".join(PARTS) + " |", "|---" * (3 + len(PARTS)) + "|"]
    for path in paths:
        rows = json.loads(path.read_text())
        for fam in [f for f in FAMILIES if all(f in r for r in rows)]:
            cells = [f"{np.mean([r[fam][k] for r in rows]):.3f}" if all(k in r[fam] for r in rows) else "–" for k in PARTS]
            lines.append(f"| {path.stem} | {fam} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(base: Path, variant: Path, parts: tuple[str, str] = ("fused", "equal_split")) -> str:
    """Per family, the variant's part ``parts[1]`` less the base's ``parts[0]`` over the fits
    both files hold (same category, kind and seed): mean ± standard error, and the wins."""
    key = lambda r: (r["category"], r["kind"], r["seed"])  # noqa: E731
    a = {key(r): r for r in json.loads(base.read_text())}
    b = {key(r): r for r in json.loads(variant.read_text())}
    both = [k for k in a if k in b]
    lines = [f"{variant.stem} {parts[1]} - {base.stem} {parts[0]} ({len(both)} fits):"]
    for fam in FAMILIES:
        d = np.array([b[k][fam][parts[1]] - a[k][fam][parts[0]] for k in both])
        if len(d) > 1:
            lines.append(f"  {fam:<9} {d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}  (higher in {int((d > 0).sum())} of {len(d)})")
    return "\n".join(lines)


def in_units(row: dict, fam: str, merge: str = "mean") -> float:
    """The validation AUROC of ``fam`` under the even split in units of each term's spread on
    the fit's own validation normals (``scores.fit_normals``): what ``anomem.fit.fusion.unranked``
    gives with :func:`anomem.fit.fusion.spreads` (Decision 17), replayed from the stored terms;
    ``merge="max"``: the largest term instead of their sum, each standardised on those normals."""
    s = row["scores"][fam]
    z = held_out_units(s, row["scores"]["fit_normals"], [k for k in ("global", *LOCAL) if k in s])
    return image_auroc(np.asarray(s["label"]), z.max(0) if merge == "max" else z.sum(0))


def held_out_units(terms: dict, held: dict, keys: list[str]) -> np.ndarray:
    """Each term of ``keys`` standardised by its mean and spread on the fit's validation
    normals ``held`` (what ``anomem.fit.fusion.spreads`` measures): (len(keys), N)."""
    return np.stack([(np.asarray(terms[k]) - np.mean(held[k])) / max(float(np.std(held[k])), EPS) for k in keys])


def _pairs(paths: list[Path], base_normals: bool = False) -> tuple[dict, dict, list]:
    """Rows of pairs of files BASE VARIANT by (category, kind, seed): the bases', the
    variants' that kept their fit's validation normals (the bases' too with ``base_normals``),
    and the keys both hold."""
    key = lambda r: (r["category"], r["kind"], r["seed"])  # noqa: E731
    kept = lambda r: "fit_normals" in r.get("scores", {})  # noqa: E731
    a, b = {}, {}
    for base, variant in zip(paths[0::2], paths[1::2]):
        a.update({key(r): r for r in json.loads(base.read_text()) if kept(r) or not base_normals})
        b.update({key(r): r for r in json.loads(variant.read_text()) if kept(r)})
    return a, b, [k for k in b if k in a]


def _mean_se(d: np.ndarray) -> str:
    """``mean ± standard error (wins of n)`` of paired differences."""
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} ± {se:.3f} ({int((d > 0).sum())} of {len(d)})"


def units(paths: list[Path]) -> str:
    """``paths``: pairs BASE VARIANT. Per category and family, over the fits both files of a
    pair hold whose variant row kept its fit's validation normals' terms: the base's fitted
    score, the variant's even split (raw z-scores, as the rows were fitted), in held-out
    units and as the largest term in those units, its pixel patches alone, and the units
    split and the largest term less the base (mean ± standard error, wins); ``all``: every
    fit, ``categories``: the mean of the categories' means."""
    a, b, both = _pairs(paths)
    # per fit and family, each column once: base fitted, raw even, units, largest term, pixel patches
    cols = {(k, fam): np.array([a[k][fam]["fused"], b[k][fam]["equal_split"], in_units(b[k], fam),
                                in_units(b[k], fam, "max"), b[k][fam]["pixel_patches"]])
            for k in both for fam in ("unseen", "structure")}
    lines = [f"{paths[1].stem} even split in held-out units against {paths[0].stem} fitted ({len(both)} fits)",
             "| category | family | fits | base fitted | variant even (raw) | variant even (units) | variant max (units) "
             "| pixel patches | units - base | max - base |", "|---" * 10 + "|"]
    cats = sorted({k[0] for k in both})
    for cat in [*cats, "all"]:
        ks = [k for k in both if cat in ("all", k[0])]
        for fam in ("unseen", "structure"):
            v = np.stack([cols[k, fam] for k in ks])
            diff = [_mean_se(v[:, i] - v[:, 0]) for i in (2, 3)]
            lines.append(f"| {cat} | {fam} | {len(ks)} | " + " | ".join(f"{m:.3f}" for m in v.mean(0))
                         + f" | {diff[0]} | {diff[1]} |")
    for fam in ("unseen", "structure"):  # each category's mean first, then their mean
        v = np.stack([np.stack([cols[k, fam] for k in both if k[0] == c]).mean(0) for c in cats]).mean(0)
        lines.append(f"| categories | {fam} | {len(cats)} | " + " | ".join(f"{m:.3f}" for m in v)
                     + f" | {v[2] - v[0]:+.3f} | {v[3] - v[0]:+.3f} |")
    for fam in ("unseen", "structure"):  # the rules against each other, paired over every fit
        v = np.stack([cols[k, fam] for k in both])
        lines.append(f"{fam}: units - raw even {_mean_se(v[:, 2] - v[:, 1])}; max - units {_mean_se(v[:, 3] - v[:, 2])}")
    for c in cats:  # the learned part alone, and the global term's spread on the fit's validation normals
        ks = [k for k in both if k[0] == c]
        sd = [float(np.std(b[k]["scores"]["fit_normals"]["global"])) for k in ks]
        lines.append(f"{c}: learned part, base / variant: unseen {np.mean([a[k]['unseen']['learned'] for k in ks]):.3f}"
                     f" / {np.mean([b[k]['unseen']['learned'] for k in ks]):.3f}, structure "
                     f"{np.mean([a[k]['structure']['learned'] for k in ks]):.3f} / "
                     f"{np.mean([b[k]['structure']['learned'] for k in ks]):.3f}; global term's spread on the fit's "
                     f"validation normals {min(sd):.2f}-{max(sd):.2f}")
    return "\n".join(lines)


def both_in_units(paths: list[Path], parts: tuple[str, ...] = ("learned", "feature_patches", "memory")) -> str:
    """``paths``: pairs BASE VARIANT whose rows both kept their fit's validation normals. Per
    category and family: each side's even split in held-out units (:func:`in_units`, what the
    library scores today) and ``parts``; then the variant less the base paired over every fit."""
    a, b, both = _pairs(paths, base_normals=True)
    both = sorted(both)
    col = lambda r, fam: [in_units(r, fam), *(r[fam][p] for p in parts)]  # noqa: E731
    names = ["units", *parts]
    lines = [f"{paths[1].stem} against {paths[0].stem} ({len(both)} fits); base / variant",
             "| category | family | fits | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for cat in [*sorted({k[0] for k in both}), "all"]:
        ks = [k for k in both if cat in ("all", k[0])]
        for fam in ("unseen", "structure"):
            x, y = np.mean([col(a[k], fam) for k in ks], 0), np.mean([col(b[k], fam) for k in ks], 0)
            lines.append(f"| {cat} | {fam} | {len(ks)} | " + " | ".join(f"{u:.3f} / {v:.3f}" for u, v in zip(x, y)) + " |")
    for fam in ("unseen", "structure"):
        d = np.array([np.subtract(col(b[k], fam), col(a[k], fam)) for k in both])
        lines.append(f"{fam}: variant - base " + "; ".join(f"{n} {_mean_se(d[:, i])}" for i, n in enumerate(names)))
    fit_s = [(a[k]["fit_s"], b[k]["fit_s"]) for k in both]
    lines.append(f"fit seconds, base / variant (mean over the fits): {np.mean([u for u, _ in fit_s]):.0f} / "
                 f"{np.mean([v for _, v in fit_s]):.0f}")
    return "\n".join(lines)


def _se(auc: float, n_normal: int, n_anomalous: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUROC of ``n_normal`` against ``n_anomalous``."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = auc * (1 - auc) + (n_anomalous - 1) * (q1 - auc * auc) + (n_normal - 1) * (q2 - auc * auc)
    return float(np.sqrt(max(var, 0.0) / (n_normal * n_anomalous)))


def _ties(table: dict, families: tuple[str, ...], normals: int = 0) -> list[tuple[float, ...]]:
    """The candidates today's rule cannot tell apart: those left by the shifts filter whose
    mean over the families equals the best (today's rule takes the first, the largest global
    weight); with ``normals`` (the fit's held-out normals, 2x as many pseudo-anomalies per
    family) also those within one standard error of the best mean."""
    left = shortlist(table, families)
    top = max(left, key=lambda w: np.mean(table[w]))
    best = float(np.mean(table[top]))
    se = np.sqrt(sum(_se(a, normals, 2 * normals) ** 2 for a in table[top])) / len(table[top]) if normals else 0.0
    return [w for w in left if np.mean(table[w]) >= best - se - 1e-9]


#: image-split rules replayed on a fit's stored candidate table -> the split they pick
RULES = {
    "today": lambda t, f, n: choose(t, f),
    "ties-balanced": lambda t, f, n: min(_ties(t, f), key=lambda w: (sum(v * v for v in w), -w[0])),
    "ties-pixels": lambda t, f, n: max(_ties(t, f), key=lambda w: (w[-1], w[0])),
    "noise-balanced": lambda t, f, n: min(_ties(t, f, n), key=lambda w: (sum(v * v for v in w), -w[0])),
    "equal": lambda t, f, n: (1 / 3,) * 3,
}


def replay(paths: list[Path]) -> str:
    """A markdown table: per result file, validation family and rule of :data:`RULES`, the
    mean validation AUROC of the split the rule picks from each fit's own table (the split
    terms stored per image), how many fits had a tie, and the best split on the grid (a ceiling)."""
    lines = ["| variant | family | fits | ties | table vs validation (Spearman) | " + " | ".join(RULES) + " | best on the grid |",
             "|---" * (6 + len(RULES)) + "|"]
    for path in paths:
        rows = [r for r in json.loads(path.read_text()) if "scores" in r]
        for fam in ("unseen", "structure"):
            got = {k: [] for k in [*RULES, "grid"]}
            ties, rho = 0, []
            for r in rows:
                table = {tuple(w): tuple(v) for w, v in r["fit"]["table"]}
                families = tuple(r["fit"]["families"])
                normals = r["fit"].get("normals", 40)  # rows without it: --train 160, whose fits held out 40
                s = r["scores"][fam]
                terms = np.array([s["global"], *(s[p] for p in LOCAL)])
                y = np.array(s["label"])
                auc = lambda w, y=y, terms=terms: image_auroc(y, np.asarray(w) @ terms)  # noqa: E731
                ties += len(_ties(table, families)) > 1
                for name, rule in RULES.items():
                    got[name].append(auc(rule(table, families, normals)))
                got["grid"].append(max(auc(w) for w in table))
                seen, val = [np.mean(table[w]) for w in table], [auc(w) for w in table]
                if np.ptp(seen) > 1e-12 and np.ptp(val) > 1e-12:  # how well the fit's table ranks the splits
                    rho.append(spearmanr(seen, val)[0])
            if rows:
                lines.append(f"| {path.stem} | {fam} | {len(rows)} | {ties} | {np.mean(rho):.2f} ({len(rho)} fits) | "
                             + " | ".join(f"{np.mean(v):.3f}" for v in got.values()) + " |")
    return "\n".join(lines)


def replay_fusion_rule(dirs: list[Path], normals: int = 100) -> str:
    """:data:`RULES` replayed on ``benchmarks/fusion_rule.py`` cells (Fashion-MNIST validation
    tables; their fits held out 100 normals): mean validation AUROC and the classes whose
    pick differs from today's rule."""
    lines = []
    for d in dirs:
        cells = [json.loads(p.read_text()) for p in sorted((d / "cells").glob("*.json"))]
        got, moved = {k: [] for k in RULES if k != "equal"}, {}
        for c in cells:
            table = {tuple(x["split"]): tuple(x["pseudo"]) for x in c["candidates"]}
            val = {tuple(x["split"]): x["validation_auroc"] for x in c["candidates"]}
            for k in got:
                w = RULES[k](table, tuple(c["families"]), normals)
                got[k].append(val[w])
                if w != RULES["today"](table, tuple(c["families"]), normals):
                    moved.setdefault(k, []).append(c["class"])
        lines.append(f"{d}: " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in got.items()) + f"; classes moved {moved}")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__.splitlines()[0], "pseudo__local=0.5")
    ap.add_argument("--out", type=Path, help="JSON rows, rewritten after each fit (resumable)")
    ap.add_argument("--table", type=Path, nargs="+", help="print a markdown table of these result files and stop")
    ap.add_argument("--rules", type=Path, nargs="+",
                    help="print the image-split rules replayed on these result files' stored tables and stop")
    ap.add_argument("--fusion-rule-cells", type=Path, nargs="+", metavar="DIR",
                    help="print the same rules replayed on benchmarks/fusion_rule.py output folders and stop")
    ap.add_argument("--add-kinds", nargs="+", default=[], metavar="KIND",
                    help="more pseudo-defect kinds for the fit beside the validation kinds (minus near copies of K)")
    ap.add_argument("--fusion-kinds", nargs="+", default=[], metavar="KIND",
                    help="pseudo.fusion_defects of the fit (minus K and its near copies); default: its pseudo.defects")
    ap.add_argument("--split-kinds", action="store_true",
                    help="stage 1 draws the first kind left after K, the fusion fit validates on the others")
    ap.add_argument("--paired", type=Path, nargs=2, metavar=("BASE", "VARIANT"),
                    help="print VARIANT's equal_split less BASE's fitted score, per family over the shared fits, and stop")
    ap.add_argument("--units", type=Path, nargs="+", metavar="BASE VARIANT",
                    help="pairs of files: print each VARIANT's even split in held-out units (Decision 17) "
                         "against its BASE's fitted score and stop")
    ap.add_argument("--both-units", type=Path, nargs="+", metavar="BASE VARIANT",
                    help="pairs of files: print both sides' even split in held-out units and learned parts, "
                         "the variant less the base paired over the fits, and stop")
    ap.add_argument("--fit-validation", type=int, default=None, metavar="N",
                    help="validation crops from the band's left columns only, and N crops of its right columns "
                         "given to the fit as validation normals (AnoMem.fit(validation=...); 0: none given, "
                         "the same validation crops)")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.rules:
        print(replay(args.rules))
        return
    if args.units:
        if len(args.units) % 2:
            ap.error("--units takes pairs of files: BASE VARIANT [BASE VARIANT ...]")
        print(units(args.units))
        return
    if args.both_units:
        if len(args.both_units) % 2:
            ap.error("--both-units takes pairs of files: BASE VARIANT [BASE VARIANT ...]")
        print(both_in_units(args.both_units))
        return
    if args.paired:
        print(paired(*args.paired))
        print(paired(*args.paired, parts=("fused", "fused")))
        return
    if args.fusion_rule_cells:
        print(replay_fusion_rule(args.fusion_rule_cells))
        return
    if args.out is None:
        ap.error("--out is required (or --table)")
    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (kw.split("=", 1) for kw in args.set)}
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["category"], r["kind"], r["seed"]) for r in rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for cat in args.categories:
        for kind in args.kinds:
            for seed in args.seeds:
                if (cat, kind, seed) in done:
                    continue
                r = run(cat, kind, seed, args.size, args.train, args.validation, extra, args.add_kinds, args.fusion_kinds,
                        args.split_kinds, args.fit_validation)
                rows.append(r)
                args.out.write_text(json.dumps(rows, indent=1))
                print(f"{cat:<7} unseen {kind:<8} seed {seed} [{r['fit_s']} s] fit {r.get('fit')}\n{summary([r])}", flush=True)
    print(f"mean over {len(rows)} fits\n{summary(rows)}")


if __name__ == "__main__":
    main()
