"""Model size and scoring cost against training-set size: AnoMem vs a kNN feature bank.

AnoMem's memories are fixed-size (K patterns per scale), so what scoring reads — encoder,
memories and the stage-2 scorer — does not depend on the number N of training normals.
A CSI/DN2-style detector keeps a feature bank of all N training images and scores a test
image by the mean distance to its k nearest bank rows; its bytes and scoring time grow
with N. This script shows both in one run, for N = 1k, 10k, 60k (Fashion-MNIST's
training set has 60k images; one class has 6k).

* AnoMem: parameter and buffer bytes of the network (encoder + memories) and of the
  scorer, and the time to score ``--queries`` test images (deviation maps + one-class
  score, the path of ``AnoMem.anomaly_score``), measured at every N to show that it
  stays put.
* kNN: a bank of N rows of the same encoder's pooled deepest-tap features (L2-normalised,
  fp32); scoring = the same encoder's forward for the queries, then ``torch.cdist`` +
  ``topk`` against the bank in chunks, mean of the k smallest distances.
* The fitted detector's checkpoint: besides the network it stores banks of pooled
  deviations (a normal bank and the held-out calibration normals, both capped at
  ``scorer.normal_bank`` rows, and the prototype cache) and the normal feature bank
  (pooled tap features of up to ``bank.size`` training normals). Their size is predicted for every N from their shapes as the code builds them,
  and checked against real checkpoints written by ``AnoMem.fit(...).save`` at
  ``--fit-sizes`` (1-epoch fits on random images; training quality is not the point).

Random images and random bank rows are used throughout: this measures cost, not
accuracy. Timings of the three methods are interleaved over ``--reps`` rounds and the
medians reported.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python benchmarks/scaling.py
    python benchmarks/scaling.py --preset gpu-r18 --queries 10000       # on a GPU
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # run from anywhere: measure.py and workloads.py sit beside

from measure import MIB, Meter, describe_machine, interleaved, load_average  # noqa: E402
from workloads import IMAGE_SHAPE, anomem_scores, make_scorer, pooled_features  # noqa: E402

from anomem import AnoMem  # noqa: E402
from anomem.calibration import calibration_count  # noqa: E402
from anomem.config import AnoMemConfig, ThresholdConfig, load_config, with_overrides  # noqa: E402
from anomem.engine import resolve_device  # noqa: E402
from anomem.factory import build_net, build_scorer  # noqa: E402
from anomem.fit.stage2 import PATCH_FIT_IMAGES
from anomem.stage2.patch_bank import pixel_descriptors
from anomem.stage2.scorer import Scorer  # noqa: E402

FLOAT_BYTES = 4  # banks are stored in fp32


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Mean Euclidean distance of each query to its k nearest bank rows (CSI/DN2-style).

    The bank is scanned in chunks so the (M, chunk) distance block stays small; each chunk's
    k best are merged with the running k best.

    Shape:
        queries (M, D), bank (N, D) -> (M,)
    """
    best = queries.new_full((queries.shape[0], k), math.inf)  # (M, k)
    for i in range(0, bank.shape[0], chunk):
        d = torch.cdist(queries, bank[i : i + chunk])  # (M, c)
        cand = torch.cat(
            [best, d.topk(min(k, d.shape[1]), dim=1, largest=False).values], dim=1
        )  # (M, k + k')
        best = cand.topk(k, dim=1, largest=False).values  # (M, k)
    return best.mean(1)


# -- the fitted detector's stored state ---------------------------------------------------


