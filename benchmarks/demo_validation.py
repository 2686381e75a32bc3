"""The demo's scorer weights, chosen on a validation split of the digits TRAINING data.

Fits the demo's detector (``anomem demo``'s settings) once per normal class on 70 % of
the digits training split and reads AUROC on the other 30 % (every class, the normal
one against the rest) with several ``weights.pixel_global`` values, beside raw-pixel
kNN. The test split is never used.

    OMP_NUM_THREADS=2 python benchmarks/demo_validation.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from anomem import load_config
from anomem.cli.demo import DEMO_PRESET
from anomem.data.registry import load_dataset

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import cells, fit_class, score_with

EXTRA: tuple[str, ...] = ()  # overrides on top of the demo's preset (tests shorten training here)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1 / 3, 0.5, 0.7, 0.9])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train = load_dataset("digits", "train")
    perm = torch.randperm(len(train.targets), generator=torch.Generator().manual_seed(args.seed))
    cut = int(0.7 * perm.numel())
    fit_idx, val_idx = perm[:cut], perm[cut:]
    x_val, y_val = train.images[val_idx], train.targets[val_idx]
    cfg = load_config(DEMO_PRESET, None, [*EXTRA, f"train.seed={args.seed}"])
    rows = {w: [] for w in args.weights}
    knn = []
    for c in args.classes:
        fit = fit_class(cfg, train.images[fit_idx][train.targets[fit_idx] == c], y_val, c)
        for w in args.weights:
            rows[w].append(fit.auroc(score_with(fit.det, x_val, pixel_global=w)))
        knn.append(fit.knn_auroc(x_val))
    print("pixel_weight " + " ".join(f"class {c}" for c in args.classes) + "  mean")
    for w, r in rows.items():
        print(f"{w:12.3f} " + cells(r, 7, 4) + f"  {np.mean(r):.4f}")
    print(f"{'kNN':>12} " + cells(knn, 7, 4) + f"  {np.mean(knn):.4f}")


if __name__ == "__main__":
    main()
