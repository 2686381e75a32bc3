"""Local defects in real photographs, scored so that the benchmark cannot flatter AnoMem.

For each category of :mod:`anomem.data.photos` (128-px crops of a photograph bundled with
scikit-image; training and test crops from disjoint regions) and each seed (the crops, the
defects and every detector's seed):

* **Leave-kind-out.** AnoMem fits its stage-2 fusion (and heads) against pseudo-defects
  (``pseudo.defects``: cut-paste, scar, noise), some of them near copies of test kinds
  (:data:`anomem.data.photos.NEAR_COPIES`). :func:`anomem.data.photos.leave_kind_out` says
  which detectors to fit (``pseudo.defects`` minus an excluded set) and which test kinds
  each may score; the headline is AnoMem on the kinds its fit never saw. The library
  default (nothing excluded) is fitted too: its scores on every kind, its heat-map over
  all test images, and the false-positive rate of its default threshold on the test normals.
* **Baselines in their strongest standard form**: raw-pixel patch kNN with a random or a
  greedy k-centre coreset bank, image score the maximum or the top-1 % mean of the
  nearest-patch distances (all four reported, the best per category named), and
  whole-image kNN.
* Image AUROC per defect kind against all test normals (family numbers: the mean over the
  family's kinds), pixel AUROC and AUPRO with the test normals' pixels included.

One JSON per (category, seed, configuration) in ``OUT/cells``, written when done; a rerun
skips finished cells, and ``OUT/results.md`` is rebuilt from the cells on disk (mean ± std
over the seeds found)::

    OMP_NUM_THREADS=1 python benchmarks/photos.py --out docs/results/photos-leave-kind-out --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from anomem.data.photos import (
    CATEGORIES,
    OBVIOUS,
    PSEUDO_DEFECTS,
    SUBTLE,
    leave_kind_out,
    photo_category,
)
from anomem.io.checkpoint import atomic_write_text

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from photo_cells import anomem_cell, baseline_cell

FAMILIES = {"obvious": OBVIOUS, "subtle": SUBTLE}


def config_name(excluded: tuple[str, ...]) -> str:
    return "anomem-default" if not excluded else "anomem-minus-" + "-".join(excluded)


def plan(kinds: tuple[str, ...] = OBVIOUS + SUBTLE) -> dict[str, dict]:
    """{config name: {"excluded", "defects", "scores": test kinds it scores as never seen}}."""
    return {config_name(ex): {"excluded": ex, "defects": tuple(d for d in PSEUDO_DEFECTS if d not in ex), "scores": ks}
            for ex, ks in leave_kind_out(kinds).items()}


def run_cell(cat: str, seed: int, config: str, size: int, n_train: int, n_test_normal: int, per_kind: int,
             n_val: int = 0) -> dict:
    sp = photo_category(cat, size=size, n_train=n_train - n_val, n_test_normal=n_test_normal, per_kind=per_kind,
                        seed=seed, n_val=n_val)
    rec = {"category": cat, "seed": seed, "config": config, "size": size, "train": int(sp.train.shape[0]),
           "validation": n_val,
           "test_normal": int(sp.test_normal.shape[0]),
           "test_defect": {k: int(sum(x == k for x in sp.kinds)) for k in dict.fromkeys(sp.kinds)}}
    if config == "baselines":
        return {**rec, "methods": baseline_cell(sp, seed)}
    p = plan()[config]
    return {**rec, "scores_as_unseen": list(p["scores"]), **anomem_cell(sp, seed, p["excluded"], p["defects"])}


# -- the tables, from the cells ------------------------------------------------------------

def ms(values: list[float], digits: int = 3) -> str:
    """mean ± sample std (ddof 1) of the values, or "mean (1 seed)"; "–" when empty."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "–"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f} (1 seed)"


def unseen_kinds(cells: dict, cat: str, seed: int) -> dict[str, dict] | None:
    """{kind: metrics} with each kind from the AnoMem fit that never saw its near copies;
    None unless every configuration of the plan is on disk for (cat, seed)."""
    out = {}
    for name, p in plan().items():
        c = cells.get((cat, seed, name))
        if c is None:
            return None
        out.update({k: c["kinds"][k] for k in p["scores"]})
    return out


