"""Semi-supervised readings on a validation split: do the labelled anomalies' own features help?

For each normal class, trains AnoMem once with γ labelled anomalies (drawn from the
other classes of a FIT split of the training data, as the one-vs-all protocol draws
them) and scores a VALIDATION split (the rest of the training data, every class; the
test split is never used) in several ways:

* ``detector``   the detector's score (heads of Eq. 10 mixed with the bank and pixel bank);
* ``det cw=w``   the same detector with ``weights.contrast=w`` (0: the pixel bank's
                 distance to the normals, as before the contrast score existed);
* ``ratio s<i>`` per scale, kNN distance to the training normals minus kNN distance to
                 the labelled anomalies (cosine on pooled tap features): a kNN
                 likelihood-ratio reading of the labels;
* ``pix ratio``  the same on raw pixels (Euclidean);
* ``det+ratio``  and ``det+ratio+pix``: rank averages of the detector's score with the
                 ratio readings (rank-normalised over the validation images, which uses
                 no labels); ``det+pix w``: w · rank(detector) + (1 - w) · rank(pix ratio).

    OMP_NUM_THREADS=1 python benchmarks/semi_sweep.py --classes 0 2 --ratio 0.1
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from anomem import AnoMem
from anomem.inputs import to_float
from anomem.stage2.feature_bank import bank_distances

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import draw, fit_class, score_with, split, sweep_config


def embeddings(det: AnoMem, x: torch.Tensor) -> list[torch.Tensor]:
    model = det.inference_model
    per = [r.net.embeddings for r in model.readings(x, need=set())]
    return [F.normalize(torch.cat([p[s] for p in per]).float(), dim=1) for s in range(len(per[0]))]


def pixels(x: torch.Tensor) -> torch.Tensor:
    return to_float(x).flatten(1)


def rank(v: np.ndarray) -> np.ndarray:
    return rankdata(v) / len(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--max-train", type=int, default=27000)
    ap.add_argument("--normals", type=int, default=1500)
    ap.add_argument("--max-val", type=int, default=3000)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 2, 4, 6])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--contrast-weights", type=float, nargs="*", default=[0.0, 1 / 3, 0.5, 0.66],
                    help="re-score the same fitted detector with these weights.contrast values")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    fit, val = split("fashion-mnist", args.max_train, args.seed)
    rng = np.random.default_rng(args.seed)
    x_val, y_val = draw(val, args.max_val, rng)
    for cls in args.classes:
        normals = fit.images[fit.targets == cls][: args.normals]
        others = torch.nonzero(fit.targets != cls).flatten()
        m = round(args.ratio * normals.shape[0] / (1 - args.ratio))
        anomalies = fit.images[others[torch.from_numpy(rng.permutation(others.numel())[:m])]]
        cfg = sweep_config(args.preset, args.epochs, args.seed, args.batch_size)
        one = fit_class(cfg, normals, y_val, cls, anomalies=anomalies)
        det, secs = one.det, one.seconds
        read = {"detector": det.anomaly_score(x_val)}
        for cw in args.contrast_weights:  # the pixel bank's contrast in the image score (Decision 9)
            read[f"det cw={cw:g}"] = score_with(det, x_val, contrast=cw)
        e_v, e_a = embeddings(det, x_val), embeddings(det, anomalies)
        for s, (v, a, bank) in enumerate(zip(e_v, e_a, det.scorer_.bank.rows)):
            read[f"ratio s{s}"] = (bank_distances(v, bank, args.k) - bank_distances(v, a, args.k)).numpy()
        pv = pixels(x_val)
        read["pix ratio"] = (bank_distances(pv, pixels(normals), args.k, metric="euclidean")
                             - bank_distances(pv, pixels(anomalies), args.k, metric="euclidean")).numpy()
        ratios = [rank(read[k]) for k in read if k.startswith("ratio")]
        read["det+ratio"] = rank(read["detector"]) + np.mean(ratios, 0)
        read["det+ratio+pix"] = rank(read["detector"]) + np.mean(ratios, 0) + rank(read["pix ratio"])
        for w in (0.25, 0.5, 0.75):
            read[f"det+pix {w:g}"] = w * rank(read["detector"]) + (1 - w) * rank(read["pix ratio"])
        res = {k: float(one.auroc(v)) for k, v in read.items()}
        print(f"class {cls} ({m} labelled, {secs:.0f} s): " + "  ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps({"class": cls, "ratio": args.ratio, "seed": args.seed, "epochs": args.epochs,
                                    "labelled": m, "seconds": secs, **res}) + "\n")


if __name__ == "__main__":
    main()
