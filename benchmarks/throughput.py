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
import ctypes
import ctypes.util
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from anomem.config import AnoMemConfig, load_config
from anomem.engine import Stage1Trainer, resolve_device
from anomem.factory import build_net, build_scorer
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.model.net import AnoMemNet
from anomem.stage2.scorer import Scorer

DEFAULT_PRESETS = ("cpu-small", "gpu-r18", "paper-r50")
IMAGE_SHAPE = (3, 32, 32)  # the presets' natural input: CIFAR-sized colour images
CPU_BATCH_WIDE = 32  # on CPU, presets with a full-width (>= 64) backbone run at this batch
OVERHEAD_TARGET = 1.15
FMNIST_TRAIN = 5400  # stage-1 images per class: 6,000 normals less the 10% calibration hold-out
FMNIST_FORWARD = (
    6000 + 10000 + 512
)  # per class through the scoring path: train + test + prototype cache
MIB = 2.0**20


# -- measuring on a device ----------------------------------------------------------------


def _proc_status_kib(field: str) -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return math.nan
    return float(m.group(1)) if m else math.nan


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Give freed heap pages back to the OS so that RSS reflects live memory (glibc only)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Meter:
    """Wall-clock timing and peak memory on one device.

    CUDA work is asynchronous, so every measurement synchronises before starting the
    clock and before reading it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    @property
    def memory_kind(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated (tensor memory of this process)"
        return "resident set size, /proc/self/status VmHWM (whole process, not only tensors)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object], n: int = 1) -> float:
        """Mean wall-clock seconds of ``n`` back-to-back calls of ``fn``."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / n

    def peak_bytes(self, fn: Callable[[], object]) -> tuple[float, float]:
        """(peak above what was resident before ``fn``, absolute peak) in bytes; NaN if unknown."""
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            peak = torch.cuda.max_memory_allocated(self.device)
            return float(peak - before), float(peak)
        _trim_heap()
        if not _reset_peak_rss():
            return math.nan, math.nan
        before = _proc_status_kib("VmRSS")
        fn()
        peak = _proc_status_kib("VmHWM")
        return (peak - before) * 1024.0, peak * 1024.0

    def host_syncs(self, fn: Callable[[], object], mode: str) -> str:
        """Host-device syncs made by ``fn`` under ``torch.cuda.set_sync_debug_mode``."""
        if not self.cuda or mode == "off":
            return "n/a"
        self.sync()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(mode)
            try:
                fn()
            except RuntimeError as e:  # mode "error": the first sync raises
                return "error: " + str(e).strip().splitlines()[0][:60]
            finally:
                torch.cuda.set_sync_debug_mode(0)
        self.sync()
        return str(sum("synchroniz" in str(w.message).lower() for w in caught))


def matmul_peak(meter: Meter, size: int, reps: int) -> tuple[float, str]:
    """Best FLOP/s of a square matmul: bf16 on CUDA, fp32 on CPU. Returns (FLOP/s, what)."""
    dtype = torch.bfloat16 if meter.cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(meter.device, dtype)
    b = torch.randn(size, size, generator=gen).to(meter.device, dtype)
    c = torch.empty(size, size, device=meter.device, dtype=dtype)
    inner = 20 if meter.cuda else 1  # amortise kernel launches on CUDA
    meter.seconds(lambda: torch.mm(a, b, out=c), inner)  # warm-up
    best = min(meter.seconds(lambda: torch.mm(a, b, out=c), inner) for _ in range(reps))
    what = f"{str(dtype).replace('torch.', '')} {size}x{size} matmul, best of {reps}"
    return 2.0 * size**3 / best, what


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def describe_machine(device: torch.device) -> str:
    """One line naming the device, the CPU and torch, for the output header."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    env = " ".join(
        f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ
    )
    return (
        f"device: {dev} | CPU: {cpu}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()} | "
        f"torch {torch.__version__} | {env or 'OMP_* unset'}"
    )


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def interleaved(
    fns: Sequence[Callable[[], float]], reps: int, meter: Meter | None = None
) -> tuple[list[list[float]], list[tuple[float, float]]]:
    """Run ``fns`` in turn for ``reps`` rounds (A B A B ...), so that background load hits
    all alike. Returns one list of results per fn and, with a ``meter``, the peak memory
    (step peak, absolute peak) of each fn's last round, read around it (NaN without)."""
    out: list[list[float]] = [[] for _ in fns]
    peaks = [(math.nan, math.nan)] * len(fns)
    for rep in range(reps):
        for k, fn in enumerate(fns):
            if meter is not None and rep == reps - 1:
                peaks[k] = meter.peak_bytes(lambda fn=fn, acc=out[k]: acc.append(fn()))
            else:
                out[k].append(fn())
    return out, peaks


