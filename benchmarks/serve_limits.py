"""`anomem serve` under hostile load, with the limits off and on, side by side.

Three tables:

0. **Decode peaks** (``--parts peaks``): one 3000x3000 PNG of each mode decoded to a 16x16
   model input in a fresh process; its peak RSS above the RSS before (VmHWM), in bytes per
   pixel, beside the server's estimate (:func:`anomem.serve.decode_estimate`).
1. **Memory** (``memory``). ``--uploads`` concurrent POST /score of one 9000x9000 RGBA PNG
   each (a few hundred KB on the wire, ~81 Mpx). The server's RSS is read from /proc every
   10 ms; printed: the RSS before, the peak, and the RSS 3 s after the last answer, with the
   answers' status codes. Rows: the limits off (``--max-pixels`` 1e9, a budget of 1e6 MiB;
   ``--uploads-off`` uploads only); the defaults (over ``--max-pixels``: 413); the image
   allowed (``--max-pixels`` 1e8) with the default ``--decode-budget-mb`` 512 (its estimate
   is larger: 413) and with 768 (one decode at a time).
2. **A slow-client flood** (``flood``) under ``ulimit -n --fd-limit``: 2 x fd-limit clients,
   all on one event loop in a separate process, connect and send half a request head,
   reconnecting at once whenever the server closes them, for ``--flood-seconds``.
   Meanwhile this process sends GET /health on a raw socket every 0.25 s; printed: the
   worst and median latency, the worst connect time, probes over 1 s and failed (with the
   error), the flood's connections, the server's CPU share, and how much it logged. Rows:
   the guards off (``--max-connections`` 100000, ``--request-timeout`` 86400), the defaults.

    OMP_NUM_THREADS=1 python benchmarks/serve_limits.py [--parts peaks,memory,flood]
"""

from __future__ import annotations

import argparse
import asyncio
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

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

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


async def _flood(host: str, port: int, clients: int, seconds: float) -> int:
    """``clients`` slow clients on one event loop: each connects, sends half a request head and
    holds the connection until the server closes it, then connects again at once. Returns
    how many connections were made."""
    made = [0]
    end = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
                continue
            made[0] += 1
            try:
                writer.write(b"POST /score HTTP/1.1\r\nhost: x\r\n")
                await asyncio.wait_for(reader.read(), max(0.01, end - time.monotonic()))  # until dropped
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return made[0]


def flood_client() -> None:
    """``serve_limits.py --flood HOST PORT CLIENTS SECONDS``: the flood in its own process (one
    thread), so that it does not share an interpreter with the probe that is timed."""
    host, port, clients, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, clients + 64)), hard))
    print(asyncio.run(_flood(host, port, clients, seconds)), flush=True)


def probe(host: str, port: int, timeout: float = 10.0) -> tuple[float, float, bool, str]:
    """One ``GET /health`` on a raw socket: (seconds to connect, seconds to the whole answer,
    ok, what went wrong)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            t1 = time.perf_counter()
            conn.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        ok = data.startswith(b"HTTP/1.1 200") and b'"ok"' in data
        return t1 - t0, time.perf_counter() - t0, ok, "" if ok else data[:12].decode(errors="replace") or "closed"
    except OSError as e:
        return time.perf_counter() - t0, time.perf_counter() - t0, False, type(e).__name__


def flood_row(checkpoint: Path, flags: list[str], fd_limit: int, seconds: float) -> dict:
    server = Served(checkpoint, flags, fd_limit)
    host, port = server.url.removeprefix("http://").split(":")
    flood = subprocess.Popen([sys.executable, __file__, "--flood", host, port, str(2 * fd_limit), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    probes, cpu0, t0 = [], server.cpu_seconds(), time.monotonic()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probes.append(probe(host, int(port)))
        time.sleep(0.25)
    connections = int(flood.communicate(timeout=seconds + 60)[0].strip() or 0)
    cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    log_bytes, log_lines = server.stop()
    total = [p[1] for p in probes]
    return {"worst": max(total), "worst_connect": max(p[0] for p in probes), "median": float(np.median(total)),
            "slow": sum(dt > 1 for dt in total), "failed": sum(not p[2] for p in probes), "probes": len(probes),
            "connections": connections, "cpu": cpu, "errors": sorted({p[3] for p in probes if p[3]}), "log_bytes": log_bytes, "log_lines": log_lines}


_PEAK_SCRIPT = """
import ctypes, io, sys
import numpy as np
from PIL import Image
from anomem.data.image_io import decode_image
from anomem.serve import decode_estimate
mode, side, channels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stripes = (np.arange(side * side).reshape(side, side) % 251).astype(np.uint8)
save = {}
if mode == "I;16":
    im = Image.fromarray(stripes.astype(np.uint16) * 257)
