"""`anomem score --maps` at scale: the annotated figure against the raw fused map, side by side.

Writes ``--n`` 28x28 grey PNGs (Fashion-MNIST-shaped stripes), then times the whole
``anomem score CKPT DIR --out s.csv`` command with no maps and with ``--maps`` in each
``--maps-format`` (figure, png, npy), in ``--repeats`` alternating rounds (so background
load hits every format alike), and prints the median seconds and two ratios per format:
the heat-map cost alone (command time minus the no-maps time) and the whole command,
both against ``figure``. The detector is ``--checkpoint`` or, by default, a 'tiny' one
fitted here on the same kind of images (the figure's cost does not depend on it).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/heatmap_speed.py --n 400
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

FORMATS = ("none", "figure", "png", "npy")


def stripes(n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 28, 28)
    for i in range(n):
        pos = int(torch.randint(0, 24, (1,), generator=g))
        if i % 2:
            x[i, :, pos: pos + 3] = 0.8
        else:
            x[i, pos: pos + 3, :] = 0.8
    return ((x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255).round().byte()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="images to score (the report used 400)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", default=None, help="a detector for 28x28 grey images (default: fit a tiny one)")
    a = ap.parse_args()
    from anomem import AnoMem, load_config
    from anomem.cli import main as anomem

    work = Path(tempfile.mkdtemp(prefix="heatmap_speed."))
    try:
        ckpt = a.checkpoint
        if ckpt is None:
            ckpt = str(work / "m.ckpt")
            cfg = load_config("tiny", None, ["train.epochs=2", "heads.steps=20"])
            AnoMem(cfg, progress=False).fit(stripes(200, 0)[:, None]).save(ckpt)
        images = work / "images"
        images.mkdir()
        for i, im in enumerate(stripes(a.n, 1)):
            Image.fromarray(im.numpy(), mode="L").save(images / f"img{i:04d}.png")
        times: dict[str, list[float]] = {f: [] for f in FORMATS}
        for r in range(a.repeats):
            for fmt in FORMATS:
                argv = ["score", ckpt, str(images), "--out", str(work / "s.csv")]
                maps = work / f"maps_{fmt}_{r}"
                if fmt != "none":
                    argv += ["--maps", str(maps), "--maps-format", fmt]
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    code = anomem(argv)
                times[fmt].append(time.perf_counter() - t0)
                if code != 0:
                    raise SystemExit(f"anomem {' '.join(argv)} failed with exit code {code}")
                shutil.rmtree(maps, ignore_errors=True)
        med = {f: statistics.median(t) for f, t in times.items()}
        maps_cost = {f: max(med[f] - med["none"], 1e-9) for f in FORMATS if f != "none"}
        print(f"anomem score on {a.n} images (median of {a.repeats} rounds):")
        print(f"  {'maps':<8} {'seconds':>8} {'maps s':>8} {'maps speed-up':>14} {'command speed-up':>17}")
        print(f"  {'none':<8} {med['none']:8.2f}")
        for f in ("figure", "png", "npy"):
            print(f"  {f:<8} {med[f]:8.2f} {maps_cost[f]:8.2f} {maps_cost['figure'] / maps_cost[f]:13.1f}x "
                  f"{med['figure'] / med[f]:16.1f}x")
        print(f"ratio figure/png (heat-maps alone): {maps_cost['figure'] / maps_cost['png']:.1f}x; "
              f"whole command: {med['figure'] / med['png']:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
