"""One-class design choices on a validation split: pseudo-anomalies, heads, bank.

For each stage-1 variant (``--variants``, ``;``-separated overrides) and normal class,
trains AnoMem once on up to ``--normals`` normals of a FIT split of the training data
and scores a VALIDATION split (the rest of the training data, every class, capped at
``--max-val`` by a seeded draw; the test split is never used) with several stage-2
readings of the same trained model:

* ``eq9``        the memory's one-class score (Eq. 9), scales merged by Eq. 13;
* ``heads``      the heads g∘φ trained on the pseudo-anomalies (Eq. 10-12);
* ``bank``       distance to the nearest pooled tap features of the training normals;
* ``eq9+bank``   and ``heads+bank``: each scale's two standardised signals averaged
                 (``bank.weight=0.5``);

beside raw-pixel kNN (k = 2) on the same normals. It prints one row per (variant,
class), the mean over classes per variant and the seconds each fit took.

    OMP_NUM_THREADS=2 python benchmarks/oneclass_sweep.py --classes 0 2 4 6 --epochs 10 \\
        --variants "pseudo.enabled=false" "pseudo.enabled=true"
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomem import AnoMem, load_config
from anomem.baselines import make_baseline
from anomem.bench.protocols import validation_split
from anomem.data.registry import load_dataset

READINGS = ("eq9", "heads", "bank", "eq9+bank", "heads+bank", "bank s0", "bank s-1", "eq9+bank s-1",
            "eq9+bank+pix", "bank+pix")


def pixel_signal(normals: torch.Tensor, x: torch.Tensor, k: int = 2) -> np.ndarray:
    """Raw-pixel kNN distance (k nearest training normals, Euclidean), standardised by the
    leave-one-out distances of the normals themselves: a scale-0 'bank' on the input."""
    def flat(t):
        t = t.float()
        return (t / 255.0 if t.max() > 1.5 else t).flatten(1)
    n, q = flat(normals), flat(x)
    loo = torch.cdist(n, n)
    loo.fill_diagonal_(float("inf"))
    ref = loo.topk(k, dim=1, largest=False).values.mean(1)
    d = torch.cat([torch.cdist(b, n).topk(k, dim=1, largest=False).values.mean(1) for b in q.split(1024)])
    return ((d - ref.mean()) / ref.std()).numpy()


def readings(det: AnoMem, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The stage-2 readings of one fitted detector on images ``x`` (scorer restored after)."""
    s = det.scorer_
    trained, weight = bool(s.supervised), s.bank_weight
    lam = s.scale_weights.clone()
    out = {}
    for name in READINGS:
        base = name.replace("+pix", "").split(" ")[0]
        heads = "heads" in base
        if (heads and not trained) or ("bank" in base and not s.has_banks) or "+pix" in name:
            continue
        s.supervised.fill_(heads)
        s.bank_weight = 1.0 if base == "bank" else 0.5 if "+" in base else 0.0
        if name.endswith(" s0") or name.endswith(" s-1"):
            one = torch.zeros_like(lam)
            one[0 if name.endswith(" s0") else -1] = 1.0
            s.scale_weights.copy_(one)
        # merged Eq. 13 score is a mean of standardised per-scale scores: comparable to pixel z
        out[name] = det.anomaly_score(x)
        s.scale_weights.copy_(lam)
    s.supervised.fill_(trained)
    s.bank_weight = weight
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--max-train", type=int, default=27000, help="subsample the training split first (seeded)")
    ap.add_argument("--normals", type=int, default=1500, help="training normals per class (the benchmark's cap)")
    ap.add_argument("--max-val", type=int, default=3000)
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 2, 4, 6])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=["pseudo.enabled=true"])
    ap.add_argument("--json", default=None, help="append one JSON line per (variant, class) here")
    args = ap.parse_args()

    fit, val = validation_split(load_dataset(args.data, "train"), args.max_train, args.seed)
    rng = np.random.default_rng(args.seed)
    keep = np.sort(rng.permutation(len(val))[: args.max_val])
    x_val, y_val = val.images[keep], val.targets[keep]
    print(f"{'variant':<40} {'class':>5} " + " ".join(f"{c:>10}" for c in (*READINGS, "pixel kNN")) + f" {'s':>5}")
    for variant in args.variants:
        rows = []
        for cls in args.classes:
            normals = fit.images[fit.targets == cls][: args.normals]
            cfg = load_config(args.preset, overrides=[f"train.epochs={args.epochs}", f"train.seed={args.seed}",
                                                       f"train.batch_size={args.batch_size}",
                                                       *[v for v in variant.split(";") if v]])
            t0 = time.time()
            det = AnoMem(cfg, progress=False).fit(normals)
            secs = time.time() - t0
            lab = (y_val != cls).numpy()
            raw = readings(det, x_val)
            pix = pixel_signal(normals, x_val)
            for name in ("eq9+bank", "bank"):
                if name in raw:
                    raw[name + "+pix"] = (raw[name] * det.scorer_.scale_weights.numel() + pix)
            res = {k: roc_auc_score(lab, v) for k, v in raw.items()}
            res["pixel kNN"] = roc_auc_score(lab, make_baseline("knn").fit(normals).anomaly_score(x_val))
            rows.append(res)
            cells = " ".join(f"{res[c]:10.3f}" if c in res else f"{'-':>10}" for c in (*READINGS, "pixel kNN"))
            print(f"{variant[:40]:<40} {cls:>5} {cells} {secs:5.0f}", flush=True)
            if args.json:
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"variant": variant, "class": cls, "seed": args.seed, "epochs": args.epochs,
                                        "seconds": secs, **res}) + "\n")
        means = {c: np.mean([r[c] for r in rows]) for c in rows[0]}
        cells = " ".join(f"{means[c]:10.3f}" if c in means else f"{'-':>10}" for c in (*READINGS, "pixel kNN"))
        print(f"{variant[:40]:<40} {'mean':>5} {cells}", flush=True)


if __name__ == "__main__":
    main()