@dataclass(frozen=True)
class CheckpointModel:
    """Bytes of a fitted detector's checkpoint as a function of N, from the shapes the code
    builds (``AnoMem.fit`` / ``_fit_stage2`` / ``save``), for one-class training on N normals.

    Rows stored per image: pooled deviations φ(Δ^(s)) of all scales (``row_floats`` floats)
    and, for some banks, the S raw scores.
    """

    fixed: int  # network, scorer, prototype cache, config, history: measured, N-independent
    row_floats: int  # Σ_s C_s · pool²
    scales: int  # S
    normal_bank_cap: int  # scorer.normal_bank
    threshold: ThresholdConfig  # how many normals are held out: anomem.calibration.calibration_count
    feature_floats: int = 0  # Σ_s C_s: one row of the normal feature bank (bank.size)
    feature_bank_cap: int = 0  # bank.size (0 = no feature bank)
    pixel_floats: int = 0  # C·h·w: one row of the raw-pixel bank (same normals as the feature bank)
    # per patch bank (anomem.stage2.patch_bank): (positions per image, floats per descriptor, coreset cap)
    patch_banks: tuple[tuple[int, int, int], ...] = ()
    patch_held_out: float = 0.1  # patches.held_out: training normals left out of the coresets

    def split(self, n: int) -> tuple[int, int]:
        """(calibration normals, training normals) out of n, as ``AnoMem.fit`` splits them."""
        cal = calibration_count(n, self.threshold)
        return cal, n - cal

    def parts(self, n: int) -> dict[str, int]:
        cal, train = self.split(n)
        kept = min(train, self.normal_bank_cap)
        row = self.row_floats * FLOAT_BYTES
        bank_scores = self.scales * FLOAT_BYTES if self.feature_bank_cap else 0  # per-scale bank distances
        if self.feature_bank_cap and self.pixel_floats:
            # the pixel bank's global, local and contrast scores, and the image's pixel vector
            bank_scores += (3 + self.pixel_floats) * FLOAT_BYTES
        return {
            "normal bank (capped)": kept * (row + self.scales * FLOAT_BYTES),  # pooled + raw scores
            "calibration bank (capped)": min(cal, self.normal_bank_cap) * (row + self.scales * FLOAT_BYTES + bank_scores),
            "feature bank (capped)": min(train, self.feature_bank_cap) * self.feature_floats * FLOAT_BYTES,
            "pixel bank (capped)": min(train, self.feature_bank_cap) * self.pixel_floats * FLOAT_BYTES,
            "patch banks (capped)": sum(min(cap, self._patch_images(train) * pos) * d * FLOAT_BYTES
                                        for pos, d, cap in self.patch_banks)
            + (min(cal, self.normal_bank_cap) * 2 * FLOAT_BYTES if self.patch_banks else 0),  # held-out patch scores
        }

    def _patch_images(self, train: int) -> int:
        """Training normals whose descriptors feed the coresets (anomem.fit.stage2.fit_patch_banks)."""
        held = min(max(1, round(self.patch_held_out * train)), train - 1, 64)
        return min(train - held, PATCH_FIT_IMAGES)

    def total(self, n: int) -> int:
        return self.fixed + sum(self.parts(n).values())


