"""Which rule should pick the ``image`` split from the fit's table? Decided on validation.

At fit, every candidate split (global, feature patches, pixel patches) gets one AUROC per
family of pseudo-anomalies made from the held-out normals (``defects``, ``shifts``;
``det.fusion_.table``). A rule turns that table into one split. This script fits AnoMem
on one normal class of a FIT split of the training data and reads a VALIDATION split
(the rest of the training data; every other class is an anomaly; the test split is never
used), then reports the validation AUROC of the split each rule picks:

* ``shifts-first``  the library's rule (``anomem.fit.fusion.choose``): shift errors within
                    ``SHIFT_SLACK`` x the best (1.1 in Decision 10, 1 since Decision 13),
                    then the best mean over the families;
* ``slack s``       the same rule with another slack s;
* ``shifts-only``   the best AUROC on the shifts (the defects family breaks ties only
                    through the order of the table: larger global weight first);
* ``mean``          the best mean AUROC over the families;
* ``maximin``       the best worst-family AUROC (ties: the larger global weight);
* ``global``        (1, 0, 0), the score without patch banks;
* ``best``          the best candidate on the validation split itself (a ceiling, not a rule).

The image score is linear in the split (``docs/method.md``), so each candidate's scores
are the same combination of the three one-signal scores, read once through the public
API (``anomaly_score(X, weights={"image": ...})``).

    OMP_NUM_THREADS=1 python benchmarks/fusion_rule.py --classes 0 1 2 3 4 5 6 7 8 9 \\
        --out docs/results/fusion-rule

``--set section.key=value`` (repeatable) reads the same validation for a config variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from anomem.fit.fusion import choose
from anomem.io.checkpoint import atomic_write_text

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from validation import cells, draw, fit_class, split, sweep_config

SLACKS = (1.0, 1.1, 1.25, 1.5, 2.0)  # slacks of the shifts-first rule (1.1: Decision 10's; 1: Decision 13's)
RULES = ("shifts-first", *(f"slack {s:g}" for s in SLACKS), "shifts-only", "mean", "maximin", "global", "best")


def pick(rule: str, table: dict[tuple[float, ...], tuple[float, ...]], families: tuple[str, ...],
         validation: dict[tuple[float, ...], float]) -> tuple[float, ...]:
    """The split ``rule`` picks (``max`` keeps the first of equals: the table lists the
    larger global weight first)."""
    if rule == "shifts-first":
        return choose(table, families)
    if rule.startswith("slack ") and "shifts" in families:
        j, slack = families.index("shifts"), float(rule.split()[1])
        least = min(1.0 - v[j] for v in table.values())
        left = [w for w in table if 1.0 - table[w][j] <= slack * least + 1e-9]
        return max(left, key=lambda w: float(np.mean(table[w])))
    if rule == "shifts-only" and "shifts" in families:
        j = families.index("shifts")
        return max(table, key=lambda w: table[w][j])
    if rule.startswith(("slack ", "shifts-only")):  # no shifts family: the best mean
        return max(table, key=lambda w: float(np.mean(table[w])))
    if rule == "mean":
        return max(table, key=lambda w: float(np.mean(table[w])))
    if rule == "maximin":
        return max(table, key=lambda w: min(table[w]))
    if rule == "global":
        return next(w for w in table if w[0] == 1.0)
    return max(validation, key=validation.get)


def run_class(args: argparse.Namespace, fv, cls: int) -> dict:
    fit_images, fit_targets = fv.fit.images, fv.fit.targets
    normals = fit_images[fit_targets == cls][: args.normals]
    x_val, y_val = draw(fv.validation, args.max_val, np.random.default_rng(args.seed + cls))
    cfg = sweep_config(args.preset, args.epochs, args.seed, args.batch_size, args.set)
    f = fit_class(cfg, normals, y_val, cls)
    fit = f.det.fusion_
    if fit is None:
        return {"class": cls, "error": "no fusion was fitted"}
    one = {i: f.det.anomaly_score(x_val, weights={"image": [float(j == i) for j in range(3)]}) for i in range(3)}
    validation = {w: f.auroc(sum(w[i] * one[i] for i in range(3))) for w in fit.table}
    cell = {"class": cls, "families": list(fit.families), "fit_s": round(f.seconds, 1), "knn": f.knn_auroc(x_val),
            "candidates": [{"split": list(w), "pseudo": list(fit.table[w]), "validation_auroc": v}
                           for w, v in validation.items()]}
    return {**cell, "rules": rules_of(cell)}


def rules_of(cell: dict) -> dict:
    """Every rule of :data:`RULES` applied to a finished cell's stored candidate table, so
    that cells computed before a rule existed (or before the library's rule changed) are
    read with today's rules."""
    table = {tuple(c["split"]): tuple(c["pseudo"]) for c in cell["candidates"]}
    validation = {tuple(c["split"]): c["validation_auroc"] for c in cell["candidates"]}
    out = {}
    for rule in RULES:
        w = pick(rule, table, tuple(cell["families"]), validation)
        out[rule] = {"split": list(w), "validation_auroc": validation[w], "pseudo": list(table[w])}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--normals", type=int, default=1000)
    ap.add_argument("--max-train", type=int, default=12000)
    ap.add_argument("--max-val", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config override for AnoMem (e.g. pseudo.local=0.5), for a variant")
    ap.add_argument("--out", type=Path, required=True)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    (args.out / "cells").mkdir(parents=True, exist_ok=True)
    fv = split(args.data, args.max_train, args.seed)
    for cls in args.classes:
        cell = args.out / "cells" / f"{args.data}_c{cls}_s{args.seed}.json"
        if not cell.exists():  # resumable: a finished class is kept
            atomic_write_text(cell, json.dumps(run_class(args, fv, cls), indent=1))
    done = [json.loads(p.read_text()) for p in sorted((args.out / "cells").glob("*.json"))]
    done = [{**d, "rules": rules_of(d)} for d in done if "rules" in d]  # each rule read again from the stored table
    lines = ["# Fusion rule on a validation split", "", f"`{' '.join(['python benchmarks/fusion_rule.py', *(argv or [])])}`",
             "", "| class | " + " | ".join(RULES) + " | kNN |", "|---" * (len(RULES) + 2) + "|"]
    for d in done:
        lines.append(f"| {d['class']} | " + " | ".join(f"{d['rules'][r]['validation_auroc']:.4f} "
                                                   f"{tuple(d['rules'][r]['split'])}" for r in RULES)
                     + f" | {d['knn']:.4f} |")
    if done:
        means = [float(np.mean([d["rules"][r]["validation_auroc"] for d in done])) for r in RULES]
        lines.append("| mean | " + " | ".join(f"{m:.4f}" for m in means) + f" | {np.mean([d['knn'] for d in done]):.4f} |")
        print(cells(["rule", *RULES], 13, 4))
        print(cells(["mean", *means], 13, 4))
    atomic_write_text(args.out / "results.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
