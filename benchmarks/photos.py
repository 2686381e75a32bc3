"""Local defects in real photographs: AnoMem (library defaults) beside patch kNN and kNN.

For each category of :mod:`anomem.data.photos` (128-px crops of a photograph bundled
with scikit-image; training and test crops from disjoint regions), fit every method on
the same training normals and report, per method:

* image AUROC on the obvious defects (scratch, stain, pasted patch, colour stain) and,
  separately, on the subtle ones (blur, swirl, a quarter-turned square), each against
  the same test normals;
* for AnoMem, pixel AUROC (every test image) and AUPRO (defective images) of its fused
  heat-map, and the fitted fusion weights;
* fit and score seconds.

Each category is one cell, saved as ``OUT/cells/<category>.json`` as soon as it is done;
a rerun skips finished cells (resumable), and ``OUT/results.md`` is rewritten from the
cells on disk. ``--write-folders`` also writes the MVTec-layout folders the CLI reads.

    python benchmarks/photos.py --out docs/results/photos --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem
from anomem.baselines import make_baseline
from anomem.data.photos import CATEGORIES, OBVIOUS, SUBTLE, make_photo_benchmark, photo_category
from anomem.io.checkpoint import atomic_write_text
from anomem.metrics import aupro, image_auroc, pixel_auroc

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import score_with

BASELINES = ("patch-knn", "knn")
# AnoMem's signals alone: the global score (memory, feature bank, pixel bank), feature patches, pixel patches
ABLATION = {"anomem-global": (1, 0, 0), "anomem-feature-patches": (0, 1, 0), "anomem-pixel-patches": (0, 0, 1)}


def _u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


def family_aurocs(normal: np.ndarray, defect: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Image AUROC of the obvious and the subtle defects, each against the same normals."""
    out = {}
    for fam, names in (("obvious", OBVIOUS), ("subtle", SUBTLE)):
        m = np.isin(kinds, names)
        if m.any():
            out[fam] = image_auroc(np.r_[np.zeros(len(normal)), np.ones(m.sum())], np.r_[normal, defect[m]])
    return out


def run_category(cat: str, seed: int) -> dict:
    sp = photo_category(cat, seed=seed)
    train, normal, defect = _u8(sp.train), _u8(sp.test_normal), _u8(sp.test_defect)
    kinds = np.asarray(sp.kinds)
    rec: dict = {"category": cat, "seed": seed, "train": int(train.shape[0]), "test_normal": int(normal.shape[0]),
                 "test_defect": {k: int((kinds == k).sum()) for k in dict.fromkeys(sp.kinds)}, "methods": {}}
    t0 = time.perf_counter()
    det = AnoMem(progress=False, train__seed=seed).fit(train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps_n, maps_d = det.anomaly_maps(normal), det.anomaly_maps(defect)
    score_s = time.perf_counter() - t0
    masks = np.concatenate([np.zeros((normal.shape[0], *sp.masks.shape[1:]), bool), sp.masks])
    fused = np.concatenate([maps_n.fused, maps_d.fused])
    obvious = np.isin(kinds, OBVIOUS)
    keep = np.r_[np.ones(normal.shape[0], bool), obvious]  # normals and the obvious defects
    rec["methods"]["anomem"] = {
        **family_aurocs(maps_n.scores, maps_d.scores, kinds),
        "pixel_auroc": pixel_auroc(masks, fused), "aupro": aupro(sp.masks, maps_d.fused),
        "pixel_auroc_obvious": pixel_auroc(masks[keep], fused[keep]),
        "aupro_obvious": aupro(sp.masks[obvious], maps_d.fused[obvious]),
        "fusion": [round(float(w), 4) for w in det.weights_["image"]],
        "map_fusion": [round(float(w), 4) for w in det.weights_["map"]], "fit_s": fit_s, "score_s": score_s,
    }
    # the ablation: each signal alone, with other fusion weights (the detector is not changed)
    for name, w in ABLATION.items():
        rec["methods"][name] = family_aurocs(score_with(det, normal, image=w), score_with(det, defect, image=w), kinds)
    for name in BASELINES:
        t0 = time.perf_counter()
        b = make_baseline(name, random_state=seed).fit(train)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sn, sd = b.anomaly_score(normal), b.anomaly_score(defect)
        rec["methods"][name] = {**family_aurocs(sn, sd, kinds), "fit_s": fit_s, "score_s": time.perf_counter() - t0}
    return rec


def table(cells: list[dict], methods: tuple[str, ...] = ("anomem", *BASELINES), extra: bool = True) -> str:
    tail = " | AnoMem pixel AUROC (all / obvious) | AUPRO (all / obvious) | fusion (global, feature, pixel) | AnoMem fit s |"
    head = "| category | " + " | ".join(f"{m} obvious | {m} subtle" for m in methods) + (tail if extra else " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        m = c["methods"]
        row = [c["category"]] + [f"{m[k].get(f, float('nan')):.3f}" for k in methods for f in ("obvious", "subtle")]
        a = m["anomem"]
        if extra:
            row += [f"{a['pixel_auroc']:.3f} / {a.get('pixel_auroc_obvious', float('nan')):.3f}",
                    f"{a['aupro']:.3f} / {a.get('aupro_obvious', float('nan')):.3f}", str(a["fusion"]), f"{a['fit_s']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    if cells:
        mean = ["**mean**"] + [f"{np.mean([c['methods'][k].get(f, np.nan) for c in cells]):.3f}" for k in methods
                               for f in ("obvious", "subtle")]
        if extra:
            mean += [" / ".join(f"{np.mean([c['methods']['anomem'].get(k, np.nan) for c in cells]):.3f}" for k in pair)
                     for pair in (("pixel_auroc", "pixel_auroc_obvious"), ("aupro", "aupro_obvious"))] + ["", ""]
        lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=list(CATEGORIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-folders", action="store_true", help="also write the MVTec-layout folders under OUT/data")
    a = ap.parse_args(argv)
    (a.out / "cells").mkdir(parents=True, exist_ok=True)
    if a.write_folders:
        make_photo_benchmark(a.out / "data", a.categories, seed=a.seed)
    for cat in a.categories:
        path = a.out / "cells" / f"{cat}.json"
        if path.exists():
            continue
        rec = run_category(cat, a.seed)
        atomic_write_text(path, json.dumps(rec, indent=1))
        print(cat, json.dumps(rec["methods"]), flush=True)
    cells = [json.loads((a.out / "cells" / f"{c}.json").read_text()) for c in a.categories
             if (a.out / "cells" / f"{c}.json").exists()]
    cmd = "python benchmarks/photos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"Command: `{cmd}`\n\nImage AUROC per defect family; AnoMem with the library defaults.\n\n" + table(cells)
            + "\nAblation: AnoMem's signals alone (same models, `anomaly_score(fusion=...)`).\n\n"
            + table(cells, ("anomem", *ABLATION), extra=False))
    atomic_write_text(a.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
