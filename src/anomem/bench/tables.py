"""The benchmark summary: tables, CSV/JSON and plots from the cells on disk.

:func:`summarise` reads every ``cells/<key>.json`` of a benchmark directory (written by
:mod:`anomem.bench.runner`) and writes ``results.json``, ``results.csv``, ``results.md``
and the plots, into ``plots/`` (:data:`PLOTS_DIR`). It never trains anything, so it can
be rerun on partial results.

Every plot draws a method in the same colour (:data:`METHOD_COLOURS`, a fixed map over
:data:`~anomem.bench.plan.METHODS`, so a method keeps its colour whichever others
ran), and every axis is labelled.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from anomem.bench.plan import METHODS, Cell
from anomem.io.checkpoint import atomic_write_bytes, atomic_write_text

__all__ = ["METHOD_COLOURS", "PLOTS_DIR", "load_rows", "markdown_table", "method_colour", "summarise"]

#: Where :func:`summarise` writes the plots, under the benchmark directory.
PLOTS_DIR = "plots"
# matplotlib's tab10, then two more: one fixed colour per method of the plan
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#637939")
#: method name -> matplotlib colour, the same in every plot.
METHOD_COLOURS: dict[str, str] = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(METHODS)}
_HIST = {"normal": "#4c72b0", "anomaly": "#dd8452"}


def method_colour(method: str) -> str:
    """The colour of ``method`` in every benchmark plot (black for a name outside the plan)."""
    return METHOD_COLOURS.get(method, "#000000")


def load_rows(out: str | Path) -> list[dict]:
    out = Path(out)
    rows = []
    for p in sorted((out / "cells").glob("*.json")):
        rows += json.loads(p.read_text())
    return rows


def _fmt(vals: Iterable[float]) -> str:
    v = np.asarray(list(vals), float)
    if v.size == 0:
        return "–"
    return f"{100 * v.mean():.1f}" if v.size == 1 else f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1):.1f}"


def markdown_table(rows: list[dict], settings: dict) -> str:
    """Per ratio: rows = normal classes (mean ± std over seeds), one column per method, AUROC %."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = []
    for ratio in sorted({r["ratio"] for r in rows}):
        rr = [r for r in rows if r["ratio"] == ratio]
        classes = sorted({r["normal_class"] for r in rr})
        seeds = sorted({r["seed"] for r in rr})
        lines += [f"### γ = {ratio:g}  (AUROC %, {len(seeds)} seed{'s' * (len(seeds) > 1)})", "",
                  "| class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for c in classes:
            cells = [_fmt(r["auroc"] for r in rr if r["normal_class"] == c and r["method"] == m) for m in methods]
            lines.append(f"| {'all' if c < 0 else c} | " + " | ".join(cells) + " |")
        # mean over classes of the per-seed class means; ± = std over seeds of the class-averaged AUROC
        per_seed = [[np.mean([r["auroc"] for r in rr if r["method"] == m and r["seed"] == sd]) for sd in seeds
                     if any(r["method"] == m and r["seed"] == sd for r in rr)] for m in methods]
        best = max(range(len(methods)), key=lambda i: np.mean(per_seed[i]) if per_seed[i] else -1.0)
        means = [f"**{_fmt(v)}**" if i == best else _fmt(v) for i, v in enumerate(per_seed)]
        lines.append("| **mean** | " + " | ".join(means) + " |")
        secs = [f"{np.mean([r['seconds'] for r in rr if r['method'] == m]):.0f}" for m in methods]
        lines += ["| s / cell | " + " | ".join(secs) + " |", ""]
    return "\n".join(lines)


def summarise(out: str | Path) -> dict[str, Path]:
    """Write results.json / .csv / .md and the plots (in ``out/plots/``) from the finished
    cells in ``out``; returns every file written, by name."""
    out = Path(out)
    meta = json.loads((out / "benchmark.json").read_text())
    rows = load_rows(out)
    files = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    atomic_write_text(files["json"], json.dumps({**meta, "rows": rows}, indent=1))
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(files["csv"], buf.getvalue())
    st = meta["settings"]
    head = [f"# AnoMem benchmark: {st['protocol']} on {st['data']}", "",
            f"preset `{st['preset']}`" + (f" with `{' '.join(st['overrides'])}`" if st["overrides"] else "")
            + (f"; training normals capped at {st['max_train']}" if st["max_train"] else "")
            + (f"; test capped at {st['max_test']}" if st["max_test"] else "") + ".", "",
            "Label-free methods (simclr-*, knn, ocsvm, iforest) ignore the labelled anomalies: under "
            "one-vs-all their γ > 0 cells repeat the γ = 0 result.", "", ""]
    plots = _plots(out, rows) if rows else {}
    links = ", ".join(f"[{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots.values())
    tail = f"\nPlots (in `{PLOTS_DIR}/`): {links}\n" if links else ""
    atomic_write_text(files["md"], "\n".join(head) + markdown_table(rows, st) + "\n" + tail)
    files.update(plots)
    return files


def _plots(out: Path, rows: list[dict]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    files = {}
    plots = out / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    ratios = sorted({r["ratio"] for r in rows})
    if len(ratios) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            ax.plot(ratios, [100 * np.mean([r["auroc"] for r in rows if r["method"] == m and r["ratio"] == g])
                             for g in ratios], marker="o", label=m, color=method_colour(m))
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("anomaly ratio γ (labelled anomalies / training set)")
        ax.set_ylabel("mean AUROC (%)")
        ax.set_title("AUROC against the share of labelled anomalies", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        files["auroc_vs_ratio"] = _savefig(fig, plots / "auroc_vs_ratio.png")
    # where each method sits on the cost/quality frontier: mean AUROC against mean CPU
    # seconds per cell (the wall time of one cell's training and scoring), one panel per γ
    fig, axes = plt.subplots(1, len(ratios), figsize=(4.5 * len(ratios), 4), squeeze=False)
    for ax, g in zip(axes[0], ratios):
        for m in methods:
            sel = [r for r in rows if r["method"] == m and r["ratio"] == g]
            if sel:
                ax.scatter(np.mean([r["seconds"] for r in sel]), 100 * np.mean([r["auroc"] for r in sel]),
                           color=method_colour(m), label=m)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per cell (train + score)")
        ax.set_ylabel("mean AUROC (%)")
        ax.set_title(f"γ = {g:g}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    files["cost_quality"] = _savefig(fig, plots / "cost_quality.png")
    # ROC curves and AnoMem score histograms of seed 0, per normal class, for each ratio
    for ratio in ratios:
        classes = sorted({r["normal_class"] for r in rows if r["ratio"] == ratio})
        ncol = min(5, len(classes))
        nrow = math.ceil(len(classes) / ncol)
        fr, axr = plt.subplots(nrow, ncol, figsize=(3 * ncol, 3 * nrow), squeeze=False)
        fh, axh = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.4 * nrow), squeeze=False)
        for i, c in enumerate(classes):
            a, b = axr[i // ncol][i % ncol], axh[i // ncol][i % ncol]
            for r in rows:
                if r["normal_class"] != c or r["ratio"] != ratio or r["seed"] != 0:
                    continue
                z = np.load(out / "cells" / f"{Cell(**{k: r[k] for k in Cell.__dataclass_fields__}).key}.npz")
                sc, lab = z[f"score__{r['method']}"], z["is_anomaly"]
                fpr, tpr, _ = roc_curve(lab, sc)
                a.plot(fpr, tpr, lw=1, label=r["method"], color=method_colour(r["method"]))
                if r["method"] == "anomem":
                    bins = np.linspace(sc.min(), sc.max(), 40)
                    b.hist(sc[~lab], bins, alpha=0.6, density=True, label="normal", color=_HIST["normal"])
                    b.hist(sc[lab], bins, alpha=0.6, density=True, label="anomaly", color=_HIST["anomaly"])
            a.set_title(f"class {c}", fontsize=8)
            a.set_xlabel("false-positive rate", fontsize=7)
            a.set_ylabel("true-positive rate", fontsize=7)
            b.set_title(f"AnoMem scores, class {c}", fontsize=8)
            b.set_xlabel("anomaly score (higher = more anomalous)", fontsize=7)
            b.set_ylabel("density", fontsize=7)
            a.plot([0, 1], [0, 1], "k:", lw=0.5)
        for k in range(len(classes), nrow * ncol):  # unused panels of the last row
            axr[k // ncol][k % ncol].set_axis_off()
            axh[k // ncol][k % ncol].set_axis_off()
        for ax, size in ((axr[0][0], 5), (axh[0][0], 6)):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=size)
        fr.suptitle(f"ROC curves, γ = {ratio:g}, seed 0")
        fh.suptitle(f"AnoMem score histograms, γ = {ratio:g}, seed 0")
        files[f"roc_{ratio:g}"] = _savefig(fr, plots / f"roc_gamma{ratio:g}.png")
        files[f"hist_{ratio:g}"] = _savefig(fh, plots / f"hist_gamma{ratio:g}.png")
    return files


def _savefig(fig, path: Path) -> Path:
    from anomem.bench.report import _fig_to_png

    fig.tight_layout()
    png = _fig_to_png(fig)
    atomic_write_bytes(path, lambda f: f.write(png))
    return path