elif mode == "P+alpha":
    im, save = Image.fromarray(stripes % 7, "L").convert("P"), {"transparency": 0}
else:
    im = Image.fromarray(np.stack([stripes] * len(mode), -1) if len(mode) > 1 else stripes, mode)
buf = io.BytesIO()
im.save(buf, format="PNG", **save)
data = buf.getvalue()
del im, buf, stripes
ctypes.CDLL("libc.so.6").malloc_trim(0)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status("VmRSS:")
decode_image(data, "x.png", (16, 16), channels, max_pixels=10**9)
print(status("VmHWM:") - base, decode_estimate(data, (16, 16), channels).bytes)
"""


def decode_peaks(side: int) -> None:
    """Each mode decoded once in a fresh process: its peak RSS above the process's RSS before
    (VmHWM after resetting it) against the server's estimate, in bytes per pixel."""
    print(f"one decode of a {side}x{side} PNG to a 16x16 model input: bytes per pixel")
    print(f"{'file mode':<10} {'model':>6} {'measured':>9} {'estimate':>9}")
    for mode in ("L", "RGB", "RGBA", "LA", "P+alpha", "I;16"):
        for channels in (1, 3):
            run = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode, str(side), str(channels)],
                                 capture_output=True, text=True, env=_env(), check=True)
            peak, estimate = map(int, run.stdout.split())
            print(f"{mode:<10} {'grey' if channels == 1 else 'RGB':>6} {peak / side**2:9.2f} "
                  f"{estimate / side**2:9.2f}", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--flood"]:
        return flood_client()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="peaks,memory,flood", help="which tables, comma-separated")
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--uploads-off", type=int, default=6, help="uploads for the row without limits")
    ap.add_argument("--peak-side", type=int, default=3000, help="side of the images of the peaks table")
    ap.add_argument("--fd-limit", type=int, default=128)
    ap.add_argument("--flood-seconds", type=float, default=8.0)
    ap.add_argument("--checkpoint", type=Path, default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if "peaks" in parts:
        decode_peaks(args.peak_side)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or fit_model(Path(tmp))
        if "memory" in parts:
            png = big_png()
            print(f"\nmemory: {args.uploads} concurrent uploads of one 9000x9000 RGBA PNG ({len(png) / 1024:.0f} KB)")
            print(f"{'server flags':<50} {'base MiB':>9} {'peak MiB':>9} {'peak-base':>10} {'after MiB':>10}  answers")
            off = ["--max-pixels", "1e9", "--decode-budget-mb", "1e6"]
            rows = (off, [], ["--max-pixels", "1e8"], ["--max-pixels", "1e8", "--decode-budget-mb", "768"])
            for flags in rows:
                r = memory_row(checkpoint, flags, png, args.uploads_off if flags is off else args.uploads)
                codes = ", ".join(f"{r['codes'].count(c)} x {c}" for c in sorted(set(r["codes"])))
                print(f"{' '.join(flags) or '(defaults)':<50} {r['base']:9.0f} {r['peak']:9.0f} "
                      f"{r['peak'] - r['base']:10.0f} {r['after']:10.0f}  {codes}", flush=True)
        if "flood" in parts:
            print(f"\nslow-client flood: {2 * args.fd_limit} clients (one process, one thread) under ulimit -n "
                  f"{args.fd_limit}, {args.flood_seconds:g} s; GET /health every 0.25 s from another process")
            print(f"{'server flags':<50} {'worst':>7} {'connect':>8} {'median':>7} {'>1 s':>5} {'failed':>7} "
                  f"{'flood conns':>11} {'server CPU':>10} {'log lines':>10}  errors")
            for flags in (["--max-connections", "100000", "--request-timeout", "86400"], []):
                r = flood_row(checkpoint, flags, args.fd_limit, args.flood_seconds)
                print(f"{' '.join(flags) or '(defaults)':<50} {r['worst']:6.2f}s {r['worst_connect']:7.2f}s "
                      f"{r['median']:6.3f}s {r['slow']:5d} {r['failed']:3d}/{r['probes']:<3d} {r['connections']:11d} "
                      f"{r['cpu']:9.0%} {r['log_lines']:10d}  {', '.join(r['errors']) or '-'}", flush=True)


if __name__ == "__main__":
    main()
