"""Measuring on a device, shared by the benchmark scripts: wall-clock time, peak memory,
host-device syncs, FLOPs, a matmul peak, and one-line descriptions of the machine.

:class:`Meter` times and reads peak memory on one device (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's resident set from
``/proc/self/status``, VmHWM after resetting it through ``/proc/self/clear_refs``, above
VmRSS before the call, after ``malloc_trim``); :func:`interleaved` runs several
measurements in turn (A B A B ...) so that background load hits all alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import re
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

MIB = 2.0**20


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
