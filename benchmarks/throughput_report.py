"""throughput.py's results and their tables: rates, the memory layers' overhead, peak
memory, MFU and the projected Fashion-MNIST one-vs-all time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from measure import Meter

OVERHEAD_TARGET = 1.15
FMNIST_TRAIN = 5400  # stage-1 images per class: 6,000 normals less the 10% calibration hold-out
FMNIST_FORWARD = (
    6000 + 10000 + 512
)  # per class through the scoring path: train + test + prototype cache


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
