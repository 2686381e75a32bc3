"""Stage-1 training time under oneDNN's instruction-set cap, with and without channels-last.

`import anomem` caps oneDNN at AVX2 on AMD CPUs with AVX-512 (a channels-last backward
crashes there with torch 2.14.1). This times 4 epochs of ``cpu-small`` on 96 stripe images
of 16 px for each (cap, layout), each in its own process (the cap is read at oneDNN's first
use), so the cost of the cap is measured side by side:

    OMP_NUM_THREADS=1 python benchmarks/onednn_isa.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from synthetic import stripes
from anomem import AnoMem
x = stripes(96, False, seed=0)
t = time.time()
AnoMem("cpu-small", progress=False, epochs=4, min_steps=0, prototype_cache=0, channels_last=sys.argv[1] == "cl",
       patches__fit_fusion=False, calibration_fraction=0).fit(x)
print(round(time.time() - t, 1))
"""


def main() -> None:
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    print(f"{'ONEDNN_MAX_CPU_ISA':>20} {'layout':>14} {'seconds':>8}")
    for isa in ("AVX2", "AVX512_CORE"):
        for layout in ("cl", "nocl"):
            env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
            out = subprocess.run([sys.executable, "-c", CHILD.format(tests=tests), layout], env=env,
                                 capture_output=True, text=True)
            took = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed ({out.returncode})"
            print(f"{isa:>20} {'channels-last' if layout == 'cl' else 'contiguous':>14} {took:>8}")


if __name__ == "__main__":
    main()