def fitted_checkpoint_bytes(cfg: AnoMemConfig, n: int, device: torch.device, seed: int) -> int:
    """Size of the file ``AnoMem(cfg).fit(n random images).save`` writes (1 epoch)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *IMAGE_SHAPE), dtype=torch.uint8, generator=gen)
    fit_cfg = with_overrides(cfg, ["train.epochs=1", "train.warmup_epochs=0"])
    det = AnoMem(fit_cfg, progress=False).fit(x)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "det.pt"
        det.save(path)
        return path.stat().st_size


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeResult:
    n: int
    anomem_model_bytes: int  # encoder + memories + scorer: what scoring reads
    anomem_checkpoint_bytes: int  # predicted from the code's shapes
    anomem_checkpoint_measured: int | None  # a real fitted checkpoint, where one was written
    anomem_score_s: float  # per --queries images
    knn_bank_bytes: int
    knn_encode_s: float
    knn_search_s: float

    @property
    def knn_score_s(self) -> float:
        return self.knn_encode_s + self.knn_search_s


@dataclass(frozen=True)
class ScalingReport:
    preset: str
    queries: int
    k: int
    memory_bytes: int  # the Hopfield patterns alone
    encoder_bytes: int
    feature_dim: int
    checkpoint: CheckpointModel
    fits: dict[int, int]  # N -> measured checkpoint bytes
    rows: list[SizeResult]


def measure(args: argparse.Namespace) -> ScalingReport:
    device = resolve_device(args.device)
    meter = Meter(device)
    preset = args.preset or ("gpu-r18" if meter.cuda else "cpu-small")
    cfg = load_config(preset, None, [f"train.device={device}"])
    torch.manual_seed(args.seed)
    net = build_net(cfg, IMAGE_SHAPE[0]).to(device).eval()
    scorer: Scorer = make_scorer(net, cfg, device)
    memory_bytes = sum(module_bytes(m) for m in net.memories)
    model_bytes = module_bytes(net) + module_bytes(scorer)
    encoder_bytes = module_bytes(net.backbone)
    dim = net.backbone.tap_channels[-1]

    # Checkpoint size: fit for real at a few small N, take the N-independent part from the
    # first and check the shape model's prediction against the others.
    row_floats = sum(c * cfg.heads.pool_size**2 for c in net.backbone.tap_channels)
    feature_floats = sum(net.backbone.tap_channels)
    pixel_active = cfg.bank.size > 0 and cfg.weights.pixel_bank_used
    pixel_floats = int(build_scorer(cfg, net.backbone.tap_channels).pixels.features(torch.zeros(1, *IMAGE_SHAPE)).shape[1])
    pixel_floats = pixel_floats if pixel_active else 0
    with torch.no_grad():
        probe = torch.zeros(1, *IMAGE_SHAPE, device=device)
        descriptors = (net.evidence(probe, local=True).local_features, pixel_descriptors(probe))
    patch_banks = tuple((int(d.shape[2] * d.shape[3]), int(d.shape[1]), n)
                        for d, n in zip(descriptors, (cfg.patches.feature_bank, cfg.patches.pixel_bank)) if n > 0)
    shape_model = CheckpointModel(
        0, row_floats, len(net.memories), cfg.scorer.normal_bank, cfg.threshold,
        feature_floats, cfg.bank.size, pixel_floats, patch_banks, cfg.patches.held_out,
    )
    fits: dict[int, int] = {}
    for n in args.fit_sizes:
        t0 = time.perf_counter()
        fits[n] = fitted_checkpoint_bytes(cfg, n, device, args.seed)
        print(
            f"[fitted N={n} for the checkpoint size in {time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    fixed = 0
    if fits:
        n0 = min(fits)
        fixed = fits[n0] - sum(shape_model.parts(n0).values())
    ckpt = CheckpointModel(
        fixed,
        row_floats,
        len(net.memories),
        cfg.scorer.normal_bank,
        cfg.threshold,
        feature_floats,
        cfg.bank.size,
        pixel_floats,
        patch_banks,
        cfg.patches.held_out,
    )

    gen = torch.Generator().manual_seed(args.seed)
    queries = torch.randint(
        0, 256, (args.queries, *IMAGE_SHAPE), dtype=torch.uint8, generator=gen
    ).to(device)
    rows = []
    for n in args.sizes:
        # Random unit rows stand in for the encoder's features of N training images.
        bank = F.normalize(torch.randn(n, dim, generator=gen), dim=1).to(device)  # (N, D)
        q = pooled_features(net, queries, device, args.batch)  # warm-up, and the queries' rows
        q = F.normalize(q, dim=1)

        def run_anomem() -> float:
            return meter.seconds(lambda: anomem_scores(net, scorer, queries, device, args.batch))

        def run_encode() -> float:
            return meter.seconds(lambda: pooled_features(net, queries, device, args.batch))

        def run_search(q: torch.Tensor = q, bank: torch.Tensor = bank) -> float:
            return meter.seconds(lambda: knn_scores(q, bank, args.k, args.chunk).cpu())

        run_anomem()  # warm-up
        run_search()
        (ta, te, tk), _ = interleaved([run_anomem, run_encode, run_search], args.reps)
        med = statistics.median
        rows.append(
            SizeResult(
                n=n,
                anomem_model_bytes=model_bytes,
                anomem_checkpoint_bytes=ckpt.total(n),
                anomem_checkpoint_measured=fits.get(n),
                anomem_score_s=med(ta),
                knn_bank_bytes=bank.numel() * bank.element_size(),
                knn_encode_s=med(te),
                knn_search_s=med(tk),
            )
        )
        print(f"[N={n} measured]", flush=True)
        del bank
    return ScalingReport(
        preset, args.queries, args.k, memory_bytes, encoder_bytes, dim, ckpt, fits, rows
    )


def format_report(r: ScalingReport) -> str:
    per = f"s per {r.queries} queries"
    lines = [
        f"Scoring state and cost vs training-set size N ({r.preset}; random images and bank rows, timing only)",
        f"AnoMem: encoder {r.encoder_bytes / MIB:.2f} MiB + Hopfield memories {r.memory_bytes / MIB:.3f} MiB "
        f"(+ BN/scorer buffers); kNN: same encoder + bank of N x {r.feature_dim} fp32, k={r.k}",
        "",
        f"{'N':>6} | {'AnoMem MiB':>10} {'score ' + per:>22} | {'kNN bank MiB':>12} {'encode s':>9} {'search s':>9} "
        f"{'kNN total s':>11} | {'kNN/AnoMem time':>15}",
    ]
    for s in r.rows:
        lines.append(
            f"{s.n:>6} | {s.anomem_model_bytes / MIB:>10.2f} {s.anomem_score_s:>22.3f} | {s.knn_bank_bytes / MIB:>12.2f} "
            f"{s.knn_encode_s:>9.3f} {s.knn_search_s:>9.3f} {s.knn_score_s:>11.3f} | {s.knn_score_s / s.anomem_score_s:>14.2f}x"
        )
    first, last = r.rows[0], r.rows[-1]
    lines += [
        "",
        f"from N={first.n} to N={last.n}: AnoMem scoring state x{last.anomem_model_bytes / first.anomem_model_bytes:.2f}, "
        f"scoring time x{last.anomem_score_s / first.anomem_score_s:.2f}; kNN bank x{last.knn_bank_bytes / first.knn_bank_bytes:.1f}, "
        f"search time x{last.knn_search_s / first.knn_search_s:.1f}",
        "",
        "Fitted AnoMem checkpoint (what AnoMem.save writes), MiB: fixed part + banks whose rows grow with N",
    ]
    ck = r.checkpoint
    names = list(ck.parts(r.rows[0].n))
    lines.append(
        f"{'N':>6} | {'fixed':>7} "
        + " ".join(f"{n:>26}" for n in names)
        + f" | {'total':>8} {'measured':>9}"
    )
    for s in r.rows:
        parts = ck.parts(s.n)
        measured = (
            ""
            if s.anomem_checkpoint_measured is None
            else f"{s.anomem_checkpoint_measured / MIB:.2f}"
        )
        lines.append(
            f"{s.n:>6} | {ck.fixed / MIB:>7.2f} "
            + " ".join(f"{parts[n] / MIB:>26.2f}" for n in names)
            + f" | {ck.total(s.n) / MIB:>8.2f} {measured:>9}"
        )
    if r.fits:
        checks = ", ".join(
            f"N={n}: measured {b / MIB:.2f} MiB, predicted {ck.total(n) / MIB:.2f} MiB ({ck.total(n) / b - 1:+.1%})"
            for n, b in sorted(r.fits.items())
        )
        lines.append(
            f"check against real fitted checkpoints (the fixed part comes from the smallest): {checks}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default=None, help="default: cpu-small on CPU, gpu-r18 on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[1000, 10000, 60000], help="training-set sizes N"
    )
    ap.add_argument(
        "--queries",
        type=int,
        default=None,
        help="test images scored per timing (default: 1000 on CPU, 10000 on CUDA)",
    )
    ap.add_argument("--batch", type=int, default=256, help="scoring batch")
    ap.add_argument("--k", type=int, default=2, help="neighbours for the kNN score (DN2 uses 2)")
    ap.add_argument("--chunk", type=int, default=8192, help="bank rows per cdist block")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--fit-sizes",
        type=int,
        nargs="*",
        default=[256, 512],
        help="N of the real 1-epoch fits whose checkpoints check the size model (none: skip)",
    )
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: Sequence[str] | None = None) -> ScalingReport:
    """Measure, print the tables, return the report."""
    args = build_parser().parse_args(argv)
    if args.queries is None:
        args.queries = 10000 if resolve_device(args.device).type == "cuda" else 1000
    print(describe_machine(resolve_device(args.device)))
    print(f"load average at start: {load_average()}", flush=True)
    report = measure(args)
    print()
    print(format_report(report))
    print(f"load average at end: {load_average()}")
    return report


if __name__ == "__main__":
    main()
