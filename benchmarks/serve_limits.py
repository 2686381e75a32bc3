"""`anomem serve` under hostile load, with the limits off and on, side by side.

Two measurements, each on a fresh server (``anomem serve CKPT --port 0``, a subprocess):

1. **Memory.** ``--uploads`` concurrent POST /score of one 9000x9000 RGBA PNG each (a few
   hundred KB on the wire, ~81 Mpx: under Pillow's bomb limit). The server's RSS is read
   from /proc every 10 ms; printed: the RSS before, the peak, and the RSS 3 s after the
   last answer, with the answers' status codes. Rows: the limits off (``--max-pixels``
   1e9, ``--max-decodes`` 1024; ``--uploads-off`` uploads only, 6 by default: 20 would need
   about 12 GiB); the defaults (the image is over ``--max-pixels``: 413);
   the image allowed (``--max-pixels`` 1e8) with the default ``--max-decodes`` and with 1.
2. **A slow-client flood** under ``ulimit -n --fd-limit``: 2 x fd-limit clients connect and
   send half a request head, reconnecting whenever the server closes them, for
   ``--flood-seconds``. Meanwhile GET /health every 0.25 s; printed: its worst latency,
   how many probes failed or took over 1 s, and how much the server logged. Rows: the
   guards off (``--max-connections`` 100000, ``--request-timeout`` 86400) and the defaults.

    OMP_NUM_THREADS=1 python benchmarks/serve_limits.py
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

MIB = 2**20


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def fit_model(where: Path) -> Path:
    """A tiny one-epoch detector on 28x28 grey stripes (memory depends on decoding, not on it)."""
    from anomem import AnoMem, load_config

    rng = np.random.default_rng(0)
    x = np.zeros((48, 1, 28, 28), np.uint8)
    for i in range(48):
        pos = int(rng.integers(0, 24))
        x[i, 0, pos: pos + 3] = 200
    det = AnoMem(load_config("tiny", None, ["train.epochs=1", "train.batch_size=16", "scorer.prototype_cache=0"]),
                 progress=False).fit(x)
    det.save(where / "model.ckpt")
    return where / "model.ckpt"


def big_png() -> bytes:
    a = np.zeros((9000, 9000, 4), np.uint8)
    a[..., 3] = 255
    a[::97, :, 0], a[:, ::89, 1] = 200, 150
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


class Served:
    """The server in a subprocess (``fd_limit``: its RLIMIT_NOFILE), its stderr kept."""

    def __init__(self, checkpoint: Path, flags: list[str], fd_limit: int | None = None) -> None:
        def limit() -> None:
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "anomem.cli", "serve", str(checkpoint), "--port", "0",
                                      *flags], stderr=subprocess.PIPE, env=_env(), preexec_fn=limit)
        for line in self.proc.stderr:
            if b" on http://" in line:
                self.url = line.decode().split(" on ")[1].split(";")[0]
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise SystemExit(f"the server did not start (exit code {self.proc.wait()})")

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.write(line)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024

    def stop(self) -> tuple[int, int]:
        """Stop it; (bytes, lines) it logged after starting."""
        self.proc.terminate()
        self.proc.wait(120)
        time.sleep(0.5)  # the drain thread takes the last lines
        self.log.seek(0)
        text = self.log.read()
        return len(text), text.count(b"\n")


def memory_row(checkpoint: Path, flags: list[str], png: bytes, uploads: int) -> dict:
    import httpx

    server = Served(checkpoint, flags)
    time.sleep(1.0)
    base, peak, done = server.rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.rss_mib())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()

    def one(i: int) -> int:
        return httpx.post(f"{server.url}/score", files=[("file", (f"big{i}.png", png, "image/png"))],
                          timeout=600).status_code

    with ThreadPoolExecutor(uploads) as ex:
        codes = list(ex.map(one, range(uploads)))
    time.sleep(3.0)
    done.set()
    after = server.rss_mib()
    server.stop()
    return {"base": base, "peak": peak[0], "after": after, "codes": codes}


def flood_row(checkpoint: Path, flags: list[str], fd_limit: int, seconds: float) -> dict:
    import httpx

    server = Served(checkpoint, flags, fd_limit)
    host, port = server.url.removeprefix("http://").split(":")
    stop = threading.Event()

    def slow_client() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=2) as conn:
                    conn.sendall(b"POST /score HTTP/1.1\r\nhost: x\r\n")
                    conn.settimeout(0.5)
                    while not stop.is_set():
                        try:
                            if conn.recv(4096) == b"":
                                break  # dropped by the server: come back
                        except TimeoutError:
                            continue
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=slow_client, daemon=True) for _ in range(2 * fd_limit)]
    for t in threads:
        t.start()
    latencies, failed = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            ok = httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - t0)
        failed += not ok
        time.sleep(0.25)
    stop.set()
    log_bytes, log_lines = server.stop()
    return {"worst": max(latencies), "slow": sum(dt > 1 for dt in latencies), "failed": failed,
            "probes": len(latencies), "log_bytes": log_bytes, "log_lines": log_lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--uploads-off", type=int, default=6, help="uploads for the row without limits")
    ap.add_argument("--fd-limit", type=int, default=128)
    ap.add_argument("--flood-seconds", type=float, default=8.0)
    ap.add_argument("--checkpoint", type=Path, default=None)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this process holds 2 x fd-limit client sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.fd_limit + 64)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or fit_model(Path(tmp))
        png = big_png()
        print(f"memory: {args.uploads} concurrent uploads of one 9000x9000 RGBA PNG ({len(png) / 1024:.0f} KB)")
        print(f"{'server flags':<44} {'base MiB':>9} {'peak MiB':>9} {'peak-base':>10} {'after MiB':>10}  answers")
        off = ["--max-pixels", "1e9", "--max-decodes", "1024"]
        for flags in (off, [], ["--max-pixels", "1e8"], ["--max-pixels", "1e8", "--max-decodes", "1"]):
            r = memory_row(checkpoint, flags, png, args.uploads_off if flags is off else args.uploads)
            codes = ", ".join(f"{r['codes'].count(c)} x {c}" for c in sorted(set(r["codes"])))
            print(f"{' '.join(flags) or '(defaults)':<44} {r['base']:9.0f} {r['peak']:9.0f} "
                  f"{r['peak'] - r['base']:10.0f} {r['after']:10.0f}  {codes}", flush=True)
        print(f"\nslow-client flood: {2 * args.fd_limit} clients under ulimit -n {args.fd_limit}, "
              f"{args.flood_seconds:g} s, GET /health every 0.25 s")
        print(f"{'server flags':<44} {'worst /health':>13} {'>1 s':>5} {'failed':>7} {'log lines':>10} {'log KiB':>8}")
        for flags in (["--max-connections", "100000", "--request-timeout", "86400"], []):
            r = flood_row(checkpoint, flags, args.fd_limit, args.flood_seconds)
            print(f"{' '.join(flags) or '(defaults)':<44} {r['worst']:12.2f}s {r['slow']:5d} "
                  f"{r['failed']:4d}/{r['probes']:<3d} {r['log_lines']:10d} {r['log_bytes'] / 1024:8.1f}", flush=True)


if __name__ == "__main__":
    main()
