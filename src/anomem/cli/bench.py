"""``anomem benchmark`` and ``linear-eval``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from anomem.cli.common import (
    _load_detector,
    progress_mode,
    summary_stream,
)
from anomem.cli.train import (
    _existing,
)
from anomem.config import load_config
from anomem.errors import DataError
from anomem.inputs import check_int_range
from anomem.io.checkpoint import atomic_write_text
from anomem.io.outputs import (
    check_claimable,
    check_file_target,
    check_outputs,
)
from anomem.limits import check_config_limits, check_seed


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Protocol x classes x ratios x seeds, AnoMem beside every baseline; resumable."""
    from anomem.bench.runner import GROUPS, BenchmarkSettings, run_benchmark

    check_int_range("--jobs", args.jobs, 1, 256)
    if args.threads is not None:
        check_int_range("--threads", args.threads, 1, 1024)
    check_int_range("--seeds", args.seeds, 1, 1000)
    if not (0.0 <= args.pollution < 1.0):  # NaN fails too
        raise DataError(f"--pollution (γ_p) must lie in [0, 1), got {args.pollution}")
    for name in ("max_train", "max_test"):
        if getattr(args, name) is not None:
            check_int_range("--" + name.replace("_", "-"), getattr(args, name), 1, 10_000_000)
    check_outputs([("--out", args.out)], [("--data-root", _existing(args.data_root))])
    # a results directory is new, empty, or one a benchmark wrote (its benchmark.json): resumed, never clobbered
    check_claimable("--out", args.out, "benchmark", legacy=("benchmark.json",))
    groups = tuple(GROUPS) if "all" in args.methods else tuple(dict.fromkeys(args.methods))
    cfg = load_config(args.preset, None, list(args.set or ()))
    if args.epochs is not None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    check_config_limits(cfg)  # a bad --set fails now, not in a worker
    # what was asked, as recorded in benchmark.json (its identity); the runner trains from cfg
    overrides = tuple(args.set or ()) + ((f"train.epochs={args.epochs}",) if args.epochs is not None else ())
    s = BenchmarkSettings(
        protocol=args.protocol, data=args.data, data_root=args.data_root, ood=args.ood,
        classes=tuple(args.classes), ratios=tuple(args.ratios), seeds=args.seeds, groups=groups,
        preset=args.preset, overrides=overrides, max_train=args.max_train, max_test=args.max_test,
        pollution=args.pollution, config=cfg.to_dict(),
    )
    t0 = time.time()
    bar, lines = progress_mode(args.progress)
    done = [0]

    def on_cell(cell, result) -> None:  # not a terminal: one line per finished cell instead of a bar
        done[0] += 1
        shown = ", ".join(f"{r['method']} AUROC {r['auroc']:.4f}" for r in result["rows"] if r.get("auroc") is not None)
        print(f"cell {done[0]} done: {cell.key}: {shown or 'no AUROC'} ({time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)

    out = run_benchmark(s, args.out, jobs=args.jobs, threads=args.threads, progress=bar,
                        on_cell=on_cell if lines else None)
    print((out / "results.md").read_text())
    print(f"benchmark finished in {time.time() - t0:.0f} s: {out / 'results.md'}, results.json, results.csv, plots")
    return 0


def cmd_linear_eval(args: argparse.Namespace) -> int:
    """Linear evaluation of a trained detector's frozen encoder on a labelled dataset."""
    from anomem.bench.runner import linear_evaluation
    from anomem.data.registry import load_dataset

    check_seed("--seed", args.seed)
    if args.max_train is not None:
        check_int_range("--max-train", args.max_train, 1, 10_000_000)
    if args.out is not None:
        check_outputs([("--out", args.out)], [("checkpoint", args.checkpoint), ("--data-root", _existing(args.data_root))])
        check_file_target("--out", args.out, ("text",))
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    train = load_dataset(args.data, "train", root=args.data_root)
    test = load_dataset(args.data, "test", root=args.data_root)
    t0 = time.time()
    acc = linear_evaluation(det, train, test, max_train=args.max_train, seed=args.seed)
    print(f"linear evaluation on {args.data} ({len(test)} test images, {time.time() - t0:.0f} s): "
          f"frozen encoder {100 * acc['encoder']:.1f}% accuracy, raw pixels {100 * acc['raw_pixels']:.1f}%",
          file=summary_stream(args.out))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"checkpoint": str(args.checkpoint), "data": args.data,
                                                      "max_train": args.max_train, "seed": args.seed, **acc}, indent=2))
    return 0


# -- parser -------------------------------------------------------------------------
