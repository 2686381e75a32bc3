"""Stage-1 cost per image on the CPU: memory layout and pseudo-anomaly share, side by side.

Times one real stage-1 step (:class:`anomem.engine.Stage1Trainer`: batch, two augmented
views, forward, L_COM-MS, backward, SGD) of a preset on Fashion-MNIST-shaped images
(28x28x1, uint8) with ``train.channels_last`` off and on, alternately (A B A B ...), and
prints the median per-pair time ratio, so background load hits both alike. Also prints
the seconds one epoch of ``--normals`` normals costs with and without ``pseudo.ratio``
extra pseudo-anomalies (the share stage 1 then trains on), from the same step times.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/cpu_budget.py
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from anomem import load_config
from anomem.engine import Stage1Trainer
from anomem.factory import build_net

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from measure import Meter, interleaved


def make_trainer(preset: str, batch: int, channels_last: bool, n: int) -> Stage1Trainer:
    cfg = load_config(preset, overrides=[f"train.batch_size={batch}", f"train.channels_last={str(channels_last).lower()}"])
    x = (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    normal = torch.ones(n, dtype=torch.bool)
    normal[n // 2 :] = False
    torch.manual_seed(0)
    return Stage1Trainer(build_net(cfg, 1), cfg, x, normal, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--normals", type=int, default=1350, help="training normals of one benchmark cell")
    ap.add_argument("--ratio", type=float, default=1.0, help="pseudo.ratio")
    args = ap.parse_args()
    n = 4 * args.batch
    trainers = {False: make_trainer(args.preset, args.batch, False, n), True: make_trainer(args.preset, args.batch, True, n)}
    idx = torch.arange(args.batch)
    for t in trainers.values():  # warm-up (allocator, mkldnn primitives)
        t._step(idx, 0)
    meter = Meter(torch.device("cpu"))

    def timed(t: Stage1Trainer):  # one step per call, numbered from 1 on
        steps = itertools.count(1)
        return lambda: meter.seconds(lambda: t._step(idx, next(steps)))

    runs, _ = interleaved([timed(t) for t in trainers.values()], args.pairs)
    times = dict(zip(trainers, runs))
    ratios = [a / b for a, b in zip(times[False], times[True])]
    step = statistics.median(times[True])
    print(f"threads {torch.get_num_threads()}, preset {args.preset}, batch {args.batch}, 28x28x1")
    print(f"step s: contiguous {statistics.median(times[False]):.3f}  channels_last {step:.3f}  "
          f"speed-up (median of {args.pairs} paired ratios) {statistics.median(ratios):.2f}x")
    steps = args.normals // args.batch
    extra = int(args.normals * (1 + args.ratio)) // args.batch
    print(f"epoch s (channels_last): {args.normals} normals {steps * step:.1f}; "
          f"with pseudo.ratio={args.ratio:g} {extra * step:.1f}")


if __name__ == "__main__":
    main()