def method_kinds(cells: dict, cat: str, seed: int, method: str) -> dict[str, dict] | None:
    if method == "anomem never saw":
        return unseen_kinds(cells, cat, seed)
    if method == "anomem default":
        c = cells.get((cat, seed, "anomem-default"))
        return None if c is None else c["kinds"]
    c = cells.get((cat, seed, "baselines"))
    return None if c is None else c["methods"][method]["kinds"]


def family(kinds: dict[str, dict] | None, fam: str, metric: str = "image_auroc") -> float | None:
    """Mean of ``metric`` over the family's kinds (each kind against the same test normals)."""
    if kinds is None:
        return None
    v = [kinds[k][metric] for k in FAMILIES[fam] if k in kinds and metric in kinds[k]]
    return float(np.mean(v)) if v else None


def done_seeds(cells: dict, cat: str, method: str = "") -> list[int]:
    """The seeds of ``cat`` with every cell on disk (all AnoMem fits and the baselines), so
    that every method in a table is compared on the same seeds (``method`` is not consulted)."""
    seeds = sorted({s for (c, s, _) in cells if c == cat})
    return [s for s in seeds if all((cat, s, n) in cells for n in (*plan(), "baselines"))]


def over_seeds(cells: dict, cat: str, method: str, fn) -> list[float]:
    return [fn(method_kinds(cells, cat, s, method)) for s in done_seeds(cells, cat, method)]


PATCH = ("patch-knn random max", "patch-knn random top1%", "patch-knn coreset max", "patch-knn coreset top1%")


def strongest_patch(cells: dict, cat: str, fam: str) -> str:
    """The patch-kNN variant with the best mean image AUROC on this category and family
    (for reporting which baseline to beat; no default of ours is chosen from it)."""
    return max(PATCH, key=lambda m: np.mean(over_seeds(cells, cat, m, lambda k: family(k, fam))) if
               done_seeds(cells, cat, m) else -1.0)


