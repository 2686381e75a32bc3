"""`anomem serve` under load: requests/s and latency at several concurrencies, against
what `anomem score` costs per image in the same run.

Starts the real server (``anomem serve CKPT --port 0``, a subprocess), sends
``--requests`` POST /score requests of ``--images`` PNG each from 1, 8 and 32 client
threads (one httpx client, a kept-alive connection per thread, opened before timing),
and prints per concurrency: requests/s, images/s, p50 and p99 latency, and the mean
micro-batch (images the server scored per model call, from GET /health). Then it times the command line on the same images:
``anomem score CKPT ONE.png`` (a process per image: what a script calling the CLI pays)
and ``anomem score CKPT DIR`` over all of them (per image), and the model alone in this
process (``AnoMem.anomaly_score`` on 1 and on 32 images). Server and CLI run with
``OMP_NUM_THREADS=--threads``; the client threads share the machine with the server.

The detector is ``--checkpoint`` or, by default, a ``--preset`` one fitted here for one
epoch on 28x28 grey stripes (the serving cost depends on the network's size, not on
how well it was trained).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

LEVELS = (1, 8, 32)


def stripes(n: int, seed: int) -> np.ndarray:
    """(n, 28, 28) uint8: a bar per image, horizontal or vertical, at a seeded place."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        pos = int(rng.integers(0, 24))
        if i % 2:
            x[i, :, pos: pos + 3] = 0.8
        else:
            x[i, pos: pos + 3, :] = 0.8
    return (np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1) * 255).round().astype(np.uint8)


def _env(threads: int) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "passive",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def start_server(checkpoint: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "anomem.cli", "serve", str(checkpoint), "--port", "0",
                             "--max-batch", str(max_batch)],
                            stderr=subprocess.PIPE, text=True, env=_env(threads))
    for line in proc.stderr:
        if " on http://" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, line.split(" on ")[1].split(";")[0]
    raise SystemExit(f"the server did not start (exit code {proc.wait()})")


def load(url: str, files: list[bytes], requests: int, images: int, concurrency: int) -> dict[str, float]:
    """``requests`` POST /score from ``concurrency`` threads sharing one client (a pool of
    ``concurrency`` kept-alive connections, opened before the clock starts)."""
    import httpx

    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=concurrency,
                                                           max_keepalive_connections=concurrency))

    def one(i: int) -> float:
        picked = [("file", (f"{i}_{k}.png", files[(i * images + k) % len(files)], "image/png")) for k in range(images)]
        t0 = time.perf_counter()
        r = client.post(f"{url}/score", files=picked)
        dt = time.perf_counter() - t0
        if r.status_code != 200 or len(r.json()["results"]) != images:
            raise SystemExit(f"request {i} failed: {r.status_code} {r.text[:200]}")
        return dt

    with client, ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(2 * concurrency)))  # warm-up: every connection open, every thread started
        before = client.get(f"{url}/health").json()
        t0 = time.perf_counter()
        latencies = sorted(ex.map(one, range(requests)))
        wall = time.perf_counter() - t0
        after = client.get(f"{url}/health").json()
    return {"requests_s": requests / wall, "images_s": requests * images / wall,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "batch": (after["images_scored"] - before["images_scored"]) / max(1, after["batches"] - before["batches"])}


def cli_seconds(argv: list[str], threads: int, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "anomem.cli", "score", *argv, "--out", str(out)], check=True,
                   env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def in_process_ms(checkpoint: Path, images: np.ndarray, threads: int, reps: int = 5) -> dict[int, float]:
    """ms per image of ``AnoMem.anomaly_score`` in this process, for batches of 1 and 32 (median)."""
    import torch

    from anomem import AnoMem

    torch.set_num_threads(threads)
    det = AnoMem.load(checkpoint)
    x = torch.from_numpy(images[:32, None])  # (32, 1, 28, 28)
    out = {}
    for n in (1, 32):
        det.anomaly_score(x[:n])  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            det.anomaly_score(x[:n])
            times.append(time.perf_counter() - t0)
        out[n] = 1000 * statistics.median(times) / n
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a trained detector (default: fit --preset here)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--images", type=int, default=1, help="images per request")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server and of anomem score")
    ap.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch")
    ap.add_argument("--cli-runs", type=int, default=5, help="single-image `anomem score` runs (median)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pngs = []
        folder = tmp / "images"
        folder.mkdir()
        for i, im in enumerate(stripes(args.requests, seed=1)):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")
            pngs.append(buf.getvalue())
            (folder / f"i{i:04d}.png").write_bytes(pngs[-1])
        checkpoint = Path(args.checkpoint) if args.checkpoint else tmp / "model.ckpt"
        if args.checkpoint is None:
            from anomem import AnoMem, load_config

            cfg = load_config(args.preset, None, ["train.epochs=1", "heads.steps=20"])
            AnoMem(cfg, progress=False).fit(stripes(400, seed=0)[:, None]).save(checkpoint)

        proc, url = start_server(checkpoint, args.threads, args.max_batch)
        try:
            rows = {c: load(url, pngs, args.requests, args.images, c) for c in LEVELS}
        finally:
            proc.terminate()
            proc.wait(60)
        single = statistics.median(cli_seconds([str(checkpoint), str(folder / "i0000.png")], args.threads,
                                               tmp / "one.csv") for _ in range(args.cli_runs))
        whole = cli_seconds([str(checkpoint), str(folder)], args.threads, tmp / "all.csv")
        model = in_process_ms(checkpoint, stripes(32, seed=1), args.threads)

    what = f"--checkpoint {args.checkpoint}" if args.checkpoint else f"preset {args.preset}, 28x28 grey"
    print(f"anomem serve, {what}: {args.requests} requests x {args.images} image(s) per level, "
          f"server OMP_NUM_THREADS={args.threads}, --max-batch {args.max_batch}")
    print(f"{'concurrency':>11} {'requests/s':>10} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6}")
    for c, r in rows.items():
        print(f"{c:>11} {r['requests_s']:10.1f} {r['images_s']:9.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['batch']:6.1f}")
    print(f"anomem score, one process per image: {1000 * single:.0f} ms per image (median of {args.cli_runs})")
    print(f"anomem score, one process for {args.requests} images: {1000 * whole / args.requests:.1f} ms per image "
          f"({whole:.1f} s)")
    print(f"the model alone (AnoMem.anomaly_score in-process): {model[1]:.1f} ms for 1 image, "
          f"{model[32]:.2f} ms per image in batches of 32")


if __name__ == "__main__":
    main()
