"""What ``make demo`` costs: ``anomem demo`` run as a user runs it, timed whole.

Runs ``anomem demo --out TMP`` (the photo demo by default; pass ``-- --data digits`` for
the other) in a fresh process under ``/usr/bin/time -v`` and prints its wall time, its peak
RSS, and every output line that mentions a warning (the demo must print none)::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python benchmarks/demo_cost.py [-- DEMO ARGS]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    anomem = shutil.which("anomem") or str(Path(sys.executable).with_name("anomem"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["/usr/bin/time", "-v", anomem, "demo", "--out", str(Path(tmp) / "demo"), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    print(proc.stdout, end="")
    err = proc.stderr.splitlines()
    timing = {k: v for k, v in (line.strip().split(": ", 1) for line in err if ": " in line and line.startswith("\t"))}
    own = [line for line in err if not line.startswith("\t") and not line.startswith("Command")]
    wall = timing.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "?")
    rss = int(timing.get("Maximum resident set size (kbytes)", "0")) / 2**20
    warned = [line for line in proc.stdout.splitlines() + own if re.search("warn", line, re.I)]
    print(f"\nanomem demo {' '.join(extra)}: exit {proc.returncode}, wall {wall}, peak RSS {rss:.2f} GiB, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, warning lines: {len(warned)}")
    for line in warned + [line for line in own if line.strip()][-5:] * (proc.returncode != 0):
        print("  " + line)


if __name__ == "__main__":
    main()
