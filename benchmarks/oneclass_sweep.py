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
                 (``weights.bank=0.5``);

beside raw-pixel kNN (k = 2) on the same normals. It prints one row per (variant,
class), the mean over classes per variant and the seconds each fit took.

    OMP_NUM_THREADS=2 python benchmarks/oneclass_sweep.py --classes 0 2 4 6 --epochs 10 \\
        --variants "pseudo.enabled=false" "pseudo.enabled=true"
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from anomem import AnoMem

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import cells, draw, fit_class, score_with, split, sweep_config, variant_overrides

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
    """The stage-2 readings of one fitted detector on images ``x`` (the detector unchanged)."""
    s = det.scorer_
    trained, scales = bool(s.heads.trained), s.num_scales
    out = {}
    for name in READINGS:
        base = name.replace("+pix", "").split(" ")[0]
        heads = "heads" in base
        if (heads and not trained) or ("bank" in base and not s.bank.ready) or "+pix" in name:
            continue
        weights = {"bank": 1.0 if base == "bank" else 0.5 if "+" in base else 0.0}
        if name.endswith(" s0") or name.endswith(" s-1"):
            one = [0.0] * scales
            one[0 if name.endswith(" s0") else -1] = 1.0
            weights["scales"] = one
        # merged Eq. 13 score is a mean of standardised per-scale scores: comparable to pixel z
        out[name] = score_with(det, x, heads=heads, **weights)
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

    fit, val = split(args.data, args.max_train, args.seed)
    x_val, y_val = draw(val, args.max_val, np.random.default_rng(args.seed))
    columns = (*READINGS, "pixel kNN")
    print(f"{'variant':<40} {'class':>5} " + cells(columns, 10) + f" {'s':>5}")
    for variant in args.variants:
        rows = []
        for cls in args.classes:
            cfg = sweep_config(args.preset, args.epochs, args.seed, args.batch_size, variant_overrides(variant))
            one = fit_class(cfg, fit.images[fit.targets == cls][: args.normals], y_val, cls)
            det, normals, secs = one.det, one.normals, one.seconds
            raw = readings(det, x_val)
            pix = pixel_signal(normals, x_val)
            for name in ("eq9+bank", "bank"):
                if name in raw:
                    raw[name + "+pix"] = (raw[name] * det.scorer_.num_scales + pix)
            res = {k: one.auroc(v) for k, v in raw.items()}
            res["pixel kNN"] = one.knn_auroc(x_val)
            rows.append(res)
            print(f"{variant[:40]:<40} {cls:>5} {cells((res.get(c) for c in columns), 10)} {secs:5.0f}", flush=True)
            if args.json:
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"variant": variant, "class": cls, "seed": args.seed, "epochs": args.epochs,
                                        "seconds": secs, **res}) + "\n")
        means = {c: np.mean([r[c] for r in rows]) for c in rows[0]}
        print(f"{variant[:40]:<40} {'mean':>5} {cells((means.get(c) for c in columns), 10)}", flush=True)


if __name__ == "__main__":
    main()
