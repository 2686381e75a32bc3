"""The cells of benchmarks/photos.py: one AnoMem configuration, or the baselines, on one
category and seed. Each returns a JSON-ready dict; nothing here reads or writes files.
The metrics (per kind, and over all test images) are :mod:`anomem.bench.photos`'.
"""

from __future__ import annotations

import time

import torch

from anomem import AnoMem
from anomem.baselines import RawPixelKNN, RawPixelPatchKNN
from anomem.bench.photos import all_images, patch_maps, patch_scores, per_kind, uint8_images
from anomem.data.photos import PhotoSplit

#: patch-kNN memory banks: a seeded uniform draw of 40000 patches (the registry's default),
#: and a greedy k-centre coreset of 4096 (about 1.8 % of the 230k candidate patches of 240
#: crops of 128 px at stride 4, inside the 1-10 % PatchCore uses; AnoMem's own pixel bank keeps 2048)
BANKS = {"random": 40000, "coreset": 4096}
#: patch-kNN image scores from the nearest-patch distances: the largest, or the mean of the top 1 %
AGGREGATES = {"max": 1.0, "top1%": 0.01}


def _fusion(det: AnoMem) -> dict[str, list[float]]:
    """The fitted image and heat-map splits (``settings_`` where the detector has it, else
    the older ``weights_`` dict that held them)."""
    held = det.settings_ if hasattr(type(det), "settings_") else det.weights_
    return {k: [round(float(w), 4) for w in held[k]] for k in ("image", "map")}


def anomem_overrides(seed: int, excluded: tuple[str, ...], defects: tuple[str, ...]) -> dict:
    """AnoMem's constructor keywords: the seed, and ``pseudo.defects`` unless nothing is excluded."""
    return {"train__seed": seed} if not excluded else {"train__seed": seed, "pseudo__defects": tuple(defects)}


def anomem_cell(sp: PhotoSplit, seed: int, excluded: tuple[str, ...], defects: tuple[str, ...]) -> dict:
    """AnoMem with the library defaults but ``pseudo.defects=defects`` (the default set minus ``excluded``)."""
    train, normal, defect = uint8_images(sp.train), uint8_images(sp.test_normal), uint8_images(sp.test_defect)
    val = None if sp.validation is None else uint8_images(sp.validation)  # validation normals of their own
    over = anomem_overrides(seed, excluded, defects)
    t0 = time.perf_counter()
    det = AnoMem(progress=False, **over).fit(train, validation=val)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps_n, maps_d = det.anomaly_maps(normal), det.anomaly_maps(defect)
    score_s = time.perf_counter() - t0
    th = det.threshold_
    return {
        "excluded": list(excluded), "defects": list(defects), "overrides": {k: v if isinstance(v, int) else list(v)
                                                                           for k, v in over.items()},
        "kinds": per_kind(sp, maps_n.scores, maps_d.scores, maps_n.fused, maps_d.fused),
        **all_images(sp, maps_n.fused, maps_d.fused),
        # the default threshold: set at fit at threshold.target_fpr on held-out training normals, or on the
        # validation normals when the split has them
        "threshold": {"target_fpr": th.target, "method": th.method, "fpr_held_out": th.fpr,
                      "n_held_out": th.n_normal, "fpr_test_normals": float(det.predict(normal).mean())},
        "fusion": _fusion(det), "fit_s": fit_s, "score_s": score_s,
    }


def baseline_cell(sp: PhotoSplit, seed: int) -> dict:
    """Patch kNN (both banks x both aggregations; heat-map: the nearest-patch distances,
    upsampled) and whole-image kNN, trained on the training crops and any validation
    normals (the same images AnoMem is given)."""
    train, normal, defect = uint8_images(sp.train), uint8_images(sp.test_normal), uint8_images(sp.test_defect)
    if sp.validation is not None:
        train = torch.cat([train, uint8_images(sp.validation)])
    side = tuple(sp.masks.shape[1:])
    out: dict = {}
    for bank, size in BANKS.items():
        t0 = time.perf_counter()
        b = RawPixelPatchKNN(max_patches=size, bank=bank, random_state=seed).fit(train)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        near_n, near_d = b.nearest_patch_distances(normal), b.nearest_patch_distances(defect)
        score_s = time.perf_counter() - t0
        maps_n, maps_d = patch_maps(near_n, side), patch_maps(near_d, side)
        loc = all_images(sp, maps_n, maps_d)
        for agg, frac in AGGREGATES.items():
            how = "max" if agg == "max" else "topk"
            s_n, s_d = patch_scores(near_n, how, frac), patch_scores(near_d, how, frac)
            out[f"patch-knn {bank} {agg}"] = {"kinds": per_kind(sp, s_n, s_d, maps_n, maps_d), **loc,
                                              "fit_s": fit_s, "score_s": score_s, "bank_rows": int(b.bank_.shape[0])}
    t0 = time.perf_counter()
    knn = RawPixelKNN().fit(train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s_n, s_d = knn.anomaly_score(normal), knn.anomaly_score(defect)
    out["knn"] = {"kinds": per_kind(sp, s_n, s_d), "fit_s": fit_s, "score_s": time.perf_counter() - t0}
    return out