def headline(cells: dict, cats: list[str]) -> str:
    head = ("| category | seeds | AnoMem, kinds never seen: obvious | subtle | AnoMem default (kinds seen): obvious "
            "| subtle | strongest patch kNN: obvious | subtle | kNN: obvious | subtle |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cat in cats:
        row = [cat, str(len(done_seeds(cells, cat, "anomem never saw")))]
        for m in ("anomem never saw", "anomem default"):
            row += [ms(over_seeds(cells, cat, m, lambda k, f=f: family(k, f))) for f in FAMILIES]
        for f in FAMILIES:
            best = strongest_patch(cells, cat, f)
            got = over_seeds(cells, cat, best, lambda k, f=f: family(k, f))
            row.append(ms(got) + (f" ({best[10:]})" if got else ""))
        row += [ms(over_seeds(cells, cat, "knn", lambda k, f=f: family(k, f))) for f in FAMILIES]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def per_kind_table(cells: dict, cats: list[str]) -> str:
    """Image AUROC per kind, mean ± std over every finished (category, seed)."""
    methods = ("anomem never saw", "anomem default", *PATCH, "knn")
    head = "| kind | near copies left out | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    from anomem.data.photos import NEAR_COPIES
    for k in OBVIOUS + SUBTLE:
        row = [k, ", ".join(NEAR_COPIES[k]) or "none"]
        for m in methods:
            row.append(ms([method_kinds(cells, c, s, m)[k]["image_auroc"] for c in cats for s in done_seeds(cells, c, m)]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def localisation_table(cells: dict, cats: list[str]) -> str:
    head = ("| category | AnoMem never saw: pixel AUROC | AUPRO | AnoMem default, all test images: pixel AUROC "
            "| AUPRO | AUPRO defective only | patch kNN random bank, all test images: pixel AUROC | AUPRO "
            "| patch kNN coreset: pixel AUROC | AUPRO |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    mean_of = lambda metric: lambda k: float(np.mean([v[metric] for v in k.values()]))  # noqa: E731
    for cat in cats:
        row = [cat] + [ms(over_seeds(cells, cat, "anomem never saw", mean_of(m))) for m in ("pixel_auroc", "aupro")]
        d = [cells[(cat, s, "anomem-default")] for s in done_seeds(cells, cat, "anomem default")]
        row += [ms([c[m] for c in d]) for m in ("pixel_auroc_all", "aupro_all", "aupro_defective_only")]
        for bank in ("random", "coreset"):  # the map depends on the bank only, not on the aggregation
            b = [cells[(cat, s, "baselines")]["methods"][f"patch-knn {bank} max"]
                 for s in done_seeds(cells, cat, f"patch-knn {bank} max")]
            row += [ms([c[m] for c in b]) for m in ("pixel_auroc_all", "aupro_all")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def threshold_table(cells: dict, cats: list[str]) -> str:
    head = ("| category | config | seeds | target FPR | FPR on held-out training normals | FPR on test normals "
            "| fit s | fusion image split (global, feature, pixel) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cat in cats:
        for name in plan():
            cs = [c for (ca, _, n), c in sorted(cells.items()) if ca == cat and n == name]
            if not cs:
                continue
            th = [c["threshold"] for c in cs]
            lines.append("| " + " | ".join([
                cat, name, str(len(cs)), ms([t["target_fpr"] for t in th]), ms([t["fpr_held_out"] for t in th]),
                ms([t["fpr_test_normals"] for t in th]), ms([c["fit_s"] for c in cs], 0),
                "; ".join(str(c["fusion"]["image"]) for c in cs)]) + " |")
    return "\n".join(lines) + "\n"


def results(cells: dict, cats: list[str], seeds: list[int], cmd: str) -> str:
    p = plan()
    fits = "; ".join(f"`{n}`: pseudo.defects={list(v['defects'])}, scores {', '.join(v['scores'])}" for n, v in p.items())
    missing = []
    for c in cats:
        for s in seeds:
            gone = [n for n in ("baselines", *p) if (c, s, n) not in cells]
            missing += [f"{c} seed {s}" + ("" if len(gone) == len(p) + 1 else f" ({', '.join(gone)})")] if gone else []
    cmds = sorted({c["command"] for c in cells.values() if "command" in c}) or [cmd]
    code = sorted({c["commit"] for c in cells.values() if c.get("commit")})
    return (f"Command: {', '.join(f'`{x}`' for x in cmds)} (code at commit {', '.join(code) or 'unknown'}, "
            f"with this benchmark's files).\n\nCells on disk: {len(cells)}. Missing: {', '.join(missing) or 'none'}.\n\n"
            f"AnoMem fits per (category, seed): {fits}.\n\n"
            "## Image AUROC per family (mean over the family's kinds; mean ± std over seeds)\n\n"
            + headline(cells, cats) + "\n## Image AUROC per kind (mean ± std over every finished (category, seed))\n\n"
            + per_kind_table(cells, cats) + "\n## Localisation (test normals' pixels included)\n\n"
            + localisation_table(cells, cats) + "\n## The default threshold and the fit\n\n" + threshold_table(cells, cats))


def load(out: Path) -> dict:
    cells = {}
    for f in sorted((out / "cells").glob("*.json")):
        c = json.loads(f.read_text())
        cells[(c["category"], c["seed"], c["config"])] = c
    return cells


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=list(CATEGORIES))
    ap.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--train", type=int, default=240, help="training normals")
    ap.add_argument("--test-normal", type=int, default=60, help="test normals")
    ap.add_argument("--per-kind", type=int, default=15, help="defective test images per kind")
    ap.add_argument("--val-normals", type=int, default=0, metavar="N",
                    help="N of the --train normals are validation crops from training-row columns no training crop "
                         "touches: AnoMem's validation normals (fit(validation=...)); the baselines train on them too")
    ap.add_argument("--report-only", action="store_true", help="rebuild results.md from the cells on disk")
    a = ap.parse_args(argv)
    (a.out / "cells").mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/photos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    for cat in a.categories if not a.report_only else []:
        for seed in a.seeds:
            for config in ("baselines", *plan()):
                path = a.out / "cells" / f"{cat}-seed{seed}-{config}.json"
                if path.exists():
                    continue
                rec = {**run_cell(cat, seed, config, a.size, a.train, a.test_normal, a.per_kind, a.val_normals), "command": cmd, "commit": commit}
                atomic_write_text(path, json.dumps(rec, indent=1))
                print(path.name, flush=True)
                atomic_write_text(a.out / "results.md", results(load(a.out), a.categories, a.seeds, cmd))
    text = results(load(a.out), a.categories, a.seeds, cmd)
    atomic_write_text(a.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
