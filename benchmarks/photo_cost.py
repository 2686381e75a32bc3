"""What a photo folder costs: training time and peak memory at 128 and 256 px, scoring
rate, each beside raw-pixel patch kNN on the same images, measured side by side.

Each measurement is its own process under ``/usr/bin/time -v`` (peak RSS of the whole
process), on the ``brick`` category of :mod:`anomem.data.photos` (240 training normals,
crops of the side asked for, library defaults):

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python benchmarks/photo_cost.py

prints one line per (method, size) and the ratios of the first two methods
(``--methods``: AnoMem, patch kNN with a random bank, patch kNN with a coreset bank).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

import numpy as np
import torch

CHILD = "child"


def child(method: str, size: int, n_train: int, n_score: int, settings: dict) -> None:
    from anomem import AnoMem
    from anomem.baselines import make_baseline
    from anomem.data.photos import photo_category

    # brick is 512 px tall: 256-px crops need half of it for each split
    sp = photo_category("brick", size=size, n_train=n_train, n_test_normal=n_score, per_kind=1, kinds=("stain",),
                        test_fraction=0.35 if size <= 160 else 0.5)
    u8 = lambda a: torch.from_numpy(np.round(a * 255).astype(np.uint8))  # noqa: E731
    train, test = u8(sp.train), u8(sp.test_normal)
    t0 = time.perf_counter()
    if method == "anomem":
        det = AnoMem(progress=False, **settings).fit(train)
    else:  # patch kNN as benchmarks/photos.py runs it: a random bank of 40000 or a coreset of 4096 patches
        kw = {"bank": "coreset", "max_patches": 4096} if method == "patch-knn-coreset" else {}
        det = make_baseline("patch-knn", **kw).fit(train)
    fit_s = time.perf_counter() - t0
    det.anomaly_score(test[:4])  # warm-up
    t0 = time.perf_counter()
    det.anomaly_score(test)
    score_s = time.perf_counter() - t0
    print(json.dumps({"fit_s": fit_s, "images_per_s": test.shape[0] / score_s}))


def measure(method: str, size: int, n_train: int, n_score: int, settings: dict) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, CHILD, method, str(size), str(n_train), str(n_score),
           json.dumps(settings)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {**rec, "peak_rss_gib": rss_kb / 2**20, "method": method, "size": size}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--score", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=["anomem", "patch-knn"],
                    choices=["anomem", "patch-knn", "patch-knn-coreset"], help="the first is the ratios' numerator")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                    help="a config keyword for AnoMem (e.g. train__min_steps=300), for a variant")
    a = ap.parse_args()
    import yaml

    settings = {k: yaml.safe_load(v) for k, v in (kw.split("=", 1) for kw in a.set)}
    print(f"torch threads {torch.get_num_threads()}; {a.train} training normals, {a.score} scored; AnoMem settings {settings}")
    for size in a.sizes:
        rows = {m: measure(m, size, a.train, a.score, settings) for m in a.methods}
        for r in rows.values():
            print(f"{r['method']:9s} {size:4d} px  fit {r['fit_s']:7.1f} s  peak RSS {r['peak_rss_gib']:5.2f} GiB  "
                  f"scoring {r['images_per_s']:7.1f} images/s")
        if len(rows) < 2:
            continue
        an, pk = rows[a.methods[0]], rows[a.methods[1]]
        print(f"ratio {a.methods[0]} / {a.methods[1]} at {size} px: fit {an['fit_s'] / pk['fit_s']:.1f}x, "
              f"RSS {an['peak_rss_gib'] / pk['peak_rss_gib']:.1f}x, scoring rate {an['images_per_s'] / pk['images_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
