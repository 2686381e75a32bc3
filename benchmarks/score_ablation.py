"""Why does one-class AnoMem trail raw-pixel kNN at CPU budgets? Encoder or score?

For each normal class, trains AnoMem once on a FIT split of the training data and
scores a VALIDATION split (the rest of the training data, every class; the test split
is never used) in several ways from the same trained model:

* ``eq9 merged``   the detector's one-class score (Eq. 9, scales merged by Eq. 13);
* ``eq9 deep``     Eq. 9 of the deepest scale alone;
* ``nearest pat``  per position, 1 - best cosine between the projected query and the
                   stored patterns (deepest scale), averaged over positions: distance to
                   the nearest prototype instead of to the soft recollection;
* ``feat norm``    the mean norm of the deepest raw features over positions, before the
                   memory's projection (which discards it);
* ``enc kNN``      kNN (k=2, cosine) on the encoder's pooled deepest features against
                   the fit normals: the encoder with a feature bank instead of a memory;

beside raw-pixel kNN (k=2). If ``enc kNN`` is far above ``eq9``, the encoder has
learnt what separates the classes and the memory score wastes it; if every row is
low, the encoder itself is the bottleneck (budget, augmentations).

    python benchmarks/score_ablation.py --data fashion-mnist --preset cpu-small --max-train 9000 \\
        --epochs 10 --batch-size 128 --classes 0 2 4 6
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomem import AnoMem
from anomem.bench.runner import feature_knn_scores
from anomem.inputs import to_float

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import cells, fit_class, split, sweep_config


@torch.inference_mode()
def deep_feature_scores(det: AnoMem, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per image, over the deepest map's positions: the mean of 1 - max cosine between the
    projected query and the memory's patterns, and the mean raw feature norm."""
    net, mem = det.net_.eval(), det.net_.memories[-1]
    pats = torch.nn.functional.normalize(mem.stored_patterns(), dim=1)
    near, norm = [], []
    for i in range(0, images.shape[0], batch_size):
        f = net.features(to_float(images[i : i + batch_size]).to(det.device_))[-1]
        b, c, h, w = f.shape
        z = f.permute(0, 2, 3, 1).reshape(-1, c)
        q = torch.nn.functional.normalize(mem.project(z), dim=1)
        near.append((1 - (q @ pats.T).max(1).values).reshape(b, h * w).mean(1).cpu())
        norm.append(z.norm(dim=1).reshape(b, h * w).mean(1).cpu())
    return torch.cat(near).numpy(), torch.cat(norm).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--max-train", type=int, default=None, help="subsample the training split first (seeded)")
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    fit, val = split(args.data, args.max_train, args.seed)
    x_fit, y_fit, x_val, y_val = fit.images, fit.targets, val.images, val.targets

    cols = ("eq9 merged", "eq9 deep", "nearest pat", "feat norm", "enc kNN", "pixel kNN")
    print(f"{'class':>5} " + cells(cols, 11) + f" {'s':>5}")
    rows = []
    for cls in args.classes:
        t0 = time.time()
        cfg = sweep_config(args.preset, args.epochs, args.seed, args.batch_size, args.set)
        one = fit_class(cfg, x_fit[y_fit == cls], y_val, cls)
        det, normals = one.det, one.normals
        near, norm = deep_feature_scores(det, x_val)
        scores = [
            det.anomaly_score(x_val),
            det.score_per_scale(x_val)[:, -1],
            near,
            norm,
            feature_knn_scores(det.embed(normals), det.embed(x_val)),
        ]
        rows.append([*(one.auroc(s) for s in scores), one.knn_auroc(x_val)])
        print(f"{cls:>5} " + cells(rows[-1], 11) + f" {time.time() - t0:5.0f}", flush=True)
    print(f"{'mean':>5} " + cells(np.mean(rows, 0), 11))

if __name__ == "__main__":
    main()