# -- what is measured ---------------------------------------------------------------------


class StepRunner:
    """Calls a trainer's step on a fixed batch of indices, advancing the step number."""

    def __init__(self, trainer: Stage1Trainer, idx: torch.Tensor) -> None:
        self.trainer, self.idx, self.step = trainer, idx, 0

    def __call__(self) -> None:
        self.trainer.step_fn(self.idx, self.step)  # torch.compile'd with train.compile=true
        self.step += 1

    def eager(self) -> None:
        """The same step, never compiled (FlopCounterMode needs to see every op)."""
        self.trainer._step(self.idx, self.step)
        self.step += 1


def make_trainer(
    cfg: AnoMemConfig, images: torch.Tensor, device: torch.device, seed: int
) -> Stage1Trainer:
    torch.manual_seed(seed)  # same initial weights and augmentation stream for A and B
    net = build_net(cfg, images.shape[1])
    return Stage1Trainer(net, cfg, images, torch.ones(images.shape[0], dtype=torch.bool), device)


def make_scorer(net: AnoMemNet, cfg: AnoMemConfig, device: torch.device) -> Scorer:
    """A stage-2 scorer of the preset's shape (untrained: its cost does not depend on training)."""
    return build_scorer(cfg, net.backbone.tap_channels).to(device)


@torch.inference_mode()
def anomem_scores(
    net: AnoMemNet, scorer: Scorer, images: torch.Tensor, device: torch.device, batch: int
) -> torch.Tensor:
    """One-class anomaly scores (N,) on the host, the path of ``AnoMem.anomaly_score``."""
    model = AnoMemModel(net, scorer, tuple(images.shape[2:]), 0.0, "one-class").to(device)
    out = [model.merged_score(ev) for ev in model.evidence_batches(images, batch)]  # Eq. 9 + 13
    return torch.cat(out).float().cpu()


@torch.inference_mode()
def pooled_features(
    net: AnoMemNet, images: torch.Tensor, device: torch.device, batch: int
) -> torch.Tensor:
    """Global-average-pooled deepest-tap features (N, C) on ``device``: a kNN bank's rows."""
    net.eval()
    out = []
    for i in range(0, images.shape[0], batch):
        x = to_float(images[i : i + batch].to(device))  # (b, C_in, H, W)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(net.features(x)[-1].float().mean((2, 3)))  # (b, C)
    return torch.cat(out)


@dataclass(frozen=True)
class PresetResult:
    """Everything measured for one preset. Times are medians over the repetitions."""

    preset: str
    batch: int
    preset_batch: int
    epochs: int  # the preset's stage-1 epochs, for the projection
    reps: int
    train_s: float  # seconds per AnoMem step
    simclr_s: float  # seconds per plain-SimCLR step
    overhead: float  # median over pairs of AnoMem / SimCLR step time
    overhead_range: tuple[float, float]  # min and max of the per-pair ratios
    score_img_s: float  # deviation maps + score
    encode_img_s: float  # encoder alone (pooled last tap)
    train_peak_mib: float  # the AnoMem step's peak above what was resident before it
    train_abs_mib: float  # absolute process/device peak during that step
    simclr_peak_mib: float
    score_peak_mib: float
    flops_step: int  # AnoMem step
    flops_step_simclr: int
    syncs: str

    @property
    def train_img_s(self) -> float:
        return self.batch / self.train_s

    @property
    def simclr_img_s(self) -> float:
        return self.batch / self.simclr_s


