"""Stage-1 training and scoring throughput, the memory layers' overhead, and MFU.

For each preset (``cpu-small``, ``gpu-r18``, ``paper-r50`` by default), on whatever device
is present, on random uint8 images of 32x32x3 that already sit on the device:

* **train img/s** — one stage-1 step of :class:`anomem.engine.Stage1Trainer`, the real
  training path: index a batch, two per-sample-random augmented views, forward,
  L_COM-MS, backward, SGD. Counted in images of the batch per second (each image is
  seen as two views), as the trainer's own ``EpochLog.images_per_s``.
* **SimCLR img/s** and **overhead** — the same trainer built with
  ``memory.enabled=false``: same backbone, batch, augmentations, taps, positions and
  NT-Xent, no Hopfield retrieval. The two are timed alternately (A B A B ...) and the
  overhead is the median of the per-pair time ratios AnoMem / SimCLR, so background
  load hits both alike. Target (issue 4): <= 1.15x.
* **score img/s** — inference-mode deviation maps and one-class score, as
  ``AnoMem.anomaly_score`` computes them (``inference.AnoMemModel``),
  timed alternately with the encoder alone (pooled last-tap features, what a kNN
  baseline's forward costs).
* **peak memory**, read around the last timed repetition — CUDA:
  ``torch.cuda.max_memory_allocated`` (the step's peak above what was allocated before
  it, and the absolute peak). CPU: the process's resident set from ``/proc/self/status``
  (VmHWM after resetting it through ``/proc/self/clear_refs``, above VmRSS before the
  step, after ``malloc_trim``; and the absolute VmHWM).
* **MFU** — FLOPs of one training step counted by ``FlopCounterMode`` (convolutions and
  matmuls, forward and backward, augmentation included), divided by the median step
  time, as a fraction of this device's measured matmul peak (a square matmul, bf16 on
  CUDA, fp32 on CPU, best of a few).
* **syncs** (CUDA only) — one step under ``torch.cuda.set_sync_debug_mode``: the number
  of host-device synchronisations it made (``warn``), or the first one (``error``).

On CPU the GPU presets run at a smaller batch (32 unless ``--batch`` is given), and the
output says so. Run on a shared machine with ``OMP_WAIT_POLICY=passive``: with the
default busy-waiting OpenMP threads, a 2-thread step on an oversubscribed 2-core
machine runs ~10x slower (measured; docs/performance.md).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python benchmarks/throughput.py
    python benchmarks/throughput.py --presets gpu-r18 --batch 1024     # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anomem.config import load_config
from anomem.engine import resolve_device

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from measure import MIB, Meter, describe_machine, interleaved, load_average, matmul_peak
from throughput_report import PresetResult, format_tables
from workloads import (
    IMAGE_SHAPE,
    StepRunner,
    anomem_scores,
    make_scorer,
    make_trainer,
    pooled_features,
    warm_up,
)

DEFAULT_PRESETS = ("cpu-small", "gpu-r18", "paper-r50")
CPU_BATCH_WIDE = 32  # on CPU, presets with a full-width (>= 64) backbone run at this batch


def measure_preset(
    preset: str,
    meter: Meter,
    batch: int | None,
    reps: int | None,
    steps: int,
    warmup: int,
    score_images: int | None,
    score_batch: int,
    sync_mode: str,
    extra: Sequence[str],
    seed: int,
) -> PresetResult:
    """Train-step A/B timing, FLOPs, peak memory and scoring rates for one preset."""
    device = meter.device
    base = load_config(preset, None, [f"train.device={device}", *extra])
    preset_batch = base.train.batch_size
    if batch is None:
        wide = base.backbone.width >= 64
        batch = min(preset_batch, CPU_BATCH_WIDE) if device.type == "cpu" and wide else preset_batch
    if reps is None:
        reps = 10 if meter.cuda else (3 if base.backbone.width >= 64 else 5)
    cfg = load_config(preset, None, [f"train.device={device}", f"train.batch_size={batch}", *extra])
    plain = load_config(
        preset,
        None,
        [f"train.device={device}", f"train.batch_size={batch}", *extra, "memory.enabled=false"],
    )

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * batch, *IMAGE_SHAPE), dtype=torch.uint8, generator=gen)
    # A gathered (not sliced) batch, as run_epoch indexes a random permutation.
    idx = torch.randperm(2 * batch, generator=gen)[:batch].to(device)
    a = StepRunner(make_trainer(cfg, images, device, seed), idx)
    b = StepRunner(make_trainer(plain, images, device, seed), idx)

    flops_a, flops_b = warm_up([a, b], warmup)
    syncs = meter.host_syncs(a, sync_mode)
    (ta, tb), ((peak_a, abs_a), (peak_b, _)) = interleaved(
        [lambda: meter.seconds(a, steps), lambda: meter.seconds(b, steps)], reps, meter
    )
    ratios = [x / y for x, y in zip(ta, tb)]

    # Scoring, with the network as a fitted detector holds it (contiguous, eval mode).
    net = a.trainer.net.to(memory_format=torch.contiguous_format)
    scorer = make_scorer(net, cfg, device)
    n_score = score_images or (4096 if meter.cuda else batch)
    test = torch.randint(0, 256, (n_score, *IMAGE_SHAPE), dtype=torch.uint8, generator=gen)
    test = test.to(device)

    def score() -> None:
        anomem_scores(net, scorer, test, device, score_batch)

    def encode() -> None:
        pooled_features(net, test, device, score_batch).cpu()

    score()  # warm-up
    encode()
    (ts, te), ((score_peak, _), _) = interleaved(
        [lambda: meter.seconds(score), lambda: meter.seconds(encode)], reps, meter
    )

    med = statistics.median
    return PresetResult(
        preset=preset,
        batch=batch,
        preset_batch=preset_batch,
        epochs=cfg.train.epochs,
        reps=reps,
        train_s=med(ta),
        simclr_s=med(tb),
        overhead=med(ratios),
        overhead_range=(min(ratios), max(ratios)),
        score_img_s=n_score / med(ts),
        encode_img_s=n_score / med(te),
        train_peak_mib=peak_a / MIB,
        train_abs_mib=abs_a / MIB,
        simclr_peak_mib=peak_b / MIB,
        score_peak_mib=score_peak / MIB,
        flops_step=flops_a,
        flops_step_simclr=flops_b,
        syncs=syncs,
    )


def profile_overhead(
    preset: str, meter: Meter, batch: int, extra: Sequence[str], seed: int, top: int = 12
) -> str:
    """Where the memory layers' time goes: per-op self time of AnoMem vs SimCLR steps.

    Two steps of each are profiled alternately, after one warm-up step. The Hopfield
    memories' forward is annotated (``record_function`` through module hooks) so that its
    inclusive time shows; their backward appears as the extra ``*Backward`` ops.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from anomem.model.memory import HopfieldMemory

    device = meter.device
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2 * batch, *IMAGE_SHAPE), dtype=torch.uint8, generator=gen)
    idx = torch.randperm(2 * batch, generator=gen)[:batch].to(device)
    runs = {}
    for name, enabled in (("AnoMem", "true"), ("SimCLR", "false")):
        cfg = load_config(
            preset,
            None,
            [
                f"train.device={device}",
                f"train.batch_size={batch}",
                *extra,
                f"memory.enabled={enabled}",
            ],
        )
        runs[name] = StepRunner(make_trainer(cfg, images, device, seed), idx)
        runs[name]()  # warm-up

    def annotate(module: torch.nn.Module) -> None:
        ctx: list[record_function] = []
        module.register_forward_pre_hook(
            lambda m, a: ctx.append(record_function("HopfieldMemory.forward").__enter__())
        )
        module.register_forward_hook(lambda m, a, o: ctx.pop().__exit__(None, None, None))

    for m in runs["AnoMem"].trainer.net.modules():
        if isinstance(m, HopfieldMemory):
            annotate(m)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if meter.cuda else [])
    self_us: dict[str, dict[str, float]] = {n: {} for n in runs}
    calls: dict[str, dict[str, int]] = {n: {} for n in runs}
    memory_fwd_us = 0.0
    for _ in range(2):
        for name, run in runs.items():
            with profile(activities=activities) as prof:
                run()
                meter.sync()
            for ev in prof.key_averages():
                t = (
                    getattr(ev, "self_device_time_total", 0.0)
                    if meter.cuda
                    else ev.self_cpu_time_total
                )
                if ev.key == "HopfieldMemory.forward":
                    memory_fwd_us += (
                        ev.cpu_time_total
                        if not meter.cuda
                        else getattr(ev, "device_time_total", 0.0)
                    )
                    continue
                self_us[name][ev.key] = self_us[name].get(ev.key, 0.0) + t
                calls[name][ev.key] = calls[name].get(ev.key, 0) + ev.count
    a, b = self_us["AnoMem"], self_us["SimCLR"]
    total_a, total_b = sum(a.values()) / 2e3, sum(b.values()) / 2e3
    keys = sorted(set(a) | set(b), key=lambda k: a.get(k, 0.0) - b.get(k, 0.0), reverse=True)[:top]
    clock = "device" if meter.cuda else "CPU"
    lines = [
        f"Profile, {preset} batch {batch}: {clock} self time per step (ms, mean of 2 steps), ops sorted by AnoMem - SimCLR",
        f"{'op':<42} {'AnoMem':>9} {'SimCLR':>9} {'diff':>8} {'calls A/B':>11}",
    ]
    for k in keys:
        ta, tb = a.get(k, 0.0) / 2e3, b.get(k, 0.0) / 2e3
        ca, cb = calls["AnoMem"].get(k, 0) // 2, calls["SimCLR"].get(k, 0) // 2
        lines.append(f"{k[:42]:<42} {ta:>9.1f} {tb:>9.1f} {ta - tb:>+8.1f} {f'{ca}/{cb}':>11}")
    lines.append(f"{'all ops':<42} {total_a:>9.1f} {total_b:>9.1f} {total_a - total_b:>+8.1f}")
    lines.append(
        f"HopfieldMemory forward (inclusive, all scales, {clock} time): {memory_fwd_us / 2e3:.1f} ms per step"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help=f"training batch for every preset (default: the preset's; on CPU at most {CPU_BATCH_WIDE} for full-width backbones)",
    )
    ap.add_argument(
        "--reps",
        type=int,
        default=None,
        help="A/B repetitions (default: 10 on CUDA; on CPU 5, or 3 for full-width backbones)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per repetition (default: 10 on CUDA, 1 on CPU)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps per trainer, >= 1, the first one FLOP-counted (default: 5 on CUDA, 1 on CPU)",
    )
    ap.add_argument(
        "--score-images",
        type=int,
        default=None,
        help="images scored per repetition (default: 4096 on CUDA, the batch on CPU)",
    )
    ap.add_argument(
        "--score-batch",
        type=int,
        default=256,
        help="scoring batch (AnoMem.anomaly_score's default)",
    )
    ap.add_argument(
        "--sync-check", choices=("warn", "error", "off"), default="warn", help="CUDA only"
    )
    ap.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="side of the peak matmul (default: 8192 on CUDA, 2048 on CPU)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="train.compile=true (torch.compile of the step)"
    )
    ap.add_argument(
        "--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True"
    )
    ap.add_argument(
        "--profile",
        nargs="*",
        default=None,
        metavar="PRESET",
        help="also profile (torch.profiler) two AnoMem and two SimCLR steps of these presets "
        "(none named: all) and print the ops the memory layers add",
    )
    ap.add_argument("--seed", type=int, default=0)
    return ap


