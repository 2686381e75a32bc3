"""Anomaly localisation on Fashion-MNIST with generated local defects.

Compares, on the same test set, single-scale AnoMem (tap layer4, 64 patterns), multi-scale
AnoMem (taps layer3 + layer4, the ``cpu-small`` preset) and raw-pixel kNN:

* training: ``--train-size`` images of the normal class from the training split
  (seeded draw; AnoMem holds 10% of them out to set its threshold);
* test: ``--test-size`` images of the normal class from the test split, plus the same
  images with one generated local defect each (patch, scratch or blob;
  :func:`anomem.data.defects.add_defects`, seeded), with pixel masks;
* metrics: image AUROC, pixel AUROC and AUPRO (FPR <= 0.3) of the fused heat-maps
  (:mod:`anomem.metrics`). kNN scores an image by :func:`make_baseline("knn")` (mean
  distance to its 2 nearest training images) and maps it by |x - nearest training image|
  per pixel (mean over channels).

Run (about 10 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/localisation.py --normal-class 7 --epochs 3 --seed 0

It prints a Markdown table, writes ``results.json`` and the multi-scale checkpoint to
``--out``, and the heat-map figure of the first defective test image to ``--heatmap``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem, __version__, load_config
from anomem.baselines import make_baseline
from anomem.bench.report import save_heatmap_png
from anomem.data.defects import add_defects
from anomem.data.registry import load_dataset
from anomem.metrics import aupro, image_auroc, pixel_auroc

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import maps_with

SINGLE = ["backbone.taps=[layer4]", "memory.sizes=[64]", "memory.sample_ratios=[1.0]"]


def knn_pixel_maps(train: torch.Tensor, test: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """|x - nearest training image (Euclidean, raw pixels)| per pixel, mean over channels.

    Shape:
        train (N, C, H, W), test (T, C, H, W), uint8 -> (T, H, W) float
    """
    tr = train.float().div(255).flatten(1)  # (N, C·H·W)
    out = []
    for i in range(0, test.shape[0], chunk):
        x = test[i : i + chunk].float().div(255)
        nearest = torch.cdist(x.flatten(1), tr).argmin(1)  # (B,)
        out.append((x - tr[nearest].view_as(x)).abs().mean(1))  # (B, H, W)
    return torch.cat(out).numpy()


def evaluate_maps(is_anomaly: np.ndarray, masks: np.ndarray, scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    return {
        "image_auroc": image_auroc(is_anomaly, scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal-class", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=3000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/localisation")
    ap.add_argument("--heatmap", default="docs/heatmap_example.png")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="val: the clean images are held-out TRAINING normals (for decisions); test: the test split")
    ap.add_argument("--multi-only", action="store_true", help="skip the single-scale AnoMem run")
    ap.add_argument("--grid", nargs="*", default=[], metavar="WG,WL,WM",
                    help="also read the multi-scale model with weights.pixel_global,pixel_local,map_pixel "
                         "set to each triple (same trained model)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for both AnoMem runs, e.g. augment.crop_scale=[0.85,1]")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    c = args.normal_class
    gen = torch.Generator().manual_seed(args.seed)
    normals = train.images[train.targets == c]
    normals = normals[torch.randperm(normals.shape[0], generator=gen)]
    normals, held_out = normals[: args.train_size], normals[args.train_size :]
    clean = (held_out if args.split == "val" else test.images[test.targets == c])[: args.test_size]
    bad = add_defects(clean, seed=args.seed)
    images = torch.cat([clean, bad.images])  # (2T, 1, 28, 28)
    is_anomaly = np.r_[np.zeros(clean.shape[0], bool), np.ones(clean.shape[0], bool)]
    masks = torch.cat([torch.zeros_like(bad.masks), bad.masks])[:, 0].numpy() > 0  # (2T, 28, 28)
    print(f"Fashion-MNIST class {c} ({train.class_names[c]}): {normals.shape[0]} training normals; "
          f"{args.split} {clean.shape[0]} normal + {clean.shape[0]} with generated defects "
          f"({', '.join(f'{k} {bad.kinds.count(k)}' for k in sorted(set(bad.kinds)))}); seed {args.seed}", flush=True)

    rows: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    base = [f"train.epochs={args.epochs}", f"train.seed={args.seed}", "train.device=cpu", *args.set]
    variants = [("AnoMem multi-scale (layer3+layer4)", [])]
    if not args.multi_only:
        variants.append(("AnoMem single-scale (layer4)", SINGLE))
    for name, extra in variants:
        cfg = load_config("cpu-small", None, base + extra)
        configs[name] = cfg.to_dict()
        t0 = time.time()
        det = AnoMem(cfg, progress=False).fit(normals)
        fit_s = time.time() - t0
        maps = det.anomaly_maps(images)
        rows[name] = evaluate_maps(is_anomaly, masks, maps.scores, maps.fused) | {
            "seconds": round(time.time() - t0, 1), "fit_seconds": round(fit_s, 1)}
        print(f"{name}: {rows[name]}", flush=True)
        for triple in [] if extra else args.grid:
            wg, wl, wm = (float(v) for v in triple.split(","))
            m2 = maps_with(det, images, pixel_global=wg, pixel_local=wl, map_pixel=wm)
            rows[f"{name} w={triple}"] = evaluate_maps(is_anomaly, masks, m2.scores, m2.fused) | {
                "seconds": rows[name]["seconds"]}
            print(f"{name} w={triple}: {rows[f'{name} w={triple}']}", flush=True)
        if not extra:
            det.save(out / "multi_scale.ckpt", meta={"benchmark": "localisation", "normal_class": c})
            first = clean.shape[0]  # the first defective image, not a chosen one
            kind = bad.kinds[0]
            label = "" if det.threshold_ is None else (" - anomaly" if maps.scores[first] > det.threshold_.value else " - normal")
            save_heatmap_png(
                args.heatmap, images[first], maps.fused[first], maps.per_scale[first],
                f"Fashion-MNIST {train.class_names[c]} with a generated {kind} (cyan: mask): "
                f"score {maps.scores[first]:.3g}{label}",
                scale_names=cfg.backbone.taps, vrange=(0.0, max(3.0, float(np.percentile(maps.fused, 99.5)))),
                mask=masks[first],
            )

    t0 = time.time()
    knn = make_baseline("knn").fit(normals)
    knn_scores = knn.anomaly_score(images)
    knn_maps = knn_pixel_maps(normals, images)
    rows["raw-pixel kNN"] = evaluate_maps(is_anomaly, masks, knn_scores, knn_maps) | {
        "seconds": round(time.time() - t0, 1)}

    print()
    print("| method | image AUROC | pixel AUROC | AUPRO (FPR<=0.3) | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['seconds']:.0f} |")
    result = {"version": __version__, "args": vars(args), "rows": rows, "configs": configs}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\nresults: {out / 'results.json'}; heat-map: {args.heatmap}")
    return result


if __name__ == "__main__":
    main()
