"""Choose settings by measurement on a validation split (never the test split).

First use: the Hopfield memory's normalisation and β (SPEC §1).

The paper's β = 2 is meaningless without saying what scale queries and patterns have:
raw ResNet features make softmax(β ξ Xᵀ) almost one-hot, unit vectors make it almost
uniform (every image recalls the mean prototype: collapse). This script trains the
`tiny` preset on scikit-learn digits (16x16) for several settings and reports, per
setting, the one-class AUROC on a VALIDATION split carved out of the training data
(the test split is never used), the retrieval entropy (as a fraction of log K) and the
per-dimension spread of recalled prototypes relative to that of the queries (near 0 =
every image recalls the same prototype), and the validation AUROC of each scale's
score alone (shallow/deep, from the same model). Variants are ';'-separated config
overrides.

    python benchmarks/validation_sweep.py --classes 0 3 8 --seed 0
    python benchmarks/validation_sweep.py --variants "augment.flip_p=0;augment.crop_scale=[0.6,1]"
    python benchmarks/validation_sweep.py --data fashion-mnist --preset cpu-small --max-train 9000 \
        --epochs 4 --batch-size 256 --classes 0 6 --variants "augment.crop_scale=[0.2,1]" ...
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import fit_class, knn_auroc, split, sweep_config, variant_overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", help="a named dataset (its training split is used)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--max-train", type=int, default=None, help="subsample the training split first (seeded)")
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=[
            "memory.normalize=none;memory.beta=2",
            "memory.normalize=l2;memory.beta=2",
            "memory.normalize=l2;memory.beta=8",
            "memory.normalize=l2;memory.beta=16",
            "memory.normalize=layernorm;memory.beta=0.25",
        ],
        help="each variant is a ';'-separated list of config overrides on top of --preset",
    )
    args = ap.parse_args()

    fit, val = split(args.data, args.max_train, args.seed)
    x_fit, y_fit, x_val, y_val = fit.images, fit.targets, val.images, val.targets

    knn = [knn_auroc(x_fit[y_fit == c], x_val, (y_val != c).numpy()) for c in args.classes]
    print(f"raw-pixel kNN (k=2) val AUROC: {np.mean(knn):.3f}")
    print(f"{'val AUROC':>9} {'per scale':>13} {'entropy/logK':>12} {'proto std':>9} {'s':>5}  variant")
    for variant in args.variants:
        aucs, scale_aucs, ents, stds, t0 = [], [], [], [], time.time()
        for cls in args.classes:
            cfg = sweep_config(args.preset, args.epochs, args.seed, args.batch_size, variant_overrides(variant))
            one = fit_class(cfg, x_fit[y_fit == cls], y_val, cls)
            det = one.det
            aucs.append(one.auroc(det.anomaly_score(x_val)))
            # each scale's score alone (same model): which scale carries the signal
            per = det.score_per_scale(x_val)
            scale_aucs.append([one.auroc(per[:, k]) for k in range(per.shape[1])])
            with torch.inference_mode():
                feats = det.net_.features(x_val[y_val == cls].float() / 255)
                for f, mem in zip(feats, det.net_.memories):
                    q = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                    r = mem(q)
                    w = r.weights.clamp_min(1e-12)
                    ents.append(float((-(w * w.log()).sum(1)).mean() / np.log(w.shape[1])))
                    stds.append(float(r.recollection.std(0).mean() / mem.project(q).std(0).mean()))
        per_scale = "/".join(f"{a:.3f}" for a in np.mean(scale_aucs, 0))
        print(f"{np.mean(aucs):9.3f} {per_scale:>13} {np.mean(ents):12.3f} {np.mean(stds):9.3f} {time.time() - t0:5.0f}  {variant}", flush=True)


if __name__ == "__main__":
    main()