def warm_up(runs: Sequence[StepRunner], n: int) -> list[int]:
    """``n`` warm-up steps of each run, in turn; the first one is FLOP-counted. Returns the FLOPs."""
    flops = [count_flops(run.eager) for run in runs]
    for _ in range(n - 1):
        for run in runs:
            run()
    return flops


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


# -- report -------------------------------------------------------------------------------


def format_tables(
    results: Sequence[PresetResult], peak_flops: float, peak_what: str, meter: Meter
) -> str:
    lines = [
        "Stage-1 training step (data on device as uint8, augmentation included) and scoring",
        f"{'preset':<10} {'batch':>5} {'reps':>4} {'AnoMem img/s':>12} {'SimCLR img/s':>12} "
        f"{'overhead':>8} {'(min-max)':>11} {'score img/s':>11} {'encoder img/s':>13} {'syncs':>5}",
    ]
    for r in results:
        lo, hi = r.overhead_range
        lines.append(
            f"{r.preset:<10} {r.batch:>5} {r.reps:>4} {r.train_img_s:>12.1f} {r.simclr_img_s:>12.1f} "
            f"{r.overhead:>7.3f}x {f'{lo:.2f}-{hi:.2f}':>11} {r.score_img_s:>11.1f} {r.encode_img_s:>13.1f} {r.syncs:>5}"
        )
    lines += [
        "",
        f"Peak memory, MiB ({meter.memory_kind})",
        f"{'preset':<10} {'AnoMem step':>11} {'SimCLR step':>11} {'scoring':>8} {'process peak':>12}",
    ]
    for r in results:
        lines.append(
            f"{r.preset:<10} {r.train_peak_mib:>11.1f} {r.simclr_peak_mib:>11.1f} {r.score_peak_mib:>8.1f} {r.train_abs_mib:>12.1f}"
        )
    lines += [
        "",
        f"MFU: FLOPs of one step (FlopCounterMode) / median step time; peak {peak_flops / 1e9:.1f} GFLOP/s ({peak_what})",
        f"{'preset':<10} {'GFLOP/step':>10} {'GFLOP/img':>9} {'SimCLR GFLOP/step':>17} {'FLOP ratio':>10} {'GFLOP/s':>9} {'MFU':>7}",
    ]
    for r in results:
        achieved = r.flops_step / r.train_s
        lines.append(
            f"{r.preset:<10} {r.flops_step / 1e9:>10.2f} {r.flops_step / r.batch / 1e9:>9.3f} "
            f"{r.flops_step_simclr / 1e9:>17.2f} {r.flops_step / r.flops_step_simclr:>9.3f}x "
            f"{achieved / 1e9:>9.1f} {achieved / peak_flops:>6.1%}"
        )
    lines += [
        "",
        "Projected Fashion-MNIST one-vs-all from these rates (10 classes; per class stage 1 on the 5,400 training",
        "normals left after the 10% calibration hold-out for the preset's epochs, and ~16,500 images through the",
        "scoring path: 6,000 training + 10,000 test + 512 prototype-cache; measured at 32x32x3, FMNIST is 28x28x1):",
    ]
    for r in results:
        train_min = 10 * FMNIST_TRAIN * r.epochs / r.train_img_s / 60
        score_min = 10 * FMNIST_FORWARD / r.score_img_s / 60
        lines.append(
            f"{r.preset:<10} {r.epochs:>4} epochs: stage 1 {train_min:>9.1f} min + scoring {score_min:>6.1f} min "
            f"= {train_min + score_min:>9.1f} min"
        )
    lines.append("")
    for r in results:
        verdict = "meets" if r.overhead <= OVERHEAD_TARGET else "MISSES"
        lines.append(
            f"{r.preset}: overhead {r.overhead:.3f}x {verdict} the <= {OVERHEAD_TARGET}x target"
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
