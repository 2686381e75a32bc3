"""Why the default threshold flags many of the photo benchmark's test normals.

The threshold is set at fit on held-out *training* crops (``threshold.target_fpr``). In
:mod:`anomem.data.photos` every crop is a random window of one photograph: training crops
overlap each other, and the held-out ones overlap the crops the detector was fitted on,
while the test normals come from rows no training crop touches. This script fits one
detector per (category, seed) on crops of the top rows and measures the false-positive
rate of its default threshold on four sets of normals, side by side:

* ``held-out (fit)``: the training crops held out at fit (what the threshold was set on);
* ``fresh, same rows``: new crops of the training rows (they overlap training crops);
* ``disjoint band``: crops of a band of rows next to the training rows that no training
  crop touches (same part of the photograph, no shared pixels);
* ``test rows``: crops of the bottom rows, where the benchmark's test normals come from.

If the disjoint band is flagged as often as the test rows, shared pixels (not a change of
the photograph's content further down) make the calibration optimistic. The last column
re-sets the threshold on the disjoint band (``calibrate_threshold``) and reads its FPR
on the test rows::

    OMP_NUM_THREADS=1 python benchmarks/photo_threshold.py --categories grass gravel --size 96 --json docs/results/photo-threshold/rows.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from anomem import AnoMem
from anomem.bench.photos import uint8_images
from anomem.data.photos import CATEGORIES, _crops, _photo

BANDS = {"train": (0.0, 0.45), "band": (0.45, 0.65), "test": (0.65, 1.0)}  # row fractions of the photograph


def run(category: str, seed: int, size: int, n_train: int, n_eval: int) -> dict:
    photo = _photo(CATEGORIES[category])
    h = photo.shape[1]
    rng = np.random.default_rng([seed, 7])
    rows = {k: (int(round(a * h)), int(round(b * h))) for k, (a, b) in BANDS.items()}
    train = uint8_images(_crops(photo, rows["train"], n_train, size, rng))
    sets = {"fresh, same rows": uint8_images(_crops(photo, rows["train"], n_eval, size, rng)),
            "disjoint band": uint8_images(_crops(photo, rows["band"], n_eval, size, rng)),
            "test rows": uint8_images(_crops(photo, rows["test"], n_eval, size, rng))}
    t0 = time.perf_counter()
    det = AnoMem(progress=False, train__seed=seed).fit(train)
    out = {"category": category, "seed": seed, "size": size, "train": n_train, "fit_s": round(time.perf_counter() - t0, 1),
           "target": det.threshold_.target, "fpr": {"held-out (fit)": det.threshold_.fpr}}
    out["fpr"].update({k: float(det.predict(v).mean()) for k, v in sets.items()})
    det.calibrate_threshold(sets["disjoint band"])
    out["fpr"]["test rows, threshold set on the band"] = float(det.predict(sets["test rows"]).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["grass", "gravel"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=160)
    ap.add_argument("--eval", type=int, default=60)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    rows = []
    for cat in args.categories:
        for seed in args.seeds:
            r = run(cat, seed, args.size, args.train, args.eval)
            rows.append(r)
            print(f"{cat} seed {seed} ({args.size} px, {args.train} training crops, fit {r['fit_s']} s, "
                  f"target FPR {r['target']:.3f}):", flush=True)
            for k, v in r["fpr"].items():
                print(f"  {k:<40} FPR {v:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
