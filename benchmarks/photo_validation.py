"""Local defects the fit never saw, on a validation split of the photographs' training rows.

Decides how stage 2 reads local evidence without looking at the photo benchmark's test
split or its test defect kinds. Per category of :mod:`anomem.data.photos` and each
pseudo-defect kind K of :data:`anomem.choices.DEFECTS` (cut-paste, scar, noise):

* AnoMem is fitted (library defaults, ``pseudo.defects`` = the other two kinds, so K is
  in neither stage 1 nor the fusion fit) on crops of the photograph's top rows;
* VALIDATION: crops of a band of rows below them that no training crop touches (the
  benchmark's test rows, further down, are never read), normal, and the same band's crops
  with a defect of kind K drawn by :func:`anomem.model.pseudo.make_pseudo_anomalies`;
* reported: the validation AUROC of the fitted score, of the global score alone and, where
  the code has it, of each peak share (``weights={"peak": p}``), and what the fit chose.

The script runs on whichever ``anomem`` is importable, so the same validation can be read
for an older commit (``PYTHONPATH=/tmp/old/src``)::

    OMP_NUM_THREADS=2 python benchmarks/photo_validation.py --categories grass gravel --size 96 \\
        --out docs/results/photo-validation/peak.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem
from anomem.bench.photos import uint8_images
from anomem.data.photos import CATEGORIES, _crops, _photo
from anomem.metrics import image_auroc
from anomem.model.pseudo import make_pseudo_anomalies

KINDS = ("cutpaste", "scar", "noise")
ROWS = {"train": (0.0, 0.4), "validation": (0.4, 0.65)}  # row fractions; the benchmark's test rows start at 0.65
FIT_VALIDATION_COLUMN = 0.6  # with fit_val: validation crops left of this column fraction, the fit's own right of it


def crops(category: str, kind: str, seed: int, size: int, n_train: int, n_val: int, fit_val: int | None = None
          ) -> tuple:
    """Training crops (uint8) of the top rows, ``n_val`` validation crops (float) of the band
    below, and the generator that drew them (seeded by seed and the unseen kind). With
    ``fit_val`` (a count, 0 allowed) the validation crops keep to the band's left
    :data:`FIT_VALIDATION_COLUMN` of the columns, and a fourth item holds ``fit_val`` crops
    (uint8) of the band's right columns, which share no pixel with either: the fit's own
    validation normals (``AnoMem.fit(validation=...)``)."""
    photo = _photo(CATEGORIES[category])
    h, w = photo.shape[1:]
    rng = np.random.default_rng([seed, KINDS.index(kind), 11])
    rows = {k: (int(round(a * h)), int(round(b * h))) for k, (a, b) in ROWS.items()}
    train = uint8_images(_crops(photo, rows["train"], n_train, size, rng))
    if fit_val is None:
        return train, torch.from_numpy(_crops(photo, rows["validation"], n_val, size, rng)).float(), rng
    cut = int(round(FIT_VALIDATION_COLUMN * w))
    val = torch.from_numpy(_crops(photo, rows["validation"], n_val, size, rng, cols=(0, cut))).float()
    fit = uint8_images(_crops(photo, rows["validation"], fit_val, size, rng, cols=(cut, w)))
    return train, val, rng, fit


def parser(description: str, example: str) -> argparse.ArgumentParser:
    """The command line both photo validation scripts read (``example``: a ``--set`` value)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--categories", nargs="+", default=["grass", "gravel"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=160)
    ap.add_argument("--validation", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                    help=f"a config keyword for AnoMem (e.g. {example}), for a variant")
    return ap


def run(category: str, kind: str, seed: int, size: int, n_train: int, n_val: int, extra: dict[str, str]) -> dict:
    train, val, _ = crops(category, kind, seed, size, n_train, 2 * n_val)
    normal, base = uint8_images(val[:n_val]), val[n_val:]
    made = make_pseudo_anomalies(base, n_val, (), (kind,), 1.0, (0.1, 0.25), torch.Generator().manual_seed(seed))
    anomalous = uint8_images(made.images)
    others = tuple(k for k in KINDS if k != kind)
    t0 = time.perf_counter()
    extra = {k: {"true": True, "false": False}.get(v.lower(), v) for k, v in extra.items()}
    det = AnoMem(progress=False, train__seed=seed, pseudo__defects=others, **extra).fit(train)
    fit_s = time.perf_counter() - t0
    x, y = torch.cat([normal, anomalous]), np.r_[np.zeros(n_val), np.ones(n_val)]
    out = {"category": category, "kind": kind, "seed": seed, "size": size, "train": n_train, "validation": n_val,
           "set": {k: v for k, v in extra.items()},
           "fit_s": round(fit_s, 1), "auroc": image_auroc(y, det.anomaly_score(x))}
    fit = det.fusion_
    if fit is not None:
        out["fit"] = {"image_parts": list(getattr(fit, "image_parts", ("global", "feature_patches", "pixel_patches"))),
                      "weights": list(fit.weights), "map_weights": list(fit.map_weights), "families": list(fit.families)}
    if "peak" in det.weights_:
        out["auroc_peak_share"] = {f"{p:g}": image_auroc(y, det.anomaly_score(x, weights={"peak": p}))
                                   for p in (0.0, 0.25, 0.5, 0.75, 1.0)}
        out["auroc_global"] = out["auroc_peak_share"]["0"]
    else:
        out["auroc_global"] = image_auroc(y, det.anomaly_score(x, weights={"image": [1.0, 0.0, 0.0]}))
    return out


def main() -> None:
    ap = parser(__doc__.splitlines()[0], "patches__peak_smoothing=false")
    ap.add_argument("--out", type=Path, required=True, help="JSON rows, rewritten after each fit (resumable)")
    args = ap.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["category"], r["kind"], r["seed"]) for r in rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for cat in args.categories:
        for kind in args.kinds:
            for seed in args.seeds:
                if (cat, kind, seed) in done:
                    continue
                r = run(cat, kind, seed, args.size, args.train, args.validation, dict(kw.split("=", 1) for kw in args.set))
                rows.append(r)
                args.out.write_text(json.dumps(rows, indent=1))
                shares = " ".join(f"{k}:{v:.3f}" for k, v in r.get("auroc_peak_share", {}).items())
                print(f"{cat:<7} unseen {kind:<8} seed {seed}: AUROC {r['auroc']:.3f} (global {r['auroc_global']:.3f}) "
                      f"fit {r.get('fit', {}).get('weights')} map {r.get('fit', {}).get('map_weights')} "
                      f"{shares} [{r['fit_s']} s]", flush=True)
    for cat in args.categories:
        sel = [r for r in rows if r["category"] == cat]
        if sel:
            print(f"{cat}: mean validation AUROC {np.mean([r['auroc'] for r in sel]):.3f} over {len(sel)} unseen kinds x seeds")


if __name__ == "__main__":
    main()