@dataclass(frozen=True)
class ThroughputReport:
    results: list[PresetResult]
    peak_flops: float  # the device's measured matmul peak, FLOP/s
    peak_what: str  # how it was measured


def main(argv: Sequence[str] | None = None) -> ThroughputReport:
    """Measure, print the tables, return the report."""
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    meter = Meter(device)
    cuda = meter.cuda
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    steps = args.steps or (10 if cuda else 1)
    warmup = max(
        2 if args.compile else 1, args.warmup or (5 if cuda else 1)
    )  # compiling needs a step of its own
    extra = ["train.compile=true"] if args.compile else []

    print(describe_machine(device))
    print(f"load average at start: {load_average()}")
    notes = []
    if args.batch:
        notes.append(f"every preset trains at batch {args.batch} (--batch)")
    elif not cuda:
        notes.append(
            f"CPU run: presets with a full-width backbone (width >= 64: gpu-r18, paper-r50) train at batch "
            f"{CPU_BATCH_WIDE} instead of the preset's 1024, to fit the run in minutes on a few cores"
        )
    if not cuda:
        notes.append(
            "CPU run: fp32, contiguous layout (bf16 autocast and channels_last are CUDA-only)"
        )
    else:
        notes.append(
            "CUDA run: bf16 autocast and channels_last as configured by the presets (train.amp, train.channels_last)"
        )
    notes.append(
        "images: random uint8 32x32x3 already on the device; img/s counts batch images (2 views each)"
    )
    for n in notes:
        print("note: " + n)
    sys.stdout.flush()

    results = []
    for preset in args.presets:
        t0 = time.perf_counter()
        r = measure_preset(
            preset,
            meter,
            args.batch,
            args.reps,
            steps,
            warmup,
            args.score_images,
            args.score_batch,
            args.sync_check,
            extra,
            args.seed,
        )
        results.append(r)
        print(
            f"[{preset}: batch {r.batch} (preset: {r.preset_batch}), measured in {time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
        if args.profile is not None and (not args.profile or preset in args.profile):
            print(profile_overhead(preset, meter, r.batch, extra, args.seed), flush=True)
    peak, what = matmul_peak(meter, args.matmul_size or (8192 if cuda else 2048), 5)
    print()
    print(format_tables(results, peak, what, meter))
    print(f"load average at end: {load_average()}")
    return ThroughputReport(results, peak, what)


if __name__ == "__main__":
    main()
