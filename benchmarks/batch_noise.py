"""How much one image's float32 score moves with the batch it is scored in and the thread count.

The server (``anomem serve``) batches concurrent requests together and runs on one thread,
while ``anomem score`` scores a whole folder on every thread; the same image can so get
scores that differ in the 5th digit. This script measures that spread on the model
``tests/test_serve.py`` uses (the ``tiny`` preset fitted on 48 generated stripe images),
one fit per seed: every image is scored in batches of 1, 2 and 4 (each cyclic window of
the 12 test images) at 1, 2 and 3 threads, against the whole set scored at once at 4
threads. It prints the largest difference of the fused score and of each of the three
parts the ``image`` fusion weights weigh (read alone through ``weights={"image": ...}``),
and the smallest gap between two images' scores (what tells one image's answer from another's).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python benchmarks/batch_noise.py --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem, load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's generated stripes
from synthetic import stripes  # noqa: E402

FAST = ["train.epochs=2", "train.batch_size=16", "heads.steps=20", "scorer.prototype_cache=0"]  # as tests/test_serve.py
PARTS = {"global": (1.0, 0.0, 0.0), "feature patches": (0.0, 1.0, 0.0), "pixel patches": (0.0, 0.0, 1.0)}


def spread(det: AnoMem, images: np.ndarray, weights: dict | None, threads=(1, 2, 3), sizes=(1, 2, 4)) -> tuple[float, np.ndarray]:
    """Largest |score in a small batch at t threads - score in the whole set at 4 threads|,
    and the whole set's scores."""
    torch.set_num_threads(4)
    ref = det.anomaly_score(images, weights=weights)
    worst, n = 0.0, len(images)
    for t in threads:
        torch.set_num_threads(t)
        for size in sizes:
            for start in range(n):
                idx = [(start + k) % n for k in range(size)]
                worst = max(worst, float(np.abs(det.anomaly_score(images[idx], weights=weights) - ref[idx]).max()))
    return worst, ref


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    test = np.concatenate([stripes(6, False, seed=1), stripes(6, True, seed=2)])  # as tests/test_serve.py
    print("seed  fused score  " + "  ".join(f"{p:>15}" for p in PARTS) + "  smallest gap between images")
    for seed in args.seeds:
        torch.set_num_threads(2)
        det = AnoMem(load_config("tiny", None, FAST), progress=False).fit(stripes(48, False, seed=seed))
        fused, ref = spread(det, test, None)
        parts = [spread(det, test, {"image": w})[0] for w in PARTS.values()]
        gap = float(np.diff(np.sort(ref)).min())
        print(f"{seed:>4}  {fused:11.3g}  " + "  ".join(f"{p:15.3g}" for p in parts) + f"  {gap:.3g}")


if __name__ == "__main__":
    main()
