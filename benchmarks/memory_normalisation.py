"""Pick the Hopfield memory's normalisation and β by measurement (SPEC §1).

The paper's β = 2 is meaningless without saying what scale queries and patterns have:
raw ResNet features make softmax(β ξ Xᵀ) almost one-hot, unit vectors make it almost
uniform (every image recalls the mean prototype: collapse). This script trains the
`tiny` preset on scikit-learn digits (16x16) for several settings and reports, per
setting, the one-class AUROC on a VALIDATION split carved out of the training data
(the test split is never used), the retrieval entropy (as a fraction of log K) and the
per-dimension spread of recalled prototypes.

    python benchmarks/memory_normalisation.py --classes 0 1 2 3 --seed 0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomem import AnoMem, load_config
from anomem.data.digits import load_digits_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--settings", nargs="+", default=["none:2", "l2:2", "l2:16", "l2:64", "layernorm:2", "layernorm:0.25", "l2:learn16"])
    args = ap.parse_args()

    train, _ = load_digits_split(image_size=16, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    n = len(train)
    val_idx = rng.permutation(n)[: n // 3]
    fit_mask = np.ones(n, bool)
    fit_mask[val_idx] = False
    x_fit, y_fit = train.images[torch.from_numpy(fit_mask)], train.targets[torch.from_numpy(fit_mask)]
    x_val, y_val = train.images[torch.from_numpy(~fit_mask)], train.targets[torch.from_numpy(~fit_mask)]

    print(f"{'setting':<16} {'val AUROC':>9} {'entropy/logK':>12} {'proto std':>9} {'s':>5}")
    for setting in args.settings:
        norm, b = setting.split(":")
        learn = b.startswith("learn")
        beta = float(b.removeprefix("learn"))
        aucs, ents, stds, t0 = [], [], [], time.time()
        for cls in args.classes:
            cfg = load_config(
                "tiny",
                overrides=[
                    f"memory.normalize={norm}", f"memory.beta={beta}", f"memory.learn_beta={learn}",
                    f"train.epochs={args.epochs}", f"train.seed={args.seed}",
                ],
            )
            det = AnoMem(cfg, progress=False).fit(x_fit[y_fit == cls])
            aucs.append(roc_auc_score((y_val != cls).numpy(), det.anomaly_score(x_val)))
            with torch.inference_mode():
                feats = det.net_.features(x_val[y_val == cls].float() / 255)
                for f, mem in zip(feats, det.net_.memories):
                    q = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                    r = mem(q)
                    w = r.weights.clamp_min(1e-12)
                    ents.append(float((-(w * w.log()).sum(1)).mean() / np.log(w.shape[1])))
                    stds.append(float(r.recollection.std(0).mean() / mem.project(q).std(0).mean()))
        print(f"{setting:<16} {np.mean(aucs):9.3f} {np.mean(ents):12.3f} {np.mean(stds):9.3f} {time.time() - t0:5.0f}", flush=True)


if __name__ == "__main__":
    main()
